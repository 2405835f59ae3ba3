"""§5.4 store-server failover over processes: a real SIGKILL of the store server.

The store server checkpoints to a file of the run's directory every interval and
at every declaration; every instance keeps a write-ahead log of what it sent and
read.  When the store server dies, each live instance hands its log in, the
coordinator rolls the latest checkpoint forward from the logs (TS selection, as
the sim's store failover) and starts a failover store server from the result;
every client re-points to it and sends again what was not answered, and the roots
take each commit report once.  The run ends with the sim's state digest, counts
and alerts; without the roll forward (``--break no-wal``) it does not.  The pieces
are tested on their own too.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

zmq = pytest.importorskip("zmq")

from chc.capture import open_capture  # noqa: E402
from chc.cli import main  # noqa: E402
from chc.core.recovery import RecoverableEngine, WriteAheadLog  # noqa: E402
from chc.core.root import LogEntry, Root  # noqa: E402
from chc.core.store import ObjectKey, Op  # noqa: E402
from chc.runtime import procstore  # noqa: E402
from chc.runtime.errors import ProcFailure  # noqa: E402
from chc.runtime.proc import Kill, ProcRuntime, parse_kill  # noqa: E402
from chc.runtime.procio import Guard  # noqa: E402
from chc.runtime.sim import SimRuntime  # noqa: E402
from chc.runtime.storeserver import RemoteStore  # noqa: E402
from chc.runtime.wire import Kind, decode, encode, endpoint  # noqa: E402
from chc.spec import load_spec  # noqa: E402
from procpace import descendants, held  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAN = str(ROOT / "traces/pathspider/lan-2012.pcap.gz")
PAPER = str(ROOT / "examples/paper_chain.yaml")
PARALLEL = str(ROOT / "examples/scenarios/parallel.yaml")
N = 6000
MODEL = "EO+C+NA"
STORE_KILL = Kill("store", 0, 4000)


@pytest.fixture(scope="module")
def records() -> list[tuple[int, bytes]]:
    with open_capture(LAN) as r:
        return list(itertools.islice(r, N))


@pytest.fixture(scope="module")
def sim(records):
    rt = SimRuntime(load_spec(PAPER), model=MODEL)
    rt.run(records)
    return rt.summary()


def _run(records, checkpoint_ms: float, breaks=(), kills=(STORE_KILL,), redis: str = ""):
    """A proc run whose store server is killed once NAT has processed a batch (so its
    log holds updates to roll forward); ``redis``: the state on that Redis server, the
    store server in front of it."""
    store = None
    if redis:
        from chc.backends.redis import RedisStore
        store = RedisStore([redis], fresh=True, namespace="proc-store-kill")      # what chc run opens
    try:
        rt = ProcRuntime(load_spec(PAPER), model=MODEL, kills=list(kills), checkpoint_ms=checkpoint_ms,
                         breaks=breaks, store=store, store_url=redis or "memory", namespace="proc-store-kill")
        rt.run(held(rt, records, "nat.0", STORE_KILL.at))
    finally:
        if store is not None:
            store.close()
    return rt, rt.summary()


def _same(s, sim) -> None:
    assert s.state_digest == sim.state_digest
    for k in ("packets_in", "packets_out", "dropped", "bypassed", "nf_errors"):
        assert getattr(s, k) == getattr(sim, k), k
    assert s.alerts == sim.alerts
    assert s.log["remaining"] == 0


# -- end to end ------------------------------------------------------------------------------

def test_a_killed_store_server_fails_over_with_the_sims_results(records, sim):
    # No periodic checkpoint: everything since the declarations is rolled forward from the logs.
    rt, s = _run(records, checkpoint_ms=600_000)
    _same(s, sim)
    [e] = [e for e in s.events if e["kind"] == "store-failover"]
    assert e["process"] == "@store" and e["failover_process"] == "@store#1" and e["wal"]
    assert e["re_executed"] > 0 and e["wal_updates"] == e["re_executed"]
    assert e["how"] == "killed by signal 9" and e["killed_at_packet"] >= STORE_KILL.at
    assert not descendants(os.getpid()) & set(rt.pids.values())


@pytest.mark.parametrize("checkpoint_ms", [600_000, 20])
def test_on_redis_a_killed_store_server_fails_over_with_the_sims_results(records, sim, redis_urls, checkpoint_ms):
    """§5.4 on one Redis server: the store server in front of it checkpoints the namespace
    (with TS), the namespace is lost with it, and the failover server writes back the
    checkpoint rolled forward from the instances' logs."""
    rt, s = _run(records, checkpoint_ms=checkpoint_ms, redis=redis_urls[0])
    _same(s, sim)
    # The kill's failover; on a machine loaded enough that a failover store server misses
    # ten heartbeats (5 s) it is taken for hung and failed over again, which must keep the
    # sim's results too (seen once, under two CPU hogs)
    e, *hung = [e for e in s.events if e["kind"] == "store-failover"]
    assert all("heartbeats" in h["how"] for h in hung), hung
    assert e["re_executed"] > 0 and e["wal"]
    assert s.store["backend"] == f"{redis_urls[0]} (through the store server)"
    if checkpoint_ms == 20:
        assert e["checkpoint"] > 1
    assert not descendants(os.getpid()) & set(rt.pids.values())


def test_on_redis_without_the_roll_forward_the_failover_store_loses_updates(records, sim, redis_urls):
    rt, s = _run(records, checkpoint_ms=600_000, breaks=("no-wal",), redis=redis_urls[0])
    [e] = [e for e in s.events if e["kind"] == "store-failover"]
    assert not e["wal"] and e["re_executed"] == 0 and e["wal_updates"] > 0
    assert s.state_digest != sim.state_digest


def test_checkpoints_every_few_milliseconds_truncate_the_logs_and_recover_the_same(records, sim):
    rt, s = _run(records, checkpoint_ms=20)
    _same(s, sim)
    [e] = [e for e in s.events if e["kind"] == "store-failover"]
    assert rt.store_stats["checkpoints"] > 3      # (the failover store's own, periodic)
    assert e["checkpoint"] > 1


def test_without_the_roll_forward_the_failover_store_loses_updates(records, sim):
    rt, s = _run(records, checkpoint_ms=600_000, breaks=("no-wal",))
    [e] = [e for e in s.events if e["kind"] == "store-failover"]
    assert not e["wal"] and e["re_executed"] == 0 and e["wal_updates"] > 0
    assert s.state_digest != sim.state_digest


class _StoreDiesInAReplay(ProcRuntime):
    """The store server SIGKILLed as soon as an NF failover has started its process (its
    replay needs the store: it cannot be done before the death is seen)."""

    def _fail_over(self, dead, p):
        super()._fail_over(dead, p)
        self.procs[self.current["@store"]].kill()


def test_the_store_killed_while_an_instance_fails_over_stops_the_run_in_one_line(records):
    # Table 3: the failover under way needs the store, and the failed instance's log is gone.
    rt = _StoreDiesInAReplay(load_spec(PAPER), model=MODEL, kills=[Kill("nat", 0, 3000)], failover=True)
    with pytest.raises(ProcFailure) as err:
        rt.run(held(rt, records, "nat.0", 3000))
    assert "nat.0 was down and not yet failed over: they failed together (Table 3)" in str(err.value)
    assert "\n" not in str(err.value)
    assert not descendants(os.getpid()) & set(rt.pids.values())


def test_a_store_kill_waits_for_a_failover_under_way_and_both_recover(records, sim):
    rt = ProcRuntime(load_spec(PAPER), model=MODEL, kills=[Kill("nat", 0, 3000), Kill("store", 0, 3000)])
    rt.run(held(rt, records, "nat.0", 3000))
    s = rt.summary()
    _same(s, sim)
    assert [e["kind"] for e in s.events] == ["failover", "store-failover"]


def test_chc_run_kill_store_prints_the_sims_digest(capsys, records, sim, tmp_path):
    out = tmp_path / "s.json"
    code = main(["run", "--runtime", "proc", PAPER, LAN, "-c", "3000", "--model", MODEL, "--kill", "store@2000",
                 "--summary-json", str(out)])
    assert code == 0
    s = json.loads(out.read_text())
    ref = SimRuntime(load_spec(PAPER), model=MODEL)
    ref.run(records[:3000])
    assert s["state_digest"] == ref.summary().state_digest
    assert [e["kind"] for e in s["events"]] == ["store-failover"]


def test_chc_check_kill_store_passes_and_no_wal_is_caught(capsys):
    # (no periodic checkpoint, and the kill well past what the coordinator feeds ahead of
    # the chain: whatever the chain did is in the logs, so the roll forward, and the break,
    # always have something to do)
    base = ["check", "--runtime", "proc", PAPER, PARALLEL, LAN, "--packets", "3000", "--seeds", "1",
            "--first-seed", "1", "--kill", "store@2700", "--checkpoint-ms", "600000"]
    assert main(base) == 0
    assert "restored checkpoint" in capsys.readouterr().out
    assert main([*base, "--break", "no-wal"]) == 1
    assert "rolled none of the" in capsys.readouterr().out


def test_kill_store_parses_and_bad_ones_are_one_line():
    chain = load_spec(PAPER)
    assert parse_kill("store@10", chain) == Kill("store", 0, 10)
    assert parse_kill("store@10", chain).process == "@store"
    with pytest.raises(ValueError, match="one store server"):
        parse_kill("store[1]@10", chain)
    with pytest.raises(ValueError, match="one Redis server.*several"):
        ProcRuntime(chain, model=MODEL, store_url="redis://127.0.0.1:1,redis://127.0.0.1:2",
                    kills=[Kill("store", 0, 10)])
    with pytest.raises(ValueError, match="checkpoint interval"):
        ProcRuntime(chain, model=MODEL, failover=True, checkpoint_ms=0)


NEITHER = "--checkpoint-ms: the store server takes checkpoints only to fail over, with --failover or --kill store@N"
NO_SEED = "--checkpoint-ms: no seed kills the store server"
FOR_PROC = "--checkpoint-ms is for --runtime proc"


@pytest.mark.parametrize("argv, says", [
    (["run", "--runtime", "proc", PAPER, LAN, "-c", "10"], NEITHER),
    (["run", "--runtime", "proc", PAPER, LAN, "-c", "10", "--kill", "nat[0]@5"], NEITHER),
    (["run", "--runtime", "proc", PAPER, LAN, "-c", "10", "--failover", "--packet-log", "store"],
     "--checkpoint-ms: with --packet-log store the store server is not failed over"),
    (["run", PAPER, LAN, "-c", "10"], FOR_PROC),
    (["serve", "--runtime", "proc", PAPER, "--capture", LAN, "-c", "10"], NEITHER),
    (["serve", PAPER, "--capture", LAN, "-c", "10"], FOR_PROC),
    (["check", "--runtime", "proc", PAPER, PARALLEL, LAN, "--packets", "10", "--seed", "0"], NO_SEED),
    (["check", "--runtime", "proc", PAPER, PARALLEL, LAN, "--packets", "10", "--seed", "0", "--kill", "nat[0]@5"],
     NO_SEED),
    (["check", PAPER, PARALLEL, LAN, "--packets", "10", "--seed", "0"], "--checkpoint-ms: it is for --runtime proc"),
])
def test_a_checkpoint_interval_nothing_uses_is_refused_in_one_line(argv, says, capsys):
    """It was accepted and did nothing: the store server checkpoints only when it can fail
    over (a new user's trial).  Refused as the other options that do nothing there are."""
    assert main([*argv, "--checkpoint-ms", "50"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"chc: error: {says}"), err


def test_a_checkpoint_interval_for_kills_a_seed_may_draw_is_taken():
    from chc.checkrun import _checkpoints_unused
    from chc.scenario import load_scenario

    sc = load_scenario(PARALLEL)
    for kill in ("random", "random:2", "during", "nat[0]@5,store@9"):
        assert _checkpoints_unused(sc, "proc", kill, ["memory"]) == "", kill
    assert "sharded Redis" in _checkpoints_unused(sc, "proc", "random", ["redis-cluster://127.0.0.1:1"])
    assert _checkpoints_unused(sc, "proc", "nat[0]@5", ["memory"]).startswith("no seed kills")


# -- the pieces --------------------------------------------------------------------------------

def _engine() -> RecoverableEngine:
    e = RecoverableEngine()
    e.preimages = True
    pool, n = ObjectKey("nat", "ports", None, False), ObjectKey("nat", "packets", None, False)
    e.declare(pool, list(range(2000)))
    e.declare(n, 0)
    e.apply(Op("pop", pool, (), "nat/0", 1, 0, (5, 0), 11))
    e.apply(Op("incr", n, (1,), "nat/0", 2, 0, (5, 1), 12))
    e.apply(Op("set", ObjectKey("nat", "new", "k", False), (3,), "nat/0", 3, 0, (6, 0), 13))
    return e


def test_a_checkpoint_survives_a_file_and_leaves_long_preimages_out(tmp_path):
    e = _engine()
    want = e.checkpoint()
    image = e.image(procstore.PREIMAGE_LIMIT)
    path = str(tmp_path / "c")
    procstore.write_state(path, image, {0: [(5, 11)]}, {}, {0: 3}, {}, None, [], 7, {})
    state = procstore.boot(path)
    got = state["checkpoint"]
    assert dict(got.data) == dict(want.data) and dict(got.ts) == dict(want.ts)
    assert {k: dict(v) for k, v in got.clock_log.items()} == {k: dict(v) for k, v in want.clock_log.items()}
    pool = ObjectKey("nat", "ports", None, False)
    # the 2,000-port pool's pre-image is left out, and named; the others are kept
    assert pool not in got.before and got.unknown_before[pool] == frozenset({5})
    new = ObjectKey("nat", "new", "k", False)
    assert got.restore().before[new][6] is want.restore().before[new][6]     # the absent marker itself
    assert state["held"] == {0: [(5, 11)]} and state["floors"] == {0: 3} and state["serial"] == 7
    assert pickle.loads(pickle.dumps(want)).restore().data == want.restore().data


def test_the_serial_log_cuts_a_half_written_frame(tmp_path):
    path = str(tmp_path / "serial")
    log = procstore.SerialLog(path)
    log.append(b"one")
    log.append(b"two")
    log.close()
    with open(path, "ab") as f:
        f.write((100).to_bytes(4, "little") + b"cut")     # a kill in the middle of a write
    assert procstore.frames(path) == [b"one", b"two"]
    again = procstore.SerialLog(path)
    assert again.count == 2
    again.append(b"three")
    again.close()
    assert procstore.frames(path) == [b"one", b"two", b"three"]


def test_a_remote_store_sends_what_is_unanswered_to_the_failover(tmp_path):
    ctx = zmq.Context()
    try:
        old, new = endpoint(str(tmp_path), "a"), endpoint(str(tmp_path), "b")
        a, b = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
        a.bind(old)
        b.bind(new)
        remote = RemoteStore(ctx, old, "nat.0", Guard([]))
        rid = remote._send("commits", [0])
        peer, frame = a.recv_multipart()
        assert peer == b"nat.0" and remote.unanswered == {rid: frame}
        # The dead server's answer, already on its way, is not taken once the log is handed in
        # (recovery re-executes that request from the log; its answer could differ).
        a.send_multipart([peer, encode(Kind.REPLY, [rid, 1, [[5, 1]]])])
        assert remote.sock.poll(2000)                   # (arrived: without detach it would be read)
        remote.detach()
        assert not remote._read(False) and rid in remote.unanswered
        remote.repoint(new)
        assert b.poll(2000)
        assert b.recv_multipart() == [b"nat.0", frame]      # the same request, to the failover
        assert decode(frame)[0] == Kind.CALL
        remote.close()
    finally:
        ctx.destroy(linger=0)


def test_a_root_takes_each_commit_report_once_after_a_store_failover():
    root = Root(0)
    root.dedup_commits = True
    entry = root.log[7] = LogEntry(None)
    entry.live = 0
    entry.vector = 0b110
    root.commit(7, 0b010)
    root.commit(7, 0b010)           # reported again by the failover store: not cancelled
    assert root.duplicate_commits == 1 and 7 in root.log
    root.commit(7, 0b100)
    assert 7 not in root.log
    root.dedup_commits = False      # (without it the repeat cancels the first: never deleted)
    entry = root.log[8] = LogEntry(None)
    entry.live, entry.vector = 0, 0b010
    root.commit(8, 0b010)
    assert 8 not in root.log


def test_an_instance_log_survives_its_file(tmp_path):
    wal = WriteAheadLog("nat/0")
    key = ObjectKey("nat", "packets", None, False)
    wal.log_sent([Op("incr", key, (1,), "nat/0", 1, 0, (5, 0), 12)])
    wal.shared_reads = {("nat", 0, 5): [3]}
    client = SimpleNamespace(backend=SimpleNamespace(wal=wal), client_id="nat/0", instance=0, seq=1,
                             callback_caches={key: None})
    path = procstore.wal_path(str(tmp_path), "nat.0")
    procstore.dump_wal(path, client)
    log = procstore.load_wal(path)
    assert (log.client_id, log.instance, log.sent_seq, log.subscriptions) == ("nat/0", 0, 1, frozenset({key}))
    assert [op.seq for op in log.wal.updates] == [1] and log.wal.shared_reads == {("nat", 0, 5): [3]}
    assert procstore.client_id("nat.0") == "nat/0" and procstore.client_id("nat.0#2") == "nat/0+failover2"


@pytest.mark.parametrize("checkpoint_s", [0.1, 0.0])
def test_a_root_dedups_commit_reports_exactly_when_the_store_can_fail_over(tmp_path, checkpoint_s):
    from chc.runtime.procworker import Plan, RootWorker

    ctx = zmq.Context()
    try:
        plan = Plan(str(tmp_path), load_spec(PAPER), MODEL, 256, ("memory", endpoint(str(tmp_path), "@store")),
                    recover=True, checkpoint_s=checkpoint_s)
        worker = RootWorker(plan, ctx, 0, Guard([]))
        assert worker.root.dedup_commits is bool(checkpoint_s)
    finally:
        ctx.destroy(linger=0)


def test_a_replay_reaching_a_preimage_the_failover_store_lacks_is_refused_in_one_line():
    from chc.core.client import CachedObject
    from chc.core.store import StoreError
    from chc.runtime.procworker import InstanceWorker

    pool = CachedObject.__new__(CachedObject)
    pool.private = True
    shared = object()               # (a shared object is read from the store: no pre-image used)
    unknown = [["ports", None, [5, 9]], ["packets", None, [7]]]
    worker = SimpleNamespace(me="nat.0#1", inst=SimpleNamespace(vertex="nat", objects={"ports": pool,
                                                                                        "packets": shared}),
                             store=SimpleNamespace(unknown_of=lambda vertex: unknown))
    pkt = SimpleNamespace
    InstanceWorker._check_preimages(worker, [pkt(clock=6), pkt(clock=7)])       # ports not reached
    with pytest.raises(StoreError, match=r"nat\.0#1 replays packet clock 9, whose pre-image of ports\[None\]"):
        InstanceWorker._check_preimages(worker, [pkt(clock=8), pkt(clock=9)])


class _StoreDiesInAFailover(ProcRuntime):
    """The store server SIGKILLed just as an NF failover starts (its first store call)."""

    def _fail_over(self, dead, p):
        store = self.procs[self.current["@store"]]
        store.kill()
        store.join(5)
        return super()._fail_over(dead, p)


@pytest.mark.timeout(120)
def test_the_store_dying_inside_a_failover_stops_the_run_in_one_line_not_a_hang(records):
    rt = _StoreDiesInAFailover(load_spec(PAPER), model=MODEL, kills=[Kill("nat", 0, 3000)], failover=True)
    with pytest.raises(ProcFailure, match=r"@store \(pid \d+\) was killed by signal 9 while nat\.0's failover "
                                          r"was under way"):
        rt.run(held(rt, records, "nat.0", 3000))
    assert not descendants(os.getpid()) & set(rt.pids.values())


def _store_hangs_during_a_call(rt, records, at: int):
    """The records; at ``at``, the store server SIGSTOPped and the coordinator calling it."""
    import signal
    for index, record in enumerate(records):
        if index == at:
            os.kill(rt.procs["@store"].pid, signal.SIGSTOP)
            rt.remote.checkpoint()      # (waits: the hung server must be seen from inside this wait)
        yield record


@pytest.mark.timeout(120)
def test_a_store_hung_while_the_coordinator_waits_for_it_is_failed_over(records, sim):
    rt = ProcRuntime(load_spec(PAPER), model=MODEL, failover=True, heartbeat_s=0.1, misses=10)
    rt.run(_store_hangs_during_a_call(rt, records, 3500))
    s = rt.summary()
    _same(s, sim)
    [e] = [e for e in s.events if e["kind"] == "store-failover"]
    assert e["how"].startswith("silent for")


def test_kill_store_with_the_packet_log_in_the_store_is_refused_in_one_line():
    with pytest.raises(ValueError, match="--packet-log store"):
        ProcRuntime(load_spec(PAPER), model=MODEL, log_mode="store", kills=[Kill("store", 0, 10)])


def test_a_failover_store_tells_each_subscriber_the_value_now(tmp_path):
    e = _engine()
    pool = ObjectKey("lb", "pool", None, False)
    e.declare(pool, ["a", "b"])
    e.subscribe(pool, "lb/1")
    e.subscribe(ObjectKey("lb", "never-written", None, False), "lb/1")    # (its default stands: no news)
    e.apply(Op("set", pool, (["a", "b", "c"],), "lb/0", 1, 0, (9, 0), 21))
    stale = ("update", pool, ["a", "b"])
    procstore.write_state(os.path.join(str(tmp_path), procstore.CHECKPOINT), e.image(), {}, {"lb/1": [stale]},
                          {}, {}, None, [], 0, {})
    procstore.rebuild(str(tmp_path), [], {"lb/0", "nat/0"}, [])     # (retired: nothing since)
    state = procstore.boot(os.path.join(str(tmp_path), procstore.RESTORE))
    assert state["inboxes"] == {"lb/1": [("update", pool, ["a", "b", "c"])]}


def test_a_root_writes_its_last_persisted_clock_again_to_a_failover_store(tmp_path):
    from chc.core.root import clock_key
    from chc.runtime.procworker import Plan, RootWorker

    ctx = zmq.Context()
    try:
        plan = Plan(str(tmp_path), load_spec(PAPER), MODEL, 256, ("memory", endpoint(str(tmp_path), "@store")),
                    recover=True, checkpoint_s=0.1, persist_every=1000)
        worker = RootWorker(plan, ctx, 0, Guard([]))
        worker.root.next_seq = 2500             # clocks 0, 1000 and 2000 were persisted
        worker.store_failed("store", endpoint(str(tmp_path), "@store#1"))
        [op] = worker.meta_pending
        assert (op.code, op.key, op.args) == ("set", clock_key(0), (worker.root.base | 2000,))
    finally:
        ctx.destroy(linger=0)


def test_on_redis_a_failover_store_server_delivers_callbacks_again(redis_urls):
    """The failed server's pub/sub connection died with it: the failover server listens
    for the restored subscriptions, so a cache kept by callbacks hears later updates."""
    import time

    from chc.backends.redis import RedisStore
    from chc.core.recovery import recover
    from chc.runtime.storeserver import CheckpointedRedis, redis_store

    guard = SimpleNamespace(tick=lambda: None)
    owner = RedisStore(redis_urls[:1], fresh=True, namespace="callbacks")       # the coordinator's
    try:
        first = CheckpointedRedis(redis_store(redis_urls[:1], "callbacks", {}, guard), frozenset())
        pool = ObjectKey("lb", "pool", None)
        first.subscribe(pool, "lb/1")
        first.execute([Op("set", pool, ((1, 2),), "lb/0", 1, tag=(1, 0))])
        assert first.notifications("lb/1")
        ckpt = pickle.loads(pickle.dumps(first.image(1000)))
        first.close()                                   # (its connections die with it)
        engine = recover(ckpt, [], users=set(), retired={"lb/0", "lb/1"}, copy=False).engine
        failover = CheckpointedRedis(redis_store(redis_urls[:1], "callbacks", {}, guard), frozenset())
        failover.boot(pickle.loads(pickle.dumps(engine.image())).restore(copy=False))
        failover.execute([Op("set", pool, ((3, 4),), "lb/0", 2, tag=(2, 0))])
        got = []
        for _ in range(20):
            got += failover.notifications("lb/1")
            if got:
                break
            time.sleep(0.05)
        assert got and got[-1][2] == (3, 4), got
        failover.close()
    finally:
        owner.close()


def test_a_checkpoint_that_takes_long_puts_the_next_off(tmp_path):
    """A checkpoint's cost sets the next one's time when it exceeds the interval: a store
    server whose checkpoints took seconds did little but checkpoint."""
    import time

    store = SimpleNamespace(held={}, inboxes={}, engine=None)

    class SlowEngine:
        def drain_commits(self):
            return []

        def image(self, limit):
            time.sleep(0.05)
            return RecoverableEngine().image()

    store.engine = SlowEngine()
    failover = SimpleNamespace(floors={}, delivered={}, unknown={})
    d = procstore.Durable(store, failover, str(tmp_path), every_s=0.01, told=lambda body: None, serial=None)
    d.take()
    assert d.next - time.monotonic() >= procstore.COST_RATIO * 0.05 * 0.9


def test_on_redis_a_redis_server_that_dies_by_itself_stops_a_failover_run_in_one_line(records, dedicated_redis,
                                                                                     capfd):
    """With --failover on Redis, a Redis server that died by itself killed the store
    server in front of it, and every failover store server after it, one every half
    second without end (a new-user trial): the run now stops, naming Redis, and the
    store server leaves no traceback on the way (a second trial)."""
    import threading
    import time

    from chc.backends.redis import RedisStore

    store = RedisStore([dedicated_redis.url], fresh=True, namespace="dies")
    rt = ProcRuntime(load_spec(PAPER), model=MODEL, failover=True, store=store, store_url=dedicated_redis.url,
                     namespace="dies")
    killer = threading.Timer(2.0, dedicated_redis.kill)
    killer.start()
    started = time.monotonic()
    try:
        # Whichever sees it first stops the run naming Redis: the store server in front of
        # it (at a checkpoint's read) or an instance whose retries gave up (under load; it
        # failed a full suite's run once this way, both one line)
        with pytest.raises(ProcFailure, match=r"Redis server behind it is unreachable|StoreLost: redis://\S+: "
                                              r"connection refused: the store is unreachable"):
            rt.run(records * 20)
    finally:
        killer.cancel()
        with contextlib.suppress(Exception):
            store.close()
    assert time.monotonic() - started < 90
    assert "Traceback" not in capfd.readouterr().err
    assert not [e for e in rt.events if e["kind"] == "store-failover"]
    assert not descendants(os.getpid()) & set(rt.pids.values())


def test_a_failover_store_server_that_dies_before_it_is_up_stops_the_run(records):
    """A failover store server that dies before its first checkpoint would be followed by
    another that dies the same way: the run stops instead."""

    class _BootDies(ProcRuntime):
        def _launch_store(self, name, restore):
            super()._launch_store(name, restore)
            if "#" in name:
                self.procs[name].kill()

    rt = _BootDies(load_spec(PAPER), model=MODEL, kills=[STORE_KILL], checkpoint_ms=600_000)
    with pytest.raises(ProcFailure, match="before it was up"):
        rt.run(held(rt, records, "nat.0", STORE_KILL.at))
    assert not descendants(os.getpid()) & set(rt.pids.values())
