"""The R4 and metadata benchmark scripts run and write well-formed results
(no timing assertions: numbers are for the notes, not for pass/fail)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_r4_trojan_script(tmp_path):
    out = tmp_path / "r4.json"
    table = load("r4_trojan").main(["--json", str(out), "--count", "3", "--gap", "20"])
    data = json.loads(out.read_text())
    assert data == table and set(data) == {"W1", "W2", "W3"}
    for row in data.values():
        # With clocks every planted sequence is found and nothing else (R4).
        assert row["with_clocks"] == row["instances"] == 3
        assert row["false_alarms"] == 0
        assert 0 <= row["without_clocks"] <= 3


def test_metadata_overhead_script(tmp_path):
    out = tmp_path / "meta.json"
    load("metadata_overhead").main(["--json", str(out), "--packets", "1500", "--repeat", "1"])
    data = json.loads(out.read_text())
    assert data["packets"] == 1500
    assert set(data["variants"]) == {"off", "local", "store"}
    assert all(v["pps"] > 0 for v in data["variants"].values())


def test_r2_move_script(tmp_path):
    """Smoke: both moves run on small inputs and report every key (no timing asserted)."""
    out = tmp_path / "r2.json"
    res = load("r2_move").main(["--flows", "200", "--rounds", "1", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved == res
    for key in ("chc_ms", "opennf_ms", "ratio"):
        assert res[key] > 0
    assert set(res["moved_flow_latency"]["chc"]) == {"p50_us", "p90_us", "p99_us"}


def test_r3_share_script(tmp_path):
    """Smoke: the shared counter ends exact in both systems (checked inside), keys reported."""
    out = tmp_path / "r3.json"
    res = load("r3_share").main(["--instances", "2,3", "--flows", "40", "--rounds", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == res
    for k in ("2", "3"):
        row = res["instances"][k]
        assert row["chc_us"] > 0 and row["opennf_us"] > 0 and row["reduction"] < 1


def test_fig9_split_merge_script(tmp_path):
    """Smoke: the portscan runs split and merged on a tiny generated capture; the three
    phases are there with the packets of their index ranges (no timing asserted)."""
    out = tmp_path / "f9.json"
    res = load("fig9_split_merge").main(["--packets", "900", "--connections", "120", "--split-at", "300",
                                         "--merge-at", "600", "--rounds", "2", "--store", "memory",
                                         "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["phases"] == res["phases"] and saved["split_at"] == 300 and saved["merge_at"] == 600
    for key in ("phases", "control"):
        assert list(res[key]) == ["before", "shared", "after"]
        # Every packet of the generated capture is IP and reaches the portscan once.
        assert [res[key][ph]["packets"] for ph in ("before", "shared", "after")] == [300, 300, 300]
        for row in res[key].values():
            assert row["update"]["packets"] + row["other"]["packets"] == row["packets"]
    phases = res["phases"]
    assert phases["before"]["update"]["packets"] > 0 and phases["shared"]["update"]["packets"] > 0
    # Cached before the split; every TRW step while split meets the object shared,
    # at both instances; one instance again after the merge.
    assert phases["before"]["update_shared"] == 0 and phases["before"]["instances"] == [0]
    assert phases["shared"]["update_shared"] == phases["shared"]["update"]["packets"]
    assert phases["shared"]["instances"] == [0, 1]
    assert [e["kind"] for e in res["events"]][:1] == ["scale-out"] and "retired" in {e["kind"] for e in res["events"]}
    updates = res["series"]["update"]
    assert len(updates) == sum(phases[ph]["update"]["packets"] for ph in phases)
    assert all(300 <= i < 600 for i, _, _, shared, _ in updates if shared) or phases["after"]["update_shared"]


def test_table5_script(tmp_path):
    """Smoke: the straggler NAT's clone at two loads, suppression off and on; the
    script itself asserts zero duplicates with suppression and some without.  The
    pair runs side by side for a span of virtual time, so more packets (and more
    duplicates without suppression) pass it at the higher load, as in the paper."""
    out = tmp_path / "t5.json"
    res = load("table5").main(["--packets", "1200", "--connections", "60", "--for-ms", "10", "--json", str(out)])
    assert json.loads(out.read_text()) == res
    assert list(res["loads"]) == ["30%", "50%"] and set(res["paper"]) == {"30%", "50%"}
    for row in res["loads"].values():
        off, on = row["without_suppression"], row["with_suppression"]
        assert off["duplicates_reaching_portscan"] > 0 and off["duplicate_state_updates"] > 0
        assert on["duplicates_reaching_portscan"] == 0 and on["duplicate_state_updates"] == 0
        assert on["suppressed"]["packets"] > 0 and "catch_up_us" in on
        assert 10_000 <= on["side_by_side_us"] < 20_000
    low, high = (res["loads"][k]["without_suppression"]["duplicates_reaching_portscan"] for k in ("30%", "50%"))
    assert high > low


def test_root_recovery_script(tmp_path):
    """The new root takes over every logged entry (checked inside: a restore that
    loses one raises), for each size, with and without other objects in the store."""
    out = tmp_path / "root.json"
    res = load("root_recovery").main(["--in-flight", "0,40", "--state-keys", "100", "--rounds", "1",
                                      "--json", str(out)])
    assert json.loads(out.read_text()) == res
    assert {(c["in_flight"], c["state_keys"]) for c in res["cells"].values()} == {(0, 0), (0, 100), (40, 0), (40, 100)}
    assert all(c["clock_only_us"] > 0 and c["with_store_log_us"] > 0 for c in res["cells"].values())


def test_root_recovery_script_on_the_proc_runtime(tmp_path):
    """A real root kill per run beside an undisturbed run (the digests are compared
    inside: a failover that changes the state raises); the figures come from the event."""
    pytest.importorskip("zmq")
    res = load("root_recovery").main(["--in-flight", "0", "--state-keys", "0", "--rounds", "1", "--proc-runs", "1",
                                      "--proc-packets", "1500", "--proc-kill-at", "800"])
    (run,) = res["proc"]["runs"]
    assert run["kept_input"] >= run["replayed"] > 0 and run["recovery_ms"] > 0 and run["run_ratio"] > 0


def test_fig14_store_recovery_script(tmp_path):
    """Small Figure 14: each cell has one store recovery from a whole interval of logs,
    every packet counted once across it (checked inside), and a longer checkpoint
    interval rolls more log entries forward (no timing asserted)."""
    out = tmp_path / "f14.json"
    res = load("fig14_store_recovery").main(["--intervals", "3,8", "--nats", "2,3", "--pps", "50000",
                                              "--rounds", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == res
    assert set(res["cells"]) == {"2/3", "2/8", "3/3", "3/8"}
    for key, c in res["cells"].items():
        assert c["counted"]["packets"] == c["packets"]
        assert c["re_executed"] == c["wal_updates"] > 0 and c["per_flow"] > 0
        assert c["virtual"]["checkpoint"] == 2 and c["virtual"]["detect_ns"] > 0
        # The crash comes 1 µs before the second checkpoint: the logs hold most of an interval.
        assert c["virtual"]["checkpoint_age_ns"] > 0.9 * c["interval_ms"] * 1e6 - 1e6
        for f in ("restore_ms", "base_ms", "recover_ms", "recover_cpu_ms", "checkpoint_ms"):
            assert c[f] > 0, (key, f)
    cells = res["cells"]
    for n in (2, 3):
        assert cells[f"{n}/8"]["wal_updates"] > cells[f"{n}/3"]["wal_updates"]
        assert cells[f"{n}/8"]["wal_reads"] >= cells[f"{n}/3"]["wal_reads"]
    # Each instance coalesces its increments per flush: more instances, more entries.
    assert cells["3/8"]["wal_updates"] > cells["2/8"]["wal_updates"]
    assert cells["2/3"]["x_first"] == 1.0


def test_fig14_store_recovery_script_on_the_proc_runtime(tmp_path):
    """A real store-server kill per interval beside runs without recovery and without
    periodic checkpoints (the digests are compared inside: a failover that changes the
    state raises); the figures come from the event and the store server's counters."""
    pytest.importorskip("zmq")
    out = tmp_path / "f14p.json"
    res = load("fig14_store_recovery").main(["--proc-only", "--proc-runs", "1", "--intervals", "50",
                                              "--proc-packets", "1500", "--proc-kill-at", "800", "--json", str(out)])
    assert json.loads(out.read_text()) == res
    (run,) = res["proc"]["runs"]
    assert run["interval_ms"] == 50 and run["checkpoints"] >= 1 and run["recovery_ms"] > 0
    assert run["re_executed"] == run["wal_updates"] >= 0 and run["x_on"] > 0 and run["x_without_checkpoints"] > 0
    with pytest.raises(SystemExit):
        load("fig14_store_recovery").main(["--proc-only", "--proc-runs", "1", "--png", str(tmp_path)])


def test_proc_scale_script(tmp_path):
    out = tmp_path / "proc.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench/proc_scale.py"), "--packets", "1500", "--repeats", "1",
                          "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["digests"]["sim chain"] == data["digests"]["proc chain"]
    assert set(data["ratios"]) >= {"proc nat x2 / proc nat", "proc chain / sim chain"}
