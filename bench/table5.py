"""Table 5 (§7.3): duplicate packets and state updates of a straggler NAT's clone,
suppression off and on; see chc.bench.table5 for the method.

Usage: python bench/table5.py [--packets 100000] [--loads 0.3,0.5] [--json FILE]
"""

from __future__ import annotations

from chc.bench.table5 import main

if __name__ == "__main__":
    main()
