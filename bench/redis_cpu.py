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

Usage: python bench/redis_cpu.py [--ops N] [--rounds R]
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
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
