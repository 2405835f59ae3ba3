"""The Redis store as a new user meets it: passwords, ACL users, TLS, namespaces,
leases, and a store that fails or comes back empty while a run goes on.

Each test starts its own redis-server (loopback, private port) with the options
it needs: a password, TLS with a CA made here, AOF so a restart keeps state.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from chc.core.client import StoreLost, StoreUnavailable
from chc.core.store import ObjectKey, Op, StoreError
from conftest import RedisProcess, _base_dir, require_redis_server

ROOT = Path(__file__).resolve().parent.parent
CHAIN = ROOT / "examples/paper_chain.yaml"
LAN = ROOT / "traces/pathspider/lan-2012.pcap.gz"
PASSWORD = "s3cret-pw"
COUNTER = ObjectKey("nat", "packets", None)


def _server(tmp: str, name: str, **kw) -> RedisProcess:
    return RedisProcess(require_redis_server(), Path(tmp) / name, **kw)


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="chc-redis-sec-", dir=_base_dir())
    servers: list[RedisProcess] = []
    yield d, servers
    for s in servers:
        s.kill()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def protected(workdir) -> RedisProcess:
    """A server that wants a password, with an ACL user ``chcuser`` besides."""
    d, servers = workdir
    s = _server(d, "pw", extra=["--requirepass", PASSWORD], client={"password": PASSWORD})
    servers.append(s)
    s.start()
    import redis
    r = redis.Redis(host="127.0.0.1", port=s.port, password=PASSWORD)
    r.acl_setuser("chcuser", enabled=True, passwords=["+user-pw"], keys=["*"], channels=["*"], commands=["+@all"])
    r.close()
    return s


def _store(url: str, **kw):
    from chc.backends.redis import RedisStore
    return RedisStore([url], attempts=2, backoff=0.01, **kw)


def _chc(*args: str, out: list | None = None) -> tuple[int, str]:
    """``chc`` in a subprocess: exit code and standard error (standard output into ``out``)."""
    proc = subprocess.run([sys.executable, "-c", "import sys; from chc.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    if out is not None:
        out.append(proc.stdout)
    return proc.returncode, proc.stderr


# -- authentication -------------------------------------------------------------------------------------------------


def test_password_and_acl_user_urls(protected):
    base = f"127.0.0.1:{protected.port}"
    for url in (f"redis://:{PASSWORD}@{base}", f"redis://chcuser:user-pw@{base}"):
        s = _store(url, fresh=True)
        try:
            assert s.execute([Op("incr", COUNTER, (1,), "nat/0", 1)]) == [1]
            assert PASSWORD not in s.describe() and "user-pw" not in s.describe()
            assert ":***@" in s.describe()
        finally:
            s.close()


def test_missing_and_wrong_passwords_are_named(protected):
    base = f"127.0.0.1:{protected.port}"
    with pytest.raises(StoreError, match="authentication required") as exc:
        _store(f"redis://{base}")
    assert "Protocol error" not in str(exc.value)
    with pytest.raises(StoreError, match="authentication failed") as exc:
        _store(f"redis://:wrong-{PASSWORD}@{base}")
    assert PASSWORD not in str(exc.value)
    with pytest.raises(StoreError, match="authentication failed"):
        _store(f"redis://chcuser:nope@{base}")


def test_cli_wrong_password_is_one_line_exit_2(protected, tmp_path):
    code, err = _chc("run", str(CHAIN), str(LAN), "-c", "10", "-q", "--no-progress",
                     "--store", f"redis://:bad-{PASSWORD}@127.0.0.1:{protected.port}")
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("chc: error:") and "authentication failed" in err
    assert PASSWORD not in err


def test_summary_and_json_redact_the_password(protected, tmp_path):
    out = tmp_path / "s.json"
    printed: list[str] = []
    code, err = _chc("run", str(CHAIN), str(LAN), "-c", "50", "--no-progress", "--summary-json", str(out),
                     "--store", f"redis://:{PASSWORD}@127.0.0.1:{protected.port}", out=printed)
    assert code == 0, err
    backend = json.loads(out.read_text())["store"]["backend"]
    assert backend == f"redis://:***@127.0.0.1:{protected.port}"
    assert f"redis://:***@127.0.0.1:{protected.port}" in printed[0]          # the printed summary
    assert PASSWORD not in out.read_text() and PASSWORD not in err and PASSWORD not in printed[0]


def test_check_redacts_the_password_too(protected, tmp_path):
    """``chc check`` printed each seed's store, and wrote it to --json, as given (a new-user trial)."""
    out = tmp_path / "c.json"
    printed: list[str] = []
    code, err = _chc("check", str(CHAIN), str(ROOT / "examples/scenarios/parallel.yaml"), str(LAN), "--packets", "300",
                     "--seeds", "1", "--json", str(out), "--store", f"redis://:{PASSWORD}@127.0.0.1:{protected.port}",
                     out=printed)
    assert code == 0, err
    assert f"store redis://:***@127.0.0.1:{protected.port}" in printed[0]
    assert json.loads(out.read_text())["results"][0]["variant"]["store"] == f"redis://:***@127.0.0.1:{protected.port}"
    assert PASSWORD not in out.read_text() and PASSWORD not in err and PASSWORD not in printed[0]


def test_options_a_run_does_not_use_are_said(dedicated_redis):
    """Model T never opens the store (not even an unreachable one) and the memory store has
    no namespace: both were silently accepted; an empty --namespace silently became the
    default one (a new-user trial)."""
    code, err = _chc("run", str(CHAIN), str(LAN), "-c", "10", "-q", "--no-progress", "--model", "T",
                     "--store", f"redis://:{PASSWORD}@127.0.0.1:1")
    assert code == 0 and err == ("chc: warning: model T keeps state inside the instances: --store "
                                 "redis://:***@127.0.0.1:1 is not used\n"), err
    code, err = _chc("run", str(CHAIN), str(LAN), "-c", "10", "-q", "--no-progress", "--namespace", "x")
    assert code == 0 and "--namespace names a Redis store's keys: not used with the memory store" in err, err
    code, err = _chc("run", str(CHAIN), str(LAN), "-c", "10", "-q", "--no-progress", "--namespace", "",
                     "--store", dedicated_redis.url)
    assert code == 2 and err == "chc: error: namespace '': use 1 to 64 of the characters A-Z a-z 0-9 _ . -\n", err


# -- TLS ---------------------------------------------------------------------------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _make_ca(d: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 signed by it."""
    p = {n: d / f"{n}" for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem", "ext.cnf")}
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(p["ca.key"]), "-out", str(p["ca.pem"]),
             "-days", "2", "-subj", "/CN=chc test CA")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(p["srv.key"]), "-out", str(p["srv.csr"]),
             "-subj", "/CN=127.0.0.1")
    p["ext.cnf"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", str(p["srv.csr"]), "-CA", str(p["ca.pem"]), "-CAkey", str(p["ca.key"]),
             "-CAcreateserial", "-out", str(p["srv.pem"]), "-days", "2", "-extfile", str(p["ext.cnf"]))
    return p


@pytest.mark.filterwarnings("ignore:.*already holds CHC state:RuntimeWarning")
def test_tls_server_with_a_ca_made_here(workdir):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: cannot make a test CA")
    d, servers = workdir
    certs = _make_ca(Path(d))
    s = _server(d, "tls", tls=True,
                extra=["--tls-cert-file", str(certs["srv.pem"]), "--tls-key-file", str(certs["srv.key"]),
                       "--tls-ca-cert-file", str(certs["ca.pem"]), "--tls-auth-clients", "no"],
                client={"ssl": True, "ssl_ca_certs": str(certs["ca.pem"])})
    servers.append(s)
    try:
        s.start()
    except RuntimeError as exc:
        if "tls" in str(exc).lower() or "port 0" in str(exc).lower():
            pytest.skip(f"this redis-server has no TLS support: {str(exc)[-200:]}")
        raise
    st = _store(s.url, fresh=True, tls_ca=str(certs["ca.pem"]))
    try:
        assert st.execute([Op("incr", COUNTER, (2,), "nat/0", 1)]) == [2]
        assert st.describe().startswith("rediss://127.0.0.1:")
    finally:
        st.close()
    st = _store(f"{s.url}?ssl_ca_certs={certs['ca.pem']}")          # the CA as a URL option
    try:
        assert st.execute([Op("get", COUNTER)]) == [2]
    finally:
        st.close()
    with pytest.raises(StoreUnavailable, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        _store(s.url)                       # the system CAs do not know this one


# -- namespaces and leases -----------------------------------------------------------------------------------------


def test_a_run_touches_nothing_outside_its_namespace(dedicated_redis):
    import redis
    r = redis.Redis(host="127.0.0.1", port=dedicated_redis.port)
    r.set("chco-other", "mine")
    r.set("chc-keep", "mine")
    r.set("other:k:x", "mine")
    s = _store(dedicated_redis.url, fresh=True, namespace="other")
    try:
        s.execute([Op("incr", COUNTER, (1,), "nat/0", 1, tag=(1, 1), xor_id=3),
                   Op("set", ObjectKey("nat", "m", 5, True), ("x",), "nat/0", 2, instance=0)])
        ours = [k for k in r.scan_iter() if k not in (b"chco-other", b"chc-keep")]
        assert ours and all(k.startswith(b"other:") for k in ours), ours
    finally:
        s.close()
    s = _store(dedicated_redis.url, fresh=True, namespace="chc")       # clears "chc:*" only
    s.close()
    assert r.get("chco-other") == b"mine" and r.get("chc-keep") == b"mine"
    r.close()


def test_two_runs_on_one_server_keep_each_others_operations(dedicated_redis):
    """The ``chc`` library is one per server: a second run loading its own custom
    operation kept the first run's (a plain REPLACE took it away mid-run: 'unknown
    custom operation')."""
    body = "local v = CHC.read(op.key) or 0\nCHC.write(op.key, v + op.args[1] * {m})\nreturn v + op.args[1] * {m}"
    a = _store(dedicated_redis.url, fresh=True, namespace="run-a")
    b = None
    try:
        a.register("times_two", None, lua=body.format(m=2))
        assert a.execute([Op("custom", COUNTER, ("times_two", 5), "nat/0", 1)]) == [10]
        b = _store(dedicated_redis.url, fresh=True, namespace="run-b")
        b.register("times_three", None, lua=body.format(m=3))
        assert a.execute([Op("custom", COUNTER, ("times_two", 1), "nat/0", 2)]) == [12]
        assert b.execute([Op("custom", COUNTER, ("times_three", 1), "nat/0", 1)]) == [3]
        a.register("times_two", None, lua=body.format(m=4))        # one's own new body wins
        assert a.execute([Op("custom", COUNTER, ("times_two", 1), "nat/0", 3)]) == [16]
        assert b.execute([Op("custom", COUNTER, ("times_three", 1), "nat/0", 2)]) == [6]
    finally:
        a.close()
        if b is not None:
            b.close()


def test_a_second_run_on_a_namespace_in_use_is_refused(dedicated_redis):
    a = _store(dedicated_redis.url, fresh=True, namespace="chain")
    try:
        a.execute([Op("incr", COUNTER, (1,), "nat/0", 1)])
        with pytest.raises(StoreError, match="namespace 'chain' is in use by another run"):
            _store(dedicated_redis.url, fresh=True, namespace="chain")
        b = _store(dedicated_redis.url, fresh=True, namespace="chain2")    # another namespace is free
        b.close()
        assert a.execute([Op("get", COUNTER)]) == [1]       # the refused run cleared nothing
    finally:
        a.close()
    c = _store(dedicated_redis.url, fresh=True, namespace="chain")       # released at close
    c.close()


def test_cli_second_run_refused_one_line(dedicated_redis):
    a = _store(dedicated_redis.url, fresh=True, namespace="paper")
    try:
        code, err = _chc("run", str(CHAIN), str(LAN), "-c", "10", "-q", "--no-progress",
                         "--store", dedicated_redis.url, "--namespace", "paper")
        assert code == 2 and err.count("\n") == 1 and "in use by another run" in err, err
    finally:
        a.close()


# -- the store fails while a run goes on -----------------------------------------------------------------------------


def test_cli_unreachable_store_at_start(tmp_path):
    code, err = _chc("run", str(CHAIN), str(LAN), "-c", "10", "-q", "--no-progress",
                     "--store", f"redis://:{PASSWORD}@127.0.0.1:1")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("chc: error: redis://:***@127.0.0.1:1: connection refused"), err


def test_unreachable_store_messages_say_why(redis_urls):
    """A URL without a port, an unknown host, TLS to a plain server: each said plainly
    (they read "connection refused", "[Errno -2] Name or service not known", and a
    handshake timeout; a new-user trial)."""
    import socket

    from chc.core.client import StoreUnavailable

    with pytest.raises(StoreUnavailable, match=r"^redis://nosuchhost\.invalid:6390: no such host"):
        _store("redis://nosuchhost.invalid:6390")
    plain = "rediss://" + redis_urls[0].split("://", 1)[1]
    with pytest.raises(StoreUnavailable, match=r"is the server speaking TLS\? \(rediss:// is for TLS"):
        _store(plain, connect_timeout=0.3, timeout=0.3)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 6379)) == 0:
            return                          # (a Redis on the default port here: nothing to refuse)
    with pytest.raises(StoreUnavailable, match=r"^redis://127\.0\.0\.1: connection refused \(port 6379, the default\)"):
        _store("redis://127.0.0.1")


def _run_and(server: RedisProcess, model: str, action, *extra: str) -> tuple[int, str]:
    """``chc run`` on ``server``; ``action()`` once the run has written state (its
    namespace's seq marks exist), then wait for the run to end."""
    import redis
    args = [sys.executable, "-c", "import sys; from chc.cli import main; sys.exit(main())", "run", str(CHAIN),
            str(LAN), "-c", "30000", "--model", model, "--no-progress", "-q", "--store", server.url,
            "--namespace", "failing", *extra]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    r = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        while proc.poll() is None:
            try:
                if r.exists("failing:q"):
                    break
            except redis.exceptions.RedisError:
                pass
        r.close()
        assert proc.poll() is None, "the run ended before the store failed"
        action()
        _, err = proc.communicate(timeout=240)     # a hang guard, not a timing test
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


@pytest.mark.parametrize("model", ["EO", "EO+C+NA"])
def test_store_killed_mid_run_stops_the_run(dedicated_redis, model):
    code, err = _run_and(dedicated_redis, model, dedicated_redis.kill)
    assert code != 0
    assert "Traceback" not in err and "NF error" not in err, err
    assert err.strip().count("\n") == 0 and err.startswith(f"chc: error: {dedicated_redis.url}: "), err
    assert "unreachable" in err and "cannot continue" in err


def test_store_killed_mid_run_under_proc_is_named_not_a_hung_worker(dedicated_redis):
    """Each process retries for its budget (about 9.5 s); its heartbeats went quiet
    meanwhile, and the coordinator killed it as hung after 5 s: "@root.0 was silent for
    5.4 s ... killed", which named the wrong fault (found by a new-user trial)."""
    code, err = _run_and(dedicated_redis, "EO+C+NA", dedicated_redis.kill, "--runtime", "proc")
    assert code == 1, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert "silent" not in err and "unreachable" in err and "cannot continue" in err, err


def test_a_failed_seed_on_a_healthy_cluster_is_not_called_an_outage(redis_cluster):
    """The probe of a seed's store opened redis-cluster:// URLs as one plain server, which
    refused them, so a StoreLost seed on a healthy cluster stopped the check as an outage."""
    from types import SimpleNamespace

    from chc.checkrun import _store_gone

    _store_gone(SimpleNamespace(store=redis_cluster.url), 3, "StoreLost: redis-cluster://...: gave up")


@pytest.mark.parametrize("outage", ["kill", "flush"])
def test_a_check_whose_redis_goes_away_stops_in_one_line(dedicated_redis, tmp_path, outage):
    """A seed that failed because Redis went away (or lost its state) was reported as a
    divergence or an internal error, and --save-failures kept it as a regression (a
    new-user trial): it is no verdict on the chain."""
    import redis
    saved = tmp_path / "failures.yaml"
    args = [sys.executable, "-c", "import sys; from chc.cli import main; sys.exit(main())", "check", str(CHAIN),
            str(ROOT / "examples/scenarios/parallel.yaml"), str(LAN), "--packets", "20000", "--seeds", "3",
            "--store", dedicated_redis.url, "--save-failures", str(saved)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    r = redis.Redis(host="127.0.0.1", port=dedicated_redis.port)
    try:
        while proc.poll() is None:
            with contextlib.suppress(redis.exceptions.RedisError):
                if r.exists("chc:q"):
                    break
        assert proc.poll() is None, "the check ended before the store failed"
        if outage == "kill":
            dedicated_redis.kill()
        else:
            r.flushall()
        out, err = proc.communicate(timeout=240)      # a hang guard, not a timing test
    finally:
        r.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, (out, err)
    assert err.strip().count("\n") == 0 and "the check stops: a store outage is no verdict on the chain" in err, err
    assert ("went away during seed" if outage == "kill" else "lost seed") in err, err
    assert "DIVERGED" not in out and "ERROR" not in out and not saved.exists()


def test_store_restarted_empty_mid_run_is_noticed(dedicated_redis):
    def restart_empty():
        dedicated_redis.kill()
        shutil.rmtree(dedicated_redis.dir / "appendonlydir", ignore_errors=True)   # comes back empty
        dedicated_redis.start()
    code, err = _run_and(dedicated_redis, "EO+C+NA", restart_empty)
    assert code != 0, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert "lost this run's state" in err, err


def test_store_flushed_mid_run_is_noticed(dedicated_redis):
    import redis

    def flush():
        r = redis.Redis(host="127.0.0.1", port=dedicated_redis.port)
        r.flushall()
        r.close()
    code, err = _run_and(dedicated_redis, "EO+C+NA", flush)
    assert code != 0 and "lost this run's state" in err, err


def test_epoch_check_at_the_store(dedicated_redis):
    import redis
    s = _store(dedicated_redis.url, fresh=True, namespace="ep")
    joiner = _store(dedicated_redis.url, namespace="ep")         # another process of the same run
    try:
        assert s.execute([Op("incr", COUNTER, (1,), "nat/0", 1)]) == [1]
        r = redis.Redis(host="127.0.0.1", port=dedicated_redis.port)
        r.flushall()
        r.close()
        for st in (s, joiner):
            with pytest.raises(StoreLost, match="lost this run's state"):
                st.execute([Op("incr", COUNTER, (1,), "nat/0", 2)])
    finally:
        s.close()
        joiner.close()


def test_a_process_joining_a_run_is_not_warned_of_the_runs_own_state(redis_urls):
    """A proc runtime's scale-out or failover opens the run's namespace mid-run (not
    fresh, the lease the coordinator's): each printed "the store already holds CHC
    state ... use an empty database" (found by a new-user trial).  Someone else opening
    a namespace with state in it is still warned."""
    import warnings
    url = redis_urls[0]
    run = _store(url, fresh=True, namespace="joined")
    try:
        assert run.execute([Op("incr", COUNTER, (1,), "nat/0", 1)]) == [1]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _store(url, namespace="joined", lease=False).close()
        with pytest.warns(RuntimeWarning, match="already holds CHC state"):
            _store(url, namespace="joined").close()
    finally:
        run.close()
