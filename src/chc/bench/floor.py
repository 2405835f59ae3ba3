"""Issue 15's floor for a Redis store op: what one Redis server does at best per op in Lua.

Theory of operation
-------------------
One Lua function applies 1,000 ops per call, each an ``HINCRBY`` of a counter and an
``HSET`` of a clock-log tag: the two writes every CHC increment must make, with none
of the rest (no read of the value, no clock-log lookup, no sequence mark, no commit
report, no pruning index).  The store section (:mod:`chc.bench.store_engine`) runs it
beside the CHC increment on the same server in the same run; ``bench/redis_speed.py``
and ``bench/redis_instructions.py`` load this file by its path (its imports are the
standard library's only), so their worker subprocesses, which import an older ``chc``,
run the same floor.
"""

from __future__ import annotations

import random

FLOOR_LIB = """#!lua name=chcfloor
local function chcfloor(keys, argv)
  for i = 1, #argv, 2 do
    redis.call('HINCRBY', keys[1], argv[i], 1)
    redis.call('HSET', keys[2], argv[i + 1], '1')
  end
  return 1
end
redis.register_function('chcfloor', chcfloor)
"""
FLOOR_KEYS = ("chc:floor:h", "chc:floor:l")     # in the bench's namespace ("chc:")


def floor_calls(n_ops: int, seed: int = 7) -> list[list[bytes]]:
    """Arguments of the floor's calls: ``n_ops`` (key, log tag) pairs, 1,000 a call (the
    last one the rest), shaped as a CHC increment's key and clock-log field."""
    rng = random.Random(seed)
    calls = []
    for start in range(0, n_ops, 1000):
        args: list[bytes] = []
        for _ in range(min(1000, n_ops - start)):
            k = b"chc:k:bench:f3:\xc4\x10" + rng.getrandbits(128).to_bytes(16, "big")
            args += [k, b"%d:1 " % rng.getrandbits(40) + k]
        calls.append(args)
    return calls
