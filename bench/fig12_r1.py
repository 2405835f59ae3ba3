"""Figure 12 / R1 (§7.3): NAT per-packet latency, CHC writing all state to the store
against FTMB-style checkpointing (a 5,000 µs stall every 200 ms); see
chc.bench.fig12_r1 for the method.

Usage: python bench/fig12_r1.py [--packets N] [--load 0.5[,0.3]] [--rounds 3] [--json FILE] [--png DIR]
"""

from __future__ import annotations

from chc.bench.fig12_r1 import main

if __name__ == "__main__":
    main()
