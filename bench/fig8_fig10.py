"""Figures 8 and 10: per-packet time percentiles and per-instance throughput of each NF
alone, in models T, EO, EO+C, EO+C+NA, on the memory store and Redis.

Usage: python bench/fig8_fig10.py [--quick] [--json FILE] [--png DIR] [--redis URL] [--no-redis] ...
(see docs/benchmarks.md; the same measurement as ``chc bench --sections nfs``).
"""

from __future__ import annotations

import sys

from _common import run

if __name__ == "__main__":
    sys.exit(run(("nfs",), "bench/fig8_fig10.py"))
