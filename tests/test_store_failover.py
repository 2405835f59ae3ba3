"""Store instance failover in the sim (§5.4, Figure 7): a crashed memory store is
rebuilt from its latest checkpoint, the instances' write-ahead logs and caches,
and the COE checker, following the recovered store's history, passes the seeds;
restoring from the checkpoint and caches only (--break no-wal) is caught; a store
failing together with an instance whose state it held is reported unrecoverable."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from chc.capture import open_capture
from chc.coe import BreakState, Observers, check_runtime, check_variant, physical_runtime, variant
from chc.packet import Packet
from chc.reference import StoreStep, replay
from chc.runtime.sim import SimRuntime, Unrecoverable
from chc.scenario import load_scenario, parse_scenario
from chc.spec import load_spec
from test_recovery import _check

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "examples/paper_chain.yaml"
LAN = ROOT / "traces/pathspider/lan-2012.pcap.gz"
SCENARIO = ROOT / "examples/scenarios/store-crash.yaml"

FAULTS = {"store": {"latency": "uniform:5:60", "drop": 0.02, "duplicate": 0.02, "reorder": 0.03,
                    "timeout_us": 500},
          "data": {"latency": "uniform:1:30"}, "commits": {"latency": "uniform:1:200"}}
# Three store crashes; checkpoints every 2 s of virtual time (the capture has ~20
# packets/s), so each recovery rolls a few dozen logged updates forward.
CRASHES = {"pacing": {"multiplier": 1}, "delays": {"*": "uniform:200:2000"}, "store": "memory",
           "network": FAULTS, "parallelism": {"lb": 1},
           "events": [{"at": {"packets": 400}, "do": "crash", "target": "store", "checkpoint_ms": 2000},
                      {"at": {"packets": 900}, "do": "crash", "target": "store"},
                      {"at": {"packets": 1300}, "do": "crash", "target": "store", "heartbeat_us": 50,
                       "misses": 2}]}


@pytest.fixture(scope="module")
def records() -> list:
    return list(itertools.islice(open_capture(LAN), 1500))


def _recovered(rt) -> list[dict]:
    return [e for e in rt.events_log if e["kind"] == "store-recovered"]


@pytest.mark.parametrize("model", ["EO+C", "EO+C+NA"])
def test_store_failover_keeps_coe(records, model):
    for seed in range(2):
        res, rt = _check(records, {**CRASHES, "model": model}, seed)
        assert res.ok, (seed, res.unrecoverable, [str(d) for d in res.divergences[:3]])
        done = _recovered(rt)
        assert len(done) == 3, rt.events_log
        # Exercised, not vacuous: logged updates were rolled forward, caches re-read.
        assert sum(e["re_executed"] for e in done) > 0 and all(e["per_flow_rolled"] > 0 for e in done), done
        assert all(0 < e["detect_ns"] < e["recovery_ns"] for e in done), done
        assert rt.summary().log["remaining"] == 0
    # What the summary's events show of each crash and recovery.
    crash = next(e for e in rt.events_log if e["kind"] == "store-crash")
    assert crash["checkpoint_age_ns"] >= 0 and crash["detect_vt"] > crash["crashed_vt"]
    assert {"checkpoint", "checkpoint_age_ns", "wal_updates", "commits_reported", "restore_ns"} <= set(done[0])


def test_the_shipped_scenario_passes(records):
    chain = load_spec(PAPER)
    sc = load_scenario(SCENARIO)
    r = check_variant(chain, sc, records, variant(chain, sc, 3, ["memory"]))
    assert r.verdict == "pass", (r.result.unrecoverable, [str(d) for d in r.result.divergences[:3]])


def test_no_wal_is_caught(records):
    chain = load_spec(PAPER)
    sc = parse_scenario({**CRASHES, "model": "EO+C+NA"})
    verdicts = [check_variant(chain, sc, records, variant(chain, sc, s, ["memory"]), ("no-wal",)).verdict
                for s in range(2)]
    assert set(verdicts) == {"diverged"}, verdicts


def test_store_and_instance_failing_together_is_unrecoverable(records):
    """Table 3: the store fails while nat[0], whose log and cache it needs, is down."""
    raw = {**CRASHES, "model": "EO+C+NA", "parallelism": 2,
           "events": [{"at": {"packets": 500}, "do": "crash", "target": "nat[0]", "heartbeat_us": 1000},
                      {"at": {"packets": 500}, "do": "crash", "target": "store", "together": True}]}
    res, _ = _check(records, raw, 0)
    assert res.unrecoverable is not None and "nat[0]" in res.unrecoverable
    assert "failed together" in res.unrecoverable and "Table 3" in res.unrecoverable


def test_model_eo_recovers_per_flow_state_from_the_log(records, monkeypatch):
    """Model EO caches nothing: per-flow state comes back from the checkpoint and the
    per-flow updates in the write-ahead logs (before they were logged, this was
    reported unrecoverable).  Without the per-flow roll forward the state is stale
    and the checker catches it."""
    import chc.core.recovery as recovery

    res, rt = _check(records[:600], {**CRASHES, "model": "EO"}, 0)
    assert res.ok, (res.unrecoverable, [str(d) for d in res.divergences[:3]])
    assert sum(e["per_flow_rolled"] for e in _recovered(rt)) > 0
    monkeypatch.setattr(recovery, "_roll_flows_forward", lambda *a: None)
    res, _ = _check(records[:600], {**CRASHES, "model": "EO"}, 0)
    assert res.unrecoverable is None and res.divergences


MOVES = {**CRASHES, "model": "EO+C+NA", "parallelism": {"nat": 2, "lb": 1},
         "events": [{"at": {"packets": 300}, "do": "move", "target": "nat", "fraction": 0.5, "pick": 1},
                    {"at": {"packets": 320}, "do": "crash", "target": "store", "checkpoint_ms": 2000},
                    {"at": {"packets": 500}, "do": "scale-out", "target": "portscan"},
                    {"at": {"packets": 520}, "do": "crash", "target": "store"}]}


def test_store_crash_after_a_handover_recovers(records, monkeypatch):
    """A handover drops the old instance's per-flow cache (§5.1 step 5), so that
    state is in the store only: checkpoints hold per-flow objects and the logs
    their updates since, so a later store crash recovers it (it was reported
    unrecoverable before).  A checkpoint is taken at every change of owner (two
    writers of one flow since a checkpoint are refused:
    test_store_recovery.py).  Without the per-flow roll forward it diverges."""
    import chc.core.recovery as recovery

    res, rt = _check(records[:900], MOVES, 0)
    assert res.ok, (res.unrecoverable, [str(d) for d in res.divergences[:3]])
    assert [e["kind"] for e in rt.events_log if e["kind"] in ("move", "store-recovered")][:2] == \
        ["move", "store-recovered"]
    assert rt.store_failover.owner_checkpoints >= 2
    monkeypatch.setattr(recovery, "_roll_flows_forward", lambda *a: None)
    res, _ = _check(records[:900], MOVES, 0)
    assert res.unrecoverable is None and res.divergences


def test_store_crash_while_a_root_is_down_is_unrecoverable(records):
    """Table 3: the root's persisted clock and store-kept packet log are in the store."""
    raw = {**CRASHES, "model": "EO+C+NA", "packet_log": "store",
           "events": [{"at": {"packets": 500}, "do": "crash", "target": "root[0]", "heartbeat_us": 1000000},
                      {"at": {"packets": 505}, "do": "crash", "target": "store", "together": True}]}
    res, _ = _check(records[:800], raw, 0)
    assert res.unrecoverable is not None and "root[0]" in res.unrecoverable and "Table 3" in res.unrecoverable


def test_a_root_crash_while_the_store_is_down_waits_for_it(records):
    """The other order is sequential: the root crash waits until the store is back
    (as an NF crash does), at the next batch boundary.  Run inside the store's
    recovery it lost the log writes the root had not yet sent (a packet stayed
    logged for ever)."""
    raw = {**CRASHES, "model": "EO+C+NA", "packet_log": "store",
           "events": [{"at": {"packets": 500}, "do": "crash", "target": "store"},
                      {"at": {"packets": 500}, "do": "crash", "target": "root[0]"}]}
    res, rt = _check(records[:800], raw, 0)
    assert res.ok, (res.unrecoverable, [str(d) for d in res.divergences[:3]])
    kinds = [e["kind"] for e in rt.events_log if e["kind"] in ("store-crash", "store-recovered", "root-failover")]
    assert kinds == ["store-crash", "store-recovered", "root-failover"]


def _on_redis(records, urls: list[str], raw: dict, seed: int, breaks: tuple[str, ...] = ()):
    """One seed of ``raw`` with its state on the Redis servers ``urls``: (result, runtime)."""
    from chc.backends import open_store

    chain = load_spec(PAPER)
    sc = parse_scenario({k: v for k, v in raw.items() if k != "store"})
    v = variant(chain, sc, seed, [",".join(urls)])
    store = open_store(v.store)
    try:
        obs = Observers()
        rt = physical_runtime(chain, sc, v, len(records), obs, store)
        BreakState(breaks, 0).install(rt)
        return check_runtime(chain, rt, records, obs), rt
    finally:
        store.close()


@pytest.mark.parametrize("model", ["EO", "EO+C+NA"])
def test_store_failover_on_redis_keeps_coe(records, redis_urls, model):
    """§5.4 on one Redis server: its namespace is checkpointed, lost at the crash and
    rebuilt from the checkpoint and the write-ahead logs (redis_checkpoint)."""
    for seed in range(2):
        res, rt = _on_redis(records, redis_urls[:1], {**CRASHES, "model": model}, seed)
        assert res.ok, (seed, res.unrecoverable, [str(d) for d in res.divergences[:3]])
        done = _recovered(rt)
        assert len(done) == 3, rt.events_log
        assert sum(e["re_executed"] for e in done) > 0 and all(e["per_flow_rolled"] > 0 for e in done), done
        assert rt.summary().log["remaining"] == 0


def test_no_wal_on_redis_is_caught(records, redis_urls):
    raw = {**CRASHES, "model": "EO+C+NA"}
    verdicts = [_on_redis(records, redis_urls[:1], raw, s, ("no-wal",))[0].ok for s in range(2)]
    assert verdicts == [False, False]


def test_a_store_crash_on_several_redis_servers_is_unrecoverable(records, redis_urls):
    """Two servers would be two store instances, each with its own TS and checkpoints:
    not built, so reported, never silently wrong."""
    raw = {"model": "EO+C", "events": [{"at": {"packets": 50}, "do": "crash", "target": "store"}]}
    res, rt = _on_redis(records[:100], redis_urls[:2], raw, 0)
    assert rt.store_failover is None            # no checkpoints, no logs: nothing is paid for
    assert res.unrecoverable is not None and "one Redis server" in res.unrecoverable
    assert "2 servers" in res.unrecoverable and all(u in res.unrecoverable for u in redis_urls[:2])


def test_no_store_crash_no_cost(records):
    rt = SimRuntime(load_spec(PAPER), model="EO+C+NA")
    assert rt.store_failover is None and type(rt.store.engine).__name__ == "StoreEngine"


def test_the_replay_follows_the_recovered_history():
    """A ``recover`` step takes the re-executed updates out of the history from the
    checkpoint on; the steps after it apply them again in the failover store's order."""
    def step(code, args, tag, result, observed=True, obj="c"):
        return StoreStep("v", obj, None, False, code, args, tag, None, result, observed, "x")
    steps = [step("push", (1,), (1, 1), 1, obj="l"), step("push", (2,), (2, 1), 2, obj="l"),
             StoreStep("", "", None, False, "recover", (1, frozenset({("v", "l", None, (2, 1))})), None, None,
                       None, False),
             step("push", (2,), (2, 1), 2, obj="l"), step("pop", (), (3, 1), 1, obj="l")]
    rep = replay(steps)
    assert not rep.mismatches and rep.final[("v", "l", None)] == [2]
    lost = replay(steps[:3] + [step("pop", (), (3, 1), 1, obj="l")])     # (2, 1) never applied again
    assert ("v", "l", None, (2, 1)) not in lost.applied


AFTER_STORE = {**CRASHES, "model": "EO+C+NA", "packet_log": "store",
               "network": {**FAULTS, "commits": {"latency": "const:50000"}},
               "events": [{"at": {"packets": 500}, "do": "crash", "target": "store", "checkpoint_ms": 2000},
                          {"at": {"packets": 501}, "do": "crash", "target": "nat"}]}


def test_nf_failover_replaying_packets_from_before_a_store_failover(records, monkeypatch):
    """nat[0] crashes as soon as the store is back; commit reports take 50 ms, so its
    replay reaches packets admitted before the store crash.  The replay starts from
    the store's pre-images and emulates from its clock log: both are in the
    checkpoint now (per-flow entries too), and the roll forward records its own
    (this was refused as unrecoverable before).  A failover store without them, as
    it was, makes seed 6 diverge on a NAT mapping (an update applied twice)."""
    import chc.core.recovery as recovery

    for seed in (2, 6):
        res, rt = _check(records[:1200], AFTER_STORE, seed)
        assert res.ok, (seed, res.unrecoverable, [str(d) for d in res.divergences[:3]])
        fo = next(e for e in rt.events_log if e["kind"] == "failover")
        assert fo["replayed"] > 0
    restore = recovery.Checkpoint.restore

    def as_before(self):
        engine = restore(self)
        engine.before, engine.preimages = {}, False
        engine.clock_log = {k: v for k, v in engine.clock_log.items() if not k.per_flow}
        return engine
    monkeypatch.setattr(recovery.Checkpoint, "restore", as_before)
    res, _ = _check(records[:1200], AFTER_STORE, 6)
    assert res.unrecoverable is None and res.divergences


def test_a_replay_reaching_an_update_without_pre_image_is_refused(records):
    """A Case 2 covered update's effect came with a read's value: the failover store
    has no pre-image for its clock, so an NF failover whose replay reaches it into a
    cached object is refused (unrecoverable), not replayed from a wrong state."""
    res, rt = _check(records[:600], {**CRASHES, "model": "EO+C+NA"}, 0)
    assert res.ok
    sf = rt.store_failover
    key = next(k for k in rt.store.engine.data if k.vertex == "nat" and k.per_flow)
    p = Packet(b"", index=7)
    sf.unknown_before[key] = {p.clock}
    with pytest.raises(Unrecoverable, match="no pre-image"):
        sf.check_replay("nat[0]", [p], {key.obj})
    sf.check_replay("nat[0]", [p], set())       # not a cached object: the replay reads the store


def test_random_crashes_may_draw_the_store_and_a_root():
    sc = parse_scenario({"random": {"events": 40, "actions": ["crash"], "vertices": ["nat", "store", "root[0]"]}})
    drawn = sc.events_for(1, ["nat", "lb"], 1000)
    assert {e.target for e in drawn} == {"nat", "store", "root[0]"}
    assert all(e.action == "crash" for e in drawn)
    assert all(e.params == {} for e in drawn if e.target != "nat")
    with pytest.raises(ValueError, match="unknown vertex 'root'"):
        parse_scenario({"random": {"events": 1, "vertices": ["root"]}}).events_for(0, ["nat"], 10)


def test_a_store_crash_waits_for_a_down_instance_unless_they_fail_together(records):
    """A scenario's failures are one after another unless an event says ``together``:
    the store crash at packet 500 waits until nat[0], down since the same packet, is
    failed over, and then recovers (crash.yaml seed 249 drew a random NF crash just
    before its fixed store crash and was reported unrecoverable)."""
    raw = {**CRASHES, "model": "EO+C+NA", "parallelism": 2,
           "events": [{"at": {"packets": 500}, "do": "crash", "target": "nat[0]", "heartbeat_us": 1000},
                      {"at": {"packets": 500}, "do": "crash", "target": "store"}]}
    res, rt = _check(records, raw, 0)
    assert res.ok, (res.unrecoverable, [str(d) for d in res.divergences[:3]])
    kinds = [e["kind"] for e in rt.events_log]
    assert kinds.index("failover") < kinds.index("store-crash") < kinds.index("store-recovered")


def _random_ops(seed: int, n: int = 120, start: int = 0) -> list:
    """Ops of two clients over counters, a list, per-flow objects, coalesced increments,
    the LB's choice, retransmissions and replayed (emulated) updates."""
    import random

    from chc.core.store import Increments, ObjectKey, Op

    rnd = random.Random(seed)
    counters = [ObjectKey("v", "cnt", i) for i in range(3)]
    flows = [ObjectKey("v", "flow", b"f%d" % i, True) for i in range(2)]
    pool = ObjectKey("v", "pool", None)
    seqs: dict[str, int] = {"a/0": start, "b/1": start}
    ops: list = []
    clock = start
    for _ in range(n):
        client = rnd.choice(["a/0", "b/1"])
        kind = rnd.choice(["incr", "get", "set", "push", "pop", "cas", "flow", "many", "choice", "again",
                           "list", "delete", "root"])
        if kind == "again" and ops:
            ops.append(rnd.choice(ops))         # a retransmission, or a replayed packet's update
            continue
        seqs[client] = seqs.get(client, 0) + 1
        clock += 1
        tag = (clock, 0)
        k = rnd.choice(counters)
        head = dict(client=client, seq=seqs[client])
        if kind == "get":
            op = Op("get", k, (), default=0, **head)
        elif kind == "incr":
            op = Op("incr", k, (rnd.randint(1, 5),), tag=tag, xor_id=7, default=0, **head)
        elif kind == "set":
            op = Op("set", k, (rnd.randint(0, 9),), tag=tag, **head)
        elif kind in ("push", "pop"):
            op = Op(kind, pool, (rnd.randint(0, 99),) if kind == "push" else (), tag=tag, default=[1, 2], **head)
        elif kind == "cas":
            op = Op("cas", k, (rnd.randint(0, 4), 4), tag=tag, default=0, **head)
        elif kind == "flow":
            op = Op("incr", rnd.choice(flows), (1,), tag=tag, instance=int(client[-1]), default=0, **head)
        elif kind == "many":            # tagged with its first increment, as the client does
            inc = Increments()
            for j in range(rnd.randint(1, 3)):
                inc.add(clock, j + 1, rnd.randint(1, 3), 5)
            op = Op("incr_many", k, (inc,), tag=(clock, 1), default=0, **head)
        elif kind == "list":            # a read of the list object (the roll forward may start there)
            op = Op("get", pool, (), default=[1, 2], **head)
        elif kind == "delete":
            op = Op("delete", k, (), tag=tag, **head)
        elif kind == "root":            # the root's writes carry no seq
            op = Op("set", ObjectKey("root", "clock", 0), (clock,))
        else:
            op = Op("custom", counters[0], ("argmin_incr", counters), tag=tag, default=0, **head)
        ops.append(op)
    return ops


def _same(a, b) -> bool:
    return {k: (dict(v) if hasattr(v, "items") else v) for k, v in a.items()} == \
        {k: (dict(v) if hasattr(v, "items") else v) for k, v in b.items()}


@pytest.mark.parametrize("seed", range(4))
def test_redis_keeps_ts_and_checkpoints_as_the_engine_does(redis_urls, seed):
    """The same ops on a RecoverableEngine and on Redis with keep_ts: every reply with
    its TS, and the checkpoint (objects, owners, TS, seq marks, clock log, pre-images),
    are the engine's; written back (restore) and read again, the checkpoint is unchanged."""
    from chc.backends import redis_checkpoint
    from chc.backends.redis import RedisStore
    from chc.core.recovery import RecoverableEngine
    from chc.core.store import StoreError

    engine = RecoverableEngine()
    engine.preimages = True
    store = RedisStore(redis_urls[:1], fresh=True)
    try:
        store.keep_ts()
        store.keep_preimages()

        def answer(apply, op):
            try:
                return apply(op)
            except StoreError as exc:
                return type(exc).__name__
        stamped = 0
        ops = _random_ops(seed)
        at = 0
        while at < len(ops):            # requests of 1-4 ops (a batch's ops share its cache)
            batch = ops[at:at + 1 + at % 4]
            at += len(batch)
            try:
                theirs = store.execute(batch)
            except StoreError:          # (Redis ran the rest of the request: compare op by op)
                theirs = None
            for i, op in enumerate(batch):
                mine = answer(engine.apply, op)
                if theirs is None:
                    continue
                assert repr(mine) == repr(theirs[i]) or mine == theirs[i], (op.code, op.key, mine, theirs[i])
                stamped += hasattr(theirs[i], "ts")
        assert stamped > 10
        per_flow = {("v", "flow")}
        mine, theirs = engine.checkpoint(), redis_checkpoint.checkpoint(store, 1, per_flow)
        for part in ("data", "owner", "ts", "applied_seq", "clock_log", "before"):
            assert _same(getattr(mine, part), getattr(theirs, part)), part
        assert mine.users == theirs.users and theirs.preimages
        redis_checkpoint.wipe(store)
        assert redis_checkpoint.checkpoint(store, 2, per_flow).data == {}
        redis_checkpoint.restore(store, mine.restore())
        again = redis_checkpoint.checkpoint(store, 3, per_flow)
        for part in ("data", "owner", "ts", "applied_seq", "clock_log", "before"):
            assert _same(getattr(mine, part), getattr(again, part)), part
        # The restored namespace goes on as the engine does (epoch, switches, clock log).
        engine = mine.restore()
        for op in _random_ops(seed + 100, 40, start=1000):
            ours, redis = answer(engine.apply, op), answer(lambda o: store.execute([o])[0], op)
            assert repr(ours) == repr(redis) or ours == redis, (op.code, op.key, ours, redis)
        assert _same(engine.checkpoint().data, redis_checkpoint.checkpoint(store, 4, per_flow).data)
    finally:
        store.close()


def test_on_redis_a_list_object_recovered_from_a_read_stays_a_list(redis_urls):
    """Case 2 from a read of a list object (two writers since the checkpoint, one read):
    the roll forward starts from the value read, which must be a list object (a deque) as
    the engine's is, or the pushes after it are refused and silently left out."""
    from chc.backends import redis_checkpoint
    from chc.backends.redis import RedisStore
    from chc.core.recovery import InstanceLog, WriteAheadLog, recover
    from chc.core.store import ObjectKey, Op

    pool = ObjectKey("v", "pool", None)
    store = RedisStore(redis_urls[:1], fresh=True)
    try:
        store.keep_ts()
        store.keep_preimages()
        store.declare(pool, [1, 2, 3])
        wals = {c: WriteAheadLog(c) for c in ("a", "b")}
        seqs = {"a": 0, "b": 0}

        def send(client: str, code: str, *args):
            seqs[client] += 1
            op = Op(code, pool, args, client, seqs[client], tag=None if code == "get" else (sum(seqs.values()), 0),
                    default=[])
            wals[client].log_sent([op])
            return wals[client].log_replies([op], store.execute([op]))[0]
        send("a", "push", 10)
        ckpt = redis_checkpoint.checkpoint(store, 1, set())
        for wal in wals.values():
            wal.truncate(ckpt)
        send("a", "push", 11)
        send("b", "push", 12)
        send("b", "get")
        send("a", "push", 13)
        rec = recover(ckpt, [InstanceLog(c, None, wals[c], seqs[c]) for c in wals], users={"a", "b"})
        assert list(rec.engine.data[pool]) == [1, 2, 3, 10, 11, 12, 13] and not rec.engine.refused
        redis_checkpoint.wipe(store)
        redis_checkpoint.restore(store, rec.engine)
        assert send("a", "pop") == 1            # still a list object on Redis
    finally:
        store.close()
