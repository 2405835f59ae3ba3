"""§4.3 operator controls (``set-backends``) on the proc runtime (docs/proc.md,
"Operator controls"; chc.runtime.proccontrol).

A control at input packet K stops the feed after packet K-1, waits for a quiet
chain (a barrier behind that input, passed by every instance), writes the NF's
new cross-flow values to the store as client ``operator`` (callbacks refresh the
cached copies; model T: every instance sets its local objects), and logs the event
the COE reference applies before packet K.  The runs here give the sim's results
with the same controls, pass the COE check, and fail it with the callbacks dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("zmq")

from chc.cli import main  # noqa: E402
from chc.runtime.proc import ProcRuntime  # noqa: E402
from chc.runtime.procscale import refusal  # noqa: E402
from chc.runtime.sim import SimRuntime  # noqa: E402
from chc.scenario import Event, load_scenario  # noqa: E402
from chc.spec import load_spec  # noqa: E402
from test_proc_clones import _records, against_sim  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAN = str(ROOT / "traces/pathspider/lan-2012.pcap.gz")
PAPER = str(ROOT / "examples/paper_chain.yaml")
SCENARIO = str(ROOT / "examples/scenarios/lb-backends.yaml")


def _lb3() -> tuple[Any, list[Event]]:
    sc = load_scenario(SCENARIO)
    return load_spec(PAPER).with_parallelism(sc.parallelism), sc.events


def _against_sim(model: str, lb: int, n: int = 3000) -> tuple[ProcRuntime, dict]:
    """A proc run with the scenario's two controls, whose results must be the sim's with
    them (and differ from the sim's without: the changes reach the traffic).  With ``lb``
    instances sharing the pool's connection counts in a store, the results depend on
    the order of their updates (the COE check's business, below), so the cached models
    compare with one LB instance."""
    chain, events = _lb3()
    chain = chain.with_parallelism({"lb": lb})
    records = _records(LAN, n)
    without = SimRuntime(chain, model=model)
    without.run(records)
    rt, got = against_sim(chain, records, events, model, sim_events=events)
    assert without.summary().as_json()["state_digest"] != got["state_digest"]
    return rt, got


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model, lb", [("EO+C", 1), ("EO+C+NA", 1), ("T", 3)])
def test_controls_give_the_sims_results_with_them(model, lb):
    rt, _ = _against_sim(model, lb)
    done = [e for e in rt.events if e.get("control")]
    assert [(e["kind"], e["vertex"], e["packet"]) for e in done] == [("set-backends", "lb", 600),
                                                                     ("set-backends", "lb", 1800)]
    assert all(e["quiet_s"] >= 0 and e["pause_s"] >= e["quiet_s"] for e in done)


@pytest.mark.timeout(300)
def test_chc_check_passes_with_controls_and_fails_without_callbacks(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    base = ["check", "--runtime", "proc", PAPER, SCENARIO, LAN, "--packets", "3000"]
    assert main([*base, "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 seeds passed" in out and "set-backends 2" in out, out
    # seeds 2 and 3 cache the pool (EO+C, EO+C+NA): the stale copies route new flows wrong
    assert main([*base, "--seed", "2", "--break", "no-callback"]) != 0
    out = capsys.readouterr().out
    assert "DIVERGED" in out and "2 operator changes" in out and "cached copies never refreshed" in out, out


def test_the_proc_runtime_refuses_controls_with_clones_or_several_roots():
    chain = load_spec(PAPER)
    control = Event("set-backends", "lb", {"weights": [1, 3, 0]}, at_packet=5)
    assert refusal([control], chain, "EO") is None
    assert refusal([control], chain, "T") is None
    assert "clone events" in refusal([control, Event("clone", "nat", {}, at_packet=9)], chain, "EO")
    chain.roots = 2
    assert "several roots" in refusal([control], chain, "EO")


SCALED = """name: lb-scaled
parallelism: {lb: 3}
events:
  - {at: {packets: 600}, do: set-backends, target: lb, weights: [1, 3, 0]}
  - {at: {packets: 1200}, do: scale-out, target: lb}
  - {at: {packets: 1800}, do: set-backends, target: lb, backends: [10.151.119.11, 10.151.119.14], weights: [1, 2]}
  - {at: {packets: 2400}, do: scale-in, target: lb}
  - {at: {packets: 2500}, do: set-backends, target: lb, weights: [2, 1, 1]}
"""


@pytest.mark.timeout(300)
def test_controls_between_scaling_changes_and_one_refused_at_run_time(tmp_path, monkeypatch, capsys):
    """§4.3 with §5.1: a control waits for a change under way; the new instance reads the
    changed pool on its first miss; the last control's three weights no longer fit the
    four backends the second one made: logged refused, the pool as it was."""
    monkeypatch.chdir(ROOT)
    scenario = tmp_path / "lb-scaled.yaml"
    scenario.write_text(SCALED)
    argv = ["check", "--runtime", "proc", PAPER, str(scenario), LAN, "--packets", "3000", "--seeds", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 of 2 seeds passed" in out and "set-backends 2, set-backends-refused 1" in out, out


@pytest.mark.timeout(180)
@pytest.mark.parametrize("victim", ["@root.0", "lb.0"])
def test_a_process_that_dies_in_a_controls_quiet_wait_is_told_again(victim, monkeypatch):
    """A root or an instance that died while a control waited for a quiet chain (killed from
    outside, --failover) left the wait without end: what the coordinator had told the dead
    process (the root's ``quiet``, an instance's barrier) was lost with it.  Each is killed
    here just before it is told, so it never reads it; its failover is told again, and the
    run gives the sim's results with the controls."""
    import os
    import signal

    from chc.runtime.wire import Kind, decode, encode

    killed: list[str] = []

    def kill(rt: ProcRuntime, name: str) -> None:
        p = rt.procs[rt.current[name]]
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        killed.append(rt.current[name])

    send, tell = ProcRuntime._send, ProcRuntime._tell

    def send_killing(rt: ProcRuntime, r: int, frame: bytes, kept: bool = False) -> None:
        if victim == "@root.0" and not killed and frame == encode(Kind.INPUT, ["quiet", 1]):
            kill(rt, victim)
        send(rt, r, frame, kept)

    def tell_killing(rt: ProcRuntime, name: str, frame: bytes) -> None:
        kind, body = decode(frame)
        if name == victim and not killed and kind == Kind.CONTROL and body[0] == "quiet":
            kill(rt, victim)
        tell(rt, name, frame)

    monkeypatch.setattr(ProcRuntime, "_send", send_killing)
    monkeypatch.setattr(ProcRuntime, "_tell", tell_killing)
    chain, events = _lb3()
    rt, _ = against_sim(chain.with_parallelism({"lb": 1}), _records(LAN, 3000), events, "EO+C+NA",
                        sim_events=events, failover=True)
    assert killed == [victim]
    assert [e["process"] for e in rt.events if "failover" in e["kind"]] == [victim]
    assert len([e for e in rt.events if e.get("control")]) == len(events)
