"""Where one NF's time goes (``bench/profile_nf.py``): the runs of the ``nfs`` section
under ``cProfile`` or ``pyinstrument``.

Theory of operation
-------------------
Two unprofiled runs first give the NF's throughput without the profiler (the
profile's own overhead distorts it); then ``--runs`` runs of
:func:`~chc.bench.fig8_fig10.run_nf` are profiled and the top functions printed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile

from ..nfs import REGISTRY
from .fig8_fig10 import run_nf
from .harness import MODELS, BenchError, progress
from .inputs import lan_input, trace2_input
from .stores import StoreSpec


def profile_main(argv: list[str] | None = None, prog: str = "bench/profile_nf.py") -> int:
    """Profile one NF alone (``cProfile``, or ``pyinstrument`` with ``--pyinstrument``)."""
    p = argparse.ArgumentParser(prog=prog, description="Profile one NF alone over a benchmark input "
                                "(the same runs as the nfs section) and print where the time goes.")
    p.add_argument("--nf", default="nat", choices=sorted(REGISTRY))
    p.add_argument("--model", default="EO+C+NA", choices=MODELS)
    p.add_argument("--input", default="trace2", choices=("trace2", "lan"))
    p.add_argument("--trace2-scale", type=float, default=0.01, metavar="F")
    p.add_argument("--packets", type=int, metavar="N", help="use only the first N frames")
    p.add_argument("--runs", type=int, default=3, help="runs profiled (default: %(default)s)")
    p.add_argument("--top", type=int, default=25, help="functions listed (default: %(default)s)")
    p.add_argument("--pyinstrument", action="store_true", help="a call tree from pyinstrument instead")
    p.add_argument("--workdir", metavar="DIR", help="where the generated input goes")
    p.add_argument("--redis", metavar="URL", help="run on this Redis server instead of the in-process "
                   "store (redis://HOST:PORT; its chc keys of the run's namespace are cleared)")
    args = p.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="chc-profile-")
    try:
        inp = (lan_input(args.packets) if args.input == "lan"
               else trace2_input(args.trace2_scale, workdir, args.packets))
        st = StoreSpec("redis", [args.redis]) if args.redis else StoreSpec("memory")
        pps = max(run_nf(inp, args.nf, args.model, st, 256, latency=False)["pps"] for _ in range(2))
        progress(f"{args.nf} {args.model} on {inp.name}: {pps / 1e3:.1f} kpps without profiler (best of 2)")
        if args.pyinstrument:
            from pyinstrument import Profiler
            prof = Profiler(interval=0.0002)
            prof.start()
            for _ in range(args.runs):
                run_nf(inp, args.nf, args.model, st, 256, latency=False)
            prof.stop()
            print(prof.output_text(unicode=False, color=False))
        else:
            import cProfile
            import pstats
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.runs):
                run_nf(inp, args.nf, args.model, st, 256, latency=False)
            prof.disable()
            pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(args.top)
    except BenchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0
