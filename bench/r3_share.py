"""R3 (§7.2, Figure 11): a strongly consistent shared NAT state updated by 2-4
instances, CHC against an OpenNF-style share; see chc.bench.r3_share for the method.

Usage: python bench/r3_share.py [--instances 2,3,4] [--rounds 5] [--rtt-us 10] [--json FILE] [--png DIR]
"""

from __future__ import annotations

from chc.bench.r3_share import main

if __name__ == "__main__":
    main()
