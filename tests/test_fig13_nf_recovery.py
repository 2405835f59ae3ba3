"""Figure 13: the window means are exact on a hand-computed case, and the script's
crash shows a spike and a return in virtual time (no wall-clock thresholds: the
heartbeat period, not the machine, sets the outage, which is hundreds of times
any measured service time)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

from chc.bench.fig13_nf_recovery import MeasuredService, analyze, main, windows

ROOT = Path(__file__).resolve().parent.parent
US = 1000


def test_windows_are_aligned_on_the_origin_and_skip_drops():
    # Arrivals at 0, 100, 600, 1,100 and 1,200 µs; origin 600 µs, 500 µs windows.
    arrivals = [0, 100 * US, 600 * US, 1100 * US, 1200 * US]
    exits = {0: 10 * US, 1: 130 * US, 2: 900 * US, 4: 1220 * US}      # packet 3 dropped
    assert windows(arrivals, exits, 600 * US, 500 * US) == [
        [-1.0, 10.0, 1],                    # [-400, 100): the packet at 0
        [-0.5, 30.0, 1],                    # [100, 600)
        [0.0, 300.0, 1],                    # [600, 1,100): waited for the failover
        [0.5, 20.0, 1],                     # [1,100, 1,600): 1,100 dropped, 1,200 took 20
    ]


def test_analyze_finds_the_outage_and_the_return():
    # 10 µs per packet every 100 µs; one FIFO server, down from 1,000 to 2,000 µs.
    arrivals = [i * 100 * US for i in range(40)]
    exits = {}
    free = 0
    for i, a in enumerate(arrivals):
        start = max(a, free)
        if 1000 * US <= start < 2000 * US:
            start = 2000 * US
        exits[i] = free = start + 10 * US
    fail = {"crashed_vt": 1000 * US, "detected_vt": 2000 * US, "caught_up_vt": 2000 * US, "detect_ns": 1000 * US,
            "replayed": 0, "recovery_ns": 1000 * US}
    res = analyze(arrivals, exits, fail, 500 * US, 0.1)
    assert res["baseline_us"] == 10.0 and res["threshold_us"] == 11.0
    # Packets 10-19 (1,000-1,900 µs) leave at 2,010-2,100: 1,010 down to 200 µs.
    assert res["peak_window_ms"] == 0.0 and res["peak_window_us"] == 830.0 and res["peak_packet_us"] == 1010.0
    # From 2,000 µs: 110 (behind the backlog), 20, then 10 each: a mean of 32 µs, above
    # 11; the window from 2,500 µs is back.
    assert [w[1] for w in res["windows"] if 0 <= w[0] <= 1.5] == [830.0, 380.0, 32.0, 10.0]
    assert res["recovery_ms"] == 1.5 and res["windows_above_after"] == 0
    assert res["drained_us"] == 1200.0              # the packet at 2,200 µs finds the server idle
    assert res["failover"]["replay_ns"] == 0


def test_measured_service_cycles_in_order():
    svc = MeasuredService([5.0, 7.0])
    assert [svc.sample() for _ in range(5)] == [5, 7, 5, 7, 5]


def test_fig13_script_spike_and_return(tmp_path):
    """A 500 µs heartbeat, three misses: the NAT is down 1-1.5 ms, so packets
    arriving then wait about a millisecond, far above any service time; once the
    backlog is gone the windows are back near the baseline."""
    out = tmp_path / "f13.json"
    # The script is the module's main (run_path without __main__ runs nothing).
    assert runpy.run_path(str(ROOT / "bench" / "fig13_nf_recovery.py"))["main"] is main
    # A fixed 7 µs a packet: measured times on a busy CI machine had an outlier that
    # queued the 50% run's baseline up to 87 µs, and the spike is judged against it.
    res = main(["--service-us", "7", "--loads", "0.3,0.5", "--before-ms", "3",
                "--after-ms", "8", "--heartbeat-us", "500", "--misses", "3", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(res))
    assert res["build"] in ("compiled", "pure-python") and res["model"] == "EO+C+NA"
    assert res["service_us"]["mean_us"] == 7.0 and res["service_us"]["source"].startswith("fixed")
    assert res["crash"] == {"target": "nat[0]", "at_ms": 3.0, "heartbeat_us": 500.0, "misses": 3}
    assert res["paper"]["recovery_ms"] == {"30%": 4.5, "50%": 5.6}
    assert list(res["loads"]) == ["30%", "50%"]
    for row in res["loads"].values():
        f = row["failover"]
        for key in ("detect_ns", "replayed", "replay_ns", "lost_in_queue", "recovery_ns", "caught_up_vt"):
            assert key in f
        # Detected after the third missed heartbeat: between 2 and 3 periods after the crash.
        assert 1000 * US <= f["detect_ns"] <= 1500 * US
        assert f["recovery_ns"] == f["detect_ns"] + f["replay_ns"]
        # Nothing duplicated; nothing lost by the failover (the NAT passes unsolicited packets).
        assert row["duplicates"] == 0 and row["outputs"] + row["dropped"] == row["packets"]
        base = row["baseline_us"]
        before = [w for w in row["windows"] if w[0] < 0]
        after = [w for w in row["windows"] if w[0] >= 0]
        assert len(before) >= 5 and len(after) >= 15
        # The spike: a packet arriving at the crash waits for detection.
        assert row["peak_window_us"] > 10 * base and row["peak_packet_us"] >= f["detect_ns"] / US * 0.9
        assert row["peak_window_us"] > 5 * max(w[1] for w in before)
        # The return: after the outage and its backlog, the windows are near the baseline again.
        assert row["recovery_ms"] is not None
        assert f["detect_ns"] / 1e6 - 0.5 <= row["recovery_ms"] < 8
        tail = sorted(w[1] for w in after if w[0] >= row["recovery_ms"])
        assert tail and tail[len(tail) // 2] < 2 * base
        assert row["drained_us"] is not None and row["drained_us"] > f["detect_ns"] / US / 2


def test_fig13_measures_service_times_when_none_is_given():
    """The default path times the NAT; only what no timing can move is asserted."""
    res = main(["--packets", "300", "--rounds", "1", "--loads", "0.3", "--before-ms", "2",
                "--after-ms", "3", "--heartbeat-us", "500"])
    svc = res["service_us"]
    assert svc["source"] == "measured" and svc["mean_us"] > 0 and res["input"]["ip_packets_timed"] > 0
    row = res["loads"]["30%"]
    assert row["duplicates"] == 0 and row["outputs"] + row["dropped"] == row["packets"]
    assert 1000 * US <= row["failover"]["detect_ns"] <= 1500 * US
