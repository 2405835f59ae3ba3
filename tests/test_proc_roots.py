"""Several roots on the proc runtime (docs/proc.md, "Several roots"): watermarks per root.

A root's id is in its clocks' high bits (§5), so in one order of all clocks every
packet of root 1 comes after every packet of root 0: an instance fed by two roots
that waited for one watermark held root 1's packets until root 0's input ended.
Without recovery each root's packets wait only for that root's watermarks; within
a root, an instance fed by several upstreams still takes them in clock order."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

zmq = pytest.importorskip("zmq")

from chc.capture import open_capture  # noqa: E402
from chc.cli import main  # noqa: E402
from chc.core.store import CLOCK_BITS  # noqa: E402
from chc.packet import Packet  # noqa: E402
from chc.runtime.procio import Guard  # noqa: E402
from chc.runtime.procworker import INF, InstanceWorker, Plan  # noqa: E402
from chc.runtime.wire import Kind, dealer, encode, pack_packets  # noqa: E402
from chc.spec import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAN = ROOT / "traces/pathspider/lan-2012.pcap.gz"
PAPER = ROOT / "examples/paper_chain.yaml"
R1 = 1 << CLOCK_BITS            # root 1's first clock


def _setup(tmp_path, parallelism: int, recover: bool = False):
    spec = tmp_path / "two-roots.yaml"
    spec.write_text(PAPER.read_text() + "\nroots: 2\n")
    chain = load_spec(str(spec)).with_parallelism(parallelism)
    with open_capture(str(LAN)) as r:
        pkts = [p for p in (Packet(data, ts, k) for k, (ts, data) in enumerate(itertools.islice(r, 60)))
                if p.src is not None][:12]
    return pkts, Plan(str(tmp_path), chain, "T", 1, ("memory", ""), recover=recover)


def _clocked(pkts: list[Packet], clocks: list[int]) -> list[Packet]:
    for p, c in zip(pkts, clocks, strict=True):
        p.clock = c
    return pkts


def _take(worker: InstanceWorker, done, tries: int = 500) -> list[int]:
    """What ``worker`` may run once ``done()`` (what was sent is in: a bounded wait, not
    a timing assert)."""
    for _ in range(tries):
        worker._receive()
        if done():
            return [p.clock for p in worker._ready()]
        worker.box.sock.poll(20)
    raise AssertionError(f"{worker.me} did not get what was sent to it")


def _queued(worker: InstanceWorker) -> int:
    return sum(map(len, worker.queues.values()))


def test_an_instance_fed_by_two_roots_runs_each_roots_packets_without_the_others(tmp_path):
    """nat.0 and the trojan tap are fed by both roots: root 1's packets run as soon as
    root 1's watermark passes them, while root 0's input goes on (before: held until
    root 0's end)."""
    pkts, plan = _setup(tmp_path, 1)
    ctx = zmq.Context()
    try:
        nat = InstanceWorker(plan, ctx, "nat", 0, Guard([]))
        roots = [dealer(ctx, plan.address("nat.0"), f"@root.{r}") for r in (0, 1)]
        roots[0].send(encode(Kind.DATA, [4, {}, pack_packets(_clocked(pkts[:5], list(range(5)))), False, 4, {},
                                         [4, INF]]))
        roots[1].send(encode(Kind.DATA, [R1 + 2, {}, pack_packets(_clocked(pkts[5:8], [R1, R1 + 1, R1 + 2])),
                                         False, R1 + 2, {}, [INF, R1 + 2]]))
        came = lambda: nat.marks == {b"@root.0": 4, b"@root.1": R1 + 2}  # noqa: E731
        assert _take(nat, came) == [0, 1, 2, 3, 4, R1, R1 + 1, R1 + 2]
        nat._watermark([])
        assert nat.out.rmarks == [4, R1 + 2]        # what it tells its downstream, per root
        assert min(nat.marks.values()) == 4         # (the one watermark: what failover and scaling go by)
    finally:
        ctx.destroy(linger=0)


def test_each_roots_packets_from_several_upstreams_still_run_in_clock_order(tmp_path):
    """portscan.0 fed by nat.0 and nat.1, each carrying both roots' packets: a root-1
    packet runs only once every upstream's root-1 watermark has passed it, and root 0's
    lagging watermarks hold none of root 1's."""
    pkts, plan = _setup(tmp_path, 2)
    ctx = zmq.Context()
    try:
        ps = InstanceWorker(plan, ctx, "portscan", 0, Guard([]))
        nats = [dealer(ctx, plan.address("portscan.0"), f"nat.{i}") for i in (0, 1)]
        _clocked(pkts, [R1 + k for k in range(12)])
        nats[0].send(encode(Kind.DATA, [-1, {}, pack_packets([pkts[0], pkts[2], pkts[5]]), False, R1 + 5, {},
                                        [-1, R1 + 5]]))
        nats[1].send(encode(Kind.DATA, [-1, {}, pack_packets([pkts[1]]), False, R1 + 1, {}, [-1, R1]]))
        # nat.1 may still send R1+1 .. R1+5 (R1+1 came: too soon to run)
        assert _take(ps, lambda: _queued(ps) == 4) == [R1]
        nats[1].send(encode(Kind.DATA, [-1, {}, pack_packets([pkts[3]]), False, R1 + 3, {}, [-1, R1 + 3]]))
        assert _take(ps, lambda: _queued(ps) == 4) == [R1 + 1, R1 + 2, R1 + 3]
        ps._watermark([])
        assert ps.out.rmarks == [-1, R1 + 3]
        for sock in nats:
            sock.send(encode(Kind.DATA, [INF, {}, [], True, INF, {}, [INF, INF]]))
        assert _take(ps, lambda: len(ps.ended) == 2) == [R1 + 5]
    finally:
        ctx.destroy(linger=0)


def test_with_recovery_one_clock_order_holds(tmp_path):
    """A failover's replay bound and the receivers' duplicate suppression go by one
    clock order: with recovery on there are no per-root watermarks (docs/proc.md)."""
    assert _setup(tmp_path, 1)[1].per_root
    assert not _setup(tmp_path, 1, recover=True)[1].per_root


def test_a_chain_with_several_roots_is_served(tmp_path, capsys):
    """chc serve --runtime proc serves a chain of two roots (it was refused: root 1's
    packets would have waited for an end that a served chain never reaches); with
    recovery on it is still refused, in one line."""
    spec = tmp_path / "two-roots.yaml"
    spec.write_text(PAPER.read_text() + "\nroots: 2\n")
    out = tmp_path / "s.json"
    assert main(["serve", str(spec), "--runtime", "proc", "--capture", str(LAN), "-c", "2000", "--rate", "5000",
                 "--summary-json", str(out), "--quiet"]) == 0
    import json
    s = json.loads(out.read_text())
    assert s["packets_in"] == 2000 and s["log"]["roots"] == 2
    capsys.readouterr()
    assert main(["serve", str(spec), "--runtime", "proc", "--capture", str(LAN), "--kill", "nat@100",
                 "-c", "500"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "several roots (2)" in err[-1] and "recovery" in err[-1]
