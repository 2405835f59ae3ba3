"""The proc runtime: the sim's results from real processes, garbage peers, no orphans.

Every proc run here is compared with a sim run of the same chain on the same
records: state digest, packet counts per vertex, drops, alerts and the packet
log's accounting must be equal.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections import deque
from pathlib import Path

import pytest

zmq = pytest.importorskip("zmq")

from chc.backends.memory import MemoryStore  # noqa: E402
from chc.backends.redis import RedisStore  # noqa: E402
from chc.capture import open_capture  # noqa: E402
from chc.core.store import Increments, ObjectKey, Op  # noqa: E402
from chc.nf import GLOBAL, NF, Access, Value  # noqa: E402
from chc.nfs import REGISTRY  # noqa: E402
from chc.runtime.errors import ProcFailure  # noqa: E402
from chc.runtime.proc import ProcRuntime  # noqa: E402
from chc.runtime.procworker import CausalInbox  # noqa: E402
from chc.runtime.sim import SimRuntime  # noqa: E402
from chc.runtime.wire import Kind, WireError, decode, encode, endpoint, op_rows, rows_ops  # noqa: E402
from chc.spec import load_spec, parse_spec  # noqa: E402
from procpace import descendants  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAN = ROOT / "traces/pathspider/lan-2012.pcap.gz"
SCAN = ROOT / "traces/scans/nmap-syn-scan.pcap"
PAPER = ROOT / "examples/paper_chain.yaml"


def _records(path: Path, n: int | None = None) -> list[tuple[int, bytes]]:
    with open_capture(str(path)) as reader:
        return list(itertools.islice(reader, n))


@pytest.fixture(scope="module")
def mixed() -> list[tuple[int, bytes]]:
    """A port scan (drops, an alert) followed by LAN traffic through NAT and LB."""
    return _records(SCAN) + _records(LAN, 2500)


def _sim(chain, records, model="EO+C+NA"):
    rt = SimRuntime(chain, model=model, store=MemoryStore() if model != "T" else None)
    rt.run(records)
    return rt.summary()


def _proc(chain, records, model="EO+C+NA", **kw):
    rt = ProcRuntime(chain, model=model, **kw)
    rt.run(records)
    return rt, rt.summary()


def _assert_same(proc, sim) -> None:
    assert proc.runtime == "proc"
    assert proc.state_digest == sim.state_digest
    for k in ("packets_in", "packets_out", "dropped", "malformed", "non_ip", "bypassed", "nf_errors"):
        assert getattr(proc, k) == getattr(sim, k), k
    assert proc.alerts == sim.alerts
    per = ("packets_in", "packets_out", "dropped", "alerts", "instances")
    assert {n: {k: v[k] for k in per} for n, v in proc.vertices.items()} == \
        {n: {k: v[k] for k in per} for n, v in sim.vertices.items()}
    for k in ("logged", "deleted", "remaining"):
        assert proc.log[k] == sim.log[k], k
    assert proc.store["nonblocking_ops"] == sim.store["nonblocking_ops"]     # (cache hits depend on batching)


def _gone(pids) -> bool:
    return not any(os.path.exists(f"/proc/{pid}") for pid in pids)


def _helpers() -> list[str]:
    """multiprocessing's forkserver and resource tracker processes below this one, now."""
    out = []
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "multiprocessing.forkserver" in line or "multiprocessing.resource_tracker" in line:
                out.append(line[:80])
    return out


@pytest.mark.parametrize("model", ["EO+C+NA", "T"])
def test_paper_chain_matches_sim(mixed, model):
    chain = load_spec(PAPER)
    sim = _sim(chain, mixed, model)
    assert sim.alerts and sim.dropped        # the comparison covers both
    rt, proc = _proc(chain, mixed, model)
    assert not _helpers()                    # (at once: it outlived the run by up to 1.4 s)
    _assert_same(proc, sim)
    assert _gone(rt.pids.values())           # no worker outlives a run, nor the forkserver
    # ...and each ended by itself, none killed at the end: the store server's context
    # waited for a socket left open, and the coordinator killed it after 2 s every run
    assert {name: p.exitcode for name, p in rt.procs.items()} == dict.fromkeys(rt.procs, 0)


def test_one_nf_chain_matches_sim(mixed):
    chain = load_spec(ROOT / "examples/portscan.yaml")
    _, proc = _proc(chain, mixed)
    _assert_same(proc, _sim(chain, mixed))


@pytest.mark.parametrize("spec", ["paper_chain.yaml", "portscan.yaml"])
def test_redis_store_matches_sim(mixed, redis_urls, spec):
    chain = load_spec(ROOT / "examples" / spec)
    store = RedisStore(redis_urls[:1], fresh=True, namespace="proc-test")     # what chc run opens
    try:
        rt, proc = _proc(chain, mixed, store=store, store_url=redis_urls[0], namespace="proc-test")
    finally:
        store.close()
    _assert_same(proc, _sim(chain, mixed))
    assert proc.store["backend"].startswith("redis://")


# -- an instance fed by several upstreams sees the sim's (clock) order -----------------------

class _Order(NF):
    """Folds every clock it sees into one value: any other order changes the digest."""

    kind = "order-test"
    chain = Value(GLOBAL, Access.READ_WRITE, init=0)

    def process(self, pkt, ctx):
        self.chain.set(zlib.crc32(b"%d/%d" % (self.chain.get(), ctx.clock)))
        return pkt


def test_merged_input_in_clock_order(mixed, monkeypatch):
    monkeypatch.setitem(REGISTRY, "order-test", _Order)
    chain = parse_spec({"name": "merge", "vertices": {
        "a": {"nf": "pass", "parallelism": 2}, "b": {"nf": "pass", "parallelism": 2},
        "order": {"nf": "order-test"}}, "edges": ["a -> b", "b -> order"]})
    _, proc = _proc(chain, mixed)
    _assert_same(proc, _sim(chain, mixed))


def test_a_fork_is_applied_before_the_end_of_its_copy():
    # nat.0 forked clock 5 (its report through 5) and sent the copy on; portscan.0 reports
    # the copy's end, having seen nat.0's latest report through 5.  Its report arrives first.
    inbox = CausalInbox()
    assert inbox.offer("portscan.0", 5, {"nat.0": 5}, [[1, 5, 0]]) == []
    assert inbox.offer("nat.0", 5, {}, [[0, 5, 1]]) == [[[0, 5, 1]], [[1, 5, 0]]]
    assert inbox.offer("portscan.0", 6, {"nat.0": 5}, [[1, 6, 0]]) == [[[1, 6, 0]]]
    assert inbox.waited == 1 and inbox.marks == {"nat.0": 5, "portscan.0": 6}


def test_a_failovers_replayed_reports_are_dropped():
    # §5.4 nat.0 reported through 7 and died; its failover nat.0#1 replays clocks 6..8
    # one step each: the root takes only step 8.
    inbox = CausalInbox()
    assert inbox.offer("nat.0", 7, {}, [[1, 6, 0], [1, 7, 0]]) == [[[1, 6, 0], [1, 7, 0]]]
    assert inbox.offer("nat.0#1", 6, {}, [[1, 6, 0]]) == []
    assert inbox.offer("nat.0#1", 7, {}, [[1, 7, 0]]) == []
    assert inbox.offer("nat.0#1", 8, {}, [[1, 8, 0]]) == [[[1, 8, 0]]]
    assert inbox.duplicates == 2 and inbox.marks == {"nat.0": 8}


# -- garbage -------------------------------------------------------------------------------

def test_garbage_peers_are_dropped(mixed):
    chain = load_spec(PAPER)
    rt = ProcRuntime(chain, model="EO+C+NA")
    ctx = zmq.Context()

    def feed():
        for i, rec in enumerate(mixed):
            if i == 600:
                _garbage(ctx, rt.directory)
            yield rec

    try:
        rt.run(feed())
    finally:
        ctx.destroy(linger=0)
    _assert_same(rt.summary(), _sim(chain, mixed))
    assert rt.store_stats["rejected"] >= 3                   # undecodable, bad method, bad ops
    assert rt.reported["@root.0"]["rejected"] >= 1          # a stranger's report
    assert rt.reported["nat.0"]["rejected"] >= 1            # a stranger's packets
    assert rt.box.rejected >= 1                             # a stranger at the coordinator
    assert _gone(rt.pids.values())


def _garbage(ctx, directory: str) -> None:
    # Not ZeroMQ at all: ZeroMQ's handshake refuses it before the runtime sees a byte.
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(endpoint(directory, "nat.0")[len("ipc://"):])
    raw.sendall(os.urandom(200))
    raw.close()
    frames = [("@store", b"\x07not ours"),                                        # wrong version
              ("@store", encode(Kind.CALL, [5, "flushall", []])),                # not a store method
              ("@store", encode(Kind.CALL, [6, "execute", [[["get", 1, 2]]]])),  # not ops
              ("@root.0", encode(Kind.REPORT, [1, {}, [[1, 2, 3]]])),            # not a worker
              ("nat.0", encode(Kind.DATA, [0, {}, [], False])),                 # not an upstream
              ("@coordinator", b"\x01\x06\xc1")]                                 # not a worker, bad body
    for k, (name, frame) in enumerate(frames):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, b"intruder-%d" % k)
        s.setsockopt(zmq.LINGER, 1000)
        s.connect(endpoint(directory, name))
        s.send(frame)
    time.sleep(0.3)


def test_wire_round_trip_and_garbage():
    value = [(1, (2, b"x")), ObjectKey("v", "o", (b"k", 3), True), deque([1, 2]), {1, 2}, frozenset({3}),
             {(1, 2): [None, 1.5, "s"]}]
    kind, back = decode(encode(Kind.REPLY, value))
    assert kind == Kind.REPLY and back == value
    assert [type(x) for x in back] == [type(x) for x in value]
    inc = Increments()
    inc.add(7, 1, 2, 99)
    ops = [Op("incr_many", ObjectKey("nat", "total", None), (inc,), "nat/0", 3, 0, (7, 1), 0, 0),
           Op("get", ObjectKey("nat", "map", b"flow", True), (), "nat/0", 4, 0, None, 0, None)]
    again = rows_ops(decode(encode(Kind.CALL, op_rows(ops)))[1])
    assert again[1] == ops[1]
    assert again[0].args[0].tags == [(7, 1)] and again[0].tag == (7, 1)
    for bad in [b"", b"\x01", b"\x02\x01\x90", b"\x01\x63\x90", b"\x01\x01\xc1\xc1", b"\x01\x03\xd4\x63\x00"]:
        with pytest.raises(WireError):
            decode(bad)
    with pytest.raises(WireError):
        rows_ops([["get", "v", "o"]])
    with pytest.raises(TypeError):
        encode(Kind.REPLY, object())


# -- processes that die ------------------------------------------------------------------------

def test_a_worker_that_dies_fails_the_run_and_leaves_nothing(mixed):
    rt = ProcRuntime(load_spec(PAPER), model="EO+C+NA")

    def feed():
        for i, rec in enumerate(itertools.cycle(mixed)):
            if i == 800:
                os.kill(rt.pids["portscan.0"], signal.SIGKILL)
            yield rec

    with pytest.raises(ProcFailure, match=r"portscan\.0 .* killed by signal 9"):
        rt.run(feed())
    assert not _helpers()
    assert _gone(rt.pids.values())
    assert not os.path.exists(rt.directory)


def _start_cli(tmp_path, *extra) -> tuple[subprocess.Popen, set[int]]:
    """``chc run --runtime proc`` on the whole LAN capture, once its workers run (its
    output into files: a pipe is held by the forkserver too, and reading it to the end
    waited for the forkserver's end)."""
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "chc.cli", "run", "--runtime", "proc", str(PAPER), str(LAN),
                                 "--no-progress", *extra], stdout=out, stderr=err, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = descendants(proc.pid)
        if len(workers) >= 8:               # resource tracker, forkserver, store server, root, 4 instances
            time.sleep(0.5)
            return proc, descendants(proc.pid)
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the proc run's workers did not start")


def _ended(proc: subprocess.Popen, tmp_path) -> tuple[str, str]:
    """Wait for the ``chc run`` of :func:`_start_cli`: its standard output and error."""
    proc.wait(timeout=60)
    return (tmp_path / "out").read_text(), (tmp_path / "err").read_text()


def _wait_gone(pids: set[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pids):
            return True
        time.sleep(0.05)
    return False


def test_each_worker_process_is_named_for_ps(tmp_path):
    """Every worker's command line is the forkserver's: a user who wanted to kill nat.0 from
    outside (to try --failover) could not tell the processes apart (a new-user trial)."""
    proc, pids = _start_cli(tmp_path)
    try:
        names = set()
        for pid in pids:
            with contextlib.suppress(OSError):
                names.add(Path(f"/proc/{pid}/comm").read_text().strip())
        assert {"@store", "@root.0", "nat.0", "portscan.0", "lb.0", "trojan.0"} <= names, names
    finally:
        proc.kill()
        proc.wait()
    assert _wait_gone(pids)


def test_cli_worker_killed_exit_1_one_line(tmp_path):
    proc, pids = _start_cli(tmp_path)
    forkserver = min(pids)
    os.kill(max(pids - {forkserver}), signal.SIGKILL)       # a worker (the last one started)
    out, err = _ended(proc, tmp_path)
    left = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]     # (at once: no process outlives it)
    assert proc.returncode == 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("chc: error: proc runtime: ") and "killed by signal 9" in lines[0]
    assert not left, left


def test_cli_sigterm_drains_and_reports(tmp_path):
    proc, pids = _start_cli(tmp_path, "--summary-json", "s.json")
    proc.send_signal(signal.SIGTERM)
    out, err = _ended(proc, tmp_path)
    left = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]     # (at once, as Ctrl-C's drain)
    assert proc.returncode == 130, err
    assert not left, left
    assert "PARTIAL: interrupted" in out and "state digest" in out
    import json
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["partial"] and summary["runtime"] == "proc"
    assert summary["log"]["remaining"] == 0 and summary["packets_in"] > 0


def test_cli_coordinator_killed_workers_exit(tmp_path):
    proc, pids = _start_cli(tmp_path)
    proc.kill()                                              # SIGKILL: no cleanup of its own
    proc.wait(timeout=10)
    assert _wait_gone(pids), "workers outlived their coordinator"


# -- what proc does not do yet: one line, exit 2 ----------------------------------------------

@pytest.mark.parametrize("argv, says", [
    (["run", "--runtime", "proc", "examples/autoscale.yaml", str(SCAN), "--model", "T"], "model T has none"),
    (["run", "--runtime", "proc", str(PAPER), str(SCAN), "--delay", "nat=const:5"], "--delay"),
    (["check", "--runtime", "proc", str(PAPER), "examples/scenarios/crash.yaml", str(SCAN)], "events"),
])
def test_not_yet_in_proc(argv, says, capsys, monkeypatch):
    from chc.cli import main
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]


def test_a_module_in_the_working_directory_named_like_the_standard_librarys_is_harmless(tmp_path):
    """The forkserver is ``python -c``, which put the working directory first on sys.path:
    a queue.py there was imported for the standard library's and the store server died
    (a new user's trial).  Run as a user runs it: the console script, from that directory."""
    (tmp_path / "queue.py").write_text("raise SystemExit('the working directory was imported from')\n")
    chc = Path(sys.executable).parent / "chc"
    if not chc.exists():
        pytest.skip("no chc console script beside this interpreter")
    r = subprocess.run([str(chc), "run", str(ROOT / "examples/paper_chain.yaml"), str(LAN), "-c", "300",
                        "--runtime", "proc", "--no-progress"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "state digest" in r.stdout


ENV_NF = '''
import os
from chc.nf import NF, GLOBAL, Access, Value

class EnvNF(NF):
    kind = "envnf"
    seen = Value(GLOBAL, Access.READ_WRITE)

    def process(self, pkt, ctx):
        if self.seen.get() is None:
            self.seen.set(os.environ.get("PYTHONSAFEPATH", "unset"))
        return pkt
'''


def test_the_workers_environment_is_the_users(tmp_path):
    """chc sets PYTHONSAFEPATH for the forkserver's start only: the workers (and what an
    NF starts) see the user's environment (a review found it leaked into every worker)."""
    (tmp_path / "envnf_mine.py").write_text(ENV_NF)
    (tmp_path / "chain.yaml").write_text("name: env\nvertices:\n  e: {nf: envnf_mine.py:EnvNF}\nedges: []\n")
    chc = Path(sys.executable).parent / "chc"
    if not chc.exists():
        pytest.skip("no chc console script beside this interpreter")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    for given, seen in ((None, "unset"), ("x", "x")):
        out = tmp_path / f"state-{seen}.json"
        r = subprocess.run([str(chc), "run", str(tmp_path / "chain.yaml"), str(LAN), "-c", "50", "--runtime", "proc",
                            "--no-progress", "-q", "--state-json", str(out)], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120, env=env if given is None else {**env, "PYTHONSAFEPATH": given})
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(out.read_text())["e"]["seen"] == [[None, seen]]
