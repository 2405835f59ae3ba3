"""R2 (§7.2): move 4,000 NAT flows to a new instance, CHC's handover against an
OpenNF-style loss-free move; see chc.bench.r2_move for the method.

Usage: python bench/r2_move.py [--flows 4000] [--rounds 5] [--rtt-us 10] [--json FILE] [--png DIR]
"""

from __future__ import annotations

from chc.bench.r2_move import main

if __name__ == "__main__":
    main()
