"""The COE oracle's independent half (chc.reference): the store's serialization
re-executed, and the logical chain interpreted without the physical machinery.

Fidelity: on every bundled chain and capture, and on small chains for the cases
the examples lack (taps on both sides, several successors, traffic classes,
two roots, NFs that return lists, raise or arm timers), the interpreter gives
exactly the outputs, alerts, final state and counts of the physical runtime's
own logical run (``chc.coe.reference_run``, model T, one instance per vertex).
"""

from __future__ import annotations

import ast
import glob
import itertools
import subprocess
import sys
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chc.capture import open_capture
from chc.coe import RunResult, reference_run
from chc.nf import FLOW, GLOBAL, NF, SRC_IP, Access, Context, Counter, List, Value
from chc.nfs import REGISTRY
from chc.packet import Packet, ip_bytes, ip_str
from chc.reference import (
    LogicalRun,
    Refused,
    StoreStep,
    logical_run,
    replay,
)
from chc.runtime.sim import SimRuntime
from chc.spec import Chain, load_spec, parse_spec
from chc.summary import canonical
from chc.trace.trojan import plant_trojans
from frames import SYN, arp, tcp

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "src/chc/reference.py"
LAN = ROOT / "traces/pathspider/lan-2012.pcap.gz"
GARBAGE = ROOT / "traces/pathspider/random-garbage.pcap"
EXAMPLES = sorted(ROOT.glob("examples/*.yaml"))


# -- independence --------------------------------------------------------------------------

FORBIDDEN = ("chc.core", "chc.runtime", "chc.backends", "chc.coe")
ALLOWED = {"chc.nf", "chc.packet", "chc.spec", "chc.summary"}


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative ones resolved in chc)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = "chc" + ("." + base if base else "")
            names.add(base)
            if base == "chc":          # from . import x: x is a module of chc
                names.update(f"chc.{a.name}" for a in node.names)
    return names


def test_reference_imports_only_the_nf_api_packets_specs_and_summary():
    imported = _imports(MODULE)
    ours = {n for n in imported if n == "chc" or n.startswith("chc.")}
    assert ours, "the import scan found no chc import at all"
    assert ours <= ALLOWED, sorted(ours - ALLOWED)
    assert not [n for n in imported if n.startswith(FORBIDDEN)]


def test_importing_reference_loads_no_physical_machinery():
    code = "import sys, chc.reference; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "chc.reference" in loaded
    assert not [m for m in loaded if m.startswith(FORBIDDEN)]


# -- fidelity ------------------------------------------------------------------------------------


def _slice(path: Path, n: int) -> list[tuple[int, bytes]]:
    return list(itertools.islice(open_capture(path), n))


@pytest.fixture(scope="module")
def lan() -> list[tuple[int, bytes]]:
    return _slice(LAN, 3000)


@pytest.fixture(scope="module")
def zeek() -> list[tuple[int, bytes]]:
    # The captures one after the other: timestamps jump back and forth, which
    # timers must take as the physical runtime does.
    return [r for f in sorted(glob.glob(str(ROOT / "traces/zeek/*.pcap"))) for r in open_capture(f)]


@pytest.fixture(scope="module")
def trojans(tmp_path_factory) -> list[tuple[int, bytes]]:
    path = tmp_path_factory.mktemp("ref") / "r4.pcap"
    truth = plant_trojans(LAN, path, count=3, gap=20)
    last = max(i["last_index"] for i in truth["instances"]) + 50
    return _slice(path, last)


def _physical_logical(chain: Chain, records: list[tuple[int, bytes]], batch_size: int) -> RunResult:
    """The physical runtime's logical chain (model T, one instance per vertex) at a
    given batch size, collected as chc.coe collects it."""
    rt = SimRuntime(chain.with_parallelism(1), model="T", batch_size=batch_size)
    out: list[tuple[int, bytes]] = []
    rt.run(records, emit=lambda pkts: out.extend((p.clock, bytes(p.data)) for p in pkts))
    s = rt.summary()
    alerts = sorted((a["vertex"], a["kind"], a["host"], a["clock"]) for a in s.alerts)
    return RunResult(out, alerts, canonical(rt.logical_state()), s)


def _today(chain: Chain, records: list[tuple[int, bytes]]) -> RunResult:
    """The physical runtime's logical run, as ``chc.coe.reference_run`` makes it with
    an empty oracle (tested below), kept apart from it so that this baseline
    outlives the move of the checker onto chc.reference."""
    # With several roots the physical runtime processes a batch root by root (clock
    # order), so its logical run depends on the batch size; one packet per batch is
    # input order, the logical chain's.
    return _physical_logical(chain, records, batch_size=1 if chain.roots > 1 else 256)


def test_the_baseline_is_todays_reference_run(lan):
    chain = load_spec(ROOT / "examples/paper_chain.yaml")
    ours, theirs = _today(chain, lan), reference_run(chain, lan)
    assert (ours.outputs, ours.alerts, ours.state) == (theirs.outputs, theirs.alerts, theirs.state)


def _counts(r: LogicalRun | RunResult) -> tuple[int, ...]:
    s = r.summary if isinstance(r, RunResult) else r
    return (s.packets_in, s.malformed, s.non_ip, s.bypassed, s.dropped, s.nf_errors)


def assert_same_as_today(chain: Chain, records: list[tuple[int, bytes]]) -> LogicalRun:
    ref = _today(chain, records)
    mine = logical_run(chain, records)
    assert mine.outputs == ref.outputs
    assert mine.alerts == ref.alerts
    assert mine.state == ref.state
    assert _counts(mine) == _counts(ref)
    assert mine.notes == []
    return mine


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_examples_on_the_lan_capture(spec, lan):
    assert_same_as_today(load_spec(spec), lan)


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_examples_on_the_zeek_captures(spec, zeek):
    assert_same_as_today(load_spec(spec), zeek)


@pytest.mark.parametrize("name", ["r4_chain", "trojan", "paper_chain"])
def test_planted_trojans_raise_the_same_alerts(name, trojans):
    run = assert_same_as_today(load_spec(ROOT / f"examples/{name}.yaml"), trojans)
    assert [a for a in run.alerts if a[1] == "trojan"]


def test_scan_alerts_and_blocking(zeek):
    scan = list(open_capture(ROOT / "traces/scans/nmap-syn-scan.pcap"))
    run = assert_same_as_today(load_spec(ROOT / "examples/paper_chain.yaml"), scan + zeek[:500])
    assert [a for a in run.alerts if a[1] == "portscan"]
    assert run.dropped > 0


@pytest.mark.parametrize("roots", [1, 2])
@pytest.mark.parametrize("policies", [{"malformed": "pass", "non_ip": "drop"},
                                      {"malformed": "drop", "non_ip": "pass"}])
def test_screening_policies_on_bad_frames(policies, roots, lan):
    chain = load_spec(ROOT / "examples/paper_chain.yaml")
    chain.policies = dict(policies)
    chain.roots = roots
    # Random non-IP frames, and frames cut short (in the IP or in the TCP header).
    cut = [(ts, d[:30 + i % 20]) for i, (ts, d) in enumerate(lan[1500:2000])]
    bad = _slice(GARBAGE, 500) + cut
    records = [r for pair in zip(bad, lan[:1000], strict=True) for r in pair]
    run = assert_same_as_today(chain, records)
    assert run.malformed and run.non_ip and run.bypassed and run.dropped


@pytest.mark.parametrize("name", ["paper_chain", "r4_chain", "portscan"])
def test_two_roots(name, lan, zeek):
    chain = load_spec(ROOT / f"examples/{name}.yaml")
    chain.roots = 2
    records = lan[:1500] + zeek[:1500]
    run = assert_same_as_today(chain, records)
    assert {c >> 48 for c, _ in run.outputs} == {0, 1}


# -- small chains for what the examples lack ------------------------------------------------------


class Quirky(NF):
    """A test NF with every behaviour the framework must reproduce: list outputs,
    drops, NF exceptions, new packets, timers (some failing), alerts carrying the
    context's fields, and every shared order-dependent operation."""

    kind = "quirky"

    pool = List(GLOBAL, Access.READ_WRITE, init=[7, 8, 9])
    load = Counter(GLOBAL, Access.READ_WRITE)
    owner = Value(SRC_IP, Access.READ_WRITE, init=0)
    record = Value(SRC_IP, Access.READ_WRITE, init=(0, 0, 0))
    seen = Counter(FLOW, Access.WRITE_MOSTLY)

    def process(self, pkt: Packet, ctx: Context) -> Any:
        self.seen.incr(1, FLOW.key(pkt))        # (write-mostly: blind, returns None)
        n = self.seen.get(FLOW.key(pkt))
        h = (pkt.index + pkt.sport + n) % 11
        if h == 0:
            raise ValueError("boom")
        if h == 1:
            return [pkt, pkt.copy()]
        if h == 2:
            return []
        if h == 3:
            port = self.pool.pop()
            if port is not None and pkt.index % 3:
                self.pool.push(port)
        elif h == 4:
            self.load.incr_least(range(3))
        elif h == 5:
            self.owner.cas(0, pkt.index, pkt.src)
        elif h == 6:
            ctx.set_timer(pkt.ts + 2_000_000, pkt.index)
        elif h == 7:
            lam = self.record.apply("trw_step", pkt.sport % 2 == 0, 0.25, 4.0, 0.01, 99.0, key=pkt.src)
            if lam is not None and lam >= 99:
                ctx.alert("trw", ip_str(pkt.src))
        elif h == 8:
            ctx.alert("ctx", f"{ctx.index}/{ctx.now}/{ctx.packet_clock}")
        elif h == 9:
            return None
        return pkt

    def on_timer(self, key: Hashable, ctx: Context) -> None:
        if key % 5 == 0:
            raise RuntimeError("timer boom")
        self.load.incr_least(range(3))
        ctx.alert("timer", f"{key}/{ctx.index}/{ctx.now}/{ctx.packet_clock}")


@pytest.fixture
def quirky(monkeypatch):
    monkeypatch.setitem(REGISTRY, "quirky", Quirky)


CHAINS = {
    "taps": {
        "vertices": {"a": {"nf": "quirky"}, "b": {"nf": "nat", "config": {"external_ip": "198.51.100.7",
                                                                           "internal": ["10.64.0.0/16"]}},
                     "tin": {"nf": "quirky"}, "tout": {"nf": "trojan"}, "bin": {"nf": "quirky"}},
        "edges": ["a -> b"],
        "offpath": [{"from": "a", "to": "tin", "tap": "input"}, {"from": "b", "to": "tout", "tap": "output"},
                    {"from": "b", "to": "bin", "tap": "input"}],
    },
    "diamond": {
        "vertices": {"a": {"nf": "quirky"}, "b": {"nf": "quirky"}, "c": {"nf": "pass"},
                     "d": {"nf": "quirky"}, "t": {"nf": "quirky"}, "e": {"nf": "portscan"}},
        "edges": ["a -> b", "a -> c", "b -> d", "c -> d", "a -> e"],
        "offpath": [{"from": "d", "to": "t", "tap": "input"}],
    },
    "classes": {
        "vertices": {"web": {"nf": "quirky", "match": {"ports": [80, 443, 10050]}},
                     "dns": {"nf": "pass", "match": {"ports": [53, 443, 10050]}},
                     "rest": {"nf": "quirky", "match": "other"},
                     "sink": {"nf": "quirky"}, "tap": {"nf": "trojan"}},
        "edges": ["web -> sink", "dns -> sink", "rest -> sink"],
        "offpath": [{"from": "dns", "to": "tap", "tap": "input"}],
    },
}


@pytest.mark.parametrize("roots", [1, 2])
@pytest.mark.parametrize("name", sorted(CHAINS))
def test_small_chains(quirky, name, roots, lan, zeek):
    chain = parse_spec({**CHAINS[name], "roots": roots, "input": {"non_ip": "pass"}})
    records = [r for pair in zip(lan[:1200], zeek[:1200], strict=True) for r in pair]
    run = assert_same_as_today(chain, records)
    assert run.nf_errors > 0
    kinds = {a[1] for a in run.alerts}
    assert {"ctx", "timer"} <= kinds


# -- replay: hand-written serializations --------------------------------------------------------

def step(code: str, args: tuple = (), result: Any = None, key: Hashable = None, tag: Any = None,
         obj: str = "o", default: Any = None, observed: bool = True) -> StoreStep:
    return StoreStep("v", obj, key, False, code, args, tag, default, result, observed)


def test_every_op_kind():
    steps = [
        step("declare", ([1, 2, 3],), obj="pool"),
        step("declare", ([9],), obj="pool"),                          # exists: unchanged
        step("pop", (), 1, obj="pool", tag=(0, 1)),
        step("push", (7,), 3, obj="pool", tag=(0, 2)),
        step("get", (), [2, 3, 7], obj="pool"),
        step("pop", (), None, obj="empty", tag=(0, 3)),
        step("push", (5,), 3, obj="fresh", default=[1, 2], tag=(0, 4)),
        step("get", (), 0, key=b"k", default=0),
        step("incr", (2,), 2, key=b"k", tag=(1, 1)),
        step("incr", (3,), 13, key=b"d", default=10, tag=(1, 2)),
        step("set", ((1, 2),), None, key=b"s", tag=(2, 1)),
        step("cas", ((1, 2), "x"), True, key=b"s", tag=(2, 2)),
        step("cas", ((1, 2), "y"), False, key=b"s", tag=(2, 3)),
        step("delete", (), None, key=b"k", tag=(3, 1)),
        step("get", (), None, key=b"k"),
        step("apply", ("trw_step", False, 0.25, 4.0, 0.01, 99.0), ((0, 1, 0), 4.0), key=b"h", tag=(4, 1)),
        step("apply", ("trw_step", False, 0.25, 4.0, 0.01, 99.0), ((0, 2, 0), 16.0), key=b"h", tag=(4, 2)),
        step("incr", (1,), 1, obj="ctr", key=1, tag=(5, 1)),
        step("argmin_incr", ([0, 1, 2],), 0, obj="ctr", tag=(5, 2)),
        step("argmin_incr", ([0, 1, 2],), 2, obj="ctr", tag=(6, 1)),
    ]
    r = replay(steps)
    assert r.mismatches == []
    assert r.final == {
        ("v", "pool", None): [2, 3, 7], ("v", "empty", None): [], ("v", "fresh", None): [1, 2, 5],
        ("v", "o", b"d"): 13, ("v", "o", b"s"): "x", ("v", "o", b"h"): (0, 2, 0),
        ("v", "ctr", 0): 1, ("v", "ctr", 1): 1, ("v", "ctr", 2): 1,
    }
    assert r.results[("v", "pool", None, 0, "pop")] == [1]
    assert r.results[("v", "o", b"h", 4, "apply")] == [((0, 1, 0), 4.0), ((0, 2, 0), 16.0)]   # store order
    assert r.results[("v", "ctr", None, 5, "argmin_incr")] == [0]
    assert r.duplicates == 0
    assert len(r.applied) == sum(s.tag is not None for s in steps)


def test_duplicates_are_emulated_with_the_first_answer():
    steps = [
        step("incr", (1,), 1, tag=(0, 1)),
        step("incr", (1,), 2, tag=(1, 1)),
        step("incr", (1,), 1, tag=(0, 1)),        # replayed: answers as the first, not applied
        step("incr", (1,), None, tag=(1, 1)),     # acknowledged duplicate: answers nothing
        step("incr", (1,), 3, tag=(2, 1)),
        step("incr", (1,), 1, key=b"x", tag=(0, 1)),   # same tag, another object: not a duplicate
        step("pop", (), 5, obj="l", default=[5, 6], tag=(3, 1)),
        step("pop", (), 5, obj="l", default=[5, 6], tag=(3, 1)),
    ]
    r = replay(steps)
    assert r.mismatches == []
    assert r.duplicates == 3
    assert r.final[("v", "o", None)] == 3
    assert r.final[("v", "l", None)] == [6]
    assert r.results[("v", "o", None, 0, "incr")] == [1]       # the duplicate is not a result
    assert ("v", "o", None, (0, 1)) in r.applied and ("v", "o", b"x", (0, 1)) in r.applied


def test_a_duplicate_answering_otherwise_is_a_mismatch():
    r = replay([step("incr", (1,), 1, tag=(0, 1)), step("incr", (1,), 2, tag=(0, 1))])
    assert [(m.index, m.expected) for m in r.mismatches] == [(1, 1)]


@pytest.mark.parametrize("wrong", [
    step("apply", ("trw_step", False, 0.25, 4.0, 0.01, 99.0), ((0, 2, 0), 16.0), key=b"h", tag=(9, 1)),
    step("pop", (), 2, obj="pool", tag=(9, 1)),
    step("argmin_incr", ([0, 1, 2],), 0, obj="ctr", tag=(9, 1)),
    step("get", (), 5, obj="ctr", key=1),
])
def test_a_wrong_answer_is_a_mismatch_naming_the_expected_one(wrong):
    prefix = [step("declare", ([1, 2],), obj="pool"), step("incr", (1,), 1, obj="ctr", key=0, tag=(1, 1))]
    r = replay([*prefix, wrong])
    assert len(r.mismatches) == 1
    m = r.mismatches[0]
    assert m.index == 2 and m.step is wrong
    expected = {"apply": ((0, 1, 0), 4.0), "pop": 1, "argmin_incr": 1, "get": None}[wrong.code]
    assert m.expected == expected
    assert f"gives {expected!r}" in str(m)


def test_an_unobserved_step_is_not_compared_but_applied():
    r = replay([step("incr", (5,), None, tag=(0, 1), observed=False),
                step("incr", (1,), 999, tag=(0, 2), observed=False),
                step("get", (), 6)])
    assert r.mismatches == []
    assert r.final[("v", "o", None)] == 6


def test_lists_tuples_and_deques_with_equal_items_are_equal():
    r = replay([step("set", ([1, (2, 3)],), tag=(0, 1)), step("get", (), ((1, [2, 3])))])
    assert r.mismatches == []


def test_a_step_the_store_must_refuse():
    r = replay([step("push", (1,), 1, tag=(0, 1)), step("incr", (1,), 2, tag=(0, 2)),
                step("apply", ("no-such-op",), None, key=1, tag=(0, 3))])
    assert [type(m.expected) for m in r.mismatches] == [Refused, Refused]
    assert r.final == {("v", "o", None): [1]}
    # The store took all three once: one applied, two refused (final, not lost updates)
    assert r.refused == {("v", "o", None, (0, 2)), ("v", "o", 1, (0, 3))} and len(r.applied) == 3


# -- replay: property against a plain model ----------------------------------------------------


class Model:
    """Table 2 and the clock log, as plainly as they can be said."""

    def __init__(self) -> None:
        self.data: dict = {}
        self.first: dict = {}
        self.duplicates = 0

    def run(self, obj: str, key: Any, code: str, args: tuple, tag: Any) -> Any:
        addr = ("v", obj, key)
        if tag is not None and code != "get" and (addr, tag) in self.first:
            self.duplicates += 1
            return self.first[(addr, tag)]
        result = getattr(self, "op_" + code)(addr, *args)
        if tag is not None and code != "get":
            self.first[(addr, tag)] = result
        return result

    def op_get(self, addr):
        v = self.data.get(addr)
        return list(v) if isinstance(v, list) else v

    def op_set(self, addr, value):
        self.data[addr] = value

    def op_incr(self, addr, by):
        self.data[addr] = self.data.get(addr, 0) + by
        return self.data[addr]

    def op_push(self, addr, value):
        self.data.setdefault(addr, []).append(value)
        return len(self.data[addr])

    def op_pop(self, addr):
        lst = self.data.setdefault(addr, [])
        return lst.pop(0) if lst else None

    def op_cas(self, addr, expected, new):
        if self.data.get(addr) != expected:
            return False
        self.data[addr] = new
        return True

    def op_delete(self, addr):
        self.data.pop(addr, None)

    def op_apply(self, addr, name, success, *rest):
        s, f, verdict = self.data.get(addr) or (0, 0, 0)
        if verdict:
            return ((s, f, verdict), None)
        s, f = (s + 1, f) if success else (s, f + 1)
        lam = 0.25 ** s * 4.0 ** f
        new = (s, f, 1 if lam >= 99 else -1 if lam <= 0.01 else 0)
        self.data[addr] = new
        return (new, lam)

    def op_argmin_incr(self, addr, keys):
        loads = [self.data.get(("v", addr[1], k), 0) for k in keys]
        best = loads.index(min(loads))
        self.data[("v", addr[1], keys[best])] = loads[best] + 1
        return best


TRW = ("trw_step",)
KEYS = st.sampled_from([None, b"a", b"b"])
TAGS = st.one_of(st.none(), st.tuples(st.integers(0, 4), st.integers(1, 2)))
# Each object has one type, so every generated op is one the store accepts.
OPS = st.one_of(
    st.tuples(st.just("num"), KEYS, st.just("get"), st.just(()), st.none()),
    st.tuples(st.just("num"), KEYS, st.just("set"), st.tuples(st.integers(-3, 3)), TAGS),
    st.tuples(st.just("num"), KEYS, st.just("incr"), st.tuples(st.integers(-3, 3)), TAGS),
    st.tuples(st.just("num"), KEYS, st.just("cas"), st.tuples(st.integers(0, 2), st.integers(0, 9)), TAGS),
    st.tuples(st.just("num"), KEYS, st.just("delete"), st.just(()), TAGS),
    st.tuples(st.just("num"), st.just(None), st.just("argmin_incr"), st.just(([b"a", b"b"],)), TAGS),
    st.tuples(st.just("lst"), KEYS, st.just("get"), st.just(()), st.none()),
    st.tuples(st.just("lst"), KEYS, st.just("push"), st.tuples(st.integers(0, 9)), TAGS),
    st.tuples(st.just("lst"), KEYS, st.just("pop"), st.just(()), TAGS),
    st.tuples(st.just("lst"), KEYS, st.just("delete"), st.just(()), TAGS),
    st.tuples(st.just("rec"), KEYS, st.just("get"), st.just(()), st.none()),
    st.tuples(st.just("rec"), KEYS, st.just("apply"), st.tuples(*(st.just(x) for x in TRW), st.booleans()), TAGS),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(OPS, st.booleans()), max_size=60))
def test_replay_equals_a_plain_model(ops):
    model = Model()
    steps = []
    for (obj, key, code, args, tag), observed in ops:
        full = (*args, 0.25, 4.0, 0.01, 99.0) if code == "apply" else args
        result = model.run(obj, key, code, full, tag)
        steps.append(step(code, full, result, key=key, tag=tag, obj=obj, observed=observed))
    r = replay(steps)
    assert r.mismatches == []
    assert r.duplicates == model.duplicates
    assert r.final == {a: v for a, v in model.data.items()}
    assert r.applied == {(*a, t) for a, t in model.first}


# -- the logical run follows the store's choices ------------------------------------------------

NAT_CHAIN = {"vertices": {"nat": {"nf": "nat", "config": {"external_ip": "198.51.100.7",
                                                           "internal": ["10.0.0.0/8"],
                                                           "port_range": [20000, 20009]}}}}


def _nat_records() -> list[tuple[int, bytes]]:
    frames = [tcp("10.0.0.1", "192.0.2.1", 40000, 80, SYN), arp(), tcp("10.0.0.2", "192.0.2.1", 40001, 80, SYN),
              tcp("10.0.0.3", "192.0.2.1", 40002, 80, SYN)]
    return [(i * 1000, f) for i, f in enumerate(frames)]


def _nat_pops(pool: list[int], *pops: tuple[int, Any]) -> list[StoreStep]:
    """A store's serialization of the NAT's pool: declared, then popped by clock."""
    declare = StoreStep("nat", "ports", None, False, "declare", (pool,), None, None, None)
    return [declare] + [StoreStep("nat", "ports", None, False, "pop", (), (clock, 1), None, port)
                        for clock, port in pops]


def _sport(frame: bytes) -> int:
    return Packet(frame).sport


def test_pops_take_the_store_order():
    chain = parse_spec(NAT_CHAIN)
    plain = logical_run(chain, _nat_records())
    assert [(c, _sport(f)) for c, f in plain.outputs if c != 1] == [(0, 20000), (2, 20001), (3, 20002)]
    # The store served clock 3 first, then 2, then 0.
    r = replay(_nat_pops(list(range(20000, 20010)), (3, 20000), (2, 20001), (0, 20002)))
    assert r.mismatches == []
    run = logical_run(chain, _nat_records(), r)
    assert [(c, _sport(f)) for c, f in run.outputs if c != 1] == [(0, 20002), (2, 20001), (3, 20000)]
    assert run.notes == []
    assert run.state["nat"]["ports"] == plain.state["nat"]["ports"]
    assert run.state["nat"]["mapping"] != plain.state["nat"]["mapping"]


def test_an_illegal_or_unused_store_choice_is_noted_and_computed_locally():
    chain = parse_spec(NAT_CHAIN)
    r = replay(_nat_pops([7], (0, 7), (2, None), (9, None)))
    assert r.mismatches == []
    run = logical_run(chain, _nat_records(), r)
    # clock 0: 7 is no free port, the reference pops its own; clock 2: the store's
    # empty pool is taken (exhausted: dropped, alert); clock 3: no store result.
    assert [(c, _sport(f)) for c, f in run.outputs if c != 1] == [(0, 20000), (3, 20001)]
    assert run.notes == [
        "clock 0: nat.ports: the store popped 7, which the reference does not hold",
        "clock 2: nat.ports: the store found the list empty, the reference holds 9 items",
        "clock 9: nat.ports: the store made 1 pop the logical chain did not",
    ]
    assert [a[1] for a in run.alerts] == ["nat-ports-exhausted"]


class Stepper(NF):
    """One TRW step per TCP packet on its source's record; an alert when the step
    says Lambda crossed eta1."""

    kind = "stepper"
    record = Value(SRC_IP, Access.READ_WRITE, init=(0, 0, 0))

    def process(self, pkt: Packet, ctx: Context) -> Packet:
        if pkt.proto == 6:
            lam = self.record.apply("trw_step", pkt.sport % 2 == 0, 0.25, 4.0, 0.01, 99.0, key=pkt.src)
            if lam is not None and lam >= 99:
                ctx.alert("trw", ip_str(pkt.src))
        return pkt


def test_value_ops_return_the_store_result_and_advance_their_own_value(monkeypatch):
    monkeypatch.setitem(REGISTRY, "stepper", Stepper)
    chain = parse_spec({"vertices": {"s": {"nf": "stepper"}}})
    records = [(i * 1000, tcp("10.0.0.1", "192.0.2.1", 40000 + i, 80, SYN)) for i in range(6)]
    plain = logical_run(chain, records)
    assert plain.alerts == []               # success and failure alternate: Lambda stays at 1 or below
    # The store says the step at clock 2 found a scanner (another serialization's answer).
    steps = [StoreStep("s", "record", ip_bytes("10.0.0.1"), False, "apply", ("trw_step",), (2, 1), None, None,
                       observed=False)]
    r = replay(steps)
    r.results = {("s", "record", ip_bytes("10.0.0.1"), 2, "apply"): [((9, 0, 1), 1e9)]}
    run = logical_run(chain, records, r)
    assert run.alerts == [("s", "trw", "10.0.0.1", 2)]
    assert run.state == plain.state == {"s": {"record": [["10.0.0.1", [3, 3, 0]]]}}
    assert run.notes == []


def test_a_new_packet_returned_alone_carries_the_input_clock(monkeypatch):
    class Renew(NF):
        kind = "renew"

        def process(self, pkt: Packet, ctx: Context) -> Packet:
            return Packet(bytes(pkt.data), pkt.ts)      # a fresh packet: clock 0 of its own

    monkeypatch.setitem(REGISTRY, "renew", Renew)
    chain = parse_spec({"vertices": {"r": {"nf": "renew"}}})
    records = [(i * 1000, tcp("10.0.0.1", "192.0.2.1", 40000 + i, 80, SYN)) for i in range(3)]
    assert [c for c, _ in logical_run(chain, records).outputs] == [0, 1, 2]


class Tally(NF):
    """Counts packets in one shared value by a plain read-modify-write (get, then
    set): not atomic across instances, which §4.3's offloaded ops are."""

    kind = "tally"
    count = Value(GLOBAL, Access.READ_WRITE, init=0)

    def process(self, pkt: Packet, ctx: Context) -> Packet:
        self.count.set(self.count.get() + 1)
        return pkt


def _read(client: str, clock: int, value: Any) -> StoreStep:
    return StoreStep("t", "count", None, False, "get", (), None, None, value, True, client, clock)


def _write(client: str, clock: int, value: Any) -> StoreStep:
    return StoreStep("t", "count", None, False, "set", (value,), (clock, 1), 0, None, True, client)


def test_shared_reads_follow_the_store_and_a_lost_update_is_a_conflict(monkeypatch):
    """Two instances read the shared count before either writes (store order): each
    read is followed, and the second packet's write rests on a read the logical
    chain would not have made, so one update is lost: a conflict at clock 1."""
    monkeypatch.setitem(REGISTRY, "tally", Tally)
    chain = parse_spec({"vertices": {"t": {"nf": "tally"}}})
    records = [(i * 1000, tcp("10.0.0.1", "192.0.2.1", 40000 + i, 80, SYN)) for i in range(2)]
    lost = [_read("t/0", 0, None), _read("t/1", 1, None), _write("t/0", 0, 1), _write("t/1", 1, 1)]
    r = replay(lost)
    assert r.shared == {("t", "count", None)} and r.mismatches == []
    run = logical_run(chain, records, r)
    assert run.conflicts == [("t", "count", None, 1)]
    # In order (the second read sees the first write) nothing is lost, nothing to report.
    fine = [_read("t/0", 0, None), _write("t/0", 0, 1), _read("t/1", 1, 1), _write("t/1", 1, 2)]
    run = logical_run(chain, records, replay(fine))
    assert run.conflicts == [] and run.state == {"t": {"count": [[None, 2]]}}


def test_reads_of_an_object_one_instance_uses_alone_are_not_followed(monkeypatch):
    """One instance's own reads may come in another order than clocks (R4: arrival
    order); the logical chain keeps its own value for them."""
    monkeypatch.setitem(REGISTRY, "tally", Tally)
    chain = parse_spec({"vertices": {"t": {"nf": "tally"}}})
    records = [(i * 1000, tcp("10.0.0.1", "192.0.2.1", 40000 + i, 80, SYN)) for i in range(2)]
    alone = [_read("t/0", 1, None), _write("t/0", 1, 1), _read("t/0", 0, 1), _write("t/0", 0, 2)]
    r = replay(alone)
    assert r.shared == set() and not any(k[-1] == "get" for k in r.results)
    run = logical_run(chain, records, r)
    assert run.conflicts == [] and run.state == {"t": {"count": [[None, 2]]}}
