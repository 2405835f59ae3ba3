"""Vertex managers (§3), scope refinement (§4.1) and seed-drawn scale events:
policies are checked as the operator writes them, the framework carries out what
they decide, and every decision keeps the chain equivalent to the logical one."""

from __future__ import annotations

import itertools
import json
import re
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import yaml

from chc.backends.memory import MemoryStore
from chc.capture import CaptureWriter, open_capture
from chc.cli import main
from chc.coe import check_variant, variant
from chc.core.manager import Decision, InstanceLoad, ScalingPolicy, VertexLoad, VertexManager, as_decisions
from chc.nf import FLOW, NF, Access, Value
from chc.runtime.pacing import Pacer
from chc.runtime.sim import SimRuntime
from chc.scenario import ScenarioError, parse_scenario
from chc.spec import MAX_PARALLELISM, SpecError, load_spec, parse_spec
from chc.trace.gen import generate, resolve_profile

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "examples/paper_chain.yaml"
AUTOSCALE = ROOT / "examples/autoscale.yaml"
LAN = ROOT / "traces/pathspider/lan-2012.pcap.gz"


@pytest.fixture(scope="module")
def lan_slice(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scaling") / "lan4k.pcap"
    with CaptureWriter(path) as w:
        w.write_many(itertools.islice(open_capture(LAN), 4000))
    return path


@pytest.fixture(scope="module")
def rising(tmp_path_factory) -> Path:
    """A generated trace whose rate rises six-fold and falls back."""
    path = tmp_path_factory.mktemp("rise") / "rise.pcap"
    generate(str(path), resolve_profile("trace1", 24000, 240, shape=(1, 6, 1)), seed=3)
    return path


def load(pps: list[float], now: int = 10**9) -> VertexLoad:
    return VertexLoad("v", now, 10**8, tuple(InstanceLoad(i, int(p / 10), p, 0, 0.0) for i, p in enumerate(pps)),
                      "5-tuple", False)


# -- the policy -------------------------------------------------------------------------
def test_declarative_policy_scales_out_in_and_rebalances_within_bounds():
    p = ScalingPolicy(out_above_pps=1000, in_below_pps=200, min=1, max=3)
    assert [d.action for d in p.decide(load([1500]))] == ["scale-out"]
    assert p.decide(load([1500, 1500, 1500])) == []              # at max
    assert [d.action for d in p.decide(load([100, 100]))] == ["scale-in"]
    assert p.decide(load([100])) == []                           # at min
    assert [d.action for d in p.decide(load([900, 300]))] == ["rebalance"]   # max/mean 1.5 > 1.2
    assert p.decide(load([500, 450])) == []


def test_manager_turns_cumulative_counters_into_interval_rates():
    m = VertexManager("v", ScalingPolicy(out_above_pps=1000, interval_ms=100))
    assert not m.due(0)                                          # the first packet starts the clock
    assert m.due(100_000_000)
    load_, decisions = m.tick(100_000_000, [(0, 150, 3, 0)], "5-tuple", False)
    assert load_.instances[0].pps == pytest.approx(1500) and load_.instances[0].queue == 3
    assert [d.action for d in decisions] == ["scale-out"]
    load_, decisions = m.tick(200_000_000, [(0, 200, 0, 0), (1, 40, 0, 0)], "5-tuple", False)
    assert [i.pps for i in load_.instances] == pytest.approx([500, 400])   # a new instance counts from 0
    assert decisions == []


def test_a_policy_callable_returns_decisions():
    assert as_decisions(None) == []
    assert as_decisions("scale-out") == [Decision("scale-out")]
    assert as_decisions([Decision("scale-in", 2), "rebalance"]) == [Decision("scale-in", 2), Decision("rebalance")]
    with pytest.raises(ValueError, match="a policy's action is one of scale-out, .*; got 'explode'"):
        as_decisions("explode")
    with pytest.raises(ValueError, match="a policy returns"):
        as_decisions(42)
    # (it said "a policy returns None ... got None" of a None in a list: a new user's trial)
    with pytest.raises(ValueError, match=r"a list of decisions \(no None in it\); got None in its list"):
        as_decisions([None])


def spec_with(scaling) -> dict:
    return {"vertices": {"nat": {"nf": "nat", "config": {"external_ip": "198.51.100.7"}, "scaling": scaling}}}


@pytest.mark.parametrize("scaling, field", [
    ({"out_above_pps": 5, "colour": 1}, "vertices.nat.scaling.colour"),
    ({"out_above_pps": 5, "min": 3, "max": 2}, "vertices.nat.scaling.min"),
    ({"out_above_pps": 5, "max": 0}, "vertices.nat.scaling.max"),
    ({"out_above_pps": 5, "max": 65}, "vertices.nat.scaling.max"),
    ({"out_above_pps": 100, "in_below_pps": 100}, "vertices.nat.scaling.in_below_pps"),
    ({"out_above_pps": "lots"}, "vertices.nat.scaling.out_above_pps"),
    ({"out_above_pps": 5, "interval_ms": 0}, "vertices.nat.scaling.interval_ms"),
    ({"out_above_pps": 5, "imbalance": 0.5}, "vertices.nat.scaling.imbalance"),
    ({}, "vertices.nat.scaling: give out_above_pps"),
    ("fast", "vertices.nat.scaling"),
    ({"policy": "no_such_module_xyz:decide"}, "vertices.nat.scaling.policy: cannot import 'no_such_module_xyz'"),
    ({"policy": "json:no_such_function"}, "vertices.nat.scaling.policy: module 'json' has no"),
    ({"policy": "json"}, "vertices.nat.scaling.policy: expected 'module:function'"),
    ({"policy": "json:__doc__"}, "is not callable"),
    # (ignored silently beside a callable: a new user's trial)
    ({"policy": "json:dumps", "out_above_pps": 5}, "vertices.nat.scaling.out_above_pps: a policy callable decides"),
])
def test_bad_policies_name_the_field(scaling, field):
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with(scaling))
    assert field in str(err.value)


def test_a_policy_outside_the_start_size_is_refused():
    raw = spec_with({"out_above_pps": 5, "min": 2, "max": 4})
    with pytest.raises(SpecError, match="starts with 1 instances, outside min..max"):
        parse_spec(raw)


def test_a_bad_policy_is_one_line_and_exit_2(capsys, tmp_path, lan_slice):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(spec_with({"out_above_pps": 5, "min": 3, "max": 2})))
    assert main(["run", str(spec), str(lan_slice), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scaling.min" in err


# -- the framework carries it out --------------------------------------------------------
def run(chain, records, **kw) -> dict:
    rt = SimRuntime(chain, model="EO+C+NA", store=MemoryStore(), pacer=Pacer("multiplier", 1), **kw)
    rt.run(records)
    return rt.summary().as_json()


def test_autoscale_follows_the_rate_and_keeps_the_digest(rising):
    """examples/autoscale.yaml on a trace whose rate rises and falls: the managers
    scale out and back in by themselves; the state equals the unscaled run's."""
    chain = load_spec(AUTOSCALE)
    records = list(open_capture(rising))
    scaled = run(chain, records)
    fixed = run(chain.without_scaling(), records)
    assert scaled["state_digest"] == fixed["state_digest"]
    for vertex in ("portscan", "trojan"):
        sizes = scaled["vertices"][vertex]["sizes"]
        assert max(sizes) >= 3 and sizes[-1] < max(sizes), sizes          # out, then in
    assert scaled["vertices"]["nat"]["sizes"] == [1]
    manager = [e for e in scaled["events"] if e.get("by") == "manager"]
    assert {e["kind"] for e in manager} >= {"scale-out", "scale-in"}
    moves = [e for e in scaled["events"] if e["kind"] == "move"]
    for e in moves:
        assert {"vertex", "instance", "packet", "vt", "groups", "clock", "handover_ns", "buffered"} <= set(e)


def test_cli_run_prints_the_scaling_and_no_scaling_turns_it_off(capsys, rising, tmp_path):
    s1, s2 = tmp_path / "s1.json", tmp_path / "s2.json"
    assert main(["run", str(AUTOSCALE), str(rising), "--no-progress", "--summary-json", str(s1)]) == 0
    out = capsys.readouterr().out
    assert "scaling:" in out and "portscan: instances 1 -> 2" in out
    assert main(["run", str(AUTOSCALE), str(rising), "--no-progress", "--no-scaling", "-q",
                 "--summary-json", str(s2)]) == 0
    a, b = json.loads(s1.read_text()), json.loads(s2.read_text())
    assert a["state_digest"] == b["state_digest"] and b["events"] == []


@pytest.fixture
def policies(monkeypatch):
    """An importable module of operator policies."""
    mod = types.ModuleType("chc_test_policies")
    calls = []

    def broken(load):
        calls.append(load)
        raise RuntimeError("operator bug")

    def always_out(load):
        return "scale-out"

    mod.broken, mod.always_out = broken, always_out
    monkeypatch.setitem(sys.modules, "chc_test_policies", mod)
    return calls


def test_a_policy_that_raises_is_reported_and_the_vertex_keeps_its_size(policies, lan_slice):
    raw = yaml.safe_load(PAPER.read_text())
    raw["vertices"]["portscan"]["scaling"] = {"policy": "chc_test_policies:broken", "interval_ms": 50}
    records = list(open_capture(lan_slice))
    s = run(parse_spec(raw), records)
    errors = [e for e in s["events"] if e["kind"] == "policy-error"]
    assert errors and errors[0]["error"] == "RuntimeError: operator bug" and len(policies) == len(errors)
    assert s["vertices"]["portscan"]["instances"] == 1 and s["vertices"]["portscan"]["sizes"] == [1]
    assert s["packets_out"] == run(load_spec(PAPER), records)["packets_out"]
    # ... and the printed summary says so (the JSON alone had it: a new user's trial)
    from chc.summary import Summary
    text = Summary(**{k: v for k, v in s.items() if k != "pps"}).render()
    assert (f"  portscan: its policy failed {len(errors)} times, the vertex kept its size; "
            "first: RuntimeError: operator bug") in text


def test_a_callable_policy_is_bounded_by_max(policies, lan_slice):
    raw = yaml.safe_load(PAPER.read_text())
    raw["vertices"]["nat"]["scaling"] = {"policy": "chc_test_policies:always_out", "max": 3, "interval_ms": 50}
    s = run(parse_spec(raw), list(open_capture(lan_slice)))
    assert s["vertices"]["nat"]["instances"] == 3
    assert any(e["kind"] == "scale-out-refused" and "at max (3)" in e["reason"] for e in s["events"])


# -- scope refinement (§4.1) -------------------------------------------------------------
TRACE2_CHAIN = ROOT / "examples/paper_chain_trace2.yaml"     # addresses of generated traces
# portscan[0] is overloaded when the scope is refined: its backlog holds packets of
# flows that move to the fast portscan[1], so only a real handover keeps them in order.
REFINE = {"name": "refine", "parallelism": {"portscan": 2}, "model": "EO+C+NA", "pacing": {"multiplier": 1},
          "delays": {"*": "uniform:20:40", "portscan[0]": "uniform:1000:2000"},
          "events": [{"at": {"packets": 2000}, "do": "refine", "target": "portscan"},
                     {"at": {"packets": 4000}, "do": "scale-in", "target": "portscan"}]}


@pytest.fixture(scope="module")
def busy(tmp_path_factory) -> list:
    """6,000 packets of a generated trace with many concurrent connections."""
    path = tmp_path_factory.mktemp("busy") / "busy.pcap"
    generate(str(path), resolve_profile("trace1", 60000, 600, shape=(1, 6, 1)), seed=3)
    return list(itertools.islice(open_capture(path), 6000))


def test_refining_the_scope_hands_flows_over_and_shares_the_coarser_objects(busy):
    """Host pair -> 5-tuple: a pair's connections now spread over both instances
    (flows handed over with marks and buffering); the per-pair first-contact
    records become shared and are no longer cached (R3); the merge goes back."""
    chain, sc = load_spec(TRACE2_CHAIN), parse_scenario(REFINE)
    rt = SimRuntime(chain.with_parallelism({"portscan": 2}), model="EO+C+NA", store=MemoryStore(),
                    pacer=sc.pacer(), delays=sc.expand_delays(list(chain.vertices)), events=sc.events)
    seen = []
    refine = rt._refine

    def probe(vertex, why):
        refine(vertex, why)
        seen.append((rt.flowmaps[vertex].scope.name, {i.instance_id: set(i.shared) for i in rt.instances[vertex]}))
    rt._refine = probe
    rt.run(busy)
    s = rt.summary().as_json()
    assert seen[0][0] == "5-tuple"
    assert all(shared == {"likelihood", "contacted"} for shared in seen[0][1].values())
    kinds = Counter(e["kind"] for e in s["events"])
    assert kinds["refine"] == 1 and kinds["coarsen"] == 1
    refined = [e for e in s["events"] if e["kind"] == "move" and e.get("scope") == "5-tuple"]
    assert len(refined) == 2 and any(e["buffered"] for e in refined), refined
    assert s["vertices"]["portscan"]["scope"] == "host-pair"
    assert rt.instances["portscan"][0].shared == frozenset()      # sole user: cached again


def test_refine_keeps_coe_and_a_naive_refine_is_caught(busy):
    chain, sc = load_spec(TRACE2_CHAIN), parse_scenario(REFINE)
    verdicts = {}
    for brk in ((), ("naive-move",)):
        verdicts[brk] = [check_variant(chain, sc, busy, variant(chain, sc, seed, ["memory"]), brk).verdict
                         for seed in range(2)]
    assert verdicts[()] == ["pass", "pass"], verdicts
    assert verdicts[("naive-move",)] == ["diverged", "diverged"], verdicts


def test_refine_of_a_vertex_with_one_scope_is_refused_and_logged(lan_slice):
    sc = parse_scenario({"events": [{"at": {"packets": 100}, "do": "refine", "target": "nat"}]})
    s = run(load_spec(PAPER), list(open_capture(lan_slice))[:500], events=sc.events)
    assert [e["kind"] for e in s["events"]] == ["refine-refused"]


def test_a_move_between_instances_that_do_not_exist_is_refused_and_logged(lan_slice):
    """As the proc runtime does; it raised in the middle of the run (a traceback under
    ``chc serve --scenario``, found by a new-user trial)."""
    sc = parse_scenario({"events": [{"at": {"packets": 100}, "do": "move", "target": "nat", "from": 0, "to": 5}]})
    s = run(load_spec(PAPER), list(open_capture(lan_slice))[:500], events=sc.events)
    assert [(e["kind"], e["reason"]) for e in s["events"]] == [("move-refused", "instances are 0-0, got from 0 to 5")]


# -- seed-drawn events -------------------------------------------------------------------
def test_random_events_are_drawn_by_the_seed():
    sc = parse_scenario({"random": {"events": 6, "actions": ["scale-out", "move", "refine"],
                                    "between": {"packets": [100, 900]}}})
    vs = ["nat", "portscan"]
    a, b, c = (sc.events_for(s, vs, 5000) for s in (1, 1, 2))
    assert a == b and a != c and len(a) == 6
    assert all(100 <= e.at_packet < 900 and e.target in vs and e.action in ("scale-out", "move", "refine") for e in a)
    with pytest.raises(ValueError, match="random.vertices: unknown vertex 'ghost'"):
        parse_scenario({"random": {"events": 1, "vertices": ["ghost"]}}).events_for(0, vs, 10)


@pytest.mark.parametrize("raw, field", [
    ({"random": 5}, "random:"),
    ({"random": {"events": -1}}, "random.events"),
    ({"random": {"events": 2, "actions": ["explode"]}}, "random.actions"),
    ({"random": {"events": 2, "vertices": "nat"}}, "random.vertices"),
    ({"random": {"events": 2, "between": {"packets": [9, 3]}}}, "random.between"),
    ({"random": {"events": 2, "when": 1}}, "random.when"),
    ({"events": [{"at": {"packets": 5}, "do": "refine", "target": "nat[0]"}]}, "events[0]: needs a target"),
    ({"events": [{"at": {"packets": 5}, "do": "move", "target": "nat", "pick": -1}]}, "events[0]: pick"),
])
def test_random_and_refine_errors_name_the_field(raw, field):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(raw)
    assert field in str(err.value)


def test_a_drawn_move_picks_two_active_instances(lan_slice):
    """Whatever the pick, a drawn move goes between two instances taking traffic
    (never to a retired one)."""
    records = list(open_capture(lan_slice))[:2000]
    events = [{"at": {"packets": 200}, "do": "scale-in", "target": "nat[1]"}]
    events += [{"at": {"packets": 300 + 50 * k}, "do": "move", "target": "nat", "pick": k, "fraction": 0.5}
               for k in range(12)]
    sc = parse_scenario({"events": events})
    s = run(load_spec(PAPER).with_parallelism({"nat": 3}), records, events=sc.events)
    moves = [e for e in s["events"] if e["kind"] == "move" and e["packet"] >= 300]
    assert moves and all(e["instance"] != 1 and e["source"] != 1 for e in moves)


def test_a_refused_decision_keeps_the_reason_it_was_asked_for():
    """A manager's decision carries a reason; refusing it (the last active instance
    stays) logged a second ``reason`` and raised TypeError (found with autoscale.yaml
    under straggler.yaml).  The refusal's reason is ``reason``, the decision's ``asked``."""
    rt = SimRuntime(load_spec(ROOT / "examples/paper_chain.yaml"), model="EO+C+NA", store=MemoryStore())
    rt.scale_in("portscan", by="manager", reason="below 1500 pps")
    refused = [e for e in rt.events_log if e["kind"] == "scale-in-refused"]
    assert refused and refused[0]["reason"] == "the last active instance stays"
    assert refused[0]["asked"] == "below 1500 pps" and refused[0]["by"] == "manager"


def test_a_checked_seed_says_what_its_scenario_did(tmp_path, capsys):
    """Each seed's report counts the run's events (scale-outs, moves, refusals, ...): it
    said nothing of them, so a user could not tell whether the scenario was exercised."""
    scenario = tmp_path / "sc.yaml"
    scenario.write_text("events:\n  - {at: {packets: 100}, do: scale-out, target: nat}\n"
                        "  - {at: {packets: 200}, do: refine, target: trojan}\n")
    out = tmp_path / "check.json"
    assert main(["check", str(PAPER), str(scenario), str(LAN), "--packets", "400", "--seeds", "1",
                 "--json", str(out)]) == 0
    (seed,) = json.loads(out.read_text())["results"]
    assert seed["events"]["scale-out"] == 1 and seed["events"]["refine-refused"] == 1
    assert "    events: " in capsys.readouterr().out


# -- a flow that moves away and comes back (§5.1) ----------------------------------------

class FlowPackets(NF):
    """Packets per connection: a per-flow value that changes with every packet."""

    kind = "flowpackets"
    seen = Value(FLOW, Access.READ_WRITE, doc="packets of the connection so far")

    def process(self, pkt, ctx):
        key = FLOW.key(pkt)
        self.seen.set((self.seen.get(key) or 0) + 1, key)
        return pkt


def test_a_flow_moved_away_and_back_is_not_read_from_a_stale_cache():
    """§5.1 step 5: an instance that hands flows over drops its per-flow cache.  Every
    flow goes to instance 1 and back to 0; without the drop instance 0 went on from the
    counts it had before the first move (a mutation hunt found nothing that failed: the
    LAN capture has no connection with packets before, between and after two moves)."""
    from frames import udp

    chain = parse_spec({"name": "away-and-back", "vertices": {"count": {"nf": f"{__name__}:FlowPackets",
                                                                        "parallelism": 2}}, "edges": []})
    sc = parse_scenario({"name": "away-and-back", "model": "EO+C+NA",
                         "events": [{"at": {"packets": 400}, "do": "move", "target": "count", "from": 0, "to": 1,
                                     "fraction": 1},
                                    {"at": {"packets": 800}, "do": "move", "target": "count", "from": 1, "to": 0,
                                     "fraction": 1}]})
    # 24 long-lived flows, their packets interleaved: each has packets in all three phases.
    records = [(10**9 + i * 10**6, udp(f"10.0.0.{1 + i % 24}", "192.0.2.9", 5000 + i % 24, 53, b"q"))
               for i in range(1200)]
    for seed in range(2):
        r = check_variant(chain, sc, records, variant(chain, sc, seed, ["memory"]), ())
        assert r.verdict == "pass", r.result.first
        assert r.result.events.get("move") == 2, r.result.events


def test_an_event_on_an_instance_a_scale_out_adds_is_judged_when_it_fires(lan_slice):
    """Validated against the starting size, a crash of nat[1] after a scale-out of nat
    stopped the whole check on a seed that drew one starting instance (a new user's
    trial).  Now it fires on the added instance, or is logged refused if none is there."""
    sc = parse_scenario({"events": [
        {"at": {"packets": 100}, "do": "crash", "target": "nat[2]"},       # before any scale-out: refused
        {"at": {"packets": 200}, "do": "scale-out", "target": "nat"},
        {"at": {"packets": 400}, "do": "crash", "target": "nat[1]"}]})     # the added one
    s = run(load_spec(PAPER), list(open_capture(lan_slice))[:1000], events=sc.events)
    kinds = [(e["kind"], e.get("instance")) for e in s["events"] if e["kind"] in ("crash", "crash-refused")]
    assert kinds == [("crash-refused", None), ("crash", 1)], s["events"]
    refused = next(e for e in s["events"] if e["kind"] == "crash-refused")
    assert "no such instance when it fired: 'nat[2]': nat has instances 0-0" in refused["reason"]
    with pytest.raises(ValueError, match="nat has instances 0-0"):     # no scale-out of nat: an error at once
        run(load_spec(PAPER), [], events=parse_scenario({"events": [
            {"at": {"packets": 10}, "do": "crash", "target": "nat[1]"}]}).events)


def test_a_managed_vertex_starts_within_its_policys_bounds():
    """--parallelism 3 under max 2 ran 3 -> 2 -> 1 -> 2, and chc check seeds drew 4 against
    max 2 (a new user's trial): refused, and drawn within min..max."""
    raw = yaml.safe_load(PAPER.read_text())
    raw["vertices"]["trojan"]["scaling"] = {"out_above_pps": 3000, "in_below_pps": 1500, "min": 2, "max": 3}
    raw["vertices"]["trojan"]["parallelism"] = 2
    chain = parse_spec(raw)
    with pytest.raises(SpecError, match=r"trojan.parallelism 4: outside min..max \(2..3\) of its scaling policy"):
        chain.with_parallelism(4)
    sc = parse_scenario({"name": "drawn"})
    assert {variant(chain, sc, seed, ["memory"]).parallelism["trojan"] for seed in range(40)} == {2, 3}
    assert chain.with_room().vertices["trojan"].parallelism == MAX_PARALLELISM      # naming only, never run


def test_a_scenario_parallelism_outside_a_scaling_policy_is_a_scenario_error():
    """chc check said "portscan.parallelism 6: outside min..max ..." with no scenario named."""
    chain = load_spec(str(ROOT / "examples/autoscale.yaml"))
    with pytest.raises(ScenarioError, match=re.escape("parallelism: portscan.parallelism 6: outside min..max (1..4)")):
        parse_scenario({"parallelism": {"portscan": 6}}).check_targets(list(chain.vertices), chain)


@pytest.mark.parametrize("event, says", [
    ({"do": "move", "target": "nat", "from": 0, "to": 1, "fraction": 1.5},
     "fraction: a number above 0 and at most 1, got 1.5"),
    ({"do": "move", "target": "nat", "from": 1, "to": 1}, "from and to are both 1: a move between two instances"),
])
def test_a_move_that_cannot_be_says_why(event, says):
    """'fraction: a positive number, got 1.5'; a move from 1 to 1 did nothing, silently (a trial)."""
    with pytest.raises(ScenarioError, match=says):
        parse_scenario({"events": [{"at": {"packets": 100}, **event}]})


@pytest.mark.parametrize("event, says", [
    ({"at": {"packets": 100}, "do": "scale-out", "target": "nat[0]"},
     "a scale-out adds an instance: target the vertex"),
    ({"at": {"packets": True}, "do": "scale-out", "target": "nat"}, "expected {packets: N}"),
])
def test_scenario_values_that_were_taken_silently_are_refused(event, says):
    """scale-out nat[0] ignored its index; at: {packets: true} ran at packet 1 (a trial)."""
    with pytest.raises(ScenarioError, match=re.escape(says)):
        parse_scenario({"events": [event]})


def test_a_scenario_event_the_input_never_reaches_is_logged(lan_slice):
    """It did nothing, silently (a new user's trial); proc logged it already."""
    sc = parse_scenario({"events": [{"at": {"packets": 10**9}, "do": "scale-out", "target": "nat"}]})
    s = run(load_spec(PAPER), list(open_capture(lan_slice))[:300], events=sc.events)
    assert [(e["kind"], e["reason"]) for e in s["events"]] == [("scale-out-refused", "the input ended before it")]
