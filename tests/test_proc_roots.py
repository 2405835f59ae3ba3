"""Several roots on the proc runtime (docs/proc.md, "Several roots"): watermarks per root.

A root's id is in its clocks' high bits (§5), so in one order of all clocks every
packet of root 1 comes after every packet of root 0: an instance fed by two roots
that waited for one watermark held root 1's packets until root 0's input ended.
Each root's packets wait only for that root's watermarks; within a root, an
instance fed by several upstreams still takes them in clock order.

With recovery on (§5.4) an instance's batches interleave the roots as their
packets come, so each instance tells the store server every batch it runs, and a
failover replays those batches in their order with their throughs (receivers drop
what they had by through): the kills below pass the COE check, and each piece
switched off fails a test here."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest

zmq = pytest.importorskip("zmq")

from chc.capture import open_capture  # noqa: E402
from chc.cli import main  # noqa: E402
from chc.core.root import root_of  # noqa: E402
from chc.core.store import CLOCK_BITS  # noqa: E402
from chc.packet import Packet  # noqa: E402
from chc.runtime.proc import Kill, ProcRuntime  # noqa: E402
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


def test_with_recovery_per_root_order_holds_and_batches_are_told(tmp_path):
    """Watermarks per root with recovery on too; then every instance tells the store
    server its batches (Plan.orders)."""
    assert _setup(tmp_path, 1)[1].per_root and not _setup(tmp_path, 1)[1].orders
    assert _setup(tmp_path, 1, recover=True)[1].per_root and _setup(tmp_path, 1, recover=True)[1].orders


def test_a_chain_with_several_roots_is_served_with_a_kill(tmp_path):
    """chc serve --runtime proc serves a chain of two roots, with --kill too (it was
    refused: with recovery one clock order held root 1's packets until an end that a
    served chain never reaches)."""
    spec = tmp_path / "two-roots.yaml"
    spec.write_text(PAPER.read_text() + "\nroots: 2\n")
    out = tmp_path / "s.json"
    assert main(["serve", str(spec), "--runtime", "proc", "--capture", str(LAN), "-c", "2000", "--rate", "5000",
                 "--summary-json", str(out), "--quiet"]) == 0
    s = json.loads(out.read_text())
    assert s["packets_in"] == 2000 and s["log"]["roots"] == 2
    assert main(["serve", str(spec), "--runtime", "proc", "--capture", str(LAN), "-c", "3000", "--rate", "5000",
                 "--model", "EO+C+NA", "--kill", "nat@1500", "--summary-json", str(out), "--quiet"]) == 0
    s = json.loads(out.read_text())
    assert s["packets_in"] == s["packets_out"] == 3000 and s["log"]["roots"] == 2
    assert [e["kind"] for e in s["events"]] == ["failover"]


class _Told:
    """What a failover's replay asks the store server (§5 with §5.4), in-process: the
    batches the failed instance told it, in order."""

    def __init__(self, orders: list[list[int]]) -> None:
        self.told = orders

    def orders(self, name: str) -> list[list[int]]:
        return [list(o) for o in self.told]

    def replaying(self, on: bool) -> None:
        pass

    def objects_at(self, vertex: str, clocks: set[int]) -> dict:
        return {}


def _failover(plan: Plan, ctx, feeds: dict, orders: list[list[int]]) -> tuple[InstanceWorker, list]:
    """portscan.0's failover (its upstream nat.0 failed too: nat.0#1's frames are taken),
    with what it runs recorded as (clocks, through) per batch."""
    w = InstanceWorker(plan, ctx, "portscan", 0, Guard([]), "portscan.0#1",
                       {"feeds": feeds, "fenced": ["nat.0"], "floors": {}, "bound": -1})
    w.orders, w.hi, w.store = [], [-1, -1], _Told(orders)
    ran: list = []
    process = w._process

    def spy(batch: list[Packet], watermark: int) -> None:
        process(batch, watermark)
        ran.append(([p.clock for p in batch], w.through))
    w._process = spy
    return w, ran


@pytest.mark.parametrize("off", [False, True])
def test_a_failover_replays_the_batches_the_failed_one_told_in_their_order(tmp_path, off):
    """The failed portscan.0 ran root 1's two packets first (its batch through R1+1),
    then root 0's five (through R1+2): its failover runs the same batches in that order
    with the same throughs, so its receivers drop by through exactly what the failed one
    had sent them, and its state goes through the same steps.  Switched off
    (replay-by-clock), it runs them as new input, all in one batch in clock order:
    root 0's packets first, under throughs the failed one never sent (chc check then
    finds an output twice, or packets never completed)."""
    pkts, plan = _setup(tmp_path, 1, recover=True)
    if off:
        plan.breaks = ("replay-by-clock",)
    ctx = zmq.Context()
    try:
        rows = pack_packets(_clocked(pkts[:7], [R1, R1 + 1, 0, 1, 2, 3, 4]))
        feeds = {"nat.0": [rows, 4, False, {}, R1 + 5, [4, R1 + 1]]}
        w, ran = _failover(plan, ctx, feeds, [[0, R1 + 1, -1, R1 + 1], [1, R1 + 2, 4, R1 + 1]])
        w._replay(w.replay)
        if not off:
            assert ran == [([R1, R1 + 1], R1 + 1), ([0, 1, 2, 3, 4], R1 + 2)]
            assert len(w.orders) == 2       # (its own next batch is told as the third)
        else:
            assert ran == [] and [p.clock for p in w._ready()] == [0, 1, 2, 3, 4, R1, R1 + 1]
    finally:
        ctx.destroy(linger=0)


@pytest.mark.parametrize("off", [False, True])
def test_a_failover_waits_for_every_packet_of_the_batches_told(tmp_path, off):
    """Two failures in a row: nat.0's failover, still replaying, has handed over only
    R1 of the batch [R1, R1+1, R1+2] the failed portscan.0 ran; the rest comes behind.
    The failover waits until nat.0#1's root-1 watermark has passed R1+2 and replays the
    batch whole.  Switched off (no-root-bound), it replays [R1] under the batch's
    through, and R1+1, R1+2 run later under a new one: outputs the failed one had sent
    go out again."""
    pkts, plan = _setup(tmp_path, 1, recover=True)
    if off:
        plan.breaks = ("no-root-bound",)
    ctx = zmq.Context()
    try:
        _clocked(pkts[:3], [R1, R1 + 1, R1 + 2])
        feeds = {"nat.0": [pack_packets(pkts[:1]), -1, False, {}, R1, [-1, R1]]}
        w, ran = _failover(plan, ctx, feeds, [[0, R1 + 2, -1, R1 + 2]])
        rest = dealer(ctx, plan.address("portscan.0#1"), "nat.0#1")
        rest.send(encode(Kind.DATA, [-1, {}, pack_packets(pkts[1:3]), False, R1 + 2, {}, [-1, R1 + 2]]))
        if off:
            w._replay(w.replay)
            assert ran == [([R1], R1 + 2)]
        else:
            for _ in range(500):        # (what was sent is in: a bounded wait, not a timing assert)
                if w.box.sock.poll(20):
                    break
            w._replay(w.replay)
            assert ran == [([R1, R1 + 1, R1 + 2], R1 + 2)]
    finally:
        ctx.destroy(linger=0)


def test_the_store_server_keeps_each_logical_instances_batches_once():
    """A batch told again (its request sent again to a failover store) is kept once; a
    failover's batches go on its logical instance's list."""
    from chc.backends.memory import MemoryStore
    from chc.runtime.storeserver import Failover
    f = Failover(MemoryStore())
    for peer, record in [(b"nat.0", [0, 5, 5, -1]), (b"nat.0", [1, R1, 5, R1]), (b"nat.0", [1, R1, 5, R1]),
                         (b"nat.0#1", [2, R1 + 1, 5, R1 + 1])]:
        f.call(None, peer, "order", record)
    assert f.call(None, b"nat.0#2", "orders", "nat.0") == [[0, 5, 5, -1], [1, R1, 5, R1], [2, R1 + 1, 5, R1 + 1]]
    assert f.call(None, b"lb.0", "orders", "lb.0") == []


def test_with_recovery_root_1s_packets_leave_before_root_0s_input_ends(tmp_path):
    """With recovery on (a NAT kill, failed over) the coordinator feeds 3,000 packets of
    both roots, then holds the rest of the input back, idle, until an output of root 1
    has left: with one clock order (recovery's, before) none could, since root 1's
    packets waited for root 0's input to end.  Structural, no timing threshold: the
    hold gives up after 60 s and the test fails."""
    spec = tmp_path / "two-roots.yaml"
    spec.write_text(PAPER.read_text() + "\nroots: 2\n")
    with open_capture(str(LAN)) as r:
        records = list(itertools.islice(r, 4000))
    seen: list[int] = []
    held: list[bool] = []

    def feed():
        for k, rec in enumerate(records):
            if k == 3000:
                deadline = time.monotonic() + 60
                while 1 not in seen and time.monotonic() < deadline:
                    time.sleep(0.01)
                    yield None          # (nothing ready: the coordinator serves the workers)
                held.append(1 not in seen)
            yield rec
    rt = ProcRuntime(load_spec(str(spec)), model="EO+C+NA", write_out=True, kills=[Kill("nat", 0, 1500)])
    rt.run(feed(), emit=lambda pkts: seen.extend(root_of(p.clock) for p in pkts))
    s = rt.summary()
    assert held == [False], "root 1's outputs waited for the end of root 0's input"
    assert [e["kind"] for e in s.events] == ["failover"] and s.packets_in == 4000


PARALLEL = ROOT / "examples/scenarios/parallel.yaml"


def _check(tmp_path, *argv: str) -> int:
    """chc check of the paper chain with two roots, the port-scan detector's timeout out
    of reach: with per-root order one root's packets may run ahead of the other's at an
    instance, and a packet past a deadline then fires a timer before the other root's
    timely answer (the timer limit, docs/coe.md "Limits today"; seed 2 below diverged so,
    portscan.likelihood alone, once under the load of the whole proc suite)."""
    spec = tmp_path / "two-roots.yaml"
    text = PAPER.read_text()
    assert "timeout_s: 5}" in text
    spec.write_text(text.replace("timeout_s: 5}", "timeout_s: 1000000}") + "\nroots: 2\n")
    return main(["check", "--runtime", "proc", str(spec), str(PARALLEL), str(LAN), "--packets", "3000", *argv])


@pytest.mark.parametrize("kill", [
    "nat[0]@1500",                          # fed by both roots (three NATs, each both roots' packets)
    "root[1]@1000,portscan[0]@2000",        # a root, then an instance that the failover root feeds
    "store@1500,nat[0]@2500",               # its replay's batches from the lists a failover store rebuilt
])
def test_kills_with_two_roots_pass_the_coe_check(tmp_path, capsys, kill):
    """With two roots and per-root order, a killed NAT (every NAT instance has both
    roots' packets), a root, and the store server fail over and the run passes the
    COE check (seed 0 of the parallel scenario, 3,000 packets)."""
    assert _check(tmp_path, "--seed", "0", "--kill", kill) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "1 of 1 seeds passed" in out and "replayed" in out


def test_random_kills_with_two_roots_pass_the_coe_check(tmp_path, capsys):
    assert _check(tmp_path, "--seeds", "3", "--kill", "random") == 0, capsys.readouterr().out
    assert "3 of 3 seeds passed" in capsys.readouterr().out


def test_a_failover_that_does_not_replay_the_batches_told_is_caught(tmp_path, capsys):
    """--break replay-by-clock: the NAT's failover runs what was handed over as new
    input; its batches go out under throughs its receivers had passed (dropped: packets
    never completed) or carry other ports (chc check: diverged)."""
    assert _check(tmp_path, "--seed", "0", "--kill", "nat[0]@1500", "--break", "replay-by-clock") == 1
    out = capsys.readouterr().out
    assert "DIVERGED" in out and "replay-by-clock: nat.0" in out


def test_clones_with_several_roots_are_refused_in_one_line(tmp_path):
    """§5.3 a clone pair's duplicates are dropped per clock, which needs one clock order;
    with two roots a clone event is refused before anything starts."""
    from chc.scenario import Event
    _, plan = _setup(tmp_path, 1)
    with pytest.raises(ValueError, match=r"clone of nat: clones with several roots \(2\) are not built"):
        ProcRuntime(plan.chain, model="EO+C+NA", events=[Event("clone", "nat", {}, at_packet=5)])


def test_per_root_marks_travel_with_each_message_and_only_grow_at_the_receiver(tmp_path):
    """A failover root's replayed messages leave after its whole replay: each carries
    the per-root marks of when it was made, not the last ones (a receiver would run
    root 0's packets up to them before the rest had come).  A receiver keeps the higher
    of each root's mark (a failover upstream's replay may say less than the failed one
    had)."""
    from chc.runtime.procworker import _Sender
    pkts, plan = _setup(tmp_path, 1, recover=True)
    ctx = zmq.Context()
    try:
        out = _Sender(plan, ctx, "@root.0#1", None, Guard([]))
        held: list = []
        out.rmarks = [3, INF]
        out.data("nat", 0, _clocked(pkts[:4], [0, 1, 2, 3]), 3, 3, hold=held)
        out.rmarks = [7, INF]
        out.data("nat", 0, _clocked(pkts[4:8], [4, 5, 6, 7]), 7, 7, hold=held)
        assert [m[6] for m in held] == [[3, INF], [7, INF]]
        assert out.repoint("nat", 0, "nat.0#1")[5] == [7, INF]      # (the record's: the last message's)
        nat = InstanceWorker(plan, ctx, "nat", 0, Guard([]))
        roots = [dealer(ctx, plan.address("nat.0"), f"@root.{r}") for r in (0, 1)]
        roots[1].send(encode(Kind.DATA, [R1 + 5, {}, [], False, R1 + 5, {}, [INF, R1 + 5]]))
        roots[1].send(encode(Kind.DATA, [R1 + 2, {}, [], False, R1 + 6, {}, [INF, R1 + 2]]))
        _take(nat, lambda: nat.rmarks[b"@root.1"] == [INF, R1 + 5] and nat.seen.mark.get(b"@root.1") == R1 + 6)
        assert nat.rmarks[b"@root.1"] == [INF, R1 + 5]
    finally:
        ctx.destroy(linger=0)
