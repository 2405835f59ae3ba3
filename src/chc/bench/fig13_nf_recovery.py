"""Figure 13 experiment (§7.3 R6 "NF Failure"): a NAT instance crashes; per-packet
processing time in 500 µs windows before, during and after its failover.

Theory of operation
-------------------
The paper fails one NAT instance (non-blocking updates, the XOR vector recovering
the ones not yet committed; "the failover container is launched immediately")
and plots the mean processing time of packets over 500 µs windows at 30% and
50% load: it spikes to over 4 ms and is back to normal after 4.5 ms and 5.6 ms.
Here the failover is the sim runtime's (:meth:`chc.runtime.sim.SimRuntime.crash`,
§5.4), run in virtual time whose per-packet costs are measured:

* **Service times, measured.**  The NAT alone over the IP packets of the bundled
  ``lan`` capture (``examples/paper_chain.yaml``'s NAT config; ``--packets``
  limits it), model ``EO+C+NA`` on the in-process memory store, timed per packet
  as Figures 8/10/12 time it (:func:`chc.bench.fig12_r1.service_times`: the
  ``process`` call with its store operations plus an equal share of its batch's
  flush; the median over ``--rounds`` rounds; the first batch, a fresh
  instance's first calls, left out).  The build (compiled or pure Python) is in
  the report: the times are this machine's and this build's.  ``--service-us``
  gives every packet one fixed cost instead (a what-if; the tests use it, since a
  measured outlier on a busy machine moves the baseline the spike is compared to).
* **The chain, simulated.**  A one-vertex chain, that NAT alone (the paper
  fails a NAT; no portscan detector, whose timers would keep packets logged),
  model ``EO+C+NA`` on the memory store, in :class:`~chc.runtime.sim.SimRuntime`.
  Its instances (the first and the failover one) are FIFO servers whose k-th
  packet, in the logical instance's processing order (replayed ones included),
  costs the k-th measured service time, cycling: a replayed packet costs what a
  processed one does, since the replay runs the same NAT code against the store.
  Input: the capture's IP packets paced at ``load x`` the measured capacity
  (1 / mean service time) with ``pps`` pacing (the capture's own timestamps are
  a quiet LAN, ~17 packets/s), ``--before-ms`` of input before the crash and
  ``--after-ms`` after it.  Commit reports reach the root ``--commit-us`` after
  the store applies an update (default 10 µs, one rack): that is how long a
  processed packet stays in the root's log, hence what a failover replays from.
  The crashed instance's updates already sent keep reaching the store until it
  is fenced at detection, and their commits keep deleting packets from the log:
  a crash fires at a batch boundary, after the instance flushed its batch, so
  on this reliable store link replay is empty unless commits take longer than
  detection (``--commit-us`` above the detection time shows the replay's cost).
* **The crash.**  Scenario action ``crash`` on ``nat[0]`` at input time
  ``--before-ms``, heartbeats every ``--heartbeat-us`` (default 1,000 µs),
  declared dead after ``--misses`` (3) missed ones: detection takes until the
  ``misses``-th heartbeat period after the last one seen, 2-3 ms.  (The runtime's
  own default, 3 x 20 µs, detects in 40-60 µs: the failover then ends inside
  the first 500 µs window, where the service times' noise hides it; the
  millisecond heartbeat is what a controller watching every instance keeps up,
  and what a 500 µs window resolves.)  Then the failover instance starts
  at the detection time (launched immediately, as the paper assumes), replays the
  packets the root still logs (costing their service times), takes what was
  queued at the dead instance, and serves new arrivals after them.

Per packet: its arrival time at the NAT (the pacer's, reproduced by a second
pacer over the same records) and its exit time (the output packet's ``vt``,
emitted by ``SimRuntime.run``); its time is exit minus arrival.  Windows of
``--window-us`` (500) are aligned on the crash (a window starts at the crash),
over arrival time.  Reported per load:

* ``baseline_us``: the mean time of packets arriving before the crash;
  ``threshold_us``: ``baseline x (1 + --tolerance)`` (10%).
* ``peak_window_us``: the highest mean of a window starting between the crash and
  the failover instance's catching up (later windows hold no packet that waited
  for the failover), and ``peak_packet_us`` the slowest packet arriving then.
* ``recovery_ms``: from the crash to the start of the first window after the peak
  whose mean is back within the threshold (a multiple of the window, like the
  paper's reading of its plot); ``windows_above_after``: windows later above it.
* ``drained_us``: finer, from the crash to the arrival of the first packet after
  that slowest one whose time is within the tolerance of the pre-crash median:
  the failover instance's backlog is gone.
* The failover event's ``detect_ns`` (heartbeats), ``replayed`` packets and
  ``replay_ns`` (detection to caught up), ``lost_in_queue``, updates lost in
  flight and re-applied, and ``recovery_ns`` (crash to caught up), so detection
  and replay costs are apart; every input packet is output at most once.
"""

from __future__ import annotations

import argparse
import math
import statistics
from array import array
from collections.abc import Sequence
from typing import Any

from ..runtime.pacing import Pacer
from ..runtime.sim import SimRuntime
from ..runtime.simnet import LinkModel
from ..scenario import Event
from ..spec import Chain, parse_spec
from .fig12_r1 import BATCH, service_times
from .harness import compiled_build, fmt, loads_option, progress, save_plot
from .inputs import BenchInput, lan_input
from .r2_move import write_outputs

VERTEX = "nat"
MODEL = "EO+C+NA"
PAPER = {"recovery_ms": {"30%": 4.5, "50%": 5.6}, "spike": "over 4 ms", "window_us": 500,
         "note": "failover container launched immediately; mean over 500 µs windows of packets at the new instance"}
COLORS = ("#4c72b0", "#c44e52", "#55a868", "#dd8452")
FAILOVER_FIELDS = ("crashed_vt", "detected_vt", "detect_ns", "replayed", "lost_in_queue", "updates_lost_in_flight",
                   "updates_emulated", "ops_applied_during_replay", "caught_up_vt", "recovery_ns")


def nat_chain(config: dict) -> Chain:
    """The NAT alone, one instance, with ``config`` (the paper chain's NAT's)."""
    return parse_spec({"name": "fig13-nat", "vertices": {VERTEX: {"nf": "nat", "config": config}}, "edges": []})


class MeasuredService:
    """A delay model (``sample()`` in ns) giving measured service times in order,
    cycling: shared by the crashed and the failover instance, so the logical NAT's
    k-th processed packet costs the k-th time whichever instance runs it."""

    spec = "measured"

    def __init__(self, times_ns: Sequence[float]) -> None:
        self.times = [int(t) for t in times_ns]
        self.k = 0

    def sample(self) -> int:
        t = self.times[self.k % len(self.times)]
        self.k += 1
        return t


def sim_records(inp: BenchInput, n: int) -> list[tuple[int, bytes]]:
    """The first ``n`` IP packets of ``inp`` as ``(timestamp ns, frame)`` records."""
    out: list[tuple[int, bytes]] = []
    for batches in inp.chunks(BATCH, copy=True, limit=n):
        for b in batches:
            out.extend((p.ts, bytes(p.data)) for p in b)
    return out


def run_crash(chain: Chain, records: list[tuple[int, bytes]], service_ns: Sequence[float], pps: float,
              crash_ns: int, heartbeat_us: float, misses: int, commit_us: float,
              batch: int) -> tuple[array, dict[int, int], int, dict]:
    """One run: arrival vt per input index, exit vt per output index, duplicate outputs,
    and the failover event."""
    events = [Event("crash", f"{VERTEX}[0]", {"heartbeat_us": heartbeat_us, "misses": misses},
                    at_time_ns=crash_ns)]
    network = {"commits": LinkModel(f"const:{commit_us:g}")} if commit_us > 0 else None
    mean_us = sum(service_ns) / len(service_ns) / 1e3
    # The const delay only makes the runtime run in virtual time; every instance's
    # delay is then replaced by the measured sequence (the failover one by the hook).
    rt = SimRuntime(chain, model=MODEL, batch_size=batch, pacer=Pacer("pps", pps),
                    delays={VERTEX: f"const:{mean_us:.6f}"}, events=events, network=network)
    svc = MeasuredService(service_ns)

    def measured(inst: Any) -> None:
        inst.delay = svc

    for inst in rt._all_instances():
        measured(inst)
    rt.instance_hooks.append(measured)
    exits: dict[int, int] = {}
    dups = 0

    def emit(pkts: list) -> None:
        nonlocal dups
        for p in pkts:
            if p.index in exits:
                dups += 1
            exits[p.index] = p.vt

    rt.run(records, emit=emit)
    pacer = Pacer("pps", pps)               # the runtime's arrival times, reproduced
    arrivals = array("q", (pacer.arrival(ts, len(data)) for ts, data in records))
    fail = [e for e in rt.events_log if e["kind"] == "failover"]
    if len(fail) != 1:
        raise AssertionError(f"fig13: expected one failover, got {[e['kind'] for e in rt.events_log]}")
    return arrivals, exits, dups, fail[0]


def windows(arrivals: Sequence[int], exits: dict[int, int], origin: float, width_ns: float) -> list[list[float]]:
    """``[start (ms from origin), mean time (µs), packets]`` per window of arrival time,
    windows aligned on ``origin``; packets without an exit (dropped) are left out."""
    sums: dict[int, list[float]] = {}
    for i, a in enumerate(arrivals):
        e = exits.get(i)
        if e is None:
            continue
        w = sums.setdefault(math.floor((a - origin) / width_ns), [0.0, 0])
        w[0] += e - a
        w[1] += 1
    return [[round(k * width_ns / 1e6, 4), round(s / n / 1e3, 3), n] for k, (s, n) in sorted(sums.items())]


def analyze(arrivals: Sequence[int], exits: dict[int, int], fail: dict, width_ns: float,
            tolerance: float) -> dict[str, Any]:
    """Baseline, peak and recovery of one run (see the module docstring)."""
    crash = fail["crashed_vt"]
    times = [(a, exits[i] - a) for i, a in enumerate(arrivals) if i in exits]
    pre = [t for a, t in times if a < crash]
    post = [(a, t) for a, t in times if a >= crash]
    if not pre or not post:
        raise AssertionError("fig13: packets are needed both before and after the crash")
    baseline = sum(pre) / len(pre)
    threshold = baseline * (1 + tolerance)
    wins = windows(arrivals, exits, crash, width_ns)
    after = [w for w in wins if w[0] >= 0]
    # The spike is looked for among the packets that arrived while the NAT was down
    # (crash to caught up): later, a slow window is the service times' own tail.
    outage_ms = (fail["caught_up_vt"] - crash) / 1e6
    down = [j for j in range(len(after)) if after[j][0] <= outage_ms]
    peak_at = max(down, key=lambda j: after[j][1])
    back = next((j for j in range(peak_at, len(after)) if after[j][1] * 1e3 <= threshold), None)
    waited = [j for j in range(len(post)) if post[j][0] <= fail["caught_up_vt"]] or [0]
    slowest = max(waited, key=lambda j: post[j][1])
    normal = statistics.median(pre) * (1 + tolerance)
    drained = next((post[j][0] for j in range(slowest, len(post)) if post[j][1] <= normal), None)
    replay_ns = fail["caught_up_vt"] - fail["detected_vt"]
    return {
        "baseline_us": round(baseline / 1e3, 3), "baseline_median_us": round(statistics.median(pre) / 1e3, 3),
        "threshold_us": round(threshold / 1e3, 3),
        "pre_crash_worst_window_us": max((w[1] for w in wins if w[0] < 0), default=None),
        "peak_window_us": after[peak_at][1], "peak_window_ms": after[peak_at][0],
        "peak_packet_us": round(post[slowest][1] / 1e3, 3),
        "recovery_ms": after[back][0] if back is not None else None,
        "windows_above_after": (sum(1 for w in after[back:] if w[1] * 1e3 > threshold) if back is not None
                                else None),
        "drained_us": round((drained - crash) / 1e3, 3) if drained is not None else None,
        "failover": {**{k: fail.get(k) for k in FAILOVER_FIELDS}, "replay_ns": int(replay_ns)},
        "windows": wins,
    }


def measure(inp: BenchInput, packets: int | None = None, loads: Sequence[float] = (0.3, 0.5), n_rounds: int = 3,
            before_ms: float = 10.0, after_ms: float = 30.0, window_us: float = 500.0, heartbeat_us: float = 1000.0,
            misses: int = 3, commit_us: float = 10.0, batch: int = 1, tolerance: float = 0.1,
            service_us: float | None = None) -> dict[str, Any]:
    """Service times measured (or ``service_us`` for every packet), then one crash
    simulated per load; the report dict."""
    if service_us is None:
        svc = service_times(inp, packets, n_rounds, systems={"chc": MODEL}, tag="fig13")["chc"]
    else:
        svc = [service_us * 1e3]
    mean = sum(svc) / len(svc)
    capacity = 1e9 / mean
    chain = nat_chain(inp.configs.get(VERTEX) or {})
    res: dict[str, Any] = {
        "build": "compiled" if compiled_build() else "pure-python",
        "input": {"name": inp.name, "path": inp.path, "ip_packets_timed": len(svc),
                  "nat_config": inp.configs.get(VERTEX)},
        "model": MODEL, "store": "memory (in-process)", "rounds": n_rounds,
        "service_us": {"mean_us": round(mean / 1e3, 3), "p50_us": round(statistics.median(svc) / 1e3, 3),
                       "capacity_pps": round(capacity, 1),
                       "source": "measured" if service_us is None else "fixed (--service-us)"},
        "crash": {"target": f"{VERTEX}[0]", "at_ms": before_ms, "heartbeat_us": heartbeat_us, "misses": misses},
        "sim": {"pacing": "pps", "before_ms": before_ms, "after_ms": after_ms, "batch": batch,
                "commit_us": commit_us, "window_us": window_us, "tolerance": tolerance},
        "loads": {}, "paper": PAPER,
    }
    for load in loads:
        pps = load * capacity
        n = math.ceil(pps * (before_ms + after_ms) / 1e3)
        records = sim_records(inp, n)
        if len(records) < n:
            raise ValueError(f"fig13: {load:.0%} load over {before_ms + after_ms:g} ms needs {n:,} packets; "
                             f"the capture has {len(records):,} (shorten --after-ms)")
        progress(f"fig13: {load:.0%} load, {pps:,.0f} pps, {n:,} packets, crash at {before_ms:g} ms ...")
        arrivals, exits, dups, fail = run_crash(chain, records, svc, pps, int(before_ms * 1e6), heartbeat_us,
                                                misses, commit_us, batch)
        row = {"load": load, "offered_pps": round(pps, 1), "packets": n, "outputs": len(exits),
               "duplicates": dups, "dropped": n - len(exits),
               **analyze(arrivals, exits, fail, window_us * 1e3, tolerance)}
        res["loads"][f"{load:.0%}"] = row
    return res


def plot(res: dict, outdir: str) -> str:
    """Window means against arrival time from the crash, one line per load, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4))
    for color, (key, row) in zip(COLORS, res["loads"].items(), strict=False):
        w = row["windows"]
        # Each window drawn as a step over its width, as a mean over it is.
        paper = PAPER["recovery_ms"].get(key, "-")
        ax.step([x[0] for x in w], [x[1] for x in w], where="post", color=color,
                label=f"{key} load: back in {fmt(row['recovery_ms'], 1)} ms (paper {paper})")
        ax.axhline(row["baseline_us"], color=color, lw=0.6, ls=":")
        ax.axvline(row["failover"]["detect_ns"] / 1e6, color=color, lw=0.6, ls="--")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel(f"arrival time from the crash (ms; {res['sim']['window_us']:g} µs windows)")
    ax.set_ylabel("mean per-packet time (µs)")
    ax.set_title(f"Figure 13: NAT failover, {res['build']} build (crash: solid; detected: dashed)")
    ax.legend(fontsize=8)
    return save_plot(fig, outdir, "fig13_nf_recovery.png")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="Figure 13: per-packet time around a NAT instance's failover")
    ap.add_argument("--packets", type=int, help="IP packets of the lan capture timed (default all, ~62,000)")
    ap.add_argument("--loads", default="0.3,0.5", help="offered loads, comma-separated fractions (default 0.3,0.5)")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds; per-packet medians (default 3)")
    ap.add_argument("--before-ms", type=float, default=10.0, help="input time before the crash (default 10)")
    ap.add_argument("--after-ms", type=float, default=30.0, help="input time after the crash (default 30)")
    ap.add_argument("--window-us", type=float, default=500.0, help="averaging window (default 500, the paper's)")
    ap.add_argument("--heartbeat-us", type=float, default=1000.0, help="heartbeat period (default 1000)")
    ap.add_argument("--misses", type=int, default=3, help="missed heartbeats that declare a crash (default 3)")
    ap.add_argument("--commit-us", type=float, default=10.0,
                    help="commit-report latency to the root: how long processed packets stay logged (default 10)")
    ap.add_argument("--batch", type=int, default=1,
                    help="sim input batch (default 1: commit reports are delivered at batch boundaries, so a "
                         "larger batch keeps more packets logged and replayed)")
    ap.add_argument("--tolerance", type=float, default=0.1, help="'normal': within this of the baseline (0.1)")
    ap.add_argument("--service-us", type=float,
                    help="every packet costs this many µs instead of measured service times (a what-if, and "
                         "what the tests use: the outcome then depends on no machine's timing)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--png", metavar="DIR", help="write fig13_nf_recovery.png into DIR")
    args = ap.parse_args(argv)
    loads = loads_option(ap, args.loads, "--loads")
    if (args.rounds < 1 or args.before_ms <= 0
            or args.after_ms <= 0 or args.window_us <= 0 or args.heartbeat_us <= 0 or args.misses < 1
            or args.commit_us < 0 or args.batch < 1 or args.tolerance < 0
            or (args.packets is not None and args.packets < 100)
            or (args.service_us is not None and args.service_us <= 0)):
        ap.error("--rounds, --misses, --batch at least 1; --before-ms, --after-ms, --window-us, "
                 "--heartbeat-us, --service-us positive; --commit-us, --tolerance >= 0; --packets at least 100")
    inp = lan_input()
    try:
        res = measure(inp, args.packets, loads, args.rounds, args.before_ms, args.after_ms, args.window_us,
                      args.heartbeat_us, args.misses, args.commit_us, args.batch, args.tolerance, args.service_us)
    except ValueError as exc:
        ap.error(str(exc))
    svc = res["service_us"]
    print(f"Figure 13: NAT failover, {res['build']} build, {MODEL} on the memory store; service time "
          f"{svc['mean_us']:.2f} µs mean, {svc['source']} ({svc['capacity_pps']:,.0f} pps); "
          f"heartbeat {args.heartbeat_us:g} µs x "
          f"{args.misses}; commits {args.commit_us:g} µs; {args.window_us:g} µs windows")
    print(f"  {'load':<6}{'pps':>9}{'base µs':>9}{'peak µs':>10}{'detect µs':>10}{'replayed':>9}{'replay µs':>10}"
          f"{'caught µs':>10}{'drained µs':>11}{'back ms':>8}{'paper ms':>9}")
    for key, row in res["loads"].items():
        f = row["failover"]
        print(f"  {key:<6}{row['offered_pps']:>9,.0f}{row['baseline_us']:>9.2f}{row['peak_window_us']:>10.2f}"
              f"{f['detect_ns'] / 1e3:>10.1f}{f['replayed']:>9}{f['replay_ns'] / 1e3:>10.1f}"
              f"{f['recovery_ns'] / 1e3:>10.1f}{fmt(row['drained_us'], 1):>11}{fmt(row['recovery_ms'], 1):>8}"
              f"{fmt(PAPER['recovery_ms'].get(key), 1):>9}")
    print("  paper: spikes to over 4 ms; back to normal in 4.5 ms (30%) and 5.6 ms (50%)")
    write_outputs(res, args, plot)
    return res
