"""The runner of ``chc bench`` and the ``bench/`` scripts: options, setup, sections in order.

Theory of operation
-------------------
:func:`run` checks the options, loads the inputs the chosen sections read,
opens the stores (memory, and Redis: given by ``--redis`` or a private
``redis-server``), then runs each chosen section of :data:`EXPERIMENTS` in
that order, each adding its keys to one results dict (the ``--json`` file).
:func:`main` is the entry point of the scripts, ``cmd_bench`` (the package) of
``chc bench``; both end in :func:`finish` (table, JSON, plots).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from typing import Any

from ..cliargs import EXIT_INTERRUPTED, OutputPath
from ..outfiles import OutputPathError, check_outputs
from . import chain, fig8_fig10, offload, store_engine
from .harness import (
    BenchError,
    RunContext,
    Section,
    loadavg,
    meta,
    plots_available,
    progress,
    render_plots,
    render_table,
    write_results,
)
from .inputs import BenchInput, lan_input, trace2_input
from .stores import PrivateRedis, StoreSpec, redis_server_binary

# Every experiment, in the order it runs and is reported.  A new figure's module
# adds its SECTION here (and a bench/ script that names it).
EXPERIMENTS: tuple[Section, ...] = (fig8_fig10.SECTION, chain.SECTION, offload.SECTION, store_engine.SECTION)
SECTIONS = tuple(s.name for s in EXPERIMENTS)
DESCRIPTION = ("Benchmarks (``chc bench``, ``bench/*.py``): Figures 8 and 10, the §7.1 chain,\n"
               "operation offloading vs a naive lock/read/write-back, and the store engine.")

QUICK = {"trace2_scale": 0.005, "repeat": 2, "min_time": 1.0, "entries": 100_000, "redis_packets": 3000,
         "offload_packets": 8000}
FULL = {"trace2_scale": 0.01, "repeat": 3, "min_time": 5.0, "entries": 100_000, "redis_packets": None,
        "offload_packets": 30000}


def add_arguments(p: argparse.ArgumentParser, sections: tuple[str, ...] = SECTIONS) -> None:
    p.add_argument("--quick", action="store_true",
                   help="reduced grid (trace2-shaped input only, 2 repetitions, Redis cells capped): "
                        "under 2 minutes")
    p.add_argument("--json", action=OutputPath, kind="tree", metavar="FILE",
                   help="write every result as JSON (missing folders are made: --json out/bench.json)")
    p.add_argument("--png", action=OutputPath, kind="tree-dir", metavar="DIR",
                   help="write plots (PNG, needs matplotlib: refused at the start without it) into DIR, "
                        "made if missing")
    p.add_argument("--redis", metavar="URL",
                   help="Redis server(s) to use, redis://HOST:PORT[,redis://...] (a second URL enables the "
                        "2-shard store test); default: start a private redis-server if one is installed")
    p.add_argument("--no-redis", action="store_true", help="memory store only (not with --redis)")
    p.add_argument("--trace2-scale", type=float, metavar="F",
                   help="scale of the generated trace2-shaped input (default: 0.01 = 64,000 packets; "
                        "quick: 0.005; 1 = full size, 6.4M packets)")
    p.add_argument("--inputs", default=None, metavar="LIST",
                   help="comma-separated inputs: lan, trace2 (default: both; quick: trace2)")
    p.add_argument("--packets", type=int, metavar="N", help="use only the first N frames of each input")
    p.add_argument("--repeat", type=int, metavar="R", help="rounds of runs per cell, at least (default: 3; quick: 2)")
    p.add_argument("--batch", type=int, default=256, help="packets per Instance.run batch (default: %(default)s)")
    p.add_argument("--redis-packets", type=int, metavar="N",
                   help="at most N packets per Redis cell (default: all; quick: 3000)")
    p.add_argument("--entries", type=int, metavar="N", help="store section: keys per shard (default: 100000)")
    if len(sections) > 1:
        p.add_argument("--sections", default=",".join(sections), metavar="LIST",
                       help=f"comma-separated sections to run (default: {','.join(sections)})")
    p.add_argument("--workdir", metavar="DIR", help="where generated inputs go (default: a temporary directory)")


def _positive(name: str, value: Any) -> None:
    if value is not None and not value > 0:
        raise BenchError(f"--{name} must be positive, got {value!r}")


def _config(args: argparse.Namespace) -> dict:
    """QUICK or FULL with the options that override them, each checked positive."""
    conf = dict(QUICK if args.quick else FULL)
    for key in ("trace2_scale", "repeat", "redis_packets"):
        if getattr(args, key, None) is not None:
            conf[key] = getattr(args, key)
    if getattr(args, "entries", None) is not None:
        conf["entries"] = args.entries
    for key in ("trace2_scale", "repeat", "redis_packets", "entries"):
        _positive(key.replace("_", "-"), conf.get(key))
    _positive("packets", args.packets)
    _positive("batch", args.batch)
    return conf


def _chosen(args: argparse.Namespace, sections: tuple[str, ...]) -> tuple[str, ...]:
    """The section names --sections gives (a script offers only ``sections``), as given."""
    chosen = tuple(s.strip() for s in getattr(args, "sections", ",".join(sections)).split(",") if s.strip())
    bad = [s for s in chosen if s not in sections]
    if bad:
        raise BenchError(f"--sections: unknown section {bad[0]!r} (known: {', '.join(sections)})")
    return chosen


def _input_names(args: argparse.Namespace) -> list[str]:
    names = [s.strip() for s in (args.inputs or ("trace2" if args.quick else "lan,trace2")).split(",") if s.strip()]
    for nm in names:
        if nm not in ("lan", "trace2"):
            raise BenchError(f"--inputs: unknown input {nm!r} (known: lan, trace2)")
    return names


def _redis(args: argparse.Namespace, servers: int) -> tuple[list[str], str, PrivateRedis | None]:
    """(URLs, what the metadata says of Redis, the private servers started if any)."""
    if args.no_redis:
        return [], "not used (--no-redis)", None
    if args.redis:
        urls = [u.strip() for u in args.redis.split(",") if u.strip()]
        return urls, f"given: {', '.join(urls)}", None
    binary = redis_server_binary()
    if binary is None:
        return [], "skipped: no redis-server (Redis 7+) on PATH", None
    private = PrivateRedis(binary, servers)
    return private.urls, (f"private redis-server(s) {', '.join(private.urls)} (--save '' --appendonly no), "
                          "loopback"), private


def _check_early(args: argparse.Namespace) -> None:
    """What would fail only after minutes of measuring, checked first (a new user's trial:
    a --redis with nothing there was found after the memory cells, and nothing was written).
    The output paths themselves are checked before this, by :func:`~chc.outfiles.check_outputs`."""
    from ..backends import open_store
    from ..core.store import StoreError
    if args.redis and args.no_redis:
        # (the URL was silently ignored: a user meaning one of them got the other)
        raise BenchError("--no-redis and --redis: give one of them")
    if getattr(args, "png", None) and not plots_available():
        # (refused, not skipped at the end: minutes of measuring for plots that never come)
        raise BenchError(f"--png {args.png}: needs matplotlib, which is not installed (pip install matplotlib)")
    if args.redis:
        for url in (u.strip() for u in args.redis.split(",") if u.strip()):
            try:
                open_store(url, fresh=False, lease=False, attempts=2, backoff=0.05).close()
            except (StoreError, ValueError) as exc:
                raise BenchError(f"--redis: {exc}") from None


def run(args: argparse.Namespace, sections: tuple[str, ...] = SECTIONS) -> dict:
    """Run the selected sections; return the results (as written to --json)."""
    started = time.perf_counter()
    _check_early(args)
    conf = _config(args)
    chosen = _chosen(args, sections)
    names = _input_names(args)
    # --repeat R alone means exactly R rounds; tests (--packets) never spin.
    min_time = 0.0 if args.repeat is not None or args.packets is not None else conf["min_time"]
    conf["min_time"] = min_time
    selected = [s for s in EXPERIMENTS if s.name in chosen]       # run in EXPERIMENTS order
    results: dict[str, Any] = {"meta": meta(args, conf, chosen)}
    workdir = args.workdir or tempfile.mkdtemp(prefix="chc-bench-")
    private: PrivateRedis | None = None
    try:
        inputs: list[BenchInput] = []
        if any(s.uses_inputs for s in selected):
            for nm in names:
                inputs.append(lan_input(args.packets) if nm == "lan"
                              else trace2_input(conf["trace2_scale"], workdir, args.packets))
        results["inputs"] = {inp.name: inp.describe() for inp in inputs}
        urls, redis_note, private = _redis(args, max((s.redis_servers for s in selected), default=1))
        stores = [StoreSpec("memory")]
        if urls:
            stores.append(StoreSpec("redis", urls[:1], conf["redis_packets"]))
        results["meta"]["redis"] = redis_note
        progress(f"chc bench: sections {', '.join(chosen)}; inputs {', '.join(names)}; redis: {redis_note}")
        ctx = RunContext(args, conf, inputs, stores, urls, min_time)
        for section in selected:
            progress(section.banner)
            try:
                results.update(section.run(ctx))
            except KeyboardInterrupt:
                # what finished is printed and written: a long run stopped did keep nothing
                results["meta"]["interrupted"] = f"Ctrl-C during {section.name}: the sections before it are complete"
                break
    finally:
        if private is not None:
            private.close()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)
    results["meta"]["loadavg_end"] = loadavg()
    return results


def summary_table(res: dict) -> str:
    """The one summary table of a run (every section that ran)."""
    return render_table(res, EXPERIMENTS)


def write_plots(res: dict, outdir: str) -> list[str]:
    """PNG plots of every section that ran; [] with a message if matplotlib is missing."""
    return render_plots(res, outdir, EXPERIMENTS)


def finish(res: dict, args: argparse.Namespace) -> None:
    """Print the summary table; write --json and --png."""
    write_results(res, args, EXPERIMENTS)


def main(argv: list[str] | None = None, sections: tuple[str, ...] = SECTIONS, prog: str = "chc bench") -> int:
    """Entry point of the ``bench/`` scripts: ``sections`` is what the script runs."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser, sections)
    args = parser.parse_args(argv)
    try:
        check_outputs(parser, args)         # (chc bench: chc's entry point does it)
        res = run(args, sections)
        finish(res, args)
    except (BenchError, OutputPathError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return exit_code(res)


def exit_code(res: dict) -> int:
    """130 after a Ctrl-C (what finished was kept), else 0."""
    if "interrupted" in res["meta"]:
        progress(f"chc bench: {res['meta']['interrupted']}")
        return EXIT_INTERRUPTED
    return 0

