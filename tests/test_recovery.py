"""NF failover (§5.4, R6): a crashed instance's state, timers and lost input come
back through replay, with nothing lost and nothing duplicated.

Each mechanism is switched off by hand in one test (replay, the pre-images the
replay starts from, delete-before-output) and the COE checker must then catch
what it lets through; seeded runs with crashes of every vertex must pass."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from chc.capture import open_capture
from chc.cli import main
from chc.coe import BreakState, Observers, check_runtime, check_variant, physical_runtime, variant
from chc.core.recovery import RecoverableEngine
from chc.core.root import LogEntry, Root
from chc.core.store import ObjectKey, Op, StoreEngine
from chc.runtime.sim import SimRuntime, Unrecoverable
from chc.scenario import parse_scenario
from chc.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "examples/paper_chain.yaml"
LAN = ROOT / "traces/pathspider/lan-2012.pcap.gz"

FAULTS = {"store": {"latency": "uniform:5:60", "drop": 0.02, "duplicate": 0.02, "reorder": 0.03,
                    "timeout_us": 500},
          "data": {"latency": "uniform:1:30"}, "commits": {"latency": "uniform:1:200"}}

# Slowed instances (queues hold packets when one dies) and lossy store links
# (updates are in flight when it dies); a crash of every vertex, the sink too.
CRASHES = {
    "pacing": {"multiplier": 1}, "delays": {"*": "uniform:200:2000"}, "store": "memory",
    "network": FAULTS,
    "events": [
        {"at": {"packets": 400}, "do": "crash", "target": "nat[0]"},
        {"at": {"packets": 700}, "do": "crash", "target": "lb"},
        {"at": {"packets": 1000}, "do": "crash", "target": "portscan", "heartbeat_us": 50, "misses": 2},
        {"at": {"packets": 1200}, "do": "crash", "target": "trojan"},
    ],
}


@pytest.fixture(scope="module")
def records() -> list:
    return list(itertools.islice(open_capture(LAN), 1500))


def _runtime(records, raw: dict, seed: int):
    chain = load_spec(PAPER)
    sc = parse_scenario(raw)
    v = variant(chain, sc, seed, ["memory"])
    obs = Observers()
    rt = physical_runtime(chain, sc, v, len(records), obs)
    BreakState((), 0).install(rt)
    return chain, rt, obs


def _check(records, raw: dict, seed: int, tweak=None):
    chain, rt, obs = _runtime(records, raw, seed)
    if tweak is not None:
        tweak(rt)
    return check_runtime(chain, rt, records, obs), rt


def _failovers(rt) -> list[dict]:
    return [e for e in rt.events_log if e["kind"] == "failover"]


@pytest.mark.parametrize("model", ["EO", "EO+C", "EO+C+NA"])
def test_failover_of_every_vertex_keeps_coe(records, model):
    for seed in range(2):
        res, rt = _check(records, {**CRASHES, "model": model}, seed)
        assert not res.divergences, (seed, [str(d) for d in res.divergences[:3]])
        done = _failovers(rt)
        assert {e["vertex"] for e in done} == {"nat", "lb", "portscan", "trojan"}, done
        assert all(e["detect_ns"] > 0 and e["recovery_ns"] >= e["detect_ns"] for e in done)
        # Exercised, not vacuous: packets were replayed and queued ones recovered.
        assert sum(e["replayed"] for e in done) > 0 and sum(e["lost_in_queue"] for e in done) > 0, done
        assert rt.summary().log["remaining"] == 0


@pytest.mark.parametrize("model", ["EO", "EO+C+NA"])
def test_failover_on_redis_keeps_coe(records, redis_urls, model):
    """The same crashes with the state in Redis (two shards): ``chc_batch`` records the
    pre-images and ``objects_at`` gives the replay the state before its packets."""
    from chc.backends import open_store

    chain = load_spec(PAPER)
    sc = parse_scenario({**{k: v for k, v in CRASHES.items() if k != "store"}, "model": model})
    for seed in range(2):
        v = variant(chain, sc, seed, [",".join(redis_urls[:2])])
        store = open_store(v.store)
        try:
            obs = Observers()
            rt = physical_runtime(chain, sc, v, len(records), obs, store)
            BreakState((), 0).install(rt)
            res = check_runtime(chain, rt, records, obs)
        finally:
            store.close()
        assert res.unrecoverable is None, (seed, res.unrecoverable)
        assert not res.divergences, (seed, [str(d) for d in res.divergences[:3]])
        done = _failovers(rt)
        assert {e["vertex"] for e in done} == {"nat", "lb", "portscan", "trojan"}, done
        assert sum(e["replayed"] for e in done) > 0 and sum(e["lost_in_queue"] for e in done) > 0, done
        assert rt.summary().log["remaining"] == 0


def test_lost_in_flight_updates_are_applied_once_by_the_replay(records):
    """EO+C+NA over a lossy network: a crash leaves updates in flight that never
    arrive (fenced); the replay re-issues them (applied) and every update the store
    has is emulated from its clock log, never applied twice."""
    reapplied = emulated = 0
    for seed in range(3):
        res, rt = _check(records, {**CRASHES, "model": "EO+C+NA"}, seed)
        assert not res.divergences, (seed, [str(d) for d in res.divergences[:3]])
        emulated += sum(e["updates_emulated"] for e in _failovers(rt))
        reapplied += sum(e["ops_applied_during_replay"] for e in _failovers(rt))
    assert emulated > 0 and reapplied > 0


def test_replay_from_the_store_as_it_is_is_caught(records):
    """Without the pre-images the failover instance's cache starts from state that
    already has the replayed packets' updates and applies them again: caught."""
    def current_state(rt):
        rt.store.objects_at = lambda vertex, replayed: rt.store.objects(vertex)
    caught = [s for s in range(4) if _check(records, {**CRASHES, "model": "EO+C"}, s, current_state)[0].divergences]
    assert caught, "starting the replay from the current store state went unnoticed"


@pytest.mark.parametrize("name", ["no-replay", "delete-after-output"])
def test_failover_breaks_are_caught(records, name):
    chain = load_spec(PAPER)
    sc = parse_scenario({**CRASHES, "model": "EO+C+NA"})
    verdicts = [check_variant(chain, sc, records, variant(chain, sc, s, ["memory"]), (name,)).verdict
                for s in range(2)]
    assert "diverged" in verdicts and "pass" not in verdicts, verdicts


def test_a_failover_is_reported_in_the_summary(records):
    _, rt = _check(records, {**CRASHES, "model": "EO+C+NA"}, 0)
    kinds = [e["kind"] for e in rt.events_log]
    assert kinds.count("crash") == kinds.count("failover") == 4
    e = _failovers(rt)[0]
    for field in ("vertex", "instance", "failover_instance", "crashed_vt", "detected_vt", "detect_ns",
                  "replayed", "lost_in_queue", "recovery_ns", "updates_emulated", "ops_applied_during_replay"):
        assert field in e, field
    # The failed instance is retired and its replacement carries its flow groups.
    s = rt.summary()
    assert s.vertices["nat"]["retired"] >= 1


def test_timers_survive_a_failover_by_replay():
    """A pending timer keeps the packet that armed it logged (a live copy, §5.4):
    the failover instance re-arms it by replaying that packet."""
    root = Root(0)
    pkt_clock = 7
    root.log[pkt_clock] = LogEntry(None)
    root.fork(pkt_clock, 1)             # the timer the packet armed
    root.done(pkt_clock, 0)             # the packet itself left the chain
    assert pkt_clock in root.log        # still logged: its timer is pending
    root.done(pkt_clock, 0)             # the timer fired
    assert pkt_clock not in root.log


def test_a_portscan_failover_keeps_its_pending_timeouts(records):
    """Portscan resolves unanswered first contacts by timer: crash its only
    instance while timeouts are pending; the detector's state must still match."""
    raw = {"pacing": {"multiplier": 1}, "model": "EO+C+NA", "parallelism": 1, "store": "memory",
           "events": [{"at": {"packets": n}, "do": "crash", "target": "portscan"} for n in (300, 800, 1300)]}
    res, rt = _check(records, raw, 0)
    assert not res.divergences, [str(d) for d in res.divergences[:3]]
    assert len(_failovers(rt)) == 3


def test_model_t_cannot_fail_over(records):
    raw = {"model": "T", "parallelism": 1, "events": [{"at": {"packets": 100}, "do": "crash", "target": "nat[0]"}]}
    chain = load_spec(PAPER)
    sc = parse_scenario(raw)
    rt = SimRuntime(chain, model="T", events=sc.events_for(0, list(chain.vertices), 500))
    with pytest.raises(Unrecoverable, match="model T keeps|R1 needs an externalized model"):
        rt.run(records[:500])


def test_a_crash_at_top_speed_is_detected_at_the_next_batch(records):
    raw = {"pacing": "topspeed", "model": "EO+C", "parallelism": 2, "store": "memory",
           "events": [{"at": {"packets": 500}, "do": "crash", "target": "nat[1]"}]}
    res, rt = _check(records, raw, 0)
    assert not res.divergences, [str(d) for d in res.divergences[:3]]
    assert len(_failovers(rt)) == 1


def test_store_preimages_give_the_state_before_the_replayed_clocks():
    eng = StoreEngine()
    eng.preimages = True
    k = ObjectKey("v", "count", b"f", True)
    for clock in (1, 2, 3):
        eng.apply(Op("incr", k, (1,), "c", 0, 0, (clock, 1), 5, 0))
    assert eng.objects("v")["count"][b"f"] == 3
    assert eng.objects_at("v", {2, 3})["count"][b"f"] == 1      # before clock 2's update
    assert b"f" not in eng.objects_at("v", {1, 3}).get("count", {})     # absent before clock 1
    eng.prune_below(3)                  # clocks 1 and 2 are done in the whole chain
    assert eng.objects_at("v", {3})["count"][b"f"] == 2


def test_preimages_are_shared_by_checkpoints_and_handed_out_as_copies():
    """A checkpoint shares the engine's pre-images instead of copying them (§5.4: they
    are written once): what ``objects_at`` hands a replay must be a copy, or an NF
    changing its view would change the checkpoint and the engine's pre-image."""
    eng = RecoverableEngine()
    eng.preimages = True
    pool = ObjectKey("nat", "pool", None)
    eng.apply(Op("pop", pool, (), "c", 0, 0, (1, 1), 5, [7, 8, 9]))
    eng.apply(Op("pop", pool, (), "c", 0, 0, (2, 1), 6, 0))
    ckpt = eng.checkpoint()
    view = eng.objects_at("nat", {2})["pool"][None]
    assert view == [8, 9]
    view.clear()                        # the replaying instance takes its ports
    assert eng.objects_at("nat", {2})["pool"][None] == [8, 9]
    assert list(ckpt.before[pool][2]) == [8, 9]
    assert ckpt.restore().objects_at("nat", {2})["pool"][None] == [8, 9]
    # a tuple holding a list is no atom: its list is copied too (found by a review)
    pair = ObjectKey("nat", "pair", None)
    eng.apply(Op("set", pair, (([1, 2], 3),), "c", 0, 0, (3, 1), 7, None))
    eng.apply(Op("set", pair, (([5], 6),), "c", 0, 0, (4, 1), 8, None))
    eng.objects_at("nat", {4})["pair"][None][0].append(9)
    assert eng.objects_at("nat", {4})["pair"][None] == ([1, 2], 3)


# -- root failover ------------------------------------------------------------------------------

ROOT_CRASHES = {
    "pacing": {"multiplier": 1}, "delays": {"*": "uniform:200:2000"}, "store": "memory",
    "packet_log": "store", "network": FAULTS, "batch_size": 16,
    "events": [
        # Noticed seconds later: input and reports for the root are held meanwhile.
        {"at": {"packets": 400}, "do": "crash", "target": "root[0]", "heartbeat_us": 1_000_000, "misses": 3},
        {"at": {"packets": 800}, "do": "crash", "target": "nat"},
        # The portscan detector fails soon after the root: the timeouts it has pending
        # were armed by packets the old root logged.
        {"at": {"packets": 1000}, "do": "crash", "target": "root[0]"},
        {"at": {"packets": 1030}, "do": "crash", "target": "portscan"},
    ],
}


def _root_failovers(rt) -> list[dict]:
    return [e for e in rt.events_log if e["kind"] == "root-failover"]


@pytest.mark.parametrize("model", ["EO", "EO+C+NA"])
def test_root_failover_with_a_store_log_keeps_coe(records, model):
    """The new root resumes its clock from the store, takes the log over from it,
    gets the input and the reports held while no root was up; NF failovers after
    it still find every packet they must replay (Table 3: root with NF)."""
    for seed in range(2):
        res, rt = _check(records, {**ROOT_CRASHES, "model": model}, seed)
        assert not res.divergences, (seed, [str(d) for d in res.divergences[:3]])
        roots = _root_failovers(rt)
        assert len(roots) == 2 and len(_failovers(rt)) == 2
        first = roots[0]
        assert first["input_buffered"] > 0 and first["reports_held"] > 0 and first["log_entries"] > 0, first
        assert first["clock_resumed"] >= first["root_packets"]     # above every clock the old root used
        assert rt.summary().packets_in == len(records)


def test_reports_to_a_failed_root_are_held_for_the_new_one(records):
    """Forks, completions and commits sent while no root is up reach the new root;
    lost, their packets would never complete (caught by the log check)."""
    def lose(rt):
        rt.root_inbox = _Forgetful()
    caught = [s for s in range(2) if _check(records, {**ROOT_CRASHES, "model": "EO+C+NA"}, s, lose)[0].divergences]
    assert caught, "reports lost while the root was down went unnoticed"


class _Forgetful(dict):
    """A root inbox that loses what is sent to a failed root."""

    def __getitem__(self, key):
        return []

    def setdefault(self, key, default=None):
        return []

    def pop(self, key, default=None):
        return []


def test_a_new_root_takes_the_log_over_from_the_store(records):
    """With a store-held log, the new root has every entry the failed one had, with
    its live copies and XOR accumulator (so a packet is still deleted exactly when
    done, and an NF failover can still replay it); a local log is lost."""
    seen = []

    def watch(rt):
        restart = rt.restart_root

        def compare(root_id):
            before = {c: (e.live, e.vector) for c, e in rt.roots[root_id].log.items()}
            new = restart(root_id)          # (before the reports held meanwhile reach it)
            seen.append((before, {c: (e.live, e.vector) for c, e in new.log.items()}))
            return new
        rt.restart_root = compare
    res, _ = _check(records, {**ROOT_CRASHES, "model": "EO+C+NA"}, 0, watch)
    assert not res.divergences
    assert len(seen) == 2 and all(before and before == after for before, after in seen)


def test_a_root_with_a_local_log_fails_over_but_an_nf_failover_after_it_is_unrecoverable(records):
    raw = {**ROOT_CRASHES, "packet_log": "local", "model": "EO+C",
           "events": [{"at": {"packets": 400}, "do": "crash", "target": "root[0]"}]}
    res, rt = _check(records, raw, 0)
    assert not res.divergences, [str(d) for d in res.divergences[:3]]
    assert _root_failovers(rt)[0]["log_entries_lost"] > 0
    raw["events"] = raw["events"] + [{"at": {"packets": 900}, "do": "crash", "target": "nat"}]
    res, _ = _check(records, raw, 0)
    assert res.unrecoverable and "lost its local packet log" in res.unrecoverable


SCAN = ROOT / "traces/scans/nmap-syn-scan.pcap"
SCAN_CRASH = {"parallelism": 2, "batch_size": 256, "delays": {"portscan": "uniform:50:150"},
              "events": [{"at": {"packets": 400}, "do": "crash", "target": "portscan[0]"}]}


def _scan_check(seed: int, tweak=None, before: tuple = ()):
    chain = load_spec(ROOT / "examples/portscan.yaml")
    sc = parse_scenario({**SCAN_CRASH, "events": [*before, *SCAN_CRASH["events"]]})
    records = list(open_capture(SCAN))
    obs = Observers()
    rt = physical_runtime(chain, sc, variant(chain, sc, seed, ["memory"]), len(records), obs)
    BreakState((), 0).install(rt)
    if tweak is not None:
        tweak(rt)
    return check_runtime(chain, rt, records, obs), rt


def test_a_replay_reads_shared_state_as_the_failed_instance_did():
    """Two portscans share the scanner's likelihood; one crashes after the other has
    flagged the scanner.  Its replay re-runs SYNs it took before the flag: read from
    the store as it is now, the verdict drops them and their TRW timeouts are never
    re-armed (the packets stay logged forever).  The store's read log answers the
    replay what the failed instance read."""
    for seed in range(3):
        res, rt = _scan_check(seed)
        assert res.ok, (seed, [str(d) for d in res.divergences][:2])
        [f] = _failovers(rt)
        assert f["timers_pending"] > 0 and f["replayed"] > 0
    def no_read_log(rt):
        rt.node.read_log = None
    res, _ = _scan_check(0, no_read_log)
    assert any(d.what == "log" for d in res.divergences), [str(d) for d in res.divergences]


STORE_CRASH = ({"at": {"packets": 250}, "do": "crash", "target": "store"},)


def test_the_read_log_outlives_a_store_failover(monkeypatch):
    """The same crash after a store crash and failover: the store's read log died with
    it and is rebuilt from the instances' copies, so the replay still reads what the
    failed instance read.  Without the rebuild it reads the live verdict."""
    for seed in range(2):
        res, rt = _scan_check(seed, before=STORE_CRASH)
        assert res.ok, (seed, [str(d) for d in res.divergences][:2])
        [rec] = [e for e in rt.events_log if e["kind"] == "store-recovered"]
        [f] = _failovers(rt)
        assert rec["read_log_rebuilt"] > 0 and f["replayed"] > 0
    monkeypatch.setattr("chc.runtime.storefailover.merge_reads", lambda copies: {})
    res, _ = _scan_check(0, before=STORE_CRASH)
    assert any(d.what == "log" for d in res.divergences), [str(d) for d in res.divergences]


def test_read_log_slots_are_per_vertex_and_merge_keeps_the_longest():
    """Instance numbers repeat across vertices: a packet's shared reads at nat[0] and
    at lb[0] are two slots, and a replay at lb[0] is answered with lb's value."""
    from chc.core.failover import log_reads, merge_reads

    def get(vertex: str) -> Op:
        return Op("get", ObjectKey(vertex, "shared", None), instance=0)
    log: dict = {}
    log_reads(log, [get("nat")], ["nat-value"], 7, None)
    log_reads(log, [get("lb")], ["lb-value"], 7, None)
    results = ["live"]
    log_reads(log, [get("lb")], results, 7, {})
    assert results == ["lb-value"]
    assert merge_reads([{("lb", 0, 7): ["a"]}, {("lb", 0, 7): ["a", "b"], ("nat", 0, 7): ["c"]}]) == {
        ("lb", 0, 7): ["a", "b"], ("nat", 0, 7): ["c"]}


def test_a_second_crash_of_a_vertex_whose_only_instance_is_down_is_ignored(records):
    """``target: lb`` picks among the active instances; with the only one down and
    not yet failed over there is none (crash-all.yaml seed 16 raised there)."""
    raw = {"model": "EO+C+NA", "packet_log": "store", "parallelism": {"lb": 1},
           "pacing": {"multiplier": 1},
           "events": [{"at": {"packets": 400}, "do": "crash", "target": "lb", "heartbeat_us": 1000000},
                      {"at": {"packets": 401}, "do": "crash", "target": "lb"}]}
    res, rt = _check(records[:800], raw, 0)
    assert res.ok, (res.unrecoverable, [str(d) for d in res.divergences[:3]])
    assert [e["reason"] for e in rt.events_log if e["kind"] == "crash-ignored"] == ["no active instance"]


def test_two_roots_recover_from_crashes(tmp_path, capsys):
    """One store holds both roots' packet logs: a restarted root takes over only its own
    entries (it took the other root's too, which then stayed logged for good: seed 1), and
    with several roots the clock log is kept whole while a crash may come (each root
    pruning its own clocks dropped entries a failover's replay of another root's packets
    still needed: seed 2 re-applied replayed updates)."""
    from chc.cli import main

    two = tmp_path / "two_roots.yaml"
    two.write_text("roots: 2\n" + PAPER.read_text())
    assert main(["check", str(two), str(ROOT / "examples/scenarios/nf-crash.yaml"), str(LAN), "--packets", "3000",
                 "--first-seed", "1", "--seeds", "2"]) == 0
    assert "2 of 2 seeds passed" in capsys.readouterr().out


# -- failovers after scaling (§5.1 with §5.4) -------------------------------------------------

SCALE_CRASH = ROOT / "examples/scenarios/scale-crash.yaml"


def _scale_crash(seed: int, breaks: tuple[str, ...] = (), tweak=None):
    from chc.scenario import load_scenario

    chain, sc = load_spec(PAPER), load_scenario(SCALE_CRASH)
    recs = list(itertools.islice(open_capture(LAN), 3000))
    v = variant(chain, sc, seed, ["memory"])
    obs = Observers()
    rt = physical_runtime(chain, sc, v, len(recs), obs)
    BreakState(breaks, 0).install(rt)
    if tweak is not None:
        tweak(rt)
    return check_runtime(chain, rt, recs, obs), rt


def test_scaling_and_crashes_together_keep_coe():
    """Seeds that diverged before a failover's replay was what the failed instance
    processed itself (tests/regressions/coe_seeds.yaml has them too): a moved flow's
    earlier packets replayed at the new owner's failover ran after its own ones and
    fired their timers early (a packet never done), or without the answers the
    other instance had read (the LB picked another backend, a counter went negative);
    and (seed 302) a replay crossing a scale-in ran packets processed while the LB's
    counters were shared from a private copy of them (R3)."""
    for seed in (10, 19, 49, 302):
        res, rt = _scale_crash(seed)
        assert not res.divergences, (seed, [str(d) for d in res.divergences[:3]])
        kinds = {e["kind"] for e in rt.events_log}
        assert {"failover", "retired", "move"} <= kinds, kinds


def test_a_replay_shares_what_each_packet_shared():
    """--break replay-as-now: the replay runs every packet sharing what the vertex
    shares at the failover; packets processed while the LB's counters were shared
    recompute a backend from a private copy (caught)."""
    res, rt = _scale_crash(285)         # (found by a hunt, as test_coe's seeds of this break)
    assert not res.divergences
    assert sum(e["replayed_sharing_otherwise"] for e in _failovers(rt)) > 0
    res, rt = _scale_crash(285, ("replay-as-now",))
    assert any(str(d).startswith(("state", "store", "log")) for d in res.divergences), res.divergences[:3]


def test_a_failover_gets_the_timers_moved_flows_brought():
    """--break no-moved-timers: the replay leaves out the timers a move gave the
    failed instance; the packet that armed one is never done (caught)."""
    res, rt = _scale_crash(53)          # (of seeds 0-59 the one that needs it: a hunt)
    assert not res.divergences
    assert sum(e["moved_timers_replayed"] for e in _failovers(rt)) > 0
    res, rt = _scale_crash(53, ("no-moved-timers",))
    assert rt.gifts_dropped > 0
    assert any(str(d).startswith("log") for d in res.divergences), [str(d) for d in res.divergences[:3]]


def test_a_failover_store_logs_the_updates_a_read_already_covered(monkeypatch, capsys):
    """§5.4 store failover, Case 2: an update whose effect the selected read's value
    already holds is written to the failover store's clock log, so a replay or resend of
    it is answered, not applied again.  Without it crash.yaml's seed 21 counted one LB
    byte total twice (lb.bytes[0] 85734 against 85162; a mutation hunt: no other seed
    or test caught it)."""
    monkeypatch.chdir(ROOT)
    assert main(["check", str(PAPER), str(ROOT / "examples/scenarios/crash.yaml"), str(LAN),
                 "--seed", "21", "-c", "3000"]) == 0, capsys.readouterr().out


def test_a_crash_deferred_to_the_end_of_input_fails_over_in_the_drain():
    """scale-crash.yaml at 3,000 packets/s: crashes wait for their vertex's hand-overs,
    which end only in the drain, at an infinite virtual time: the crash raised
    OverflowError (chc serve's traceback in a new user's trial; chc check's seeds were
    internal errors).  It now happens when the input ended and is failed over in the
    drain; a move that waited with it waits for that failover (seed 17: a move out of
    the dead instance held its flows' packets for good, outputs missing)."""
    raw = yaml.safe_load((ROOT / "examples/scenarios/scale-crash.yaml").read_text())
    raw["pacing"] = {"pps": 3000}
    del raw["random"]
    records = list(itertools.islice(open_capture(LAN), 3000))
    res, rt = _check(records, raw, 17)
    assert not res.divergences, res.divergences[:3]
    end = 3000 / 3000 * 1e9             # the last input packet's arrival, in ns of virtual time
    late = [e for e in rt.events_log if e["kind"] == "crash" and e["detect_vt"] >= end - 1e6]
    assert late, "no crash was deferred to the end of input (the scenario no longer tests it)"
    failed_over = {(e["vertex"], e["instance"]) for e in _failovers(rt)}
    assert {(e["vertex"], e["instance"]) for e in late} <= failed_over


@pytest.mark.parametrize("seed, why", [
    (7, "an LB move's last packet was the one queued last, not the one processed last: the old "
        "instance processed a moved flow's packet after its hand-over and took its state back "
        "(OwnershipError at the new instance, packet dropped)"),
    (2, "a crash deferred for a hand-over and a move out of the same instance ran together at its "
        "end: the move waited for a last packet the dead instance never processed (572 packets "
        "never output)"),
    (23, "a timer a move gave the failed instance was given by clock in the replay, 50 packets "
         "too early: they fired it as one already reported, and its packet was never done"),
])
def test_scaling_and_crashes_under_queueing_keep_coe(seed, why):
    """scale-crash.yaml at 3,000 packets/s (instances saturated, upstream instances far
    apart in virtual time): §5.1 hand-overs and §5.4 failovers where packets reach an
    instance out of clock order.  These seeds diverged before (docs/coe.md, "Limits
    today", has what still diverges here: the timers' early firing)."""
    raw = yaml.safe_load(SCALE_CRASH.read_text())
    raw["pacing"] = {"pps": 3000}
    records = list(itertools.islice(open_capture(LAN), 3000))
    res, rt = _check(records, raw, seed)
    assert not res.divergences, (why, [str(d) for d in res.divergences[:3]])
    assert not any(e["kind"] == "nf-error" for e in rt.events_log)
    assert {"failover", "move"} <= {e["kind"] for e in rt.events_log}


def _scale_then_crash(vertex: str, out_at: int, crash_at: int) -> dict:
    """A vertex of one instance scales out (half its flows move to the new one), then
    the instance it had crashes (pick 0) while packets from before the move are logged."""
    return {"pacing": {"pps": 3000}, "events": [
        {"at": {"packets": out_at}, "do": "scale-out", "target": vertex},
        {"at": {"packets": crash_at}, "do": "crash", "target": vertex, "pick": 0}]}


def _with_timeout(path: Path, timeout_s: float, tmp_path: Path) -> Path:
    spec = yaml.safe_load(path.read_text())
    spec["vertices"]["portscan"]["config"]["timeout_s"] = timeout_s
    out = tmp_path / path.name
    out.write_text(yaml.safe_dump(spec))
    return out


@pytest.mark.parametrize("case", ["scale-out-then-crash", "scale-crash-pps3000-no-timeout"])
def test_a_failover_replays_the_packets_of_flows_moved_away(case, tmp_path):
    """§5.4 with §5.1: a failover's replay crossing a move out of the failed instance
    replays the moved flows' packets it had processed too.  While it was the LB's only
    instance it cached the connection counters and chose backends from them (R3); with
    those packets left out of its record, the replay's counters missed their
    connections, picked other backends and re-applied their byte counts and closes as
    new updates: ``lb.active`` went negative, a packet's update came after its delete
    (scale-crash.yaml at 3,000 packets/s with the detector's timeout out of reach,
    seeds 1, 7, 10, 26, 34, 38, 39; the shipped chain with an early scale-out, seed 7)."""
    if case == "scale-out-then-crash":
        chain, sc = load_spec(PAPER), parse_scenario(_scale_then_crash("lb", 50, 150))
        seed, n = 7, 200
    else:
        # Timers that never end keep the first packets logged: every failover's replay
        # reaches back to before the LB's scale-out.
        chain = load_spec(_with_timeout(PAPER, 10**6, tmp_path))
        raw = yaml.safe_load(SCALE_CRASH.read_text())
        raw["pacing"] = {"pps": 3000}
        sc, seed, n = parse_scenario(raw), 34, 3000
    recs = list(itertools.islice(open_capture(LAN), n))
    v = variant(chain, sc, seed, ["memory"])
    assert v.parallelism["lb"] == 1
    obs = Observers()
    rt = physical_runtime(chain, sc, v, len(recs), obs)
    BreakState((), 0).install(rt)
    res = check_runtime(chain, rt, recs, obs)
    assert not res.divergences, [str(d) for d in res.divergences[:3]]
    assert any(e["vertex"] == "lb" and e["instance"] == 0 for e in _failovers(rt))
    assert any(e["kind"] == "move" and e["vertex"] == "lb" and e["source"] == 0 for e in rt.events_log)


def test_a_failover_gives_up_the_timers_of_flows_moved_away():
    """§5.1 with §5.4: the replay re-arms the timers of the moved flows' packets, and
    gives them up where the hand-over came (their new owner has them), as the failed
    instance did: right after its failover an instance holds timers of its own flows
    only (kept, a second copy fires by the failover instance's packets)."""
    recs = list(itertools.islice(open_capture(LAN), 400))
    chain, rt, obs = _runtime(recs, _scale_then_crash("portscan", 50, 150), 13)
    stray: list = []
    failover = rt._failover

    def checked(f) -> None:
        failover(f)
        new = rt.instances[f.vertex][-1]
        fm = rt.flowmaps[f.vertex]
        stray.extend(t for t in new.ctx._timers if t[5] is not None and fm.owner(t[5]) != new.instance_id)

    rt._failover = checked
    res = check_runtime(chain, rt, recs, obs)
    assert not res.divergences, [str(d) for d in res.divergences[:3]]
    assert not stray, stray
    done = [e for e in _failovers(rt) if e["vertex"] == "portscan"]
    assert done and sum(e["timers_moved_away"] for e in done) > 0, done
