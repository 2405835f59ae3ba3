"""Figure 9 (§7.1 "Cross-flow state caching"): the portscan detector split to two
instances and merged back; per-packet latency of the packets that update the
per-host likelihood, cached vs shared; see chc.bench.fig9_split_merge for the method.

Usage: python bench/fig9_split_merge.py [--packets 60000] [--store auto|redis|memory] [--rounds 3]
       [--refine] [--capture PCAP] [--json FILE] [--png DIR]
"""

from __future__ import annotations

from chc.bench.fig9_split_merge import main

if __name__ == "__main__":
    main()
