"""Figure 12 / R1 experiment (§7.3 "State availability"): one NAT whose state is
all in the store (CHC) against the same NAT keeping its state locally and
checkpointing it FTMB-style, the checkpoint emulated as a stall.

Theory of operation
-------------------
The paper could not run FTMB, so it emulated FTMB's checkpointing as "a queuing
delay of 5000 µs after every 200 ms" and reported per-packet latency at 50%
load: FTMB's p75 25.5 µs, 6x CHC's (median 2.7x).  Here, in one run:

* **Service times, measured.**  The NAT alone over the bundled ``lan`` capture
  (``traces/pathspider/lan-2012.pcap.gz``, IP frames only, configs of
  ``examples/paper_chain.yaml``; ``--packets`` limits it), timed per packet
  exactly as Figures 8/10 time it (:func:`chc.bench.fig8_fig10.run_nf`: the
  ``process`` call, store operations and waits included, plus an equal share of
  its batch's flush and bookkeeping).  **CHC** is model ``EO+C+NA`` on the
  in-process memory store: every state update goes to the store (per-flow
  state cached and flushed per batch, non-blocking ops), so there is nothing to
  checkpoint.  **FTMB** is model ``T``: state in the instance, the NF's work
  alone.  ``--rounds`` rounds, the model order rotated; a packet's service time
  is its median over the rounds (a descheduled packet in one round is the
  machine, not the NF).  The first batch (64 packets) of every run is left out:
  it holds a fresh instance's first calls, paid once by a running NAT.
* **Latency, simulated.**  The capture's own timestamps cannot be used: it is
  an hour of a quiet LAN (~17 packets/s), far below any load that queues.  So
  arrivals are paced at the chosen load instead, Poisson by default
  (``--arrivals constant`` for even spacing), seeded, over ``--seconds`` of
  input time (default 2 s: ten checkpoint periods, nine stalls).  The offered rate is
  ``load x`` the measured capacity (1 / mean service time) of the slower
  system, the same arrivals for both (``--rate-basis own``: each system at
  ``load x`` its own capacity).  The k-th arrival needs the measured service
  time of packet ``k mod N`` (the capture's times reused in order when the
  window needs more packets than it has).  One FIFO server per system; a
  packet's latency is its queueing plus its service.
* **The checkpoint stall.**  For FTMB only: at every ``--period-ms`` (200) of
  input time the instance checkpoints, finishing the packet in service first,
  and serves nothing for ``--stall-us`` (5,000); packets arriving meanwhile
  queue.  A stall's backlog drains at ``1 - utilization`` of real time, so at
  50% utilization about ``2 x 5 ms`` of every 200 ms (5% of the packets) is
  affected: ``delayed_share`` counts the packets served in a busy period that
  contained a stall.

Reported per load: p5/p25/p50/p75/p95 (and p99, mean) latency per system,
FTMB/CHC at p50, p75, p95 and p99, each system's utilization, the offered and
the measured packets/s, and the build (compiled or pure Python).
"""

from __future__ import annotations

import argparse
import random
import statistics
from array import array
from collections.abc import Sequence
from typing import Any

from .fig8_fig10 import _warm, run_nf
from .harness import (
    PERCENTILES,
    compiled_build,
    fmt,
    loads_option,
    pcts,
    percentile,
    progress,
    ratio,
    rounds,
    save_plot,
)
from .inputs import BenchInput, lan_input
from .r2_move import write_outputs
from .stores import StoreSpec

SYSTEMS = {"chc": "EO+C+NA", "ftmb": "T"}       # system -> state model of the one NAT instance
LABELS = {"chc": "CHC (state in the store)", "ftmb": "FTMB-style (checkpoint stalls)"}
COLORS = {"chc": "#c44e52", "ftmb": "#4c72b0"}
PAPER = {"load": 0.5, "ftmb_p75_us": 25.5, "ratio_p75": 6.0, "ratio_p50": 2.7,
         "checkpoint": "5,000 µs queuing delay every 200 ms (FTMB's Figure 6)"}
BATCH = 64


def service_times(inp: BenchInput, packets: int | None, n_rounds: int, batch: int = BATCH,
                  systems: dict[str, str] = SYSTEMS, tag: str = "fig12") -> dict[str, array]:
    """Per system (name -> state model of the NAT), every packet's service time (ns,
    input order) after the first batch: its median over ``n_rounds`` runs, the
    systems' order rotated from round to round."""
    names = list(systems)
    _warm(inp, "nat", tuple(systems.values()), batch)
    runs: dict[str, list[array]] = {name: [] for name in names}
    spec = StoreSpec("memory", packet_cap=packets)
    for r, rot in enumerate(rounds(n_rounds, 0.0, len(names))):
        for name in names[rot:] + names[:rot]:
            progress(f"{tag}: round {r + 1}/{n_rounds}, {name} ({systems[name]}) ...")
            sink = array("d")
            run_nf(inp, "nat", systems[name], spec, batch, latency=True, sink=sink)
            # The first batch is a fresh instance's first calls (about 1 ms on the
            # first packet): a running NAT pays that once, not once per cycle of
            # the reused times, so it is left out.
            runs[name].append(sink[batch:])
    out = {}
    for name, sinks in runs.items():
        if len({len(s) for s in sinks}) != 1:
            raise AssertionError(f"{name}: rounds timed different packet counts")
        out[name] = array("d", (statistics.median(v) for v in zip(*sinks, strict=True)))
    return out


def arrivals(pps: float, seconds: float, kind: str = "poisson", seed: int = 1) -> array:
    """Arrival times (ns) at ``pps`` over ``seconds`` of input time, from 0."""
    horizon = seconds * 1e9
    out = array("d")
    if kind == "constant":
        gap = 1e9 / pps
        out.extend(i * gap for i in range(int(horizon / gap)))
        return out
    rng = random.Random(seed)
    t = rng.expovariate(pps) * 1e9
    while t < horizon:
        out.append(t)
        t += rng.expovariate(pps) * 1e9
    return out


def fifo(arr: Sequence[float], service: Sequence[float], period_ns: float = 0.0,
         stall_ns: float = 0.0) -> tuple[array, int, int]:
    """One FIFO server: every packet's latency (queueing + service, ns), the stalls
    taken and the packets served in a busy period that contained a stall.

    The k-th arrival needs ``service[k % len(service)]``.  With ``period_ns`` the
    server checkpoints at every multiple of it: it finishes the packet in service,
    then serves nothing for ``stall_ns`` (an idle server stalls on time)."""
    lat = array("d")
    n = len(service)
    free = 0.0                         # when the server is next free
    next_stall = period_ns if period_ns > 0 else float("inf")
    stalls = delayed = 0
    stalled_busy = False               # the current busy period contained a stall
    for k, a in enumerate(arr):
        if a >= free:
            stalled_busy = False       # the server went idle: the stall's backlog is gone
        start = max(a, free)
        while start >= next_stall:
            # A checkpoint fell due before this packet starts: it begins when the
            # packet in service ends (or on time if the server is idle) and holds
            # the queue; this packet may arrive during it.
            free = max(next_stall, free) + stall_ns
            next_stall += period_ns
            stalls += 1
            start = max(a, free)
            stalled_busy = stalled_busy or a < free
        free = start + service[k % n]
        lat.append(free - a)
        delayed += stalled_busy
    return lat, stalls, delayed


def _summary(svc: array) -> dict[str, Any]:
    mean = sum(svc) / len(svc)
    return {**pcts(svc), "packets": len(svc), "capacity_pps": round(1e9 / mean, 1)}


def measure(inp: BenchInput, packets: int | None = None, loads: Sequence[float] = (0.5,), n_rounds: int = 3,
            seconds: float = 2.0, period_ms: float = 200.0, stall_us: float = 5000.0, kind: str = "poisson",
            seed: int = 1, basis: str = "slower", batch: int = BATCH) -> dict[str, Any]:
    """Service times measured, then the queue simulated at every load; the report dict."""
    svc = service_times(inp, packets, n_rounds, batch)
    means = {name: sum(v) / len(v) for name, v in svc.items()}
    slowest = max(means.values())
    res: dict[str, Any] = {
        "build": "compiled" if compiled_build() else "pure-python",
        "input": {"name": inp.name, "path": inp.path, "ip_packets_timed": len(svc["chc"]),
                  "nat_config": inp.configs.get("nat")},
        "models": dict(SYSTEMS), "store": "memory (in-process)", "rounds": n_rounds, "batch": batch,
        "service_us": {name: _summary(v) for name, v in svc.items()},
        "checkpoint": {"period_ms": period_ms, "stall_us": stall_us, "systems": ["ftmb"]},
        "arrivals": {"kind": kind, "seed": seed, "seconds": seconds, "rate_basis": basis},
        "loads": {}, "paper": PAPER, "_series": {},
    }
    for load in loads:
        lats: dict[str, array] = {}
        arrs: dict[str, array] = {}
        row: dict[str, Any] = {"load": load}
        shared = arrivals(load * 1e9 / slowest, seconds, kind, seed) if basis == "slower" else None
        for name, times in svc.items():
            arr = shared if shared is not None else arrivals(load * 1e9 / means[name], seconds, kind, seed)
            stall = name == "ftmb"
            lat, stalls, delayed = fifo(arr, times, period_ms * 1e6 if stall else 0.0, stall_us * 1e3 if stall else 0.0)
            lats[name] = lat
            arrs[name] = arr
            # p99 beside the harness's percentiles: at 50% load a stall's backlog is
            # about 5% of the packets, so p95 may miss it where p99 cannot.
            row[name] = {**pcts(lat), "p99_us": round(percentile(sorted(lat), 99) / 1e3, 3),
                         "packets": len(lat), "offered_pps": round(len(lat) / seconds, 1),
                         "utilization": round(len(lat) / seconds * means[name] / 1e9, 4),
                         "stalls": stalls, "delayed_share": round(delayed / len(lat), 4) if lat else None}
        for q in (50, 75, 95, 99):
            row[f"ratio_p{q}"] = ratio(row["ftmb"][f"p{q}_us"], row["chc"][f"p{q}_us"])
        key = f"{load:.0%}"
        res["loads"][key] = row
        res["_series"][key] = {"latency": lats, "arrivals": arrs}
    return res


def _label(load_key: str, row: dict, name: str) -> str:
    return f"{LABELS[name]}, {load_key} load (utilization {row[name]['utilization']:.0%})"


def plot(res: dict, outdir: str) -> str:
    """Left: the latency CDF of both systems at every load; right: latency against
    arrival time over the first checkpoint periods at the load nearest the paper's 50%."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    styles = ("-", "--", ":")
    for i, (key, series) in enumerate(res["_series"].items()):
        row = res["loads"][key]
        for name, lat in series["latency"].items():
            s = sorted(lat)
            step = max(1, len(s) // 2000)            # a 2,000-point CDF is smooth enough
            xs = [v / 1e3 for v in s[::step]]
            a.plot(xs, [j * step / len(s) for j in range(len(xs))], styles[i % 3], color=COLORS[name],
                   label=_label(key, row, name))
    a.set_xscale("log")
    a.set_xlabel("per-packet latency (µs)")
    a.set_ylabel("CDF")
    a.axhline(0.75, color="0.6", lw=0.6)
    a.set_title(f"R1: NAT, {res['build']} build")
    a.legend(fontsize=7, loc="lower right")
    key = min(res["_series"], key=lambda k: abs(res["loads"][k]["load"] - PAPER["load"]))
    period = res["checkpoint"]["period_ms"]
    until = min(res["arrivals"]["seconds"] * 1e3, 2.5 * period)
    series = res["_series"][key]
    for name in ("ftmb", "chc"):                     # CHC on top: FTMB's stalls stand out anyway
        lat = series["latency"][name]
        pts = [(t / 1e6, v / 1e3) for t, v in zip(series["arrivals"][name], lat, strict=True) if t / 1e6 <= until]
        b.plot([p[0] for p in pts], [p[1] for p in pts], color=COLORS[name], lw=0.6, label=LABELS[name])
    b.set_yscale("log")
    b.set_xlabel("arrival time (ms of input)")
    b.set_ylabel("per-packet latency (µs)")
    b.set_title(f"{key} load: a {res['checkpoint']['stall_us']:g} µs stall every {period:g} ms")
    b.legend(fontsize=7)
    return save_plot(fig, outdir, "fig12_r1.png")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="Figure 12 / R1: NAT latency, CHC (state in the store) against "
                                             "FTMB-style checkpoint stalls")
    ap.add_argument("--packets", type=int, help="IP packets of the lan capture timed (default all, ~62,000)")
    ap.add_argument("--load", default="0.5", help="offered load(s), comma-separated fractions (default 0.5)")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds; per-packet medians (default 3)")
    ap.add_argument("--seconds", type=float, default=2.0,
                    help="input time simulated (default 2.0: ten checkpoint periods)")
    ap.add_argument("--period-ms", type=float, default=200.0, help="FTMB checkpoint period (default 200)")
    ap.add_argument("--stall-us", type=float, default=5000.0, help="FTMB checkpoint stall (default 5000)")
    ap.add_argument("--arrivals", choices=("poisson", "constant"), default="poisson",
                    help="arrival process at the offered rate (default poisson)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the Poisson arrivals (default 1)")
    ap.add_argument("--rate-basis", choices=("slower", "own"), default="slower",
                    help="slower: one offered rate for both, load x the slower system's capacity (default); "
                         "own: each system at load x its own capacity")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--png", metavar="DIR", help="write fig12_r1.png into DIR")
    args = ap.parse_args(argv)
    loads = loads_option(ap, args.load)
    if (args.rounds < 1 or args.seconds <= 0
            or args.period_ms <= 0 or args.stall_us < 0 or (args.packets is not None and args.packets < 100)):
        ap.error("0 < --load < 1, --rounds at least 1, --seconds and --period-ms positive, --stall-us >= 0, "
                 "--packets at least 100")
    inp = lan_input()
    progress(f"fig12: NAT over {inp.name} ({args.packets or inp.packets:,} IP packets), {args.rounds} rounds ...")
    res = measure(inp, args.packets, loads, args.rounds, args.seconds, args.period_ms, args.stall_us,
                  args.arrivals, args.seed, args.rate_basis)
    svc = res["service_us"]
    print(f"Figure 12 / R1: NAT, {res['build']} build, memory store; service time per packet (median of "
          f"{args.rounds} rounds): CHC {svc['chc']['mean_us']:.2f} µs ({svc['chc']['capacity_pps']:,.0f} pps), "
          f"FTMB-style {svc['ftmb']['mean_us']:.2f} µs ({svc['ftmb']['capacity_pps']:,.0f} pps)")
    print(f"  {args.arrivals} arrivals over {args.seconds:g} s; FTMB stalls {args.stall_us:g} µs every "
          f"{args.period_ms:g} ms")
    head = "".join(f"{f'p{q} µs':>10}" for q in PERCENTILES)
    print(f"  {'load':<6}{'system':<8}{'pps':>10}{'util':>7}{head}{'delayed':>9}")
    for key, row in res["loads"].items():
        for name in SYSTEMS:
            r = row[name]
            print(f"  {key:<6}{name:<8}{r['offered_pps']:>10,.0f}{r['utilization']:>7.0%}"
                  + "".join(f"{fmt(r[f'p{q}_us'], 2):>10}" for q in PERCENTILES) + f"{r['delayed_share']:>9.1%}")
        print(f"  {key:<6}FTMB/CHC  " + "  ".join(f"p{q} {fmt(row[f'ratio_p{q}'], 2)}x" for q in (50, 75, 95, 99))
              + f"   (p99: CHC {fmt(row['chc']['p99_us'], 1)} µs, FTMB {fmt(row['ftmb']['p99_us'], 1)} µs)")
    print("  paper (50% load): FTMB p75 25.5 µs, 6x CHC's; median 2.7x")
    write_outputs(res, args, plot)
    return {k: v for k, v in res.items() if not k.startswith("_")}
