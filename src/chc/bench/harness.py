"""The harness every experiment of :mod:`chc.bench` shares: clocks, statistics,
rounds of runs, the run's metadata, the summary table, plots and the JSON.

Theory of operation
-------------------
An experiment module measures; this module decides how a measurement is taken
and reported, so that every figure is measured the same way.

* Clocks: :data:`now_ns` (wall, ``perf_counter_ns``) times a region;
  :data:`cpu_ns` (this thread's CPU time) tells a slow run from a descheduled one.
* Per-packet times: :func:`instrument` wraps an NF's ``process``; a packet's
  time is its own processing plus an equal share of what its batch cost beyond
  the ``process`` calls.  :func:`pcts` turns the times into the percentiles
  every section reports.
* Rounds: :func:`rounds` repeats every cell at least ``--repeat`` times (more
  while the run is shorter than ``min_time``) and rotates the model order, so no
  model always runs first; :func:`combine` keeps the best throughput run (other
  load only ever slows a run down) and the least disturbed latency run.
* Maintenance the root would drive between batches (:func:`maintain`: commit
  reports, clock-log pruning, §5.3/§5.4) runs outside timing.
* Reporting: each experiment is a :class:`Section` (how it runs, its rows of
  the one summary table, its plots); :func:`render_table`, :func:`render_plots`
  and :func:`write_results` go over the sections that ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from .. import packet as packet_module
from ..core.instance import Instance
from ..outfiles import OutputPathError, Outputs
from ..packet import Packet

if TYPE_CHECKING:                    # inputs and stores import this module
    from .inputs import BenchInput
    from .stores import StoreSpec

MODELS = ("T", "EO", "EO+C", "EO+C+NA")
PERCENTILES = (5, 25, 50, 75, 95)
MODEL_COLORS = {"T": "#4c72b0", "EO": "#dd8452", "EO+C": "#55a868", "EO+C+NA": "#c44e52"}
TABLE_HEAD = ("benchmark", "input", "store", "metric", "T", "EO", "EO+C", "EO+C+NA", "ratio")

now_ns = time.perf_counter_ns
cpu_ns = time.thread_time_ns          # CPU time of this thread: immune to being descheduled


class BenchError(Exception):
    """A benchmark cannot run as asked (bad option, missing input, unreachable store)."""


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- statistics ---------------------------------------------------------------------------

def percentile(sorted_vals: list[float] | array, q: float) -> float:
    """Linear-interpolation percentile (``q`` in 0..100) of sorted values."""
    n = len(sorted_vals)
    if n == 0:
        return float("nan")
    x = (n - 1) * q / 100.0
    i = int(x)
    if i >= n - 1:
        return float(sorted_vals[-1])
    return float(sorted_vals[i] + (sorted_vals[i + 1] - sorted_vals[i]) * (x - i))


def pcts(times_ns: array) -> dict[str, float]:
    s = sorted(times_ns)
    out = {f"p{q}_us": round(percentile(s, q) / 1e3, 3) for q in PERCENTILES}
    out["mean_us"] = round(sum(s) / len(s) / 1e3, 3) if s else float("nan")
    return out


def loads_option(ap: argparse.ArgumentParser, text: str, option: str = "--load") -> tuple[float, ...]:
    """Offered loads given as comma-separated fractions, each strictly between 0 and 1
    (an argparse usage error otherwise)."""
    try:
        loads = tuple(float(x) for x in text.split(","))
    except ValueError:
        ap.error(f"{option}: comma-separated fractions, got {text!r}")
    if not loads or any(not 0 < x < 1 for x in loads):
        ap.error(f"{option}: every load strictly between 0 and 1, got {text!r}")
    return loads


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)

def throughput(n: int, nbytes: int, total: int, cpu: int) -> dict[str, Any]:
    """The rate of a run of ``n`` packets (``nbytes``) in ``total`` wall and ``cpu`` CPU ns."""
    return {
        "packets": n, "bytes": nbytes, "seconds": round(total / 1e9, 6),
        "pps": round(n / total * 1e9, 1) if total else None,
        "gbps": round(nbytes * 8 / total, 4) if total else None,
        "pps_cpu": round(n / cpu * 1e9, 1) if cpu else None,
    }


# -- timing per packet ----------------------------------------------------------------------

def maintain(store: Any, clock: int) -> None:
    """What the root does between batches (§5.3, §5.4), outside timing."""
    store.commits()
    store.prune_below(clock)


def instrument(inst: Instance, sink: array) -> None:
    """Time every ``process`` call of ``inst`` into ``sink`` (ns)."""
    orig = inst.nf.process
    append = sink.append
    pc = now_ns

    def timed(pkt: Packet, ctx: Any) -> Any:
        t0 = pc()
        try:
            return orig(pkt, ctx)
        finally:
            append(pc() - t0)

    inst.nf.process = timed


# -- rounds of runs ---------------------------------------------------------------------------

def combine(thr: list[dict], lat: list[dict]) -> dict:
    """One cell from repeated runs: the best throughput run (load from other processes
    only ever slows a run down) and the least disturbed latency run (lowest mean).
    ``instr_us``: what timing every packet adds (latency-run mean minus the
    uninstrumented time per packet), when the two kinds of run are separate."""
    best = max(thr, key=lambda x: x["pps"] or 0)
    cell = dict(best)
    pps = best["pps"]
    cell["pps_runs"] = [x["pps"] for x in thr]
    cell["pps_median"] = round(statistics.median(x["pps"] for x in thr), 1)
    if all(x.get("pps_cpu") for x in thr):
        cell["pps_cpu"] = max(x["pps_cpu"] for x in thr)
    cell["us_per_pkt"] = round(1e6 / pps, 3) if pps else None
    quiet = min(lat, key=lambda x: x.get("mean_us", float("inf")))
    for key in [f"p{q}_us" for q in PERCENTILES] + ["mean_us"]:
        cell[key] = quiet.get(key)
    if thr is not lat and quiet.get("mean_us") is not None and pps:
        cell["instr_us"] = round(quiet["mean_us"] - 1e6 / pps, 3)
    return cell


def rounds(reps: int, min_time: float, n_models: int, cap: int = 25) -> Iterator[int]:
    """Rounds of runs over every model (yields the rotation of the model order):
    at least ``reps``, and more while less than ``min_time`` seconds went by, so
    short cells are repeated enough to find an undisturbed run."""
    started = time.perf_counter()
    r = 0
    while r < reps or (r < cap and time.perf_counter() - started < min_time):
        yield r % n_models
        r += 1



# -- sections -------------------------------------------------------------------------------

@dataclasses.dataclass
class RunContext:
    """What the runner set up for every section: options, inputs, stores."""

    args: argparse.Namespace
    conf: dict                       # QUICK or FULL with the options applied
    inputs: list[BenchInput]
    stores: list[StoreSpec]          # memory, and Redis (one server) if used
    redis_urls: list[str]            # every Redis server started or given ([] without Redis)
    min_time: float                  # rounds go on while a cell took less (0: exactly --repeat)

    @property
    def primary(self) -> BenchInput | None:
        """The input that stands for the run (trace2 if loaded): the ``nfs`` key, quick offload."""
        return next((i for i in self.inputs if i.name == "trace2"), self.inputs[0] if self.inputs else None)


@dataclasses.dataclass(frozen=True)
class Section:
    """One experiment as ``chc bench --sections`` names it."""

    name: str
    banner: str                                          # logged as the section starts
    run: Callable[[RunContext], dict]                    # the keys it adds to the results
    rows: Callable[[dict], list[tuple[str, ...]]]        # its rows of the summary table (none if absent)
    plots: Callable[[dict, Any, str], list[str]]         # (results, pyplot, outdir) -> PNG files written
    uses_inputs: bool = True                             # False: runs without reading a capture
    redis_servers: int = 1                               # private redis-servers it needs


# -- metadata ---------------------------------------------------------------------------------

def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def compiled_build() -> bool:
    """True when the Cython-compiled modules are loaded (setup.py), False for the pure-Python build."""
    return not packet_module.__file__.endswith(".py")


def meta(args: argparse.Namespace, conf: dict, sections: tuple[str, ...]) -> dict:
    try:
        import hiredis  # noqa: F401
        has_hiredis = True
    except ImportError:
        has_hiredis = False
    return {
        "chc": __version__, "python": platform.python_version(), "implementation": platform.python_implementation(),
        "machine": platform.machine(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_start": loadavg(), "hiredis": has_hiredis,
        # the compiled build (setup.py) or the pure-Python fallback
        "compiled": compiled_build(),
        "quick": bool(args.quick), "sections": list(sections), "batch": args.batch, "packets_limit": args.packets,
        **{k: v for k, v in conf.items()},
    }


# -- output ------------------------------------------------------------------------------------

def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render_table(res: dict, sections: Sequence[Section]) -> str:
    """The one summary table of a run (every section that ran)."""
    head = TABLE_HEAD
    rows = [row for section in sections for row in section.rows(res)]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), line]
    for row in rows:
        if row[0] and out[-1] != line and len(out) > 2:
            out.append("")
        out.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(out)


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed), or None if
    matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plots_available() -> bool:
    """Can :func:`render_plots` draw (is matplotlib installed)?"""
    return _pyplot() is not None


def render_plots(res: dict, outdir: str, sections: Sequence[Section]) -> list[str]:
    """PNG plots of every section that ran into ``outdir`` (made if missing, with its
    missing folders, as the bench scripts' outputs are); [] with a message if
    matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        progress("chc bench: matplotlib is not installed; no plots (pip install matplotlib)")
        return []
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as exc:          # (checked at the start; what the check cannot see, e.g. root in /proc)
        raise OutputPathError(f"{outdir}: cannot write ({exc.strerror or exc})") from None
    files = []
    for section in sections:
        files.extend(section.plots(res, plt, outdir))
    return files


def save_plot(fig: Any, outdir: str, name: str) -> str:
    import matplotlib.pyplot as plt
    path = os.path.join(outdir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(res: dict, args: argparse.Namespace, sections: Sequence[Section]) -> None:
    """Print the summary table; write --json and --png."""
    print(render_table(res, sections))
    print(f"\n{res['meta']['elapsed_s']} s; load average {res['meta']['loadavg_start']} -> "
          f"{res['meta']['loadavg_end']} ({res['meta']['cpus']} CPUs)")
    if args.json:
        # (renamed into place as chc run's outputs: a failed write keeps an earlier file)
        folder = os.path.dirname(args.json)
        if folder:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise OutputPathError(f"{args.json}: cannot write ({exc.strerror or exc})") from None
        with Outputs().transaction() as out:
            out.open(args.json).write(json.dumps(res, indent=1).encode() + b"\n")
    if args.png:
        files = render_plots(res, args.png, sections)
        if files:
            progress(f"plots: {', '.join(files)}")
