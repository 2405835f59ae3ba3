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
                                         [4, INF, 40, INF]]))
        roots[1].send(encode(Kind.DATA, [R1 + 2, {}, pack_packets(_clocked(pkts[5:8], [R1, R1 + 1, R1 + 2])),
                                         False, R1 + 2, {}, [INF, R1 + 2, INF, 70]]))
        came = lambda: nat.marks == {b"@root.0": 4, b"@root.1": R1 + 2}  # noqa: E731
        assert _take(nat, came) == [0, 1, 2, 3, 4, R1, R1 + 1, R1 + 2]
        nat._watermark([])
        assert nat.out.rmarks == [4, R1 + 2, 40, 70]    # what it tells its downstream, per root (clocks, times)
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
                                        [-1, R1 + 5, -1, 50]]))
        nats[1].send(encode(Kind.DATA, [-1, {}, pack_packets([pkts[1]]), False, R1 + 1, {}, [-1, R1, -1, 10]]))
        # nat.1 may still send R1+1 .. R1+5 (R1+1 came: too soon to run)
        assert _take(ps, lambda: _queued(ps) == 4) == [R1]
        nats[1].send(encode(Kind.DATA, [-1, {}, pack_packets([pkts[3]]), False, R1 + 3, {}, [-1, R1 + 3, -1, 30]]))
        assert _take(ps, lambda: _queued(ps) == 4) == [R1 + 1, R1 + 2, R1 + 3]
        ps._watermark([])
        assert ps.out.rmarks == [-1, R1 + 3, -1, 30]
        for sock in nats:
            sock.send(encode(Kind.DATA, [INF, {}, [], True, INF, {}, [INF] * 4]))
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
        feeds = {"nat.0": [rows, 4, False, {}, R1 + 5, [4, R1 + 1, 40, 10]]}
        w, ran = _failover(plan, ctx, feeds, [[0, R1 + 1, -1, R1 + 1, -1, 10], [1, R1 + 2, 4, R1 + 1, 40, 10]])
        w._replay(w.replay)
        if not off:
            assert ran == [([R1, R1 + 1], R1 + 1), ([0, 1, 2, 3, 4], R1 + 2)]
            assert len(w.orders) == 2       # (its own next batch is told as the third)
            # each batch's timer cap is the failed one's: the least time mark it had run
            # all input up to after the batch (in each record: -1 of root 0, then 40 and 10)
            assert w.inst.cap == 10 and w.out.rmarks == [4, R1 + 1, 40, 10]
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
        feeds = {"nat.0": [pack_packets(pkts[:1]), -1, False, {}, R1, [-1, R1, -1, 0]]}
        w, ran = _failover(plan, ctx, feeds, [[0, R1 + 2, -1, R1 + 2, -1, 20]])
        rest = dealer(ctx, plan.address("portscan.0#1"), "nat.0#1")
        rest.send(encode(Kind.DATA, [-1, {}, pack_packets(pkts[1:3]), False, R1 + 2, {}, [-1, R1 + 2, -1, 20]]))
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


def _check(tmp_path, *argv: str, scenario: Path = PARALLEL, capture: Path = LAN) -> int:
    """chc check of the paper chain with two roots, the port-scan detector's 5 s timeout
    as it is (it was out of reach here until timers waited for every root's time mark:
    with per-root order a root running ahead fired a timer before the other root's
    timely answer now and then, docs/proc.md "Timers with several roots")."""
    spec = tmp_path / "two-roots.yaml"
    text = PAPER.read_text()
    assert "timeout_s: 5}" in text
    spec.write_text(text + "\nroots: 2\n")
    return main(["check", "--runtime", "proc", str(spec), str(scenario), str(capture), "--packets", "3000", *argv])


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
        out.rmarks = [3, INF, 30, INF]
        out.data("nat", 0, _clocked(pkts[:4], [0, 1, 2, 3]), 3, 3, hold=held)
        out.rmarks = [7, INF, 70, INF]
        out.data("nat", 0, _clocked(pkts[4:8], [4, 5, 6, 7]), 7, 7, hold=held)
        assert [m[6] for m in held] == [[3, INF, 30, INF], [7, INF, 70, INF]]
        assert out.repoint("nat", 0, "nat.0#1")[5] == [7, INF, 70, INF]     # (the record's: the last message's)
        nat = InstanceWorker(plan, ctx, "nat", 0, Guard([]))
        roots = [dealer(ctx, plan.address("nat.0"), f"@root.{r}") for r in (0, 1)]
        roots[1].send(encode(Kind.DATA, [R1 + 5, {}, [], False, R1 + 5, {}, [INF, R1 + 5, INF, 50]]))
        roots[1].send(encode(Kind.DATA, [R1 + 2, {}, [], False, R1 + 6, {}, [INF, R1 + 2, INF, 20]]))
        _take(nat, lambda: nat.rmarks[b"@root.1"] == [INF, R1 + 5, INF, 50] and nat.seen.mark.get(b"@root.1") == R1 + 6)
        assert nat.rmarks[b"@root.1"] == [INF, R1 + 5, INF, 50]
    finally:
        ctx.destroy(linger=0)


def _run_next(worker: InstanceWorker) -> list[int]:
    """``worker`` takes what was sent and runs it as one batch, as its loop does; the
    clocks run."""
    batch = []
    for _ in range(500):            # (what was sent is in: a bounded wait, not a timing assert)
        worker._receive()
        batch = worker._ready()
        if batch:
            break
        worker.box.sock.poll(20)
    worker._process(batch, worker._watermark(batch))
    return [p.clock for p in batch]


@pytest.mark.parametrize("off", [False, True])
def test_a_root_running_ahead_fires_no_timer_before_the_others_timely_answer(tmp_path, off):
    """The timer limit (docs/proc.md, "Timers with several roots"), made to happen: portscan.0 runs
    root 0's SYN (ts 0), then a packet of root 1 at 6 s, past the SYN's 5 s deadline,
    and only then root 0's SYN-ACK of 1 s.  Input order (the reference's) has the
    answer in time: a success.  A timer fires only once every root's time mark run
    here has passed its deadline (root 0's is 0, then 1 s), so the answer counts.
    Switched off (--break timers-by-packets), root 1's packet fires the timer first:
    the host's first contact is counted a failure, the mark chc check found
    (``portscan.likelihood`` [1, 0, 0] vs [0, 1, 0])."""
    from frames import SYN, SYN_ACK, tcp
    _, plan = _setup(tmp_path, 1)
    if off:
        plan.breaks = ("timers-by-packets",)
    s = 1_000_000_000
    syn = Packet(tcp("192.0.2.1", "198.51.100.9", 40000, 80, SYN), 0, 0)
    other = Packet(tcp("192.0.2.77", "198.51.100.50", 40001, 80, SYN), 6 * s, 1)
    answer = Packet(tcp("198.51.100.9", "192.0.2.1", 80, 40000, SYN_ACK), 1 * s, 2)
    ctx = zmq.Context()
    try:
        ps = InstanceWorker(plan, ctx, "portscan", 0, Guard([]))
        nat = dealer(ctx, plan.address("portscan.0"), "nat.0")
        nat.send(encode(Kind.DATA, [0, {}, pack_packets(_clocked([syn], [0])), False, 0, {}, [0, -1, 0, -1]]))
        assert _run_next(ps) == [0]
        nat.send(encode(Kind.DATA, [0, {}, pack_packets(_clocked([other], [R1])), False, R1, {},
                                    [0, R1, 0, 6 * s]]))
        assert _run_next(ps) == [R1]
        nat.send(encode(Kind.DATA, [1, {}, pack_packets(_clocked([answer], [1])), False, R1 + 1, {},
                                    [1, R1, 1 * s, 6 * s]]))
        assert _run_next(ps) == [1]
        host = syn.src
        counts = ps.inst.objects["likelihood"].get(host)
        if not off:
            assert tuple(counts) == (1, 0, 0) and ps.inst.cap == 1 * s and not ps.acted
        else:
            assert tuple(counts) == (0, 1, 0) and "timers-by-packets" in ps.acted
    finally:
        ctx.destroy(linger=0)


def _pair_of_root(r: int, k: int) -> tuple[str, str, int]:
    """The next host pair (from the k-th) that root ``r`` of two takes, and the k after it."""
    from chc.runtime.sim import root_index
    from frames import udp
    while True:
        a, b = f"192.0.{2 + k // 250}.{1 + k % 250}", f"198.51.{100 + k // 250}.{1 + k % 250}"
        k += 1
        if root_index(Packet(udp(a, b, 1, 1)), 2) == r:
            return a, b, k


def _ahead(tmp_path) -> tuple[Path, Path]:
    """A capture and scenario where root 1 runs ahead of root 0 past a port-scan deadline:
    every 20 s, root 0 opens a connection (a SYN at T) answered at T+4.99 s, with 320
    packets of its own in between; root 1 sends one packet at T+0.5 s and one at T+5.01 s.
    With the NAT slowed its mailbox fills, it takes the roots' messages in turn, and
    root 1's next message (at T+5.01 s) comes in among root 0's first ones, long before
    root 0's answer: the timer limit (without the cap, seeds 0-9 twice: 8 and 7 of 10
    diverged)."""
    from chc.capture import CaptureWriter
    from frames import SYN, SYN_ACK, tcp, udp
    s = 1_000_000_000
    w = CaptureWriter(tmp_path / "ahead.pcap", nanosecond=True)
    fa, fb, k = _pair_of_root(0, 0)     # root 0's busy pair
    ga, gb, k = _pair_of_root(1, k)     # root 1's quiet one
    for t in range(10):
        base = t * 20 * s
        a, b, k = _pair_of_root(0, k)
        w.write(base, tcp(a, b, 40000, 80, SYN))
        w.write(base + s // 2, udp(ga, gb, 5000, 53))
        for j in range(320):
            w.write(base + s // 2 + 1000 + j * (4 * s // 320), udp(fa, fb, 5000, 53))
        w.write(base + 4 * s + 990_000_000, tcp(b, a, 80, 40000, SYN_ACK))
        w.write(base + 5 * s + 10_000_000, udp(ga, gb, 5000, 53))
    w.close()
    scenario = tmp_path / "ahead.yaml"
    scenario.write_text("name: ahead\nparallelism: 1\nmodel: EO\nbatch_size: 32\nevents:\n"
                        '  - {at: {packets: 0}, do: slow, target: "nat[0]", delay: "uniform:100:300"}\n')
    return scenario, tmp_path / "ahead.pcap"


@pytest.mark.parametrize("off", [False, True])
def test_a_root_running_ahead_past_a_deadline_passes_the_coe_check(tmp_path, capsys, off):
    """The timer limit end to end (chc check, the port-scan detector's 5 s timeout): root
    1 runs ahead of root 0 past a deadline at portscan.0 (:func:`_ahead`), and the host's
    timely answer counts as the reference counts it.  Switched off (--break
    timers-by-packets), the check finds the early timer: portscan.likelihood, a success
    counted a failure (on most seeds: the timing is the processes'; four seeds, so that
    one at least diverges)."""
    scenario, capture = _ahead(tmp_path)
    argv = ["--seeds", "4"] + (["--break", "timers-by-packets"] if off else [])
    code = _check(tmp_path, *argv, scenario=scenario, capture=capture)
    out = capsys.readouterr().out
    if not off:
        assert code == 0, out
        assert "4 of 4 seeds passed" in out
    else:
        assert code == 1, out
        assert "DIVERGED" in out and "break timers-by-packets: portscan.0" in out
        assert "portscan.likelihood" in out and "reference [1, 0, 0] vs physical [0, 1, 0]" in out
