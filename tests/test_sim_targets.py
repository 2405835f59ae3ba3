"""A scenario's ``vertex[i]`` names logical instance ``i`` on the sim, as on proc.

A new user's trial: after ``counter[0]`` failed over, the sim's failover instance
had index 2, so a later crash of ``counter[0]`` was ``crash-ignored``, a move from
0 moved nothing, a clone was ``clone-refused`` and a slow changed nothing, all
under a PASS, while ``--runtime proc`` (whose failover process keeps its name)
crashed, moved and cloned.  Each event now reaches whichever instance serves the
logical one; one that cannot apply is named with its reason in ``chc check``'s
lines and in ``--json``'s ``not_done``."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from chc.capture import open_capture
from chc.checkrun import describe
from chc.coe import BreakState, Observers, SeedResult, check_runtime, physical_runtime, variant
from chc.scenario import parse_scenario
from chc.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "examples/paper_chain.yaml"
LAN = ROOT / "traces/pathspider/lan-2012.pcap.gz"

# nat has two instances; nat[0] crashes early and is failed over long before the
# events that follow name it again.
BASE = {"model": "EO+C+NA", "store": "memory", "pacing": {"multiplier": 1}, "parallelism": {"nat": 2}}
CRASH = {"at": {"packets": 300}, "do": "crash", "target": "nat[0]"}


@pytest.fixture(scope="module")
def records() -> list:
    return list(itertools.islice(open_capture(LAN), 1500))


def _check(records: list, events: list[dict], seed: int = 2):
    chain = load_spec(PAPER)
    sc = parse_scenario({**BASE, "events": events})
    v = variant(chain, sc, seed, ["memory"])
    obs = Observers()
    rt = physical_runtime(chain, sc, v, len(records), obs)
    BreakState((), 0).install(rt)
    res = check_runtime(chain, rt, records, obs)
    assert res.ok, (res.unrecoverable, [str(d) for d in res.divergences[:3]])
    return res, rt, v


def _of(rt, kind: str) -> list[dict]:
    return [e for e in rt.events_log if e["kind"] == kind and e["vertex"] == "nat"]


def _failover_instance(rt) -> int:
    [first, *_] = _of(rt, "failover")
    assert first["instance"] == 0
    return first["failover_instance"]


def test_a_crash_after_a_failover_crashes_the_failover_instance(records):
    """It was ``crash-ignored`` ("not an active instance": index 0 was the retired one)."""
    res, rt, _ = _check(records, [CRASH, {"at": {"packets": 900}, "do": "crash", "target": "nat[0]"}])
    assert res.events.get("crash") == 2 and res.events.get("failover") == 2, res.events
    assert "crash-ignored" not in res.events and res.not_done == []
    second = _of(rt, "crash")[1]
    assert second["instance"] == _failover_instance(rt) and second["logical"] == 0
    assert rt.resolve("nat", 0) == _of(rt, "failover")[1]["failover_instance"]


def test_a_move_after_a_failover_moves_from_the_failover_instance(records):
    """It moved nothing and said nothing: instance 0, retired, had no flow groups."""
    res, rt, _ = _check(records, [CRASH, {"at": {"packets": 900}, "do": "move", "target": "nat",
                                          "from": 0, "to": 1, "fraction": 1}])
    moves = _of(rt, "move")
    assert [(m["source"], m["instance"]) for m in moves] == [(_failover_instance(rt), 1)], moves
    assert res.not_done == []
    assert rt.flowmaps["nat"].groups_of(rt.resolve("nat", 0)) == []


def test_a_clone_after_a_failover_clones_the_failover_instance(records):
    """It was ``clone-refused`` with no reason in the output or in --json."""
    res, rt, _ = _check(records, [CRASH, {"at": {"packets": 900}, "do": "clone", "target": "nat[0]",
                                          "for_packets": 100}])
    assert res.events.get("clone") == 1 and res.events.get("clone-resolved") == 1, res.events
    [clone] = _of(rt, "clone")
    assert clone["instance"] == _failover_instance(rt) and clone["logical"] == 0
    assert res.not_done == []


def test_a_slow_after_a_failover_slows_the_failover_instance(records):
    _, rt, _ = _check(records, [CRASH, {"at": {"packets": 900}, "do": "slow", "target": "nat[0]",
                                        "delay": "const:300"}])
    i = _failover_instance(rt)
    assert rt.instances["nat"][i].delay is not None and rt.instances["nat"][0].delay is None


def test_an_event_on_an_instance_retired_by_a_scale_in_says_why(records):
    """A refused event carries its reason to chc check's lines and --json (only a count was there)."""
    res, rt, v = _check(records, [{"at": {"packets": 300}, "do": "scale-in", "target": "nat[1]"},
                                  {"at": {"packets": 900}, "do": "clone", "target": "nat[1]"},
                                  {"at": {"packets": 1000}, "do": "move", "target": "nat", "from": 1, "to": 0},
                                  {"at": {"packets": 1100}, "do": "slow", "target": "nat[1]",
                                   "delay": "const:300"},
                                  {"at": {"packets": 1200}, "do": "drop", "target": "nat[1]", "count": 3},
                                  {"at": {"packets": 1300}, "do": "partition", "target": "nat[1]",
                                   "duration_us": 300}])
    [retired] = _of(rt, "retired")
    why = f"nat[1] was retired by scale-in at packet {retired['packet']}"
    assert [(d["kind"], d["target"], d["packet"], d["reason"]) for d in res.not_done] == [
        ("clone-refused", "nat[1]", 900, why), ("move-refused", "nat[1]", 1000, why),
        ("slow-refused", "nat[1]", 1100, why), ("drop-refused", "nat[1]", 1200, why),
        ("partition-refused", "nat[1]", 1300, why)]
    out = SeedResult(v, res, "pass", {}).as_json()
    out["seconds"] = 0.0
    assert out["not_done"] == res.not_done
    assert f"    not done: clone-refused nat[1] at packet 900: {why}" in describe(out).splitlines()


def test_a_crash_before_the_failover_says_it_is_pending(records):
    slow = {**CRASH, "heartbeat_us": 1_000_000}         # noticed a virtual second later
    res, _, _ = _check(records[:800], [slow, {"at": {"packets": 301}, "do": "crash", "target": "nat[0]"}])
    [d] = res.not_done
    assert d["kind"] == "crash-ignored" and d["reason"] == "nat[0] crashed at packet 300 and is not failed over yet"


def test_the_same_seed_resolves_the_same_instances(records):
    events = [CRASH, {"at": {"packets": 900}, "do": "clone", "target": "nat[0]", "for_packets": 100},
              {"at": {"packets": 1200}, "do": "crash", "target": "nat[0]"}]
    runs = [_check(records, events)[1].events_log for _ in range(2)]
    assert runs[0] == runs[1]


def test_a_scale_out_after_a_failover_adds_the_next_logical_index(records):
    """As on proc: nat[2] is the scale-out's instance, not nat[0]'s failover instance
    (whose index on the sim is 2)."""
    res, rt, _ = _check(records, [CRASH, {"at": {"packets": 600}, "do": "scale-out", "target": "nat"},
                                  {"at": {"packets": 900}, "do": "crash", "target": "nat[2]"}])
    [out] = _of(rt, "scale-out")
    assert out["logical"] == 2 and out["instance"] != _failover_instance(rt)
    assert _of(rt, "crash")[1]["instance"] == out["instance"] and res.not_done == []


# A seed's pick and a scale-in of the vertex alone take the instances in logical order,
# as proc's do (they took the sim's physical order, so after nat[0] failed over, to the
# sim's index 2, pick 0 was nat[1] on the sim and nat[0] on proc).

def test_a_picked_crash_after_a_failover_counts_the_failover_instance_as_its_logical_one(records):
    res, rt, _ = _check(records, [CRASH, {"at": {"packets": 900}, "do": "crash", "target": "nat", "pick": 0}])
    assert res.events.get("crash") == 2 and res.not_done == []
    second = _of(rt, "crash")[1]
    assert second["instance"] == _failover_instance(rt) and second["logical"] == 0, second


def test_a_scale_in_of_the_vertex_after_a_failover_retires_its_last_logical_instance(records):
    res, rt, _ = _check(records, [CRASH, {"at": {"packets": 900}, "do": "scale-in", "target": "nat"}])
    [scale_in] = _of(rt, "scale-in")
    assert scale_in["instance"] == 1 and "logical" not in scale_in, scale_in
    assert rt.unavailable("nat", 1) and rt.unavailable("nat", 0) is None and res.not_done == []


def test_a_picked_move_on_one_instance_says_why_it_did_nothing(records):
    """It logged nothing: a PASS with no move and no word of it."""
    res, _, _ = _check(records[:600], [{"at": {"packets": 300}, "do": "move", "target": "portscan", "pick": 3}])
    assert [(d["kind"], d["target"], d["reason"]) for d in res.not_done] == [
        ("move-refused", "portscan", "one active instance")]


def test_a_scenarios_delay_of_an_instance_follows_its_logical_instance(records):
    """``delays: {nat[1]: ...}`` names logical instance 1: its failover instance takes it (by
    its own index, 2 on the sim, it took none, or another instance's); nat[0] and a
    scale-out's instance take the vertex's."""
    chain = load_spec(PAPER)
    sc = parse_scenario({**BASE, "delays": {"nat": "const:100", "nat[1]": "const:300"},
                         "events": [{**CRASH, "target": "nat[1]"},
                                    {"at": {"packets": 600}, "do": "scale-out", "target": "nat"}]})
    v = variant(chain, sc, 2, ["memory"])
    obs = Observers()
    rt = physical_runtime(chain, sc, v, len(records), obs)
    BreakState((), 0).install(rt)
    res = check_runtime(chain, rt, records, obs)
    assert res.ok, [str(d) for d in res.divergences[:3]]
    delay = {i.instance_id: i.delay for i in rt.instances["nat"]}
    [failed] = _of(rt, "failover")
    failover, [out] = failed["failover_instance"], [e["instance"] for e in _of(rt, "scale-out")]
    assert (failed["instance"], failover, out) == (1, 2, 3)
    assert delay[failover].spec == "const:300" and delay[0].spec == delay[out].spec == "const:100"
