"""Instructions the Redis server executes per store op (callgrind): a measure of the store's
server-side cost that the machine's load does not change, before and after a change.

Theory of operation
-------------------
CPU time per op on a shared machine moves with its neighbours (caches, frequency); the
count of instructions does not.  This script starts ``redis-server`` under ``valgrind
--tool=callgrind`` (loopback, no persistence), and for each version ("before": ``git
archive REF src``, default ``main``; "after": this checkout), in a subprocess that imports
that version's ``chc``, runs batches of 1,000 ops of each kind (``get``/``set``/``incr``/
``incr_chc`` of ``chc.bench.store_engine``, and ``incr_many``: a NAT-like batch of four
coalesced counters with 250 tagged increments each), zeroing the counters before and
dumping them after each kind (``callgrind_control``).  Also measured: the physical
reference (a Lua function doing ``HINCRBY`` + ``HSET`` of a log tag per op, 1,000 per
call).  Printed: instructions per op (per increment for ``incr_many``) and after/before.

Usage: python bench/redis_instructions.py [--before-ref main] [--ops 5000] [--json FILE]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import load_floor

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("get", "set", "incr", "incr_chc", "incr_many")
class Callgrind:
    """A redis-server under callgrind, whose counts can be zeroed and read."""

    def __init__(self, workdir: str) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.out = os.path.join(workdir, "cg")
        self.proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}.%p",
                                      "redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        for _ in range(600):
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("redis-server under callgrind did not start")

    def zero(self) -> None:
        subprocess.run(["callgrind_control", "-z", str(self.proc.pid)], stdout=subprocess.DEVNULL, check=True)

    def count(self) -> int:
        """Instructions since the last zero."""
        subprocess.run(["callgrind_control", "-d", str(self.proc.pid)], stdout=subprocess.DEVNULL, check=True)
        files = sorted(glob.glob(f"{self.out}.{self.proc.pid}*"), key=os.path.getmtime)
        total = 0
        with open(files[-1]) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    total = int(line.split()[1])
        for name in files:
            os.remove(name)
        return total

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def worker(port: int, ops_n: int) -> dict:
    """One version's counts; the parent zeroes and reads callgrind around each kind (over stdin)."""
    import redis

    from chc.backends.redis import RedisStore
    from chc.bench.store_engine import _store_ops
    from chc.core.store import Increments, ObjectKey, Op

    def mark(kind: str) -> None:
        print(kind, flush=True)
        sys.stdin.readline()            # the parent has zeroed or read the counts

    ops: dict = _store_ops(ops_n)
    many, clock = [], 1 << 40
    for b in range(ops_n // 1000):
        for c in range(4):
            inc = Increments()
            for _ in range(250):
                clock += 1
                inc.add(clock, 1 + c, 1, (clock * 2654435761) & 0xFFFFFFFF or 1)
            many.append(Op("incr_many", ObjectKey("nat", f"ctr{c}", None, False), (inc,), "nat/0", b * 4 + c + 1,
                           0, None, 0, 0))
    ops["incr_many"] = many
    store = RedisStore([f"redis://127.0.0.1:{port}"], fresh=True)
    for i in range(0, ops_n, 1000):
        store.execute(ops["set"][i:i + 1000])
    for kind in KINDS:
        step = 4 if kind == "incr_many" else 1000
        mark("zero")
        for i in range(0, len(ops[kind]), step):
            store.execute(ops[kind][i:i + step])
        mark(kind)
    store.close()
    r = redis.Redis(port=port)
    floor = load_floor()
    r.function_load(floor.FLOOR_LIB, replace=True)
    calls = floor.floor_calls(ops_n)
    mark("zero")
    for args in calls:
        r.fcall("chcfloor", 2, *floor.FLOOR_KEYS, *args)
    mark("reference")
    r.delete(*floor.FLOOR_KEYS)
    print("done", flush=True)
    return {}


def measure(cg: Callgrind, src: str, ops_n: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=src)
    p = subprocess.Popen([sys.executable, __file__, "--worker", str(cg.port), str(ops_n)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdin is not None and p.stdout is not None
    out: dict[str, float] = {}
    for line in p.stdout:
        what = line.strip()
        if what == "done":
            break
        if what == "zero":
            cg.zero()
        else:
            out[what] = round(cg.count() / ops_n)
        p.stdin.write("\n")
        p.stdin.flush()
    if p.wait() != 0:
        raise RuntimeError("the worker failed")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before-ref", default="main")
    ap.add_argument("--ops", type=int, default=5000, help="ops per kind, a multiple of 1000 (default 5000)")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--worker", nargs=2, metavar=("PORT", "OPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(int(args.worker[0]), int(args.worker[1]))
        return 0
    if args.ops < 1000 or args.ops % 1000:
        print("redis_instructions: --ops must be a positive multiple of 1000", file=sys.stderr)
        return 2
    for tool in ("valgrind", "callgrind_control", "redis-server"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            print(f"redis_instructions: needs {tool} on PATH", file=sys.stderr)
            return 2
    tmp = tempfile.mkdtemp(prefix="chc-redis-instr-")
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before_ref, "src"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        res: dict = {}
        for ver, src in (("before", os.path.join(tmp, "src")), ("after", str(ROOT / "src"))):
            cg = Callgrind(tmp)
            try:
                res[ver] = measure(cg, src, args.ops)
            finally:
                cg.close()
            print(f"{ver:6} " + "  ".join(f"{k} {v:,.0f}" for k, v in res[ver].items()) + "  instructions/op",
                  flush=True)
        res["after_over_before"] = {k: round(res["after"][k] / res["before"][k], 2) for k in res["after"]}
        res["after_over_reference"] = {k: round(res["after"][k] / res["after"]["reference"], 2)
                                       for k in res["after"]}
        res["meta"] = {"before_ref": args.before_ref, "ops": args.ops, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "note": "server instructions per op (callgrind), incr_many per increment"}
        print(json.dumps(res, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    except subprocess.CalledProcessError as exc:
        print(f"redis_instructions: {exc}", file=sys.stderr)
        return 2
    finally:
        subprocess.run(["rm", "-rf", tmp], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
