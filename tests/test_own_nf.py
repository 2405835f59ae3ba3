"""An operator's own NF, named in a chain spec (``nf: FILE.py:Class`` beside the spec,
or ``nf: module:Class``), runs on the sim and on the proc runtime, whose workers
import it again; mistakes in naming it are one line."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from chc.cli import main

ROOT = Path(__file__).resolve().parent.parent
LAN = str(ROOT / "traces/pathspider/lan-2012.pcap.gz")

HEAVY = textwrap.dedent('''
    import dataclasses
    from chc.nf import NF, SRC_IP, GLOBAL, Access, Counter
    from chc.packet import ip_str

    @dataclasses.dataclass
    class Config:
        limit: int = 100

    class HeavyHitter(NF):
        kind = "heavy"
        Config = Config

        packets = Counter(GLOBAL, Access.WRITE_MOSTLY, doc="all packets seen")
        per_host = Counter(SRC_IP, Access.READ_WRITE, doc="packets per source host")

        def process(self, pkt, ctx):
            self.packets.incr()
            n = self.per_host.incr(1, pkt.src)
            if n == self.config.limit:
                ctx.alert("heavy-hitter", ip_str(pkt.src), packets=n)
            return pkt
''')


@pytest.fixture(autouse=True)
def _forget_own_modules(tmp_path_factory):
    """Each test's NF files are modules imported by name from its own directory: the next
    test's file of that name is another file, which chc refuses (rightly) while the first
    is imported or its directory is on ``sys.path``."""
    import sys
    path = list(sys.path)
    yield
    sys.path[:] = path
    base = str(tmp_path_factory.getbasetemp())
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(base):
            del sys.modules[name]


def _spec(home: Path, nf: str, config: str = "{limit: 50}") -> Path:
    spec = home / "chain.yaml"
    spec.write_text(textwrap.dedent(f'''
        name: own
        vertices:
          heavy: {{nf: "{nf}", config: {config}}}
          nat:
            nf: nat
            config: {{external_ip: 198.51.100.7, internal: [10.64.0.0/16], port_range: [20000, 59999]}}
        edges:
          - heavy -> nat
    '''))
    return spec


def _run(spec: Path, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"s{len(list(tmp_path.glob('s*.json')))}.json"
    assert main(["run", str(spec), LAN, "-c", "3000", "--no-progress", "-q", "--model", "EO+C+NA",
                 "--summary-json", str(out), *extra]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("ref", ["heavy_mine.py:HeavyHitter", "heavy_mine:HeavyHitter"])
def test_an_nf_of_ones_own_beside_the_spec_runs_on_sim_and_proc(tmp_path, ref):
    home = tmp_path / "mine"
    home.mkdir()
    (home / "heavy_mine.py").write_text(HEAVY)
    spec = _spec(home, ref)
    sim = _run(spec, tmp_path)
    proc = _run(spec, tmp_path, "--runtime", "proc")
    assert sim["vertices"]["heavy"]["nf"] == "heavy" and sim["alerts"]
    for key in ("state_digest", "packets_in", "packets_out", "alerts"):
        assert proc[key] == sim[key], key


HOST_OP = textwrap.dedent('''
    import dataclasses
    from chc.nf import NF, SRC_IP, FLOW, Access, Value, value_op
    from chc.packet import ip_str

    @value_op("host_add_mine", lua="local p, b = 0, 0\\nif value then p, b = value[1], value[2] end\\n"
                                    "return {p + 1, b + args[1]}, p + 1")
    def host_add(value, size):
        p, b = value if value is not None else (0, 0)
        return (p + 1, b + size), p + 1

    @dataclasses.dataclass
    class Config:
        limit: int = 100

    class HostOp(NF):
        kind = "hostop"
        Config = Config
        host = Value(SRC_IP, Access.READ_WRITE, doc="(packets, bytes) per source host")

        @classmethod
        def partition_scope(cls):
            return FLOW

        def process(self, pkt, ctx):
            if self.host.apply("host_add_mine", len(pkt.data), key=pkt.src) == self.config.limit:
                ctx.alert("host-packets", ip_str(pkt.src))
            return pkt
''')


@pytest.mark.parametrize("store", ["", "redis"])
def test_an_own_value_operation_runs_in_the_proc_runtimes_store_server(tmp_path, request, store):
    """§4.3 custom operations: the store server (a process of its own) imports the chain's
    NF modules, or it knew none of their value operations and refused every one."""
    (tmp_path / "hostop_mine.py").write_text(HOST_OP)
    spec = _spec(tmp_path, "hostop_mine.py:HostOp")
    where = ("--store", request.getfixturevalue("redis_urls")[0]) if store else ()
    sim = _run(spec, tmp_path)
    proc = _run(spec, tmp_path, "--runtime", "proc", *where)
    assert sim["alerts"] and not sim["nf_errors"] and sim["vertices"]["heavy"]["nf"] == "hostop"
    for key in ("state_digest", "packets_in", "packets_out", "alerts"):
        assert proc[key] == sim[key], key


HOSTS_AND_FLOWS = textwrap.dedent('''
    import dataclasses
    from chc.nf import NF, SRC_IP, FLOW, Access, Counter, Value

    @dataclasses.dataclass
    class Config:
        limit: int = 100

    class HostsAndFlows(NF):
        kind = "hostsflows"
        Config = Config
        per_host = Counter(SRC_IP, Access.READ_WRITE, doc="packets per source host")
        first_seen = Value(FLOW, Access.READ_WRITE, doc="the connection's first packet time")
        packets = Counter(FLOW, Access.READ_WRITE, doc="the connection's packets")

        def process(self, pkt, ctx):
            self.per_host.incr(1, pkt.src)
            key = FLOW.key(pkt)
            if self.first_seen.get(key) is None:
                self.first_seen.set(pkt.ts, key)
            self.packets.incr(1, key)
            return pkt
''')


def test_per_host_and_per_flow_state_partition_on_the_flow(tmp_path):
    """§4.1: the default partition scope keeps each per-flow object on one instance.  It
    was the coarsest declared scope, source IP here, which sends a connection's two
    directions to two instances: their per-flow state went wrong without an error (sim),
    or stopped the run with an OwnershipError (proc; a new user's trial)."""
    from chc.nf import FLOW, SRC_IP
    from chc.nfs.portscan import HOST_PAIR, PortScanDetector
    from chc.nfs.trojan import TrojanDetector

    (tmp_path / "hostsflows_mine.py").write_text(HOSTS_AND_FLOWS)
    spec = _spec(tmp_path, "hostsflows_mine.py:HostsAndFlows")
    from chc.spec import load_spec
    assert load_spec(str(spec)).vertices["heavy"].nf.partition_scope() is FLOW
    assert TrojanDetector.partition_scope() is SRC_IP          # no per-flow state: per host still
    assert PortScanDetector.partition_scope() is HOST_PAIR     # its own choice, which joins flows
    from chc.nf import NF, Access, Scope, Value

    pair = Scope("mine", 1, True, lambda p: (p.src, p.dst), lambda p: p.src + p.dst)   # per-flow, directional

    class OwnPerFlow(NF):
        one = Value(SRC_IP, Access.READ_WRITE)
        two = Value(pair, Access.READ_WRITE)

    assert OwnPerFlow.partition_scope() is pair        # keeps its own per-flow objects together
    states = {}
    for label, extra in (("one", ()), ("three", ("--parallelism", "3")), ("proc", ("--runtime", "proc",
                                                                              "--parallelism", "2"))):
        out = tmp_path / f"{label}.json"
        _run(spec, tmp_path, "--state-json", str(out), *extra)
        states[label] = json.loads(out.read_text())["heavy"]
    assert states["one"]["first_seen"] and states["one"]["packets"]
    assert states["three"] == states["one"] and states["proc"] == states["one"]


OBJECT_IN_STATE = textwrap.dedent('''
    from chc.nf import NF, SRC_IP, Access, Value

    class Seen:
        pass

    class KeepsObjects(NF):
        kind = "keepsobjects"
        last = Value(SRC_IP, Access.READ_WRITE, doc="an object per host")

        def process(self, pkt, ctx):
            self.last.set((1, Seen()), pkt.src)
            return pkt
''')


def test_an_nf_without_a_kind_is_named_by_its_class():
    from chc.nf import NF

    class Unnamed(NF):
        pass

    class Named(Unnamed):
        kind = "named"

    class Child(Named):
        pass

    class Mine(Unnamed):
        pass

    assert (Unnamed.kind, Named.kind, Child.kind, Mine.kind) == ("Unnamed", "named", "named", "Mine")


def test_a_state_value_chc_cannot_store_is_one_line_naming_it(tmp_path, capsys):
    """It was a traceback from json at the very end (the state digest), no summary."""
    (tmp_path / "objects_mine.py").write_text(OBJECT_IN_STATE)
    spec = _spec(tmp_path, "objects_mine.py:KeepsObjects", "{}")
    rc = main(["run", str(spec), LAN, "-c", "300", "--no-progress", "-q",
               "--summary-json", str(tmp_path / "s.json"), "--state-json", str(tmp_path / "state.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0, err
    assert err.startswith("chc: error: heavy.last[") and "holds a Seen inside its tuple" in err, err
    assert "None, bool, int" in err
    # The rest of the run's summary stands (a long chc serve lost it): written, with the reason.
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["packets_in"] > 0 and summary["state_digest"] == "" and "holds a Seen" in summary["state_error"]
    assert not (tmp_path / "state.json").exists()


SET_IN_STATE = textwrap.dedent('''
    from chc.nf import NF, SRC_IP, Access, Value

    class KeepsSets(NF):
        kind = "keepssets"
        ports = Value(SRC_IP, Access.READ_WRITE, doc="a set per host")

        def process(self, pkt, ctx):
            self.ports.set(frozenset([pkt.dport]), pkt.src)
            return pkt
''')


@pytest.mark.parametrize("model", ["EO", "EO+C+NA"])
def test_a_value_the_redis_store_cannot_hold_keeps_the_summary(tmp_path, capsys, redis_urls, model):
    """On Redis a set (or an object) in state was ``chc: error: the redis store cannot hold
    value ...`` from the batch's non-blocking flush in EO+C+NA, with no summary at all (and
    in EO an NF error per packet, every packet left in the root's log, exit 0).  As the
    memory store's digest does: the run goes on, the summary is printed and written with
    state_error naming the value, then one line, exit 2; the refused updates are NF errors
    whose packets complete."""
    (tmp_path / "sets_mine.py").write_text(SET_IN_STATE)
    spec = _spec(tmp_path, "sets_mine.py:KeepsSets", "{}")
    rc = main(["run", str(spec), LAN, "-c", "300", "--no-progress", "--model", model, "--store", redis_urls[0],
               "--summary-json", str(tmp_path / "s.json"), "--state-json", str(tmp_path / "state.json")])
    out, err = capsys.readouterr()
    assert rc == 2 and err.strip().count("\n") == 0, err
    assert err.startswith("chc: error: heavy.ports['10.64.") and "holds a frozenset (frozenset({" in err, err
    assert "which the redis store cannot hold" in err and "docs/nf-api.md" in err
    assert "chain 'own'" in out and "state digest unavailable" in out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["packets_in"] == 300 and summary["state_digest"] == ""
    assert summary["state_error"] == err.strip()[len("chc: error: "):]
    assert summary["nf_errors"] == 300 and "UnstorableValue" in summary["errors"][0]
    assert summary["log"]["remaining"] == 0 and summary["log"]["deleted"] == 300
    assert not (tmp_path / "state.json").exists()


REFUSED_UPDATES = textwrap.dedent('''
    from chc.nf import NF, SRC_IP, Access, Counter

    class Refused(NF):
        kind = "refused"
        tally = Counter(SRC_IP, Access.WRITE_MOSTLY, doc="made a word, then incremented")
        seen = Counter(SRC_IP, Access.READ_WRITE, doc="made a word, then incremented")

        def process(self, pkt, ctx):
            self.tally.set("many", pkt.src)
            self.tally.incr(1, pkt.src)         # refused by the store (write-mostly: not waited for)
            if pkt.index % 2:
                self.seen.set("many", pkt.src)
                self.seen.incr(1, pkt.src)      # waited for: raises in process (or in the cache)
            return pkt
''')


@pytest.mark.parametrize("model", ["EO", "EO+C", "EO+C+NA"])
@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_updates_the_store_refuses_let_their_packets_complete(tmp_path, capsys, request, model, backend):
    """§5.4: an update the store refuses never commits; its packet stayed in the root's
    log for good (EO, EO+C), or the refusal stopped the run with no summary (EO+C+NA,
    sent in the batch's flush).  Each refusal is an NF error and every packet completes,
    on both stores alike; the run goes on, exit 0 (as an NF exception).  Where the
    client waits for the update (EO, EO+C) its refusal raises in process, which drops the
    packet as the logical chain's NF does; in EO+C+NA the packet went on before it."""
    store = request.getfixturevalue("redis_urls")[0] if backend == "redis" else "memory"
    (tmp_path / "refused_mine.py").write_text(REFUSED_UPDATES)
    spec = _spec(tmp_path, "refused_mine.py:Refused", "{}")
    rc = main(["run", str(spec), LAN, "-c", "300", "--no-progress", "-q", "--model", model, "--store", store,
               "--summary-json", str(tmp_path / "s.json")])
    assert rc == 0, capsys.readouterr().err
    refused_updates_completed(json.loads((tmp_path / "s.json").read_text()), model)


def refused_updates_completed(summary: dict, model: str) -> None:
    """What a run of REFUSED_UPDATES over 300 packets ends with, on any store and runtime:
    every packet completes; the refusals are NF errors."""
    assert summary["log"]["remaining"] == 0 and summary["log"]["deleted"] == 300
    if model == "EO+C+NA":
        # every packet's tally increment refused after it went on (counted); every other
        # packet's seen increment raised in process (dropped, by the cache)
        assert summary["nf_errors"] == 450 and summary["packets_out"] == 150, summary["errors"]
    else:
        # every packet's tally increment refused, raised in process: dropped
        assert summary["nf_errors"] == 300 and summary["packets_out"] == 0, summary["errors"]
        assert "incr on a non-number value" in summary["errors"][0]
    assert summary["state_error"] is None and summary["state_digest"]


@pytest.mark.parametrize("ref, says", [
    ("heavy", "unknown NF 'heavy' (known: lb, nat, pass, portscan, trojan; or your own: "
              "module:Class or path/to/file.py:Class)"),
    ("nowhere.py:HeavyHitter", "nowhere.py: no such file"),
    ("no_such_module_here:HeavyHitter", "cannot import 'no_such_module_here' (ModuleNotFoundError"),
    ("heavy_mine.py:Heavy", "module 'heavy_mine' has no 'Heavy'"),
    ("heavy_mine.py:Config", "heavy_mine.py:Config is not an NF class (a subclass of chc.nf.NF)"),
    ("broken_mine.py:X", "cannot import 'broken_mine' (ZeroDivisionError: division by zero)"),
    # imported by its name: a module of Python's of that name won (found by a review)
    ("trace.py:HeavyHitter", "trace.py: the module name 'trace' is taken by "),
])
def test_naming_ones_own_nf_wrongly_is_one_line(tmp_path, capsys, ref, says):
    (tmp_path / "heavy_mine.py").write_text(HEAVY)
    (tmp_path / "trace.py").write_text(HEAVY)
    (tmp_path / "broken_mine.py").write_text("1 / 0\n")
    assert main(["run", str(_spec(tmp_path, ref)), LAN, "-c", "10", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and "vertices.heavy.nf" in err, err


@pytest.mark.parametrize("value, says", [
    ("abc", "expected an integer, got 'abc'"), ("3.5", "expected an integer, got 3.5"),
    ("true", "expected an integer, got True"),
])
def test_a_config_value_of_the_wrong_type_is_one_line(tmp_path, capsys, value, says):
    """``limit: int`` took ``abc`` (no alert ever) and ``true`` (an alert at the first
    packet): chain-spec.md says bad values are errors (found by a new-user trial)."""
    (tmp_path / "heavy_mine.py").write_text(HEAVY)
    spec = _spec(tmp_path, "heavy_mine.py:HeavyHitter")
    spec.write_text(spec.read_text().replace("limit: 50", f"limit: {value}"))
    assert main(["run", str(spec), LAN, "-c", "10", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith(f"vertices.heavy.config.limit: {says}"), err


BAD_RETURNS = textwrap.dedent('''
    from chc.nf import NF

    class ReturnsTrue(NF):
        kind = "true"
        def process(self, pkt, ctx):
            return True

    class ReturnsData(NF):
        kind = "data"
        def process(self, pkt, ctx):
            return pkt.data

    class ReturnsNoneInAList(NF):
        kind = "listed"
        def process(self, pkt, ctx):
            return [pkt, None]
''')


@pytest.mark.parametrize("cls, says", [
    ("ReturnsTrue", "process() returned bool True: expected the packet, None, or a list or tuple of packets"),
    ("ReturnsData", "process() returned bytes b"),
    ("ReturnsNoneInAList", "process() returned list [<Packet"),
])
@pytest.mark.parametrize("runtime", ["sim", "proc"])
def test_a_wrong_return_from_process_is_a_counted_nf_error(tmp_path, capfd, cls, says, runtime):
    """As an exception in ``process`` is: the packet dropped and counted, the run goes
    on; it ended the run with a traceback (found by a new-user trial)."""
    (tmp_path / "bad_returns.py").write_text(BAD_RETURNS)
    s = _run(_spec(tmp_path, f"bad_returns.py:{cls}", config="{}"), tmp_path, "--runtime", runtime)
    heavy = s["vertices"]["heavy"]
    assert heavy["nf_errors"] == heavy["packets_in"] == s["packets_in"] - s["non_ip"] - s["malformed"]
    assert heavy["packets_out"] == 0 and says in s["errors"][0], s["errors"]
    if runtime == "proc":       # (a worker's warning read bare, not as the command's; pytest takes the sim's)
        assert "chc: WARNING: NF error (packet dropped): heavy[0] packet #" in capfd.readouterr().err


@pytest.mark.parametrize("cls", ["ReturnsTrue", "ReturnsData", "ReturnsNoneInAList"])
def test_chc_check_judges_an_nf_that_returns_the_wrong_thing(tmp_path, capsys, cls):
    """The checker's reference counts a wrong return as the physical instance does (an NF
    error, the packet dropped): it stopped every seed with an internal TypeError ('bool'
    object is not iterable), so such an NF could not be checked at all (a new user's trial)."""
    (tmp_path / "bad_returns.py").write_text(BAD_RETURNS)
    plain = tmp_path / "plain.yaml"
    plain.write_text("events: []\n")
    rc = main(["check", str(_spec(tmp_path, f"bad_returns.py:{cls}", config="{}")), str(plain), LAN,
               "--packets", "300", "--seeds", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "2 of 2 seeds passed" in out and "internal error" not in out, out


MANY_ERRORS = textwrap.dedent('''
    from chc.nf import NF

    class Erring(NF):
        kind = "erring"
        def process(self, pkt, ctx):
            if pkt.sport % 5 == 0:
                raise KeyError(pkt.dport)          # line 8
            if pkt.sport % 7 == 0:
                return 7                           # a wrong return
            if pkt.sport % 2:
                return (pkt,)                      # a tuple: forwarded, as a list is
            return pkt
''')


def test_chc_check_lists_every_kind_of_nf_error_and_takes_a_tuple(tmp_path, capsys):
    """chc check showed only the first NF error (a log line per instance); a tuple
    returned by process is taken by the instances and the reference alike."""
    (tmp_path / "many_errors.py").write_text(MANY_ERRORS)
    plain = tmp_path / "plain.yaml"
    plain.write_text("parallelism: 2\n")
    spec = _spec(tmp_path, "many_errors.py:Erring", config="{}")
    rc = main(["check", str(spec), str(plain), LAN, "--packets", "600", "--seeds", "2",
               "--json", str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "2 of 2 seeds passed" in out and "NF errors in 2 of 2 seeds" in out, out
    seed = json.loads((tmp_path / "c.json").read_text())["results"][0]
    errors = seed["nf_errors"]
    kinds = {(k["error"], k["at"]): k["count"] for k in errors["kinds"]}
    assert set(kinds) == {("KeyError", "many_errors.py:8"), ("TypeError", "")}, kinds
    assert errors["physical"] == errors["logical"] == sum(kinds.values())
    assert all(n > 1 for n in kinds.values()), kinds           # more than the first of each
    lines = out.split("seed 1:")[0]
    assert f"NF errors: {errors['logical']} in both runs" in lines, lines
    assert f"{kinds[('KeyError', 'many_errors.py:8')]} x KeyError at many_errors.py:8, first: heavy packet #" in lines
    assert "x TypeError, first: heavy packet #" in lines and "process() returned int 7" in lines
    assert "tuple" not in " ".join(k["first"] for k in errors["kinds"] if k["error"] == "KeyError")


@pytest.mark.parametrize("detail, says", [
    ({"what": {1, 2}}, "what=set {1, 2} is not plain data"),
    ({"what": b"ab"}, "what=bytes b'ab' is not plain data"),
    ({"nested": {"k": [1, object]}}, "nested=dict"),
])
def test_an_alert_with_a_detail_the_summary_cannot_hold_is_the_nfs_error(detail, says):
    """ctx.alert takes plain data (it goes into the summary's JSON and over the proc wire):
    a set, bytes or an object ended the run at the summary with json's traceback; now the
    NF's own error at the alert, one line, the run goes on."""
    from chc.nf import Context

    ctx = Context("v", 0)
    ctx.alert("fine", "10.0.0.1", n=1, ratio=0.5, hosts=["a", "b"], pair=(1, "x"), more={"k": None})
    with pytest.raises(TypeError, match=re.escape(says)):
        ctx.alert("bad", "10.0.0.1", **detail)
    with pytest.raises(TypeError, match="the host is bytes"):
        ctx.alert("bad", b"\x0a\x00\x00\x01")
    assert [a.kind for a in ctx.alerts] == ["fine"]


NEW_PACKET = textwrap.dedent('''
    from chc.nf import NF
    from chc.packet import Packet

    class Rebuilds(NF):
        """Returns a new packet of the same bytes, alone (not in a list)."""
        kind = "rebuilds"
        def process(self, pkt, ctx):
            return Packet(bytes(pkt.data), pkt.ts)
''')


@pytest.mark.parametrize("runtime", ["sim", "proc"])
def test_a_new_packet_returned_alone_carries_its_inputs_clock(tmp_path, capsys, runtime):
    """A new packet returned by itself took the clock of a fresh Packet (its index, 0)
    where one in a list took its input's: its end reached the root under another
    packet's clock, and the packet log never emptied (the reference set it; a helper's
    reading of the two found it)."""
    (tmp_path / "rebuilds.py").write_text(NEW_PACKET)
    s = _run(_spec(tmp_path, "rebuilds.py:Rebuilds", config="{}"), tmp_path, "--runtime", runtime)
    assert s["log"]["remaining"] == 0 and s["log"]["deleted"] == s["log"]["logged"] > 0, s["log"]
    assert s["vertices"]["heavy"]["nf_errors"] == 0
