"""§5.1 elasticity on the proc runtime (chc.runtime.procscale): scale-out, scale-in,
moves and scope refinement while real processes run.

A change is tied to a barrier clock: every upstream splits by the new map past
it, each instance that loses flow groups hands over at it, each one that gains
them waits there for the go-ahead.  The COE oracle judges seeded runs of the
scale scenario; with the wait switched off (``--break naive-move``) they diverge.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

pytest.importorskip("zmq")

from chc.capture import open_capture  # noqa: E402
from chc.cli import main  # noqa: E402
from chc.core.splitter import FlowMap  # noqa: E402
from chc.runtime.proc import ProcRuntime  # noqa: E402
from chc.runtime.procscale import plan_change, refusal  # noqa: E402
from chc.scenario import Event  # noqa: E402
from chc.spec import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAN = str(ROOT / "traces/pathspider/lan-2012.pcap.gz")
PAPER = str(ROOT / "examples/paper_chain.yaml")
SCALE = str(ROOT / "examples/scenarios/scale.yaml")


def _records(n: int) -> list[tuple[int, bytes]]:
    with open_capture(LAN) as reader:
        return list(itertools.islice(reader, n))


def _ev(action: str, target: str, at: int, **params) -> Event:
    return Event(action, target, params, at_packet=at)


# -- the plan (sans-I/O) ------------------------------------------------------------------------

def _nat_map(n: int) -> FlowMap:
    chain = load_spec(PAPER)
    return FlowMap(n, chain.vertices["nat"].nf.partition_scopes())


def test_a_scale_out_gives_the_new_instance_an_even_share_and_the_losers_hand_over():
    chain = load_spec(PAPER)
    plan = plan_change(chain, _nat_map(2), [0, 1], _ev("scale-out", "nat", 10))
    fm = plan["flowmap"]
    assert plan["new"] == [2] and fm.n == 3
    assert sorted(fm.load().values()) == [170, 170, 172]     # (the sim's rule: 512 // 3 each)
    assert plan["losers"] == [0, 1] and 2 in plan["waiters"]


def test_a_scale_in_deals_the_victims_groups_out_and_one_instance_is_coarse_again():
    chain = load_spec(PAPER)
    plan = plan_change(chain, _nat_map(2), [0, 1], _ev("scale-in", "nat", 10))
    fm = plan["flowmap"]
    assert plan["retire"] == [1] and plan["after"] == [0]
    assert fm.groups_of(1) == [] and fm.level == 0
    assert plan["passers"] == [0, 1] and plan["waiters"] == [0]


def test_a_move_hands_over_from_one_instance_to_another_only():
    chain = load_spec(PAPER)
    plan = plan_change(chain, _nat_map(3), [0, 1, 2], _ev("move", "nat", 10, **{"from": 0, "to": 1,
                                                                                "fraction": 0.5}))
    assert plan["losers"] == [0] and plan["passers"] == [0] and plan["waiters"] == [1]
    assert plan["moves"] == [[128, 1]]


@pytest.mark.parametrize("event, reason", [
    (_ev("scale-in", "nat", 1), "the last active instance stays"),
    (_ev("move", "nat", 1, **{"from": 0, "to": 3}), "not an active instance"),
])
def test_what_cannot_be_done_is_refused_with_a_reason(event, reason):
    assert plan_change(load_spec(PAPER), _nat_map(1), [0], event)["refused"] == reason


def test_the_proc_runtime_refuses_what_it_does_not_scale_yet():
    chain = load_spec(PAPER)
    assert refusal([_ev("clone", "nat", 5)], chain, "EO") is None
    assert "for_us" in refusal([_ev("clone", "nat", 5, for_us=100)], chain, "EO")
    assert refusal([_ev("slow", "nat", 5)], chain, "T") is None     # (§5.3 a sleep: no store needed)
    assert refusal([_ev("set-backends", "lb", 5)], chain, "EO") is None     # (§4.3 tests/test_proc_controls.py)
    assert "not yet drop" in refusal([_ev("drop", "nat", 5)], chain, "EO")
    assert "model T" in refusal([_ev("scale-out", "nat", 5)], chain, "T")
    assert refusal([_ev("scale-out", "nat", 5)], chain, "EO+C") is None
    with pytest.raises(ValueError, match="clone of nat.*model T"):
        ProcRuntime(chain, model="T", events=[_ev("clone", "nat", 5)])


# -- a run ------------------------------------------------------------------------------------------

def test_a_run_scales_out_moves_and_scales_in_with_every_packet_through():
    chain = load_spec(PAPER)
    events = [_ev("scale-out", "nat", 300), _ev("scale-out", "portscan", 500),
              _ev("move", "nat", 700, **{"from": 0, "to": 1, "fraction": 1.0}),
              _ev("scale-in", "portscan", 900), _ev("scale-out", "lb", 5000)]
    rt = ProcRuntime(chain, model="EO+C", batch_size=32, events=events)
    rt.run(_records(1200))
    s = rt.summary()
    events = sorted(s.events, key=lambda e: e["packet"])
    assert [e["kind"] for e in events] == ["scale-out", "scale-out", "move", "scale-in", "scale-out-refused"]
    assert events[-1]["reason"] == "the input ended before it"
    nat, portscan = s.vertices["nat"], s.vertices["portscan"]
    assert nat["instances"] == 2 and nat["sizes"] == [1, 2] and nat["retired"] == 0
    assert portscan["instances"] == 1 and portscan["sizes"] == [1, 2, 1] and portscan["retired"] == 1
    assert [e["barrier_clock"] for e in events[:-1]] == [299, 499, 699, 899]    # (every frame admitted)
    assert nat["packets_in"] == portscan["packets_in"] + nat["dropped"] == s.packets_in - s.malformed - s.non_ip
    assert s.log["remaining"] == 0
    assert not any(p.is_alive() for p in rt.procs.values())


@pytest.mark.timeout(120)
def test_a_root_failover_replaying_past_a_scale_in_sends_the_retired_instance_nothing(tmp_path):
    """A failover root replays from its floor (here 0: a flow's timer keeps the first
    packet logged) by the maps of then, which send a scale-in's retired instance its old
    share; it reads nothing any more, and the replay blocked once that link was full
    (found by chc check --runtime proc with vertex managers and --kill random: a hang)."""
    from chc.runtime.proc import parse_kill
    from chc.trace.gen import generate, resolve_profile
    path = tmp_path / "rise.pcap"
    generate(str(path), resolve_profile("trace1", 24000, 240, shape=(1, 6, 1)), seed=3)
    with open_capture(str(path)) as reader:
        recs = list(reader)
    chain = load_spec(PAPER)
    rt = ProcRuntime(chain, model="EO+C+NA", batch_size=64, kills=[parse_kill("root[0]@12000", chain)],
                     events=[_ev("scale-out", "nat", 100), _ev("scale-in", "nat[1]", 10000)])
    rt.run(recs)
    s = rt.summary()
    (failover,) = [e for e in s.events if e["kind"] == "root-failover"]
    assert failover["logged_floor"] < 10000 and s.log["remaining"] == 0 and s.packets_in == 24000


def test_events_at_a_time_run_at_the_first_packet_arriving_by_then(tmp_path, capsys):
    """``at: {time_us: T}``: at the first input packet whose capture time since the first
    packet reaches T (the sim's at pacing multiplier 1); one past the end is refused."""
    recs = _records(3000)

    def first(t_s: float) -> int:
        return next(k for k, (ts, _) in enumerate(recs) if ts - recs[0][0] >= t_s * 1e9)

    events = [Event("scale-out", "nat", at_time_ns=20 * 10**9), _ev("scale-out", "portscan", 1500),
              Event("scale-in", "nat[0]", at_time_ns=100 * 10**9), Event("scale-out", "lb", at_time_ns=900 * 10**9)]
    rt = ProcRuntime(load_spec(PAPER), model="EO+C+NA", events=events)
    rt.run(recs)
    got = [(e["kind"], e["vertex"], e["packet"]) for e in rt.events]
    assert got == [("scale-out", "nat", first(20)), ("scale-out", "portscan", 1500),
                   ("scale-in", "nat", first(100)), ("scale-out-refused", "lb", None)]
    assert 0 < first(20) < 1500 < first(100) and rt.events[-1]["at_us"] == 900e6
    scenario = tmp_path / "timed.yaml"
    scenario.write_text("parallelism: 2\nmodel: EO+C+NA\nevents:\n"
                        "  - {at: {time_us: 20000000}, do: scale-out, target: nat}\n"
                        "  - {at: {time_us: 60000000}, do: move, target: lb, from: 0, to: 1, fraction: 0.5}\n"
                        "  - {at: {time_us: 100000000}, do: scale-in, target: 'nat[0]'}\n")
    assert main(["check", "--runtime", "proc", PAPER, str(scenario), LAN, "--packets", "3000", "--seed", "0"]) == 0


def test_the_scale_scenario_passes_the_check(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["check", "--runtime", "proc", PAPER, SCALE, LAN, "--packets", "3000", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 seeds passed" in out


def test_without_the_wait_at_the_barrier_the_scale_scenario_diverges(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["check", "--runtime", "proc", PAPER, SCALE, LAN, "--packets", "3000", "--seeds", "2",
                 "--break", "naive-move"]) == 1
    out = capsys.readouterr().out
    assert "DIVERGED" in out and "with no hand-over" in out


def test_the_moved_flows_timers_go_with_them():
    # Two port-scan instances; at input packet 300 every flow of instance 0 moves to 1,
    # and the first-contact timers instance 0 had armed by then (two: the barrier fixes
    # which) are armed at instance 1 (a COE check cannot tell: a timer fired late at the
    # old instance is a serialization the store could have had).
    chain = load_spec(PAPER).with_parallelism(2)
    rt = ProcRuntime(chain, model="EO+C", batch_size=32,
                     events=[_ev("move", "portscan", 300, **{"from": 0, "to": 1, "fraction": 1.0})])
    rt.run(_records(600))
    (event,) = rt.summary().events
    assert event["kind"] == "move" and event["timers_moved"] == 2


# -- scaling and real failures together (§5.1 with §5.4) ----------------------------------------

def _check_kill(events: list, kill: str, parallelism: int, breaks: tuple[str, ...] = (), n: int = 1500):
    """One COE-checked proc run of ``events`` with a SIGKILL (``kill``), every vertex at
    ``parallelism`` instances: its verdict and the run's events."""
    from chc import coe
    from chc.runtime import proc as procmod
    from chc.scenario import parse_scenario

    chain = load_spec(PAPER)
    sc = parse_scenario({"name": "t", "model": "EO+C", "batch_size": 32, "parallelism": parallelism})
    sc.events_for = lambda seed, vertices, n_packets: list(events)
    v = coe.variant(chain, sc, 0, ["memory"])
    v.kill = kill
    seen: dict = {}
    real = procmod.ProcRuntime.summary

    def summary(self):
        s = seen["summary"] = real(self)
        return s
    procmod.ProcRuntime.summary = summary
    try:
        res = coe.check_variant(chain, sc, _records(n), v, breaks, None, "proc")
    finally:
        procmod.ProcRuntime.summary = real
    return res, seen["summary"].events


def test_a_failover_after_a_move_is_given_the_timers_the_move_brought():
    # The move at 300 arms two first-contact timers at portscan 1 (the test above); it
    # is killed at 450: its failover replays its own packets, and gets the two timers
    # at the barrier.  Without them (--break no-moved-timers) the SYNs that armed them
    # are never done: the check says so.
    move = _ev("move", "portscan", 300, **{"from": 0, "to": 1, "fraction": 1.0})
    res, events = _check_kill([move], "portscan[1]@450", 2)
    assert res.verdict == "pass", [str(d) for d in res.result.divergences[:3]]
    (failover,) = [e for e in events if e["kind"] == "failover"]
    assert failover["moved_timers_replayed"] == 2, failover
    res, _ = _check_kill([move], "portscan[1]@450", 2, ("no-moved-timers",))
    assert res.verdict == "diverged", res.verdict
    assert any(str(d).startswith("log") for d in res.result.divergences), res.result.divergences[:3]


def test_a_kill_waits_for_a_change_and_a_retired_instance_is_not_killed():
    events = [_ev("scale-out", "nat", 300), _ev("scale-in", "nat", 600)]
    res, log = _check_kill(events, "nat[1]@301,nat[1]@700", 1)
    assert res.verdict == "pass", [str(d) for d in res.result.divergences[:3]]
    kinds = [e["kind"] for e in log]
    assert kinds == ["scale-out", "failover", "scale-in", "kill-skipped"], kinds


def test_a_failover_replays_each_packet_sharing_what_it_shared():
    # Two LB instances share the active-connection counters; the scale-in at 400 makes
    # them lb.0's alone (cached).  Killed at 405, lb.0's failover replays packets from
    # before the barrier (its root still logs the first ones) sharing them, as they
    # ran; replayed from a private copy (--break replay-as-now) it picks other backends.
    scale_in = [_ev("scale-in", "lb", 400)]
    res, events = _check_kill(scale_in, "lb[0]@405", 2)
    assert res.verdict == "pass", [str(d) for d in res.result.divergences[:3]]
    (failover,) = [e for e in events if e["kind"] == "failover"]
    assert failover["replayed_sharing_otherwise"] > 0, failover
    # (the divergence needs a replayed packet that a private copy sends elsewhere, and how
    # far lb.0 got before the kill is timing: a fresh-clone CI run once saw the break act
    # uncaught; of three runs at least one must diverge)
    verdicts = []
    for _ in range(3):
        res, _ = _check_kill(scale_in, "lb[0]@405", 2, ("replay-as-now",))
        verdicts.append(res.verdict)
        if res.verdict == "diverged":
            break
    assert "diverged" in verdicts and set(verdicts) <= {"diverged", "uncaught"}, verdicts


def test_the_failover_of_an_instance_that_lost_its_flows_sends_their_packets_on_again():
    # Every flow of portscan 0 moves to 1 at 300; killed at 450 (soon after), what it
    # sent on before the barrier may have died with it in its sockets: its failover
    # replays the moved flows' packets too (lb drops what it had), but the two timers
    # they re-arm are portscan 1's (it has them from the move) and are dropped.
    move = _ev("move", "portscan", 300, **{"from": 0, "to": 1, "fraction": 1.0})
    res, events = _check_kill([move], "portscan[0]@450", 2, n=3000)
    assert res.verdict == "pass", [str(d) for d in res.result.divergences[:3]]
    (failover,) = [e for e in events if e["kind"] == "failover"]
    assert failover["replayed"] > 0 and failover["timers_moved_away"] == 2, failover


def test_a_flood_at_the_end_does_not_hide_the_end_from_a_failovers_receiver():
    # Seed 121 of scale.yaml --kill random:2 hung: a failover whose upstreams had all
    # ended flooded its watermark (INF) with INF as its through; its receiver, which
    # takes from a failover only what goes past the latest through, then dropped the
    # end that followed (through INF too) and waited for it for good.
    from chc.runtime.procworker import INF, _below_end
    from chc.runtime.wire import Marks

    seen = Marks()
    assert seen.fresh(b"portscan.2#1", _below_end(INF))     # the flood
    assert seen.fresh(b"portscan.2#1", INF)                  # the end still counts
    before = Marks()
    assert before.fresh(b"portscan.2#1", INF) and not before.fresh(b"portscan.2#1", INF)


def test_a_root_failover_after_a_scale_out_sends_each_kept_packet_by_its_map():
    # The NAT scales out at 300; the root is killed at 360.  Its failover sends the
    # input kept since its floor again: the packets from before the barrier by the map
    # they went by (nat.0 alone), not today's, where a moved flow's packet would reach
    # nat.1, which never had it (it ran it again: an output twice, seed 137 of
    # scale.yaml --kill random:2 before this).
    res, events = _check_kill([_ev("scale-out", "nat", 300)], "root[0]@360", 1)
    assert res.verdict == "pass", [str(d) for d in res.result.divergences[:3]]
    (failover,) = [e for e in events if e["kind"] == "root-failover"]
    assert failover["past_maps"] == 1 and failover["sent_by_past_maps"] > 0, failover
    # Switched off, the failover sends by today's map (the divergence it causes needs
    # nat.1 not to have heard the dead root's barrier watermark: not every run; the
    # split itself is checked in the next test, every time).
    res, events = _check_kill([_ev("scale-out", "nat", 300)], "root[0]@360", 1, ("replay-by-today",))
    assert res.breaks["replay-by-today"], res.breaks
    (failover,) = [e for e in events if e["kind"] == "root-failover"]
    assert failover["sent_by_past_maps"] == 0, failover


@pytest.mark.parametrize("breaks", [(), ("replay-by-today",)])
def test_a_replaying_sender_splits_each_packet_by_the_map_in_force_at_its_clock(tmp_path, breaks):
    # The mechanism of the test above, without its timing: the end-to-end divergence
    # needs the new instance not to have heard the dead root's barrier (ZeroMQ had not
    # delivered it: 2 runs in 4), this does not.  The NAT goes from one instance to two
    # at clock 11; a replay sends clocks 0-11 to nat[0] (the map of then) and the rest by
    # today's; switched off, some of 0-11 reach nat[1], which never had them.
    import zmq

    from chc.packet import Packet
    from chc.runtime.procio import Guard
    from chc.runtime.procworker import Plan, _Sender

    with open_capture(str(LAN)) as r:
        pkts = [p for p in (Packet(data, ts, k) for k, (ts, data) in enumerate(itertools.islice(r, 200)))
                if p.src is not None][:60]
    for clock, p in enumerate(pkts):
        p.clock = clock
    plan = Plan(str(tmp_path), load_spec(str(PAPER)).with_parallelism(1), "EO", 1, ("memory", ""),
                recover=True, breaks=breaks)
    ctx = zmq.Context()
    try:
        sender = _Sender(plan, ctx, "@root.0", None, Guard([]))
        today = plan.flowmap("nat", [2, None, 0])
        sender.switch("nat", today, 11)
        sender.advance(11, 11)
        assert sender.replaying({"nat": [[11, 1, None, 0]]}) == 1
        old, new = sender.split("nat", pkts)
        sender.replaying(None)
        after = sender.split("nat", pkts)
    finally:
        ctx.destroy(linger=0)
    assert len(old) + len(new) == len(after[0]) + len(after[1]) == len(pkts)
    reached_new = sorted(p.clock for p in new if p.clock <= 11)
    today_new = sorted(p.clock for p in after[1] if p.clock <= 11)
    assert today_new, "the case needs a packet before the barrier that today's map sends to nat[1]"
    if breaks:
        assert reached_new == today_new and sender.by_past == 0
    else:
        assert reached_new == [] and sender.by_past == 12
        assert sorted(p.clock for p in new) == sorted(p.clock for p in after[1] if p.clock > 11)


# -- a death during a change (§5.1 with §5.4) ----------------------------------------------------

def _failover_during(tmp_path, vertex: str, i: int, passed: bool, born: int = -1, feeds: dict | None = None):
    """The failover of ``vertex[i]`` started while portscan (2 instances) scales in at
    clock 10, as the coordinator starts it: the plan as changed, the change in its replay."""
    import zmq

    from chc.runtime.procio import Guard
    from chc.runtime.procworker import InstanceWorker, Plan, take_change

    chain = load_spec(PAPER).with_parallelism(2)
    was = FlowMap(2, chain.vertices["portscan"].nf.partition_scopes())
    p = plan_change(chain, was, [0, 1], _ev("scale-in", "portscan", 10))
    fm = p["flowmap"]
    change = {"id": 1, "vertex": "portscan", "n": fm.n, "table": fm.table, "level": fm.level, "new": p["new"],
              "retire": p["retire"], "shared": p["shared"], "passers": p["passers"], "waiters": p["waiters"],
              "losers": p["losers"], "barrier": 10, "old": [2, None, 0], "passed": passed}
    plan = Plan(str(tmp_path), chain, "T", 1, ("memory", ""), recover=True)
    take_change(plan, change)
    ctx = zmq.Context()
    return ctx, InstanceWorker(plan, ctx, vertex, i, Guard([]), f"{vertex}.{i}#1",
                               {"floors": {0: 0}, "feeds": feeds or {}, "bound": min(
                                   (f[1] for f in (feeds or {}).values()), default=0),
                                "change": change, "born": born}), was, fm


def test_a_failover_started_during_a_change_takes_its_instances_part(tmp_path):
    # An upstream's failover splits by the map of then up to the barrier (and the
    # retiring instance hears its watermarks), by the new one past it, and sends its
    # watermark on at the barrier; the retiring instance's failover runs to the
    # barrier and hands over; one whose hand-over the coordinator had does not again.
    ctx, nat, was, now = _failover_during(tmp_path, "nat", 0, False)
    try:
        barrier, new = nat.out.switching["portscan"]
        assert barrier == 10 and nat.out.splitters["portscan"].map.table == was.table
        assert new.map.table == now.table and new.map.table != was.table
        assert nat.flood == 10 and ("portscan", 1) not in nat.out.gone and nat.changing is None
    finally:
        ctx.destroy(linger=0)
    ctx, victim, _, _ = _failover_during(tmp_path, "portscan", 1, False)
    try:
        assert victim.hold == 10 and victim.changing["passed"] is False and 1 in victim.changing["retire"]
    finally:
        ctx.destroy(linger=0)
    ctx, victim, _, _ = _failover_during(tmp_path, "portscan", 1, True)
    try:
        assert victim.changing is None and victim.hold > 10     # (not a waiter: it runs on)
        assert victim.out.repoint("lb", 0, "lb.0#1")[1] == -1   # (sent nothing: everything from -1 on)
    finally:
        ctx.destroy(linger=0)
    # The failover of a scale-out's instance born at clock 7: a receiver it has sent nothing
    # yet had everything from it up to there (its own failover waits for nothing below).
    ctx, newbie, _, _ = _failover_during(tmp_path, "portscan", 1, True, born=7)
    try:
        assert newbie.out.repoint("lb", 0, "lb.0#1")[1:3] == [7, False]
    finally:
        ctx.destroy(linger=0)


def test_a_failover_holding_at_the_barrier_replays_nothing_past_it(tmp_path):
    # The retiring portscan.1 died before handing over at clock 10, with packets past the
    # barrier already sent to it (held, as it held them): its failover replays 3-5 and
    # leaves 11-14 queued until it has handed over (run past the barrier first, they
    # would be a retiring instance's, after the go-ahead of no one).
    from chc.packet import Packet
    from chc.runtime.wire import pack_packets

    with open_capture(LAN) as r:
        pkts = [p for p in (Packet(data, ts, k) for k, (ts, data) in enumerate(itertools.islice(r, 60)))
                if p.src is not None][:24]
    for clock, p in enumerate(pkts):
        p.clock = clock
    feeds = {"nat.0": [pack_packets([pkts[c] for c in (3, 5, 12, 14)]), 14, False, {}, 14],
             "nat.1": [pack_packets([pkts[c] for c in (4, 11)]), 14, False, {}, 14]}
    ctx, victim, _, _ = _failover_during(tmp_path, "portscan", 1, False, feeds=feeds)
    try:
        runs: list[int] = []
        process = victim._process
        victim._process = lambda batch, mark: (runs.extend(p.clock for p in batch), process(batch, mark))
        victim._replay(victim.replay)
        assert runs == [3, 4, 5]
        assert sorted(p.clock for q in victim.queues.values() for p in q) == [11, 12, 14]
    finally:
        ctx.destroy(linger=0)


def test_a_failover_that_still_hands_over_keeps_the_timers_its_replay_armed_for_moved_flows(tmp_path):
    # Its replay re-arms first-contact timers of flows that move away at the barrier; as
    # its hand-over is still to come, they stay for it to send to their new owner (after
    # a change they are dropped: the new owner has them).  Dropped here, the SYNs that
    # armed them would never be done.
    from chc.packet import Packet
    from chc.runtime.sim import take_timers
    from chc.runtime.wire import pack_packets

    with open_capture(LAN) as r:
        pkts = [Packet(data, ts, k) for k, (ts, data) in enumerate(itertools.islice(r, 400))]
    syns = [p for p in pkts if p.src is not None and p.proto == 6 and p.flags & 0x12 == 0x02][:5]
    for clock, p in enumerate(syns, 2):
        p.clock = clock
    feeds = {"nat.0": [pack_packets(syns[:3]), 14, False, {}, 14],
             "nat.1": [pack_packets(syns[3:]), 14, False, {}, 14]}
    ctx, victim, _, now = _failover_during(tmp_path, "portscan", 1, False, feeds=feeds)
    try:
        victim._replay(victim.replay)
        moving = take_timers(victim.inst.ctx, lambda parts: now.owner(parts) != 1)
        assert len(moving) == 2, moving
    finally:
        ctx.destroy(linger=0)


@pytest.mark.parametrize("case", [
    ("passer", [_ev("scale-out", "nat", 300)], "nat[0]@change:1", 1, {"hands over", "waits"}),
    ("new instance", [_ev("scale-out", "nat", 300)], "nat[1]@change:1", 1, {"waits"}),
    # ...whose upstream (an instance, told after the kill) had no socket to it yet: its
    # IndexError stopped the run (found by chc check --kill during on managed vertices)
    ("new instance, upstream not told yet", [_ev("scale-out", "portscan", 300)], "portscan[1]@change:1", 1,
     {"waits"}),
    ("retiring", [_ev("scale-in", "portscan", 300)], "portscan[1]@change:1", 2, {"hands over"}),
    ("upstream", [_ev("scale-out", "portscan", 300)], "nat[0]@change:1", 2, {"feeds it"}),
], ids=lambda c: c[0])
def test_an_instance_that_dies_during_a_change_is_failed_over_into_it(case):
    # Killed past the barrier, before the instances are told (--kill V[I]@change:K), its
    # failover takes its part: the change completes, the run passes the check.
    _, events, kill, parallelism, part = case
    res, log = _check_kill(events, kill, parallelism)
    assert res.verdict == "pass", [str(d) for d in res.result.divergences[:3]]
    (failover,) = [e for e in log if e["kind"] == "failover"]
    assert failover["during_change"] == 1 and set(failover["change_part"]) == part, failover
    (change,) = [e for e in log if e["kind"] == events[0].action]
    assert change["failed_over"] == [kill.split("@")[0].replace("[", ".").rstrip("]")], change


def test_a_root_that_dies_during_a_change_is_failed_over_past_its_barrier():
    # Its part was the barrier (stamped, the new map taken): its failover replays the
    # kept input by the map of then up to the barrier and the rest by the new one.
    res, log = _check_kill([_ev("scale-out", "nat", 300)], "root[0]@change:1", 1)
    assert res.verdict == "pass", [str(d) for d in res.result.divergences[:3]]
    (failover,) = [e for e in log if e["kind"] == "root-failover"]
    assert failover["during_change"] == 1 and failover["past_maps"] == 1, failover
    (change,) = [e for e in log if e["kind"] == "scale-out"]
    assert change["failed_over"] == ["@root.0"], change


def test_a_root_that_dies_during_a_scale_in_still_feeds_the_retiring_instance():
    # The retiring instance is in the plan's retired list from the change on, but it has
    # not handed over: the failover root's replay up to the barrier must still reach it.
    res, log = _check_kill([_ev("scale-in", "nat[1]", 700)], "root[0]@change:1", 2)
    assert res.verdict == "pass", [str(d) for d in res.result.divergences[:3]]
    (failover,) = [e for e in log if e["kind"] == "root-failover"]
    (change,) = [e for e in log if e["kind"] == "scale-in"]
    assert failover["during_change"] == 1 and change["failed_over"] == ["@root.0"], (failover, change)


def test_a_failover_that_starts_as_if_the_change_were_done_diverges():
    # --break resume-as-done: the passer's failover neither hands over nor waits at the
    # barrier: nat.1 takes the moved flows without their state (ports given twice).
    res, _ = _check_kill([_ev("scale-out", "nat", 300)], "nat[0]@change:1", 1, ("resume-as-done",))
    assert res.breaks["resume-as-done"], res.breaks
    assert res.verdict == "diverged", res.verdict


def test_the_store_server_killed_at_a_hand_over_is_failed_over_and_the_change_completes(monkeypatch):
    # The store server dies once the first NAT instance has handed over (three hand over
    # in this scale-out): its failover starts from a checkpoint from before that
    # hand-over (ownership given up again there), and the change's go-ahead, whose
    # checkpoint needs a store, waits for the failover.
    from chc.runtime import procscale
    from chc.runtime.proc import STORE_KILL, Kill

    real = procscale.Scaler._passed
    killed: list = []

    def passed(self, name, data):
        real(self, name, data)
        if not killed and self.open is not None:
            killed.append(name)
            self.rt._kill(Kill(STORE_KILL, 0, 0, during=1))
    monkeypatch.setattr(procscale.Scaler, "_passed", passed)
    # (store@change:9: no such change; it turns the store server's checkpoints on)
    res, log = _check_kill([_ev("scale-out", "nat", 300)], "store@change:9", 3)
    assert res.verdict == "pass", [str(d) for d in res.result.divergences[:3]]
    assert killed
    (failover,) = [e for e in log if e["kind"] == "store-failover"]
    assert failover["during_change"] == 1, failover
    (change,) = [e for e in log if e["kind"] == "scale-out"]
    assert change["failed_over"] == ["@store"], change


def test_a_go_ahead_due_while_the_store_fails_over_waits_for_it():
    # (its checkpoint would go to the dead store server: 2 runs in 5 of the test above hung)
    from types import SimpleNamespace

    from chc.runtime.procscale import Scaler

    scaler = object.__new__(Scaler)
    scaler.rt = SimpleNamespace(_failing="@store")
    scaler.open = {"change": {"id": 1, "passers": [0]}, "passed": set(), "timers": {}}
    gone: list = []
    scaler._go = lambda: gone.append(1)
    scaler._passed("nat.0#1", [1, []])
    assert not gone and scaler.open["go_owed"]
    scaler.rt._failing = None
    scaler.go_if_owed()
    assert gone == [1] and scaler.open["go_after_store_failover"]


def test_a_kill_during_a_change_is_parsed_and_refused_without_changes():
    from chc.runtime.proc import ROOT as ROOT_KILL
    from chc.runtime.proc import STORE_KILL, Kill, parse_kill

    chain = load_spec(PAPER)
    assert parse_kill("nat[3]@change:2", chain) == Kill("nat", 3, 0, during=2)   # (a scale-out's, maybe)
    assert parse_kill("root[0]@change:1", chain) == Kill(ROOT_KILL, 0, 0, during=1)
    assert parse_kill("store@change:4", chain) == Kill(STORE_KILL, 0, 0, during=4)
    with pytest.raises(ValueError, match="counted from 1"):
        parse_kill("nat@change:0", chain)
    with pytest.raises(ValueError, match="no vertex"):
        parse_kill("natt@change:1", chain)
    with pytest.raises(ValueError, match="no scaling changes"):
        ProcRuntime(chain, model="EO", kills=[Kill("nat", 0, 0, during=1)])


# -- §5.1 warm spares ---------------------------------------------------------------------------

def _two_nat_scale_outs(**kw) -> ProcRuntime:
    rt = ProcRuntime(load_spec(PAPER), model="EO+C", batch_size=32,
                     events=[_ev("scale-out", "nat", 300), _ev("scale-out", "nat", 700)], **kw)
    rt.run(_records(1200))
    return rt


@pytest.mark.parametrize("spares", [True, False])
def test_a_scale_out_takes_its_warm_spare_and_no_spare_outlives_the_run(spares):
    rt = _two_nat_scale_outs(spares=spares)
    s = rt.summary()
    outs = [e for e in s.events if e["kind"] == "scale-out"]
    assert [e["spare"] for e in outs] == [spares, spares]
    assert s.vertices["nat"]["sizes"] == [1, 2, 3]
    assert s.vertices["nat"]["packets_in"] == s.packets_in - s.malformed - s.non_ip
    # after the second, a spare for a fourth instance was started and nobody took it:
    # told to go at the end, it exits by itself, as every other process
    assert ("nat.3" in rt.procs) == spares
    assert {name: p.exitcode for name, p in rt.procs.items()} == dict.fromkeys(rt.procs, 0)


def test_a_spare_that_died_is_replaced_by_a_new_process_at_the_scale_out():
    import os
    import signal

    class KillsTheSpare(ProcRuntime):
        def _join(self, name: str, args: tuple) -> bool:
            # dead when the scale-out comes, its end not seen yet (no wait in between)
            while name not in self.scaler.spares_up:
                self._service(100)
            os.kill(self.procs[name].pid, signal.SIGKILL)
            self.procs[name].join(5)
            return super()._join(name, args)

    rt = KillsTheSpare(load_spec(PAPER), model="EO+C", batch_size=32, events=[_ev("scale-out", "nat", 300)])
    rt.run(_records(600))
    s = rt.summary()
    (out,) = [e for e in s.events if e["kind"] == "scale-out"]
    assert out["spare"] is False
    assert s.vertices["nat"]["packets_in"] == s.packets_in - s.malformed - s.non_ip
    assert rt.procs["nat.1"].exitcode == 0      # the new process, not the killed spare


def test_the_end_of_a_run_waits_for_a_spare_still_starting_and_tells_it_to_go(tmp_path):
    """A spare started after the last change of a short run may not be up when the run
    ends: told nothing, it was killed (an exit by signal, not by itself)."""
    import types

    from chc.runtime.procscale import Scaler
    from chc.runtime.procworker import Plan

    chain = load_spec(PAPER)
    told = []
    rt = types.SimpleNamespace(chain=chain, plan=Plan(str(tmp_path), chain, "EO", 1, ("memory", "")), kills=[],
                               spares=True, box=types.SimpleNamespace(reply=lambda peer, frame: told.append(peer)))
    scaler = Scaler(rt, [])
    scaler.spares = {"nat": "nat.1"}
    rt._service = lambda ms: scaler.spares_up.add("nat.1")     # it comes up while the end waits
    scaler.end_spares()
    assert told == [b"nat.1"] and scaler.dismissed == {"nat.1"} and not scaler.spares


def test_a_new_process_after_a_dead_spare_is_not_taken_for_silent():
    """The dead spare's last message stayed in the heartbeat record under the instance's
    name: the process a later scale-out started was killed as silent before it was ready
    (found by a review)."""
    import os
    import signal
    import time

    class KillsTheSpareEarly(ProcRuntime):
        def _start(self) -> None:
            super()._start()
            while "nat.1" not in self.scaler.spares_up:
                self._service(100)
            os.kill(self.procs["nat.1"].pid, signal.SIGKILL)
            time.sleep(0.5)             # well past misses x heartbeat

        def _launch(self, mp, name, target, args) -> None:
            super()._launch(mp, name, target, args)
            if name == "nat.1" and self._started:
                self._next_check = 0    # the heartbeat check right away, before it is ready
                self._check_beats()

    rt = KillsTheSpareEarly(load_spec(PAPER), model="EO+C", batch_size=32, heartbeat_s=0.05, misses=3,
                            events=[_ev("scale-out", "nat", 300)])
    rt.run(_records(600))
    (out,) = [e for e in rt.summary().events if e["kind"] == "scale-out"]
    assert out["spare"] is False
