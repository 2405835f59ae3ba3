"""CPU time per store op on the Redis backend: the client process and the server, apart.

Theory of operation
-------------------
Wall-clock ops/s on a shared 2-core machine swing by 2-3x with the load of other
processes, because the client and the server wait for each other and each wait
is a scheduling delay.  CPU time does not count the waiting: this script starts
a private ``redis-server`` (loopback, free port, no persistence), runs the store
benchmark's get/set/incr/incr_chc batches (1,000 ops per ``execute``) and reads
the client's ``time.process_time()`` and the server's utime+stime from
``/proc/<pid>/stat`` around each kind, then prints ``INFO commandstats``.  The
best of ``--rounds`` rounds is reported (less disturbed by the neighbours).

With ``--nfs``, also the NAT and the LB alone in model T and in EO+C+NA on that server
(``run_nf`` of the nfs section, the trace2-shaped input of ``--trace2-scale``): CPU per
packet of the client (the NF process) and of the server, and the bound they set,
1 / max(client, server) packets/s, against model T of the same run: a client and a
server each on a core of their own could not go faster than that; and the client's
alone (1 / client), what a server that cost nothing would leave.

Usage: python bench/redis_cpu.py [--ops N] [--rounds R] [--nfs] [--trace2-scale F]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    from chc.backends.redis import RedisStore
    from chc.bench.store_engine import _store_ops
    from chc.bench.stores import PrivateRedis, redis_server_binary

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nfs", action="store_true", help="also the NAT and the LB per packet (see above)")
    ap.add_argument("--trace2-scale", type=float, default=0.01, metavar="F")
    args = ap.parse_args()
    binary = redis_server_binary()
    if binary is None:
        print("redis_cpu: needs redis-server 7+ on PATH", file=sys.stderr)
        return 2
    server = PrivateRedis(binary, 1)
    try:
        pid = server.procs[0].pid
        ops = _store_ops(args.ops)
        kinds = ("set", "get", "incr", "incr_chc")
        best: dict[str, tuple[float, float, float]] = {}
        for _ in range(args.rounds):
            store = RedisStore(server.urls, fresh=True)
            try:
                for kind in kinds:
                    batches = [ops[kind][i:i + 1000] for i in range(0, args.ops, 1000)]
                    c0, w0, s0 = time.process_time(), time.perf_counter(), _server_cpu(pid)
                    for b in batches:
                        store.execute(b)
                    c1, w1, s1 = time.process_time(), time.perf_counter(), _server_cpu(pid)
                    got = ((c1 - c0) / args.ops * 1e6, (s1 - s0) / args.ops * 1e6, (w1 - w0) / args.ops * 1e6)
                    if kind not in best or got[2] < best[kind][2]:
                        best[kind] = got
            finally:
                store.close()
        print(f"{'op':<10} {'client CPU':>12} {'server CPU':>12} {'wall':>10}   (us per op, best of "
              f"{args.rounds} rounds, {args.ops} ops each)")
        for kind in kinds:
            c, s, w = best[kind]
            print(f"{kind:<10} {c:12.2f} {s:12.2f} {w:10.2f}   {1e6 / w / 1e3:7.1f} kops/s")
        import redis
        r = redis.Redis.from_url(server.urls[0])
        print("INFO commandstats (all rounds):")
        for name, st in sorted(r.info("commandstats").items(), key=lambda kv: -kv[1]["usec"]):
            print(f"  {name:<24} calls {st['calls']:>8}  usec/call {st['usec_per_call']:>10.2f}")
        r.close()
        if args.nfs:
            _nfs(server.urls[0], pid, args.trace2_scale, args.rounds)
    finally:
        server.close()
    return 0


def _nfs(url: str, pid: int, scale: float, rounds: int) -> None:
    """Client and server CPU per packet of the NAT and the LB, T against EO+C+NA on Redis."""
    import tempfile

    from chc.bench.fig8_fig10 import run_nf
    from chc.bench.inputs import trace2_input
    from chc.bench.stores import StoreSpec

    inp = trace2_input(scale, tempfile.mkdtemp(prefix="chc-redis-cpu-"))
    spec = StoreSpec("redis", [url])
    print(f"{'NF':<5} {'model':<8} {'kpps':>8} {'client CPU':>11} {'server CPU':>11} {'bound kpps':>11} "
          f"{'bound / T':>10} {'client / T':>11}   (us per packet; median of {rounds} runs, {inp.name})")
    for nf in ("nat", "lb"):
        t_pps = None
        for model in ("T", "EO+C+NA"):
            runs = []
            for _ in range(rounds):
                s0 = _server_cpu(pid)
                res = run_nf(inp, nf, model, spec, 256, latency=False)
                n = res["packets"]
                runs.append((res["pps"], 1e6 / res["pps_cpu"], (_server_cpu(pid) - s0) / n * 1e6))
            pps, client, srv = sorted(runs)[len(runs) // 2]
            if model == "T":
                t_pps = pps
            bound = 1e6 / max(client, srv) if model != "T" else pps
            print(f"{nf:<5} {model:<8} {pps / 1e3:8.1f} {client:11.2f} {srv:11.2f} {bound / 1e3:11.1f} "
                  f"{bound / t_pps:10.2f} {1e6 / client / t_pps:11.2f}")


if __name__ == "__main__":
    sys.exit(main())
