"""``chc serve --runtime proc``: a capture replayed in real time through the proc
runtime (every root and NF instance its own process), stopped by its end, ``-c``,
``--duration`` or a signal, drained, summarized; with ``--kill`` the killed
processes fail over meanwhile.  No timing decides a pass: rates only decide how
many packets a run sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("zmq")

from procpace import descendants  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PORTSCAN = str(ROOT / "examples" / "portscan.yaml")
SCAN = str(ROOT / "traces" / "scans" / "nmap-syn-scan.pcap")
PAPER = str(ROOT / "examples" / "paper_chain.yaml")
LAN = str(ROOT / "traces" / "pathspider" / "lan-2012.pcap.gz")
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _chc(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chc.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def _same(a: dict, b: dict) -> None:
    for key in ("packets_in", "packets_out", "dropped", "non_ip", "alerts", "state_digest", "log"):
        assert a[key] == b[key], key


def test_serve_on_proc_equals_serve_on_sim(tmp_path):
    """A capture replayed once through the proc runtime: the sim's results, the replay's record."""
    a, b = tmp_path / "proc.json", tmp_path / "sim.json"
    res = _chc("serve", PORTSCAN, "--capture", SCAN, "--rate", "20000", "--runtime", "proc",
               "--summary-json", str(a))
    assert res.returncode == 0, res.stderr
    assert "runtime proc" in res.stderr and "state digest" in res.stdout
    assert _chc("serve", PORTSCAN, "--capture", SCAN, "--rate", "20000", "--summary-json", str(b), "-q"
                ).returncode == 0
    served, sim = json.loads(a.read_text()), json.loads(b.read_text())
    _same(served, sim)
    assert served["runtime"] == "proc"
    assert served["capture"]["replay"] == {"rate": 20000.0, "loop": False, "passes": 1, "stopped_by": "end"}


def test_a_looped_serve_with_a_root_and_an_instance_killed_keeps_the_sims_results(tmp_path):
    """--loop -c N through the proc runtime with a root and the detector killed on the way:
    both fail over, and the result is the sim's on the same looped input."""
    a, b = tmp_path / "proc.json", tmp_path / "sim.json"
    common = [PORTSCAN, "--capture", SCAN, "--rate", "20000", "--loop", "-c", "3000", "-q"]
    res = _chc("serve", *common, "--runtime", "proc", "--kill", "root[0]@1500", "--kill", "portscan[0]@2200",
               "--summary-json", str(a))
    assert res.returncode == 0, res.stderr
    assert _chc("serve", *common, "--summary-json", str(b)).returncode == 0
    served, sim = json.loads(a.read_text()), json.loads(b.read_text())
    _same(served, sim)
    assert served["capture"]["replay"]["passes"] >= 2 and served["capture"]["replay"]["stopped_by"] == "count"
    assert sorted(e["kind"] for e in served["events"]) == ["failover", "root-failover"]


def test_a_proc_serve_runs_a_scenarios_scaling_events(tmp_path):
    """--scenario on proc: its scale-outs, moves and scale-ins at input packets, every
    packet through (the same counts and alerts as the sim's serve of the scenario; the
    state digest may differ: the LB's shared counters take another valid order)."""
    a, b = tmp_path / "proc.json", tmp_path / "sim.json"
    common = [PAPER, "--capture", LAN, "--rate", "20000", "-c", "3000", "--model", "EO+C", "-q",
              "--scenario", str(ROOT / "examples" / "scenarios" / "scale.yaml")]
    res = _chc("serve", *common, "--runtime", "proc", "--summary-json", str(a))
    assert res.returncode == 0, res.stderr
    res = _chc("serve", *common, "--summary-json", str(b))
    assert res.returncode == 0, res.stderr         # (the sim's drain crashed on a deferred scale-in)
    served, sim = json.loads(a.read_text()), json.loads(b.read_text())
    for key in ("packets_in", "packets_out", "dropped", "alerts", "log"):
        assert served[key] == sim[key], key
    kinds = {e["kind"] for e in served["events"]}
    assert {"scale-out", "scale-in", "move"} <= kinds, kinds
    assert served["vertices"]["nat"]["sizes"][:2] == [1, 2]


@pytest.mark.parametrize("sig, code, why, group", [
    (signal.SIGTERM, 0, "terminate", False), (signal.SIGINT, 130, "interrupt", False),
    # to the whole process group, as systemd, timeout(1), a terminal's Ctrl-C and kill -- -PGID
    # send it: the workers get it too (SIGTERM killed them: no summary, exit 1)
    (signal.SIGTERM, 0, "terminate", True), (signal.SIGINT, 130, "interrupt", True),
    # twice, 20 ms apart (timeout(1) and group kills deliver it so): the same stop, during the drain
    # (the second aborted it and the summary was lost: a new user's trial)
    (signal.SIGTERM, 0, "terminate", "twice")])
def test_a_signal_stops_a_proc_serve_drains_it_and_leaves_no_process(tmp_path, sig, code, why, group):
    summary = tmp_path / "s.json"
    proc = subprocess.Popen([sys.executable, "-m", "chc.cli", "serve", PAPER, "--capture", LAN, "--rate", "3000",
                             "--loop", "--runtime", "proc", "--status", "0.5", "--summary-json", str(summary)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)
    try:
        lines = []
        while True:                         # a status line: packets are flowing
            line = proc.stderr.readline()
            assert line, f"chc serve ended (exit {proc.wait()}) early: {lines}"
            lines.append(line)
            if line.startswith("chc serve: "):
                break
        workers = descendants(proc.pid)
        assert len(workers) >= 7            # forkserver, store server, root, 4 instances
        if group == "twice":
            proc.send_signal(sig)
            time.sleep(0.02)                # (the drain takes about 0.2 s)
            proc.send_signal(sig)
        elif group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    data = json.loads(summary.read_text())
    assert data["capture"]["replay"]["stopped_by"] == why and data["packets_in"] > 0
    assert out.rstrip().splitlines()[-1].startswith("stopped by " + ("SIGTERM" if why == "terminate" else "Ctrl-C"))
    assert data["log"]["remaining"] == 0 and data["packets_in"] == data["packets_out"] + data["dropped"]
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers), "a worker outlived chc serve"


@pytest.mark.parametrize("args, says", [
    (["--runtime", "proc", "--metrics-port", "9"], "--metrics-port is for --runtime sim"),
    (["--runtime", "proc", "--scenario", "examples/scenarios/crash.yaml"], "network: faults"),
    (["--kill", "nat[0]@5"], "--kill and --failover are for --runtime proc"),
    (["--runtime", "proc", "--kill", "nat[7]@5"], "nat has 1 instance"),
])
def test_what_a_proc_serve_cannot_do_is_one_line_exit_2(args, says):
    res = _chc("serve", PAPER, "--capture", LAN, *args)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and says in lines[0], res.stderr
