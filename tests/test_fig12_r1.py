"""Figure 12 / R1: the queue simulation is exact on a hand-computed case, and the
script reports every field with FTMB's tail above CHC's when stalls fall inside
the window (no timing thresholds: the stalls, not the machine, decide)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from chc.bench.fig12_r1 import arrivals, fifo

ROOT = Path(__file__).resolve().parent.parent
US = 1000.0


def test_fifo_without_stalls_is_queueing_plus_service():
    # Three packets at 0, 5 and 30 µs, 10 µs each: the second waits 5 µs.
    lat, stalls, delayed = fifo([0.0, 5 * US, 30 * US], [10 * US])
    assert list(lat) == [10 * US, 15 * US, 10 * US]
    assert (stalls, delayed) == (0, 0)


def test_fifo_stall_holds_the_queue_after_the_packet_in_service():
    # Service 10 µs, an arrival every 100 µs, a 500 µs checkpoint every 1,000 µs.
    arr = [i * 100 * US for i in range(25)]
    lat, stalls, delayed = fifo(arr, [10 * US], period_ns=1000 * US, stall_ns=500 * US)
    # The server is idle at 1,000 µs: the stall runs 1,000-1,500; the packet arriving
    # at 1,000 waits it out, the ones at 1,100-1,400 queue behind, served back to back
    # from 1,500; the one at 1,500 still finds 50 µs of that backlog; 1,600 finds none.
    assert lat[9] == 10 * US
    assert [lat[i] / US for i in range(10, 17)] == [510, 420, 330, 240, 150, 60, 10]
    assert [lat[i] / US for i in range(20, 25)] == [510, 420, 330, 240, 150]
    assert stalls == 2 and delayed == 6 + 5
    # A packet in service when the checkpoint falls due is finished first.
    lat, stalls, _ = fifo([995 * US, 1001 * US], [10 * US], period_ns=1000 * US, stall_ns=500 * US)
    assert [v / US for v in lat] == [10, 1515 - 1001]      # stall 1,005-1,505, then served
    assert stalls == 1


def test_arrivals_cover_the_window_at_the_rate():
    const = arrivals(10_000, 0.5, "constant")
    assert len(const) == 5000 and const[1] - const[0] == pytest.approx(1e5)
    poisson = arrivals(10_000, 0.5, "poisson", seed=3)
    assert 4500 < len(poisson) < 5500 and list(poisson) == sorted(poisson)
    assert list(poisson) == list(arrivals(10_000, 0.5, "poisson", seed=3))


def _script():
    spec = importlib.util.spec_from_file_location("fig12_r1", ROOT / "bench" / "fig12_r1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fig12_script_stall_inside_the_window(tmp_path):
    """A 5 ms stall every 20 ms over 100 ms of input: four stalls fall inside, about a
    quarter of FTMB's packets arrive during one and wait milliseconds, so its p95 is
    above CHC's whatever the machine's speed; CHC never stalls."""
    out = tmp_path / "f12.json"
    res = _script().main(["--packets", "600", "--rounds", "3", "--load", "0.3,0.5", "--seconds", "0.1",
                          "--period-ms", "20", "--stall-us", "5000", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved == res
    assert res["models"] == {"chc": "EO+C+NA", "ftmb": "T"}
    assert res["build"] in ("compiled", "pure-python")
    assert res["input"]["ip_packets_timed"] == 600 - 64           # the first batch is left out
    assert set(res["service_us"]) == {"chc", "ftmb"}
    assert list(res["loads"]) == ["30%", "50%"]
    for row in res["loads"].values():
        chc, ftmb = row["chc"], row["ftmb"]
        for sys_row in (chc, ftmb):
            assert {f"p{q}_us" for q in (5, 25, 50, 75, 95)} <= set(sys_row)
            assert sys_row["p5_us"] <= sys_row["p25_us"] <= sys_row["p50_us"] <= sys_row["p75_us"] <= sys_row["p95_us"]
            assert sys_row["offered_pps"] > 0 and sys_row["packets"] > 0
        # One offered rate for both (rate basis "slower"); CHC is the slower system
        # at exactly the asked load.
        assert chc["offered_pps"] == ftmb["offered_pps"]
        assert max(chc["utilization"], ftmb["utilization"]) == pytest.approx(row["load"], rel=0.2)
        assert chc["stalls"] == 0 and chc["delayed_share"] == 0
        assert ftmb["stalls"] >= 4 and ftmb["delayed_share"] > 0.2
        assert ftmb["p95_us"] > chc["p95_us"] and row["ratio_p95"] > 1
        assert row["ratio_p50"] == pytest.approx(ftmb["p50_us"] / chc["p50_us"], rel=1e-2)
