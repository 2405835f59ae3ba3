"""Where one NF's time goes: cProfile (default) or pyinstrument over the runs of the
nfs section, e.g. ``python bench/profile_nf.py --nf nat --model EO+C+NA``.

For a sampling profile without tracing overhead, run py-spy on it:
``py-spy record -o out/nat.txt --format raw -- python bench/profile_nf.py --runs 5``.
"""

from __future__ import annotations

import sys

from _common import ROOT

if __name__ == "__main__":
    if (ROOT / "src" / "chc").is_dir():
        sys.path.insert(0, str(ROOT / "src"))
    from chc.bench import profile_main

    sys.exit(profile_main(sys.argv[1:]))
