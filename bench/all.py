"""Every benchmark section, exactly as ``chc bench`` (one summary table).

Usage: python bench/all.py [--quick] [--json FILE] [--png DIR] [--redis URL] [--no-redis] ...
"""

from __future__ import annotations

import sys

from _common import run

if __name__ == "__main__":
    sys.exit(run(("nfs", "chain", "offload", "store"), "bench/all.py"))
