"""Operation offloading vs a naive lock + read + modify + write-back: two NAT instances
sharing the free-port list and counters (model EO, no caching).

Usage: python bench/offload.py [--quick] [--json FILE] [--png DIR] [--redis URL] [--no-redis] ...
(see docs/benchmarks.md; the same measurement as ``chc bench --sections offload``).
"""

from __future__ import annotations

import sys

from _common import run

if __name__ == "__main__":
    sys.exit(run(("offload",), "bench/offload.py"))
