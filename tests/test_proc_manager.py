"""Vertex managers as processes of the proc runtime (§3, §4.1; docs/proc.md, "Vertex managers").

The sans-I/O part (:class:`~chc.core.manager.ReportingManager`, :func:`~chc.core.manager.balance`)
is checked directly; the processes end to end on a generated trace whose rate rises
six-fold and falls back: the managers scale out and in by themselves, the COE check
passes, ``--break naive-move`` on their changes is caught, and a manager killed is
started again while the chain runs on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("zmq")

from chc.cli import main  # noqa: E402
from chc.core.manager import QUIET_INTERVALS, ReportingManager, ScalingPolicy, balance  # noqa: E402
from chc.trace.gen import generate, resolve_profile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
AUTOSCALE = ROOT / "examples/autoscale.yaml"
MS = 1_000_000


@pytest.fixture(scope="module")
def rising(tmp_path_factory) -> Path:
    """A generated trace whose rate rises six-fold and falls back (as tests/test_scaling.py's)."""
    path = tmp_path_factory.mktemp("rise") / "rise.pcap"
    generate(str(path), resolve_profile("trace1", 24000, 240, shape=(1, 6, 1)), seed=3)
    return path


def _desk(active=(0, 1), **policy) -> ReportingManager:
    """A manager whose clock has started at input time 0 (every instance reported 0 packets)."""
    p = ScalingPolicy(**{"out_above_pps": 1000, "in_below_pps": 10, "max": 4, "interval_ms": 100, **policy})
    desk = ReportingManager("nat", p, list(active), "5-tuple", False)
    for i in active:
        desk.load(i, 0, 0, 0, 0)
    assert desk.due() is None                       # the first report starts the clock
    return desk


# -- sans-I/O ----------------------------------------------------------------------------------

def test_an_interval_ends_when_every_reporting_instance_has_passed_it():
    desk = _desk(out_above_pps=5000, imbalance=10)
    desk.load(0, 500, 0, 0, 120 * MS)
    assert desk.due() is None                       # instance 1 has not reported past 100 ms yet
    desk.load(1, 30, 0, 0, 110 * MS)
    load, decisions, _ = desk.due()
    assert [round(i.pps) for i in load.instances] == [round(500 / 0.12), round(30 / 0.11)]
    assert decisions == []                          # mean 2,220 pps is between the bounds


def test_each_instance_is_measured_over_its_own_stretch_of_input():
    """Reports come after batches: one instance may be far ahead of another.  Its rate is
    its packets over its own input time, not over the other's (which read 2x here)."""
    desk = _desk(out_above_pps=5000)
    desk.load(0, 800, 0, 0, 200 * MS)               # 4,000 pps
    desk.load(1, 400, 0, 0, 100 * MS)               # 4,000 pps
    load, decisions, _ = desk.due()
    assert [round(i.pps) for i in load.instances] == [4000, 4000] and decisions == []


def test_a_quiet_instance_holds_the_interval_for_one_more_at_most():
    """An instance that had nothing queued at its last report may be idle: waiting five
    intervals for it made every decision of a vertex with an idle instance that late."""
    desk = _desk()
    desk.load(1, 5, 0, 0, 20 * MS)                  # then nothing more for instance 1
    desk.load(0, 100, 0, 0, 150 * MS)
    assert desk.due() is None
    desk.load(0, 300, 0, 0, 230 * MS)               # an interval past the end: go on without it
    load, _, _ = desk.due()
    assert [i.packets for i in load.instances] == [300, 5]


def test_an_instance_with_packets_queued_is_waited_for_a_few_intervals_not_read_as_idle():
    """Instances lag one another by what waits in their queues: one a few intervals behind
    was taken for idle and counted as nothing, which halved the vertex's rate (on proc,
    autoscale.yaml scaled the Trojan detector out, then in at 1,445 packets/s per
    instance where each carried about 3,000, then out again)."""
    desk = _desk(out_above_pps=5000, in_below_pps=2000)
    desk.load(1, 60, 40, 0, 20 * MS)                # 40 packets queued: it lags
    desk.load(0, 900, 0, 0, 300 * MS)               # 3,000 pps, three intervals ahead
    assert desk.due() is None
    desk.load(1, 300, 0, 0, 100 * MS)               # 3,000 pps too, late
    load, decisions, _ = desk.due()
    assert [round(i.pps) for i in load.instances] == [3000, 3000] and decisions == []
    desk.load(1, 330, 50, 0, 110 * MS)              # queued again, and then silent...
    desk.load(0, 900 + 300 * QUIET_INTERVALS, 0, 0, (200 + 100 * QUIET_INTERVALS - 10) * MS)
    assert desk.due() is None
    desk.load(0, 900 + 300 * QUIET_INTERVALS, 0, 0, (200 + 100 * QUIET_INTERVALS) * MS)
    assert desk.due() is not None                   # ...but not for ever


def test_a_new_instance_is_waited_for_until_it_reports():
    """After a scale-out the new instance has not reported yet: it is behind, not idle."""
    desk = _desk(active=(0,), out_above_pps=5000, in_below_pps=2000)
    desk.shape([0, 1], "5-tuple", False)
    desk.load(0, 300, 0, 0, 100 * MS)
    assert desk.due() is None
    desk.load(1, 300, 0, 0, 100 * MS)
    load, decisions, _ = desk.due()
    assert [round(i.pps) for i in load.instances] == [3000, 3000] and decisions == []


def test_the_first_reports_start_the_clock_from_their_counters():
    """A manager that read its first reports late (its process slow to start) counted
    every packet before them into its first interval (30,056 packets/s where 3,590 came)."""
    desk = ReportingManager("nat", ScalingPolicy(out_above_pps=5000, in_below_pps=10, max=4, interval_ms=100),
                            [0], "5-tuple", False)
    desk.load(0, 10_000, 0, 0, 1000 * MS)
    assert desk.due() is None
    desk.load(0, 10_300, 0, 0, 1100 * MS)
    load, decisions, _ = desk.due()
    assert round(load.instances[0].pps) == 3000 and decisions == []


def test_one_decision_at_a_time_until_the_new_shape_is_told():
    desk = _desk(active=(0,))
    desk.load(0, 5000, 0, 0, 100 * MS)
    _, decisions, _ = desk.due()
    assert [d.action for d in decisions] == ["scale-out"]
    desk.load(0, 10000, 0, 0, 200 * MS)
    assert desk.due() is None                       # waiting for the framework manager
    desk.shape([0, 1], "5-tuple", False)
    desk.load(0, 15000, 0, 0, 300 * MS)
    desk.load(1, 100, 0, 0, 300 * MS)             # (the new instance: waited for until it reports)
    assert desk.due() is not None


def test_a_failover_goes_on_from_its_instances_count_and_a_late_report_of_the_dead_is_ignored():
    """§5.4 a failover (generation 1) counts from zero, its replay included: what it
    reports first is where the failed process's count was, and only what it adds after
    is load; a report of the failed process read after its failover's is dropped."""
    desk = _desk(active=(0,))
    desk.load(0, 60, 0, 0, 50 * MS)
    desk.load(0, 40, 0, 0, 60 * MS, 1)              # the failover, its replay of 40 packets
    desk.load(0, 65, 0, 0, 70 * MS)                 # the dead one's, late
    desk.load(0, 70, 0, 0, 100 * MS, 1)
    load, _, _ = desk.due()
    assert load.instances[0].packets == 90          # 60, then 30 new ones


def test_after_a_change_the_interval_starts_afresh():
    """Three instances at 900 packets/s each decide a scale-in; after it two carry 1,350
    each.  An interval run on across the change read 966 (the retired one's packets gone,
    the span the whole interval) and scaled in again; afresh it reads 1,350."""
    desk = _desk(active=(0, 1, 2), in_below_pps=1000, out_above_pps=5000, imbalance=10)
    for i in range(3):
        desk.load(i, 90, 0, 0, 100 * MS)
    _, decisions, _ = desk.due()
    assert [d.action for d in decisions] == ["scale-in"]
    for i in range(3):
        desk.load(i, 90 + 27, 0, 0, 130 * MS)       # 900 pps until the barrier at 130 ms
    desk.shape([0, 1], "5-tuple", False)            # instance 2 retired
    for i in range(2):
        desk.load(i, 117 + 135, 0, 0, 230 * MS)     # 1,350 pps each from then
    load, decisions, _ = desk.due()
    assert [round(x.pps) for x in load.instances] == [1350, 1350] and decisions == []


def test_a_policy_that_names_no_instance_number_is_a_policy_error():
    from chc.core.manager import Decision, as_decisions
    with pytest.raises(ValueError, match="instance number"):
        as_decisions(Decision("scale-in", "nat1"))


def test_a_manager_started_again_counts_from_each_instances_first_report():
    p = ScalingPolicy(out_above_pps=1000, in_below_pps=10, interval_ms=100)
    desk = ReportingManager("nat", p, [0], "5-tuple", False, restarted=True)
    desk.load(0, 90000, 0, 0, 0)                    # counted since the start of the run
    desk.due()
    desk.load(0, 90050, 0, 0, 100 * MS)
    load, decisions, _ = desk.due()
    assert load.instances[0].packets == 50 and decisions == []


def test_balance_moves_the_hottest_groups_refines_a_hot_one_or_leaves_it():
    table = [0, 1, 0, 1]
    assert balance(table, [10, 10, 10, 10], [0, 1], 1.2, True) is None
    assert balance(table, [35, 5, 10, 5], [0, 1], 1.2, False) == ("move", [2], 1)
    assert balance(table, [35, 5, 10, 5], [0, 1], 1.2, True) == ("refine", [], -1)


# -- the processes ---------------------------------------------------------------------------

def _run(argv: list[str], tmp_path: Path, name: str) -> dict:
    out = tmp_path / f"{name}.json"
    assert main([*argv, "--no-progress", "-q", "--summary-json", str(out)]) == 0
    return json.loads(out.read_text())


def test_the_managers_scale_out_and_the_state_is_the_unscaled_runs(rising, tmp_path):
    """examples/autoscale.yaml's detectors: their state does not depend on how the store
    ordered the instances' updates, so the digest equals the unscaled chain's.  (Scale-ins
    come as the rate falls at the end, and may come after the input: not asserted.)"""
    scaled = _run(["run", "--runtime", "proc", str(AUTOSCALE), str(rising)], tmp_path, "proc")
    fixed = _run(["run", str(AUTOSCALE), str(rising), "--no-scaling"], tmp_path, "fixed")
    assert scaled["state_digest"] == fixed["state_digest"]
    assert scaled["packets_in"] == fixed["packets_in"] and scaled["log"]["remaining"] == 0
    for vertex in ("portscan", "trojan"):
        sizes = scaled["vertices"][vertex]["sizes"]
        assert max(sizes) >= 3, sizes
    manager = [e for e in scaled["events"] if e.get("by") == "manager"]
    assert {e["kind"] for e in manager} >= {"scale-out"}
    # (a refused decision keeps the policy's reason as "asked")
    assert all("pps" in e.get("asked", e["reason"]) or "imbalance" in e.get("asked", e["reason"]) for e in manager)
    assert all(e["handed_over"] >= 0 and e["barrier_clock"] >= 0 for e in manager if "refused" not in e["kind"])


@pytest.fixture(scope="module")
def all_scaled(tmp_path_factory) -> tuple[Path, Path]:
    """autoscale.yaml with the NAT and the LB managed too (shared ports and backends:
    their digest may differ from the unscaled run's, the COE check says whether it is
    equivalent), and a scenario that only picks the model."""
    d = yaml.safe_load(AUTOSCALE.read_text())
    for v in ("nat", "lb"):
        d["vertices"][v]["scaling"] = dict(d["vertices"]["portscan"]["scaling"])
    home = tmp_path_factory.mktemp("managed")
    chain, scenario = home / "all.yaml", home / "plain.yaml"
    chain.write_text(yaml.safe_dump(d))
    scenario.write_text("model: EO+C+NA\n")
    return chain, scenario


def test_changes_the_managers_make_pass_the_check(all_scaled, rising, tmp_path):
    chain, scenario = all_scaled
    out = tmp_path / "check.json"
    assert main(["check", "--runtime", "proc", str(chain), str(scenario), str(rising), "--seed", "1",
                 "--json", str(out)]) == 0


def test_the_managers_changes_without_the_wait_at_the_barrier_diverge(all_scaled, rising, tmp_path):
    chain, scenario = all_scaled
    assert main(["check", "--runtime", "proc", str(chain), str(scenario), str(rising), "--seed", "1",
                 "--break", "naive-move"]) == 1


def test_a_manager_killed_is_started_again_and_goes_on_deciding(rising, tmp_path):
    s = _run(["run", "--runtime", "proc", str(AUTOSCALE), str(rising), "--kill", "manager:portscan@3000"],
             tmp_path, "killed")
    restarted = [e for e in s["events"] if e["kind"] == "manager-restarted"]
    assert len(restarted) == 1 and restarted[0]["vertex"] == "portscan"
    assert restarted[0]["killed_at_packet"] >= 3000 and "signal 9" in restarted[0]["how"]
    later = [e for e in s["events"] if e.get("by") == "manager" and e["vertex"] == "portscan"
             and e["packet"] > restarted[0]["packet"]]
    assert later, "the restarted manager made no decision"
    assert all(int(e["reason"].split()[0]) < 20000 for e in later if "pps" in e["reason"])
    assert s["log"]["remaining"] == 0


def test_a_straggler_policy_in_model_t_is_refused_on_proc_in_one_line(capsys, tmp_path):
    """§5.3 a clone starts from its straggler's state in the store: model T has none there."""
    d = yaml.safe_load(AUTOSCALE.read_text())
    d["vertices"]["trojan"]["scaling"]["straggler_factor"] = 3.0
    spec = tmp_path / "chain.yaml"
    spec.write_text(yaml.safe_dump(d))
    assert main(["run", "--runtime", "proc", str(spec), str(ROOT / "traces/scans/nmap-syn-scan.pcap"),
                 "--model", "T"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clone of trojan" in err[0] and "model T" in err[0]


def test_bad_manager_kills_are_one_line(capsys):
    assert main(["run", "--runtime", "proc", str(AUTOSCALE), str(ROOT / "traces/pathspider/lan-2012.pcap.gz"),
                 "--kill", "manager:nat@10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no vertex 'nat' with a scaling policy" in err[0] and "portscan" in err[0]


def test_a_feeder_reports_the_packets_it_split_per_flow_group_to_the_manager(tmp_path):
    """What a rebalance decides by (§4.1): the root counts what it splits to a managed
    vertex per flow group, across a change too, and sends it to the vertex's manager."""
    import itertools
    import time

    import zmq

    from chc.capture import open_capture
    from chc.packet import Packet
    from chc.runtime.procio import Guard
    from chc.runtime.procworker import Plan, _Sender, manager_name
    from chc.runtime.wire import Kind, Mailbox
    from chc.spec import load_spec

    with open_capture(str(ROOT / "traces/pathspider/lan-2012.pcap.gz")) as r:
        pkts = [p for p in (Packet(data, ts, k) for k, (ts, data) in enumerate(itertools.islice(r, 300)))
                if p.src is not None][:120]
    for clock, p in enumerate(pkts):
        p.clock = clock
    d = yaml.safe_load((ROOT / "examples/paper_chain.yaml").read_text())
    d["vertices"]["nat"]["scaling"] = {"out_above_pps": 5000, "max": 4}
    spec = tmp_path / "chain.yaml"
    spec.write_text(yaml.safe_dump(d))
    plan = Plan(str(tmp_path), load_spec(str(spec)).with_parallelism(2), "EO", 1, ("memory", ""), managers=("nat",))
    ctx = zmq.Context()
    try:
        box = Mailbox(ctx, plan.address(manager_name("nat")), "manager")
        sender = _Sender(plan, ctx, "@root.0", None, Guard([]))
        first = sender.split("nat", pkts[:60])
        sender.switch("nat", plan.flowmap("nat", [3, None, 0]), 200)    # a change under way: two maps
        second = sender.split("nat", pkts[60:])
        sender.batch({}, -1, -1)                # (after every batch it sends)
        got = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            box.sock.poll(100)
            got = [body for _, (what, body) in box.messages(Kind.CONTROL, 2, "report") if what == "groups"]
    finally:
        ctx.destroy(linger=0)
    assert len(got) == 1 and sum(got[0]) == len(pkts)
    table = sender.splitters["nat"].map.table
    per_instance = [sum(c for g, c in enumerate(got[0]) if table[g] == i) for i in range(2)]
    assert per_instance == [len(first[i]) + len(second[i]) for i in range(2)]


def test_the_framework_manager_holds_the_bounds_and_refuses_clones(tmp_path):
    """:meth:`Scaler.decide`: a decision that would cross ``min``/``max`` is refused and
    logged, as a clone is while a clone pair of the vertex runs (one a vertex); an even load
    rebalances nothing; the rest become changes with the manager's reason."""
    import types

    from chc.runtime.procscale import Scaler
    from chc.runtime.procworker import Plan
    from chc.spec import load_spec

    chain = load_spec(str(AUTOSCALE))
    rt = types.SimpleNamespace(chain=chain, plan=Plan(str(tmp_path), chain, "EO", 1, ("memory", "")), kills=[],
                               events=[], spares=False, pairs={"portscan.1": {"vertex": "portscan"}})
    scaler = Scaler(rt, [])
    made = []
    scaler._change = lambda event, index: made.append((event.action, event.target, event.params, index))
    scaler.active["portscan"] = [0, 1, 2, 3]                        # at max (4), evenly loaded
    fm = scaler.flowmaps["portscan"]
    fm.table = [g % 4 for g in range(64)]
    scaler.decide("portscan", [["scale-out", None, "9000 pps per instance > 3000"], ["clone", 2, "slow"],
                               ["rebalance", None, "imbalance 1.6 > 1.5"]], [5] * 64, 700)
    assert [(e["kind"], e["reason"]) for e in rt.events] == [
        ("scale-out-refused", "at max (4)"), ("clone-refused", "a clone pair of portscan runs")]
    assert all(e["by"] == "manager" and e["packet"] == 700 for e in rt.events) and made == []
    scaler.active["trojan"] = [0, 1]
    counts = [10 if g % 2 == 0 else 0 for g in range(64)]
    scaler.flowmaps["trojan"].table = [g % 2 for g in range(64)]     # instance 0 has all the load
    scaler.decide("trojan", [["scale-in", 1, "100 pps per instance < 1500"],
                             ["rebalance", None, "imbalance 2.00 > 1.5"]], counts, 800)
    (a, target, params, index), (b, _, moved, _) = made
    assert (a, target, params["by"], params["reason"], index) == ("scale-in", "trojan[1]", "manager",
                                                                  "100 pps per instance < 1500", 800)
    assert b == "move" and moved["to"] == 1 and moved["groups"] and all(g % 2 == 0 for g in moved["groups"])


def test_a_clone_decided_after_the_input_ended_is_refused_for_what_it_is():
    """Decisions still pending at the end of input are logged refused: a scale-out or a
    scale-in the policy's bounds allow because the input ended first, a clone because the
    run keeps nothing for clones (its policies cannot clone), one at a bound as the
    manager's decision is refused then (a short run
    said "the input ended before it" for those, hiding the reason a longer run gives)."""
    from chc.runtime.proc import ProcRuntime
    from chc.spec import load_spec

    rt = ProcRuntime(load_spec(AUTOSCALE), model="EO+C+NA")     # (not run: its coordinator's state)
    rt.scaler.active["trojan"] = [0, 1, 2, 3]                   # at its max, 4; portscan at its min, 1
    rt.fed = 900
    rt.decisions = [("portscan", [["clone", 1, "slow"], ["scale-out", None, "busy"], ["scale-in", 0, "idle"]], []),
                    ("trojan", [["scale-out", None, "busier"], ["scale-in", 3, "idler"]], [])]
    ProcRuntime._decisions_expired(rt)
    assert [(e["vertex"], e["kind"], e["reason"], e["asked"]) for e in rt.events] == [
        ("portscan", "clone-refused", "the run was not started for clones (no clone event, straggler_factor or "
                                      "policy callable; docs/proc.md, \"Clones\")", "slow"),
        ("portscan", "scale-out-refused", "the input ended before it", "busy"),
        ("portscan", "scale-in-refused", "at min (1)", "idle"),
        ("trojan", "scale-out-refused", "at max (4)", "busier"),
        ("trojan", "scale-in-refused", "the input ended before it", "idler")]
    assert rt.decisions == [] and {e["packet"] for e in rt.events} == {900}


def test_a_policy_the_manager_cannot_import_stops_the_run_in_one_line(tmp_path, monkeypatch, capsys):
    """A policy callable goes to the manager process by its reference (a lambda does not
    pickle), which imports it there; one the coordinator imports but a worker cannot
    (here a module that exists only in this process's memory) stops the run with the
    manager's words (starting it again would fail the same way for ever)."""
    import sys
    import types

    mod = types.ModuleType("chc_only_here")
    mod.always_out = lambda load: "scale-out"
    monkeypatch.setitem(sys.modules, "chc_only_here", mod)
    d = yaml.safe_load(AUTOSCALE.read_text())
    d["vertices"]["trojan"]["scaling"] = {"policy": "chc_only_here:always_out", "max": 2}
    spec = tmp_path / "chain.yaml"
    spec.write_text(yaml.safe_dump(d))
    assert main(["run", "--runtime", "proc", str(spec), str(ROOT / "traces/scans/nmap-syn-scan.pcap"),
                 "--no-progress", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "@manager.trojan" in err[0] and "cannot import 'chc_only_here'" in err[0]


def test_a_policy_callable_runs_in_the_manager_process(rising, tmp_path):
    d = yaml.safe_load(AUTOSCALE.read_text())
    d["vertices"]["trojan"]["scaling"] = {"policy": "proc_policies:to_two", "max": 3}
    spec = tmp_path / "chain.yaml"
    spec.write_text(yaml.safe_dump(d))
    s = _run(["run", "--runtime", "proc", str(spec), str(rising)], tmp_path, "policy")
    assert s["vertices"]["trojan"]["sizes"] == [1, 2]
    (out,) = [e for e in s["events"] if e["vertex"] == "trojan"]
    assert out["kind"] == "scale-out" and out["reason"] == "1 instance(s), want two" and out["by"] == "manager"


def test_a_death_during_a_change_a_manager_made_is_failed_over_into_it(all_scaled, rising, tmp_path):
    """``--kill during`` with vertex managers: the K-th change is the managers' (drawn
    without knowing which vertex it changes); seed 45 kills trojan.2 during change 1."""
    chain, scenario = all_scaled
    out = tmp_path / "check.json"
    assert main(["check", "--runtime", "proc", str(chain), str(scenario), str(rising), "--seed", "45",
                 "--kill", "during", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())["results"]
    assert "@change:" in result["variant"]["kill"] and "killed" in result["faults"], result["faults"]


def test_a_worker_that_fails_while_it_is_built_says_why(monkeypatch, capsys, tmp_path):
    """Its half-built state has a connection to the coordinator under its name; the error
    goes on a new one, which the coordinator takes over (ROUTER_HANDOVER).  Without, the
    error was dropped and the run said only "exited with code 0"."""
    from chc.nfs import REGISTRY
    from proc_policies import FailsInAWorker
    monkeypatch.setitem(REGISTRY, FailsInAWorker.kind, FailsInAWorker)
    spec = tmp_path / "chain.yaml"
    spec.write_text(yaml.safe_dump({"name": "fails", "vertices": {"x": {"nf": FailsInAWorker.kind}}, "edges": []}))
    assert main(["run", "--runtime", "proc", str(spec), str(ROOT / "traces/scans/nmap-syn-scan.pcap"),
                 "--no-progress", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.0: RuntimeError: this NF cannot start here" in err[0], err


def test_decisions_that_come_after_the_input_are_logged_as_refused():
    from chc.runtime.proc import ProcRuntime
    from chc.spec import load_spec

    rt = ProcRuntime(load_spec(AUTOSCALE), model="EO+C+NA")     # (not run: its coordinator's state)
    rt.scaler.active["trojan"] = [0, 1]
    rt.decisions, rt.fed = [["trojan", [["scale-in", 1, "10 pps per instance < 1500"]], []]], 24000
    ProcRuntime._decisions_expired(rt)
    assert rt.events == [{"kind": "scale-in-refused", "vertex": "trojan", "instance": 1, "packet": 24000,
                          "reason": "the input ended before it", "by": "manager",
                          "asked": "10 pps per instance < 1500"}]
    assert rt.decisions == []
