"""§7.1 chain (NAT -> portscan -> LB, Trojan detector off-path): end-to-end throughput and
per-packet time, EO+C+NA vs T.

Usage: python bench/chain.py [--quick] [--json FILE] [--png DIR] [--redis URL] [--no-redis] ...
(see docs/benchmarks.md; the same measurement as ``chc bench --sections chain``).
"""

from __future__ import annotations

import sys

from _common import run

if __name__ == "__main__":
    sys.exit(run(("chain",), "bench/chain.py"))
