"""Benchmarks (``chc bench``, ``bench/*.py``): Figures 8 and 10, the §7.1 chain,
operation offloading vs a naive lock/read/write-back, and the store engine.

Theory of operation
-------------------
Every section measures its baseline in the same process and the same run, so a
ratio never compares numbers taken under different machine load.  Timed regions
hold only the work being measured: captures are read and parsed before timing,
fresh copies of the packets (NAT and LB rewrite them in place) are made before
timing, and store maintenance the root would drive once per batch (draining
commit reports, pruning the clock log, §5.3/§5.4) runs between batches, outside
timing.  The cyclic garbage collector is frozen over the pre-parsed input (a
runtime streaming packets would not hold them all) but runs as usual otherwise.

Layout: one module per paper figure or table, one shared harness
-----------------------------------------------------------------
``harness``       clocks, per-packet timing, percentiles, rounds of runs,
                  metadata, the summary table, plots, JSON; :class:`Section`
``inputs``        the ``lan`` and ``trace2`` inputs (captures, configs, chain)
``stores``        memory and Redis stores, private ``redis-server``
``fig8_fig10``    section ``nfs``: each NF alone, every model, every store
``chain``         section ``chain``: the §7.1 chain end to end, T vs EO+C+NA
``offload``       section ``offload``: offloaded ops vs lock + read + write-back
``store_engine``  section ``store``: store ops/s (§7.1 "Datastore performance")
``runner``        options, setup, the sections in order (:data:`EXPERIMENTS`)
``profiling``     ``bench/profile_nf.py``: where one NF's time goes

Adding an experiment: a module of its own that measures with the harness
(:func:`~chc.bench.harness.rounds`, :func:`~chc.bench.harness.combine`,
:func:`~chc.bench.harness.pcts`, its baseline in the same run) and ends in a
``SECTION = Section(name, banner, run, rows, plots)``; add it to
``runner.EXPERIMENTS`` and give it a ``bench/`` script.  Its ``run`` returns
the JSON keys it owns, so the keys of the other sections never change.  Coming
(issue 12): ``r2_move`` (R2: 4,000 flows moved between two NAT instances, CHC
vs an OpenNF-style move), ``r3_share`` (R3: a shared counter, CHC vs an
OpenNF-style share) and ``fig9_split_merge`` (Figure 9: the portscan detector
split to two instances and merged back).

This package is the CLI entry too (:func:`register_bench`, :func:`cmd_bench`
for ``chc.cli``); it imports nothing of ``chc.cli``, whose usage error comes
from :mod:`chc.cliargs`.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..cliargs import UsageError
from .chain import bench_chain, run_chain
from .fig8_fig10 import NFS, bench_nfs, nf_ratios, run_nf
from .harness import MODELS, BenchError, RunContext, Section, percentile
from .inputs import BenchInput, lan_input, trace2_input
from .offload import NaiveObject, NaiveStats, bench_offload, run_offload
from .profiling import profile_main
from .runner import EXPERIMENTS, SECTIONS, add_arguments, exit_code, finish, main, run, summary_table, write_plots
from .store_engine import bench_store
from .stores import StoreSpec


def register_bench(sub: Any) -> None:
    """Add the ``bench`` subcommand to the ``chc`` parser."""
    p = sub.add_parser("bench", help="run the benchmarks (Figures 8 and 10, §7.1 chain, offloading, store)",
                       description="Run the benchmark set and print one summary table: each NF alone in every "
                                   "state model (Figures 8 and 10), the §7.1 chain, offloaded ops vs naive "
                                   "lock + read + write-back, and store ops/s. See docs/benchmarks.md.")
    add_arguments(p)


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        res = run(args)
    except BenchError as exc:
        raise UsageError(str(exc)) from None
    finish(res, args)
    return exit_code(res)


__all__ = ["EXPERIMENTS", "MODELS", "NFS", "SECTIONS", "BenchError", "BenchInput", "NaiveObject", "NaiveStats",
           "RunContext", "Section", "StoreSpec", "add_arguments", "bench_chain", "bench_nfs", "bench_offload",
           "bench_store", "cmd_bench", "finish", "lan_input", "main", "nf_ratios", "percentile", "profile_main",
           "register_bench", "run", "run_chain", "run_nf", "run_offload", "summary_table", "trace2_input",
           "write_plots"]
