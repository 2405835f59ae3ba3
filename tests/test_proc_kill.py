"""§5.4 NF failover over processes: a real SIGKILL of an NF instance's process.

A failover process takes over the killed instance's logical identity, its
upstreams hand over what they sent it, and it replays that from the oldest clock
its root still logs; the run ends with the state digest, packet counts and
alerts of an undisturbed sim run on the same input (COE), and leaves no process
behind.  With the replay switched off (``--break no-replay``) the digest
differs: the test that the replay is what recovers the state.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("zmq")

from chc.capture import open_capture  # noqa: E402
from chc.cli import main  # noqa: E402
from chc.runtime.proc import Kill, ProcRuntime  # noqa: E402
from chc.runtime.sim import SimRuntime  # noqa: E402
from chc.spec import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAN = ROOT / "traces/pathspider/lan-2012.pcap.gz"
PAPER = ROOT / "examples/paper_chain.yaml"
N = 6000            # the coordinator buffers ~2k packets ahead of the root: kill well after that
MODEL = "EO+C+NA"


@pytest.fixture(scope="module")
def records() -> list[tuple[int, bytes]]:
    with open_capture(str(LAN)) as r:
        return list(itertools.islice(r, N))


@pytest.fixture(scope="module")
def sim(records):
    rt = SimRuntime(load_spec(str(PAPER)), model=MODEL)
    rt.run(records)
    return rt.summary()


def _proc(records, kill: Kill, breaks: tuple[str, ...] = ()) -> ProcRuntime:
    rt = ProcRuntime(load_spec(str(PAPER)), model=MODEL, kills=[kill], breaks=breaks)
    rt.run(records)
    return rt


def _gone(pids) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except OSError:
            continue
        return False
    return True


def test_a_killed_nat_fails_over_with_the_sims_results(records, sim):
    rt = _proc(records, Kill("nat", 0, 4000))
    s = rt.summary()
    (event,) = s.events
    assert event["kind"] == "failover" and event["process"] == "nat.0" and event["how"] == "killed by signal 9"
    assert event["failover_process"] == "nat.0#1" and event["replayed"] > 0
    assert event["detect_s"] is not None and event["recovery_s"] >= event["replay_s"]
    assert s.state_digest == sim.state_digest
    assert (s.packets_in, s.packets_out, s.dropped) == (sim.packets_in, sim.packets_out, sim.dropped)
    assert s.alerts == sim.alerts
    assert {v: st["packets_in"] for v, st in s.vertices.items()} == \
        {v: st["packets_in"] for v, st in sim.vertices.items()}
    # nothing is left behind: the killed process, its failover, every other worker
    assert "nat.0#1" in rt.pids and len(rt.pids) == 7 and _gone(rt.pids.values())
    assert not os.path.exists(rt.directory)


def test_without_the_replay_the_state_is_wrong(records, sim):
    rt = _proc(records, Kill("nat", 0, 4000), breaks=("no-replay",))
    s = rt.summary()
    assert s.events[0]["replayed"] == 0
    assert s.state_digest != sim.state_digest


def test_cli_kill_shows_the_failover(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "s.json"
    assert main(["run", "--runtime", "proc", str(PAPER), str(LAN), "-c", str(N), "--model", MODEL,
                 "--no-progress", "-q", "--kill", "portscan[0]@4000", "--summary-json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert [e["kind"] for e in s["events"]] == ["failover"] and s["events"][0]["vertex"] == "portscan"


@pytest.mark.parametrize("argv, says", [
    (["--kill", "nat[3]@10"], "1 instance"),
    (["--kill", "nope@10"], "no vertex"),
    (["--kill", "nat@x"], "VERTEX[I]@PACKETS"),
    (["--kill", "nat@10", "--model", "T"], "model T"),
    (["--kill", "nat@10", "--runtime", "sim"], "--runtime proc"),
])
def test_bad_kills_are_one_line(argv, says, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    argv = ["run", str(PAPER), str(LAN), "-c", "10", "--no-progress", *argv]
    if "--runtime" not in argv:
        argv += ["--runtime", "proc"]
    if "--model" not in argv:
        argv += ["--model", MODEL]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
