"""Store engine: get/set/incr ops/s with 16-byte keys and 64-bit values (engine, memory
backend, Redis with one and two shards).

Usage: python bench/store_engine.py [--quick] [--json FILE] [--png DIR] [--redis URL] [--no-redis] ...
(see docs/benchmarks.md; the same measurement as ``chc bench --sections store``).
"""

from __future__ import annotations

import sys

from _common import run

if __name__ == "__main__":
    sys.exit(run(("store",), "bench/store_engine.py"))
