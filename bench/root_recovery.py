"""Root recovery (§5.4, §7.3): a new root resumes its clock from the store and takes
the store-backed packet log over; see chc.bench.root_recovery for the method.

Usage: python bench/root_recovery.py [--in-flight 0,150,1000,10000] [--state-keys 50000]
                                     [--rounds 20] [--json FILE] [--png DIR]
"""

from __future__ import annotations

from chc.bench.root_recovery import main

if __name__ == "__main__":
    main()
