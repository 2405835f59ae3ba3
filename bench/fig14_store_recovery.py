"""Figure 14 (§7.3 R6): a store instance fails and is recovered from its checkpoint and
the NAT instances' write-ahead logs; wall-clock recovery time against the checkpoint
interval with 5 and 10 NATs; see chc.bench.fig14_store_recovery for the method.

Usage: python bench/fig14_store_recovery.py [--intervals 30,75,150] [--nats 5,10] [--pps 200000]
       [--batch 64] [--rounds 5] [--json FILE] [--png DIR]
"""

from __future__ import annotations

from chc.bench.fig14_store_recovery import main

if __name__ == "__main__":
    main()
