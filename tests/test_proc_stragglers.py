"""§5.3 stragglers over real processes: a scenario's ``slow`` makes an instance's process
really sleep its delay model's time per packet, a ``speed-up`` ends it (docs/proc.md,
"Slow-downs"); a clone of a slowed process is a new process at full speed, so the pair's
resolution keeps it; a vertex manager's ``straggler_factor`` sees the slowed process's
busy time and clones it.  Results are the sim's (a slow-down changes no result), and
``chc check --runtime proc`` passes the example scenario and fails without duplicate
suppression.  Pass/fail never hangs on the machine's speed: the facts asserted are
structural (what was kept, what slept, per the delay model's constant draws), with
wall-clock bounds only where they are generous.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("zmq")

from chc.capture import open_capture  # noqa: E402
from chc.cli import main  # noqa: E402
from chc.runtime.proc import Kill, ProcRuntime  # noqa: E402
from chc.scenario import Event  # noqa: E402
from chc.spec import load_spec  # noqa: E402
from test_proc_clones import against_sim  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAN = str(ROOT / "traces/pathspider/lan-2012.pcap.gz")
PAPER = str(ROOT / "examples/paper_chain.yaml")
SCENARIO = str(ROOT / "examples/scenarios/proc-straggler.yaml")
SLOW = "const:2000"         # 2 ms a packet: a straggler by any measure (the NFs take tens of µs)


def _records(n: int) -> list[tuple[int, bytes]]:
    with open_capture(LAN) as reader:
        return list(itertools.islice(reader, n))


def _ev(action: str, target: str, at: int, **params) -> Event:
    return Event(action, target, params, at_packet=at)


def _run(records: list, events: list[Event], chain=None, pause: tuple[int, float] | None = None,
         **kw: Any) -> tuple[ProcRuntime, dict]:
    """A proc run with ``events`` (seed 3), its summary the sim's run's without them.
    ``pause`` (K, S): the feed sends what it has before record K and waits S seconds
    (the chain works meanwhile): the coordinator feeds ahead of the chain by thousands
    of packets (its queues), so an event at K would otherwise come before the chain has
    run much of what came before it."""
    def paced() -> Iterator[tuple[int, bytes] | None]:
        for k, rec in enumerate(records):
            if pause is not None and k == pause[0]:
                yield None              # (what is pending goes at once: ProcRuntime._feed)
                time.sleep(pause[1])
            yield rec
    return against_sim(chain or load_spec(PAPER), records, events, "EO+C+NA", feed=paced(), seed=3, **kw)


def _kinds(summary: dict, kind: str) -> list[dict]:
    return [e for e in summary["events"] if e["kind"] == kind]


@pytest.mark.timeout(120)
def test_a_slowed_process_really_sleeps_and_a_speed_up_ends_it():
    """portscan.0 slowed from the first packet at 2 ms a packet, sped up once 1,000 of
    2,000 were fed and the chain had had two seconds for them: it slept a whole number of
    2 ms draws, fewer than it processed (the speed-up acted: without it, 2 ms for every
    packet), and the run took at least that long (a real sleep, not a count)."""
    rt, got = _run(_records(2000), [_ev("slow", "portscan[0]", 0, delay=SLOW), _ev("speed-up", "portscan[0]", 1000)],
                   pause=(1000, 2.0))
    slow, fast = _kinds(got, "slow"), _kinds(got, "speed-up")
    assert [(e["process"], e["delay"], e["packet"]) for e in slow] == [("portscan.0", SLOW, 0)]
    assert [(e["process"], e["delay"], e["packet"]) for e in fast] == [("portscan.0", None, 1000)]
    report = rt.reported["portscan.0"]
    slept, processed = report["slept_s"], report["counters"]["packets_in"]
    draws = round(slept / 0.002)
    assert abs(draws * 0.002 - slept) < 1e-6 and 0 < draws < processed, (slept, processed)
    assert rt.elapsed >= slept
    assert all(r["slept_s"] == 0 for name, r in rt.reported.items() if name != "portscan.0" and "slept_s" in r)


@pytest.mark.timeout(120)
def test_a_clone_of_a_slowed_straggler_is_at_full_speed_and_is_kept():
    """§5.3 the point of a clone: nat.0 sleeps 2 ms a packet (half a second of it before
    the clone), its clone (a new process) does not inherit that, runs what the straggler
    had queued at once, and is kept, ahead of it, before the end of input (6,000 packets:
    about twice what the queues hold, so the feed waits for the straggler until the pair
    is resolved, seconds of it: with 4,000, a clone that took long to start under load
    had counted nothing when the input ended, once in about 18 runs, and the straggler was
    kept); the kept clone, the instance's process to the end, slept nothing."""
    rt, got = _run(_records(6000), [_ev("slow", "nat[0]", 0, delay=SLOW), _ev("clone", "nat[0]", 200, for_packets=300)],
                   pause=(200, 0.5))
    clone, = _kinds(got, "clone")
    resolved, = _kinds(got, "clone-resolved")
    assert clone["straggler_process"] == "nat.0" and clone["straggler_delay"] == SLOW
    assert resolved["kept"] == "clone" and resolved["kept_process"] == "nat.0~1", resolved
    assert resolved["straggler_delay"] == SLOW
    assert resolved["packet"] < 6000 and resolved["clock_clone"] > resolved["clock_straggler"], resolved
    assert rt.reported["nat.0"]["slept_s"] == 0       # (the kept clone's report: full speed)
    assert not rt.slowed                                # (the stopped straggler slows nothing now)


@pytest.mark.timeout(120)
def test_a_failover_of_a_slowed_process_is_at_full_speed():
    """§5.4 with §5.3: a slow-down is the process's (its host's), as in the sim, whose
    failover is a new physical instance: nat.0 slowed from the start and killed once
    3,200 packets were fed (more than the queues hold: it has run some, slowly), its
    failover nat.0#1 replays and runs the rest and slept nothing; the sim's results."""
    rt, got = _run(_records(4000), [_ev("slow", "nat[0]", 0, delay="const:1000")], kills=[Kill("nat", 0, 3200)])
    failover, = _kinds(got, "failover")
    assert failover["process"] == "nat.0" and failover["failover_process"] == "nat.0#1", failover
    assert rt.reported["nat.0"]["slept_s"] == 0           # (the failover's report)


@pytest.mark.timeout(180)
def test_a_managers_straggler_factor_clones_a_really_slowed_instance(tmp_path):
    """§5.3 detection: trojan[0] of two slowed (2 ms a packet), its vertex manager with
    ``straggler_factor`` 5 sees its busy time per packet (the sleep is in it) far above
    the other instance's and clones it; the clone is kept.  A second's pause at packet
    500 lets the decision come early; 6,000 packets, more than the queues hold, make
    the straggler's back-pressure hold the feed until it comes (with 3,000 the whole
    input had been fed and the decision was refused: the input ended before it)."""
    import yaml
    d = yaml.safe_load(Path(PAPER).read_text())
    d["vertices"]["trojan"]["parallelism"] = 2
    d["vertices"]["trojan"]["scaling"] = {"straggler_factor": 5, "interval_ms": 1000}
    spec = tmp_path / "chain.yaml"
    spec.write_text(yaml.safe_dump(d))
    chain = load_spec(str(spec))
    rt, got = _run(_records(6000), [_ev("slow", "trojan[0]", 0, delay=SLOW)], chain=chain, pause=(500, 1.0))
    clones = _kinds(got, "clone")
    assert clones, got["events"]
    first = clones[0]
    assert first["by"] == "manager" and first["instance"] == 0 and first["straggler_delay"] == SLOW, first
    assert first["reason"].startswith("service ") and "> 5 x median" in first["reason"], first
    kept = [e["kept"] for e in _kinds(got, "clone-resolved") if e["instance"] == 0]
    assert kept[0] == "clone", kept


# -- the COE check --------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_chc_check_runtime_proc_passes_the_straggler_scenario(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["check", "--runtime", "proc", PAPER, SCENARIO, LAN, "--packets", "3000", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "clone-resolved 2" in out and "slow 3" in out and "1 of 1 seeds passed" in out, out


#: A slowed straggler side by side with its clone to the end of input; one instance a
#: vertex and batches of 64, so the queues hold about half of the 6,000 packets: the
#: feed then waits for the straggler, which sends batches the clone sent already.
LONG_PAIR = """name: long-straggler-pair
parallelism: 1
batch_size: 64
events:
  - {at: {packets: 0}, do: slow, target: "portscan[0]", delay: "const:500"}
  - {at: {packets: 300}, do: clone, target: "portscan[0]", for_packets: 100000}
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("extra, code, says", [
    ((), 0, ("1 of 1 seeds passed",)),
    # with the break, receivers take the straggler's late batches again and the checker
    # names a duplicated output
    (("--break", "no-dup-suppression"), 1, ("DIVERGED", "duplicate")),
], ids=["passes", "without-duplicate-suppression"])
def test_a_slowed_straggler_beside_its_clone_passes_the_check_and_fails_without_dedup(
        extra, code, says, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(ROOT)
    scenario = tmp_path / "long-pair.yaml"
    scenario.write_text(LONG_PAIR)
    argv = ["check", "--runtime", "proc", PAPER, str(scenario), LAN, "--packets", "6000", "--seeds", "1", *extra]
    assert main(argv) == code
    out = capsys.readouterr().out
    assert all(s in out for s in says), out


# -- what proc does not run: one line, exit 2, the file and the event ------------------------------

@pytest.mark.parametrize("events, says", [
    ("  - {at: {packets: 10}, do: slow, target: 'nat[0]', delay: 'const:5'}\n"
     "  - {at: {packets: 100}, do: partition, target: lb, duration_us: 50}\n",
     "events[1]: partition of lb (a store-link fault: the sim's simulated links)"),
    ("  - {at: {time_us: 5000}, do: crash, target: 'nat[0]'}\n",
     "events[0]: crash of nat[0] at {time_us: 5000} (a kill is at an input packet: at {packets: N})"),
    ("  - {at: {packets: 10}, do: clone, target: 'nat[0]', for_us: 100}\n",
     "events[0]: clone of nat[0] for_us (virtual time: a pair runs for_packets)"),
    ("  - {at: {packets: 10}, do: partition, target: nat, duration_us: 50}\n",
     "events[0]: partition of nat (a store-link fault: the sim's simulated links)"),
], ids=["store-link-fault", "crash-at-a-time", "clone-for-us", "partition"])
def test_what_proc_does_not_run_is_one_line_naming_the_file_and_event(events, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    scenario = tmp_path / "sc.yaml"
    scenario.write_text(f"name: sc\nevents:\n{events}")
    for argv in (["check", "--runtime", "proc", PAPER, str(scenario), LAN, "--packets", "100", "--seeds", "1"],
                 ["serve", PAPER, "--runtime", "proc", "--capture", LAN, "--scenario", str(scenario), "-c", "100"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"chc: error: {scenario}: {says}"), err[0]
        assert err[0].endswith("use --runtime sim"), err[0]


@pytest.mark.parametrize("events", [
    "  - {at: {packets: 10}, do: slow, target: 'nat[0]', delay: 'const:5'}\n",
    "  - {at: {time_us: 9000}, do: speed-up, target: nat}\n",
], ids=["slow", "speed-up-at-a-time"])
def test_slow_downs_are_not_refused_in_any_model(events, tmp_path):
    """A slow-down is a sleep: no store, no barrier, so no model or roots refusal (model T,
    which scaling and clones refuse), and a time (the scenario's pacing) is as a scaling
    event's."""
    from chc.runtime import procscale
    from chc.scenario import load_scenario
    scenario = tmp_path / "sc.yaml"
    scenario.write_text(f"name: sc\nevents:\n{events}")
    sc = load_scenario(scenario)
    assert procscale.scenario_refusal(sc, str(scenario)) is None
    assert procscale.refusal(sc.events, load_spec(PAPER), "T") is None


@pytest.mark.timeout(180)
def test_a_slowed_straggler_whose_clone_dies_catches_up_on_held_clocks():
    """§5.3 with §5.4: nat.0 sleeps 2 ms a packet, its clone runs ahead at full speed and
    is killed (``copy: clone``) once 1,500 packets were fed and the chain had 1.5 s for
    them: the straggler, kept, is hundreds of clocks behind and runs clocks its clone
    completed.  The clock log keeps their entries until it is back on the store (pruning
    held), so its updates of them are the log's, not applied again: the sim's state.
    (With pruning released at the resolution, the digest and the NAT's counters differ.)"""
    events = [_ev("slow", "nat[0]", 0, delay=SLOW), _ev("clone", "nat[0]", 200, for_packets=100000),
              Event("crash", "nat[0]", {"copy": "clone"}, at_packet=1501), _ev("speed-up", "nat[0]", 1700)]
    rt, got = _run(_records(3000), events, pause=(1500, 1.5))
    resolved, = _kinds(got, "clone-resolved")
    assert (resolved["kept"], resolved.get("by"), resolved.get("died")) == ("straggler", "death", "nat.0~1")
    assert resolved["clock_clone"] > resolved["clock_straggler"], resolved
