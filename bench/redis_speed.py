"""The Redis store before and after a change, in one run: store ops/s with server and client
CPU per op, NAT and LB in EO+C+NA against model T, and the §7.1 chain on Redis against the
in-process store.

Theory of operation
-------------------
The machine is shared and its load swings 2-3x within minutes, so numbers of two runs made
at different times do not compare.  This script takes the code "before" from a git ref
(``git archive REF src``, default ``main``) and "after" from this checkout (copied without
its compiled modules: both run as plain Python), starts one
private ``redis-server`` (loopback, no persistence), and runs both versions in alternation,
round after round, each in a fresh subprocess that imports its own ``chc`` (``--worker``).
A worker measures, on a fresh namespace: ``get``/``set``/``incr``/``incr_chc`` batches of
1,000 ops (``chc.bench.store_engine``'s ops) with the client's CPU time and the server's
(utime+stime of redis-server from /proc); a *physical reference* (one Lua function that
applies each op as an ``HINCRBY`` plus an ``HSET`` of a log tag, 1,000 ops per call, the
floor the issue names); ``run_nf`` for the NAT and the LB in T and EO+C+NA; and
``run_chain`` in EO+C+NA on the memory store and on Redis.  Per version the median over
rounds is reported, with the ratios that matter measured within each round: EO+C+NA / T,
chain Redis / memory, incr_chc / reference; and after / before.

Usage: python bench/redis_speed.py [--before-ref main] [--rounds 3] [--packets 4000]
       [--ops 20000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import load_floor

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("get", "set", "incr", "incr_chc")

def _server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker(url: str, pid: int, ops_n: int, packets: int, workdir: str) -> dict:
    """One version's measurements (runs in a subprocess that imports that version's chc)."""
    import redis

    from chc.backends.redis import RedisStore
    from chc.bench.chain import run_chain
    from chc.bench.fig8_fig10 import run_nf
    from chc.bench.inputs import trace2_input
    from chc.bench.store_engine import _store_ops
    from chc.bench.stores import StoreSpec

    out: dict = {"store": {}, "nfs": {}, "chain": {}}
    ops = _store_ops(ops_n)
    store = RedisStore([url], fresh=True)
    try:
        for kind in KINDS:
            batches = [ops[kind][i:i + 1000] for i in range(0, ops_n, 1000)]
            c0, w0, s0 = time.process_time(), time.perf_counter(), _server_cpu(pid)
            for b in batches:
                store.execute(b)
            c1, w1, s1 = time.process_time(), time.perf_counter(), _server_cpu(pid)
            out["store"][kind] = {"ops_s": ops_n / (w1 - w0), "client_us": (c1 - c0) / ops_n * 1e6,
                                  "server_us": (s1 - s0) / ops_n * 1e6}
    finally:
        store.close()
    # the physical reference: HINCRBY + HSET of a log tag per op, 1,000 ops per call
    r = redis.Redis.from_url(url)
    floor = load_floor()
    r.function_load(floor.FLOOR_LIB, replace=True)
    calls = floor.floor_calls(ops_n)
    w0, s0 = time.perf_counter(), _server_cpu(pid)
    for args in calls:
        r.fcall("chcfloor", 2, *floor.FLOOR_KEYS, *args)
    w1, s1 = time.perf_counter(), _server_cpu(pid)
    out["store"]["reference"] = {"ops_s": ops_n / (w1 - w0), "server_us": (s1 - s0) / ops_n * 1e6}
    r.delete(*floor.FLOOR_KEYS)
    r.close()
    inp = trace2_input(0.005, workdir)
    red = StoreSpec("redis", [url], packet_cap=packets)
    mem = StoreSpec("memory", packet_cap=packets)
    for nf in ("nat", "lb"):
        for model in ("T", "EO+C+NA"):
            s0, c0 = _server_cpu(pid), time.process_time()
            res = run_nf(inp, nf, model, red, 256, latency=False)
            out["nfs"].setdefault(nf, {})[model] = {
                "pps": res["pps"], "server_us_per_pkt": (_server_cpu(pid) - s0) / res["packets"] * 1e6,
                "client_us_per_pkt": (time.process_time() - c0) / res["packets"] * 1e6}
    for name, spec in (("memory", mem), ("redis", red)):
        out["chain"][name] = run_chain(inp, "EO+C+NA", spec, 256, latency=False)["pps"]
    return out


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Medians per version of every number and of the within-round ratios."""
    out: dict = {}
    for ver, rounds in runs.items():
        d: dict = {"store": {}, "nfs": {}, "chain": {}, "ratios": {}}
        for kind in (*KINDS, "reference"):
            for field in rounds[0]["store"][kind]:
                d["store"].setdefault(kind, {})[field] = _median([r["store"][kind][field] for r in rounds])
        for nf in ("nat", "lb"):
            for model in ("T", "EO+C+NA"):
                for field in rounds[0]["nfs"][nf][model]:
                    d["nfs"].setdefault(nf, {}).setdefault(model, {})[field] = _median(
                        [r["nfs"][nf][model][field] for r in rounds])
            d["ratios"][f"{nf}_NA_over_T"] = _median([r["nfs"][nf]["EO+C+NA"]["pps"] / r["nfs"][nf]["T"]["pps"]
                                                      for r in rounds])
        for name in ("memory", "redis"):
            d["chain"][name] = _median([r["chain"][name] for r in rounds])
        d["ratios"]["chain_redis_over_memory"] = _median([r["chain"]["redis"] / r["chain"]["memory"] for r in rounds])
        d["ratios"]["incr_chc_server_cpu_over_reference"] = _median(
            [r["store"]["incr_chc"]["server_us"] / r["store"]["reference"]["server_us"] for r in rounds])
        out[ver] = d
    if "before" in out and "after" in out:
        b, a = out["before"], out["after"]
        out["after_over_before"] = {
            **{f"{k}_ops_s": round(a["store"][k]["ops_s"] / b["store"][k]["ops_s"], 2) for k in KINDS},
            **{f"{k}_server_us": round(a["store"][k]["server_us"] / b["store"][k]["server_us"], 2) for k in KINDS},
            **{f"{k}_client_us": round(a["store"][k]["client_us"] / b["store"][k]["client_us"], 2) for k in KINDS},
            **{f"{nf}_NA_pps": round(a["nfs"][nf]["EO+C+NA"]["pps"] / b["nfs"][nf]["EO+C+NA"]["pps"], 2)
               for nf in ("nat", "lb")},
            "chain_redis_pps": round(a["chain"]["redis"] / b["chain"]["redis"], 2),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before-ref", default="main", help="git ref of the code before (default: main)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--packets", type=int, default=4000, help="packets per NF/chain run (default 4000)")
    ap.add_argument("--ops", type=int, default=20000, help="ops per store kind (default 20000)")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--worker", nargs=5, metavar=("URL", "PID", "OPS", "PACKETS", "WORKDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        url, pid, ops_n, packets, workdir = args.worker
        print(json.dumps(worker(url, int(pid), int(ops_n), int(packets), workdir)))
        return 0
    for name in ("rounds", "packets", "ops"):
        if getattr(args, name) <= 0:
            print(f"redis_speed: --{name} must be positive", file=sys.stderr)
            return 2
    sys.path.insert(0, str(ROOT / "src"))
    from chc.bench.stores import PrivateRedis, redis_server_binary

    binary = redis_server_binary()
    if binary is None:
        print("redis_speed: needs redis-server 7+ on PATH", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="chc-redis-speed-")
    before = Path(tmp) / "before"
    before.mkdir()
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before_ref, "src"],
                                 capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as exc:
        print(f"redis_speed: git archive {args.before_ref}: {exc.stderr.decode().strip()}", file=sys.stderr)
        return 2
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    # "after" is copied too, without compiled modules: an in-place build (pip install -e) leaves
    # them in src, where they win over the .py files, and the two trees must run alike.
    shutil.copytree(ROOT / "src", Path(tmp) / "after" / "src",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    srcs = {"before": str(before / "src"), "after": str(Path(tmp) / "after" / "src")}
    load0 = os.getloadavg()
    server = PrivateRedis(binary, 1)
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    try:
        pid = server.procs[0].pid
        for rnd in range(args.rounds):
            order = ("before", "after") if rnd % 2 == 0 else ("after", "before")
            for ver in order:
                env = dict(os.environ, PYTHONPATH=srcs[ver], CHC_PURE_PYTHON="1")
                got = subprocess.run([sys.executable, __file__, "--worker", server.urls[0], str(pid), str(args.ops),
                                      str(args.packets), tmp], capture_output=True, text=True, env=env)
                if got.returncode != 0:
                    print(f"redis_speed: the {ver} worker failed:\n{got.stderr[-2000:]}", file=sys.stderr)
                    return 1
                res = json.loads(got.stdout.strip().splitlines()[-1])
                runs[ver].append(res)
                st, nfs = res["store"], res["nfs"]
                print(f"round {rnd + 1} {ver:6}  incr_chc {st['incr_chc']['ops_s'] / 1e3:6.1f} kops/s "
                      f"(server {st['incr_chc']['server_us']:5.2f} us, client {st['incr_chc']['client_us']:5.2f} us,"
                      f" reference server {st['reference']['server_us']:5.2f} us)  "
                      f"NAT NA/T {nfs['nat']['EO+C+NA']['pps'] / nfs['nat']['T']['pps']:.2f}  "
                      f"LB NA/T {nfs['lb']['EO+C+NA']['pps'] / nfs['lb']['T']['pps']:.2f}  "
                      f"chain redis/memory {res['chain']['redis'] / res['chain']['memory']:.2f}", flush=True)
    finally:
        server.close()
        subprocess.run(["rm", "-rf", tmp], check=False)
    summary = summarize(runs)
    summary["meta"] = {"before_ref": args.before_ref, "rounds": args.rounds, "packets": args.packets,
                       "ops": args.ops, "loadavg_start": load0, "loadavg_end": os.getloadavg(),
                       "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "build": "pure Python (CHC_PURE_PYTHON=1: the compiled modules of both trees would differ)"}
    summary["runs"] = runs
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
