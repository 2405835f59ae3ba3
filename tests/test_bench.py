"""Benchmarks: every script and ``chc bench`` runs on a tiny input and writes
well-formed results.  No timing assertions: numbers are only checked to exist
and be positive where a rate must be."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from chc.backends.memory import MemoryStore
from chc.bench import MODELS, NFS, NaiveObject, NaiveStats, percentile, summary_table
from chc.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--quick", "--no-redis", "--packets", "300", "--trace2-scale", "0.0001", "--entries", "500"]
PCTS = ("p5_us", "p25_us", "p50_us", "p75_us", "p95_us")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_cell(cell: dict) -> None:
    assert _number(cell["pps"]) and cell["pps"] > 0
    assert _number(cell["gbps"]) and cell["gbps"] > 0
    assert _number(cell["rt_per_pkt"]) and cell["rt_per_pkt"] >= 0
    for key in PCTS:
        assert _number(cell[key]), key
    assert cell["p5_us"] <= cell["p50_us"] <= cell["p95_us"]


def _check_nfs(res: dict) -> None:
    assert set(res["nfs"]) == set(NFS)
    for nf in NFS:
        assert set(res["nfs"][nf]) == set(MODELS)
        for model in MODELS:
            cell = res["nfs"][nf][model]
            _check_cell(cell)
            assert cell["packets"] > 0
    for by_store in res["fig8_fig10"].values():
        assert set(by_store) == {"memory"}
    for by_store in res["ratios"].values():
        for ratios in by_store["memory"].values():
            assert _number(ratios["pps_NA_over_T"]) and _number(ratios["p50_NA_over_T"])


def _check_chain(res: dict) -> None:
    for by_store in res["chain"].values():
        d = by_store["memory"]
        assert set(d["models"]) == {"T", "EO+C+NA"}
        for cell in d["models"].values():
            _check_cell(cell)
        assert _number(d["ratios"]["pps_NA_over_T"])


def _check_offload(res: dict) -> None:
    for by_store in res["offload"].values():
        d = by_store["memory"]
        assert set(d["variants"]) == {"chc", "naive"}
        for cell in d["variants"].values():
            _check_cell(cell)
            assert cell["nf_errors"] == 0
        # Naive: two round trips per update of a shared object (and more for retries).
        assert d["variants"]["naive"]["rt_per_pkt"] > d["variants"]["chc"]["rt_per_pkt"]
        assert _number(d["ratios"]["p50_naive_over_chc"]) and _number(d["ratios"]["pps_chc_over_naive"])


def _check_store(res: dict) -> None:
    se = res["store_engine"]
    assert se["key_bytes"] == 16 and se["value_bits"] == 64
    assert {"engine", "memory"} <= set(se["backends"])
    for d in se["backends"].values():
        for kind in ("get", "set", "incr", "incr_chc", "incr_chc_nb"):
            assert _number(d[kind]) and d[kind] > 0


SCRIPTS = {
    "fig8_fig10.py": _check_nfs,
    "chain.py": _check_chain,
    "offload.py": _check_offload,
    "store_engine.py": _check_store,
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_runs_on_tiny_input(script, tmp_path):
    out = tmp_path / "out.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / script), *TINY, "--inputs", "lan,trace2",
                          "--json", str(out)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "benchmark" in res.stdout            # the summary table
    data = json.loads(out.read_text())
    assert data["meta"]["quick"] is True
    if script != "store_engine.py":
        assert set(data["inputs"]) == {"lan", "trace2"}
    SCRIPTS[script](data)


def test_profile_script_runs(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "profile_nf.py"), "--nf", "nat", "--packets", "300",
                          "--trace2-scale", "0.0001", "--runs", "1", "--top", "5"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "kpps without profiler" in res.stderr and "tottime" in res.stdout


def test_chc_bench_quick_writes_the_contract(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--json", str(out), "--workdir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "EO+C+NA" in table and "chain" in table and "offload" in table
    data = json.loads(out.read_text())
    assert data["nfs_input"] == "trace2"
    _check_nfs(data)
    _check_chain(data)
    _check_offload(data)
    _check_store(data)
    # trace2 configs fit the generated input: the NAT's inside prefix holds its clients,
    # the LB's VIP is one of its servers.
    cfg = data["inputs"]["trace2"]["configs"]
    assert cfg["nat"]["internal"] == ["10.20.0.0/16"]
    assert cfg["lb"]["vip"].startswith("172.")
    assert data["nfs"]["nat"]["T"]["rewritten_share"] > 0


def test_png_plots(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "png"
    assert main(["bench", *TINY, "--sections", "nfs,store", "--png", str(png)]) == 0
    names = {p.name for p in png.glob("*.png")}
    assert {"fig8_trace2_memory.png", "fig10_trace2_memory.png", "store_engine.png"} <= names


def test_bad_option_is_a_usage_error(capsys):
    assert main(["bench", "--no-redis", "--sections", "nope"]) == 2
    assert "unknown section" in capsys.readouterr().err


def test_naive_object_lock_read_write_back():
    store = MemoryStore()
    stats = NaiveStats()
    a = NaiveObject(store, "nat", "packets", 0, 0, stats)
    b = NaiveObject(store, "nat", "packets", 1, 0, stats)
    assert a.incr() == 1 and b.incr() == 2 and a.incr(5) == 7
    assert store.round_trips == 6                # lock+read, write+unlock per update
    ports = NaiveObject(store, "nat", "ports", 0, (), stats)
    ports.push(20000)
    ports.push(20001)
    assert ports.pop() == 20000
    assert tuple(ports.get()) == (20001,)
    assert stats.updates == 6 and stats.lock_retries == 0
    # the lock is free after every update
    assert store.execute([store_get_lock(a)])[0] == 0


def store_get_lock(obj: NaiveObject):
    from chc.core.store import Op
    return Op("get", obj._k(None)[1], default=0)


def test_large_inputs_are_streamed(monkeypatch, tmp_path):
    """Inputs beyond the in-memory limit are re-read from disk chunk by chunk; the
    runs see the same packets."""
    import chc.bench as bench
    import chc.bench.inputs as inputs
    inp = bench.trace2_input(0.0001, str(tmp_path), limit=300)
    cached = bench.run_nf(inp, "nat", "EO+C+NA", bench.StoreSpec("memory"), 64, latency=True)
    monkeypatch.setattr(inputs, "CACHE_MAX", 50)
    monkeypatch.setattr(inputs, "CHUNK", 64)
    streamed_inp = bench.trace2_input(0.0001, str(tmp_path), limit=300)
    assert streamed_inp._base is None
    streamed = bench.run_nf(streamed_inp, "nat", "EO+C+NA", bench.StoreSpec("memory"), 64, latency=True)
    for key in ("packets", "bytes", "out", "dropped", "rt_per_pkt", "rewritten_share"):
        assert streamed[key] == cached[key], key


def test_percentile_and_table():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 95) == 5.0
    assert math.isnan(percentile([], 50))
    assert summary_table({}).startswith("benchmark")


def test_store_section_on_redis_and_a_private_cluster(redis_urls):
    """The store section's Redis rows: one server and a private Redis Cluster (as the section
    starts it), with their ratios to the one-server row and the engine of the same run."""
    import shutil

    from chc.bench.store_engine import bench_store
    from chc.bench.stores import PrivateRedis, StoreSpec, redis_server_binary
    from conftest import require_redis_server

    require_redis_server()
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is not on PATH")
    cluster = PrivateRedis(str(redis_server_binary()), 3, cluster=cli)
    try:
        res = bench_store([StoreSpec("redis", redis_urls[:1]),
                           StoreSpec("redis-cluster", [str(cluster.cluster_url)], nodes=3)], 300, 100, 1)
    finally:
        cluster.close()
    _check_store({"store_engine": res})
    assert res["backends"]["redis-cluster"]["entries"] == 900            # per shard, as for 2 shards
    assert set(res["ratios"]) == {"redis", "redis-cluster"}
    assert res["ratios"]["redis"]["incr_chc_vs_redis"] == 1.0
    # issue 15's floor beside one server's CHC increment (not on the cluster row)
    one = res["backends"]["redis"]
    assert all(_number(one[k]) and one[k] > 0 for k in ("floor", "floor_server_us", "incr_chc_nb_server_us"))
    assert "floor" not in res["backends"]["redis-cluster"]
    for r in res["ratios"].values():
        assert all(_number(v) and v > 0 for v in r.values())


def test_ctrl_c_keeps_the_sections_that_finished(tmp_path, capsys, monkeypatch):
    """chc bench stopped with Ctrl-C printed "chc: interrupted" and kept nothing, not
    even the sections that had finished (found by a new-user trial)."""
    import dataclasses

    from chc.bench import runner

    def interrupted(ctx):
        raise KeyboardInterrupt
    experiments = [dataclasses.replace(s, run=interrupted) if s.name == "offload" else s
                   for s in runner.EXPERIMENTS]
    monkeypatch.setattr(runner, "EXPERIMENTS", experiments)
    out = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--json", str(out), "--workdir", str(tmp_path)]) == 130
    data = json.loads(out.read_text())
    assert data["meta"]["interrupted"] == "Ctrl-C during offload: the sections before it are complete"
    _check_nfs(data)
    _check_chain(data)
    assert "offload" not in data and "store" not in data
    assert "chain" in capsys.readouterr().out


def test_a_bad_redis_or_output_is_refused_before_anything_is_measured(capsys, tmp_path):
    """A --redis with nothing there was found after the memory cells had run (minutes in a
    full run) and nothing was written; a --png DIR that could not be made was a traceback at the end."""
    import time

    from chc.bench.stores import free_ports

    t0 = time.monotonic()
    port = free_ports(1)[0]
    assert main(["bench", "--quick", "--sections", "chain", "--redis", f"redis://127.0.0.1:{port}",
                 "--json", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "--redis: redis://127.0.0.1:" in err and "connection refused" in err
    (tmp_path / "file").write_text("x")
    png = tmp_path / "file" / "plots"           # (a folder that cannot be made)
    assert main(["bench", "--quick", "--sections", "store", "--no-redis", "--png", str(png)]) == 2
    assert f"{png}: cannot write ({tmp_path}/file: Not a directory)" in capsys.readouterr().err
    assert time.monotonic() - t0 < 30 and not (tmp_path / "r.json").exists()
