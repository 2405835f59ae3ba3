"""Figure 13 (§7.3 R6): a NAT instance crashes and fails over; mean per-packet time
over 500 µs windows around it at 30% and 50% load, in the sim's virtual time with
measured service times; see chc.bench.fig13_nf_recovery for the method.

Usage: python bench/fig13_nf_recovery.py [--packets N] [--loads 0.3,0.5] [--heartbeat-us 1000] [--misses 3]
       [--commit-us 10] [--json FILE] [--png DIR]
"""

from __future__ import annotations

from chc.bench.fig13_nf_recovery import main

if __name__ == "__main__":
    main()
