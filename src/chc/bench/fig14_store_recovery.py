"""Figure 14 experiment (§7.3 R6 "Datastore instance failure"): the time to recover a
store instance against the checkpoint interval, with 5 and 10 NAT instances.

Theory of operation
-------------------
The paper fails the store instance that 5 or 10 NAT instances update the same
objects at (the port pool and the packet counters), checkpointing every 30, 75
or 150 ms, and times the rebuild of the shared state by rolling the instances'
write-ahead logs forward: at most 388.2 ms (10 NATs, 150 ms), growing with the
interval and the number of NATs, because more log entries are rolled forward.
Here the store failover is the sim runtime's (:mod:`chc.runtime.storefailover`,
§5.4), and recovery runs on the real engine (:func:`chc.core.recovery.recover`):

* **The run, in virtual time.**  A one-vertex chain, the NAT with ``N``
  instances (``examples/paper_chain.yaml``'s config), model ``EO+C+NA`` on the
  memory store with store failover (checkpoints every ``I`` ms of virtual time,
  a write-ahead log on every instance), fed the bundled ``lan`` capture's IP
  packets paced at ``--pps`` in batches of ``--batch``.  The store crashes 1 µs
  before the second checkpoint would be taken (virtual time ``2 I``), so the logs
  hold one whole interval: the worst case for that interval.  The first interval
  warms the store up (ports in use, counters).  The crash is noticed after three
  missed 20 µs heartbeats and the failover store is built, swapped in, and the
  run goes on to the end of input.  All this is virtual time, deterministic:
  the checkpoint's age, the detection time, and the sim's own model of when the
  failover store is up (``RESTORE_NS_PER_OBJECT`` per object: a model, not a
  measurement) are reported beside the measured times, never mixed with them.
* **Recovery, measured in wall-clock time.**  At detection the sim hands the
  checkpoint, every instance's log (write-ahead log, per-flow cache, sequence
  mark) and the store's users to a hook (``StoreFailover.recovery_hooks``),
  which keeps a copy.  After the run, on that copy, ``--rounds`` times each,
  wall clock (``perf_counter_ns``; the best round counts, since other load on
  the machine only slows a round down; the median is in the JSON) and this
  thread's CPU time (best round) beside it:

  - ``restore_ms``: :meth:`Checkpoint.restore` alone, the failover store booted
    from the checkpoint;
  - ``base_ms``: :func:`recover` with ``no_wal``: the checkpoint restored and the
    per-flow objects re-read from the caches, nothing rolled forward;
  - ``recover_ms``: :func:`recover`: the same, then TS selection and the roll
    forward of every log entry since the checkpoint (what the sim ran);
  - ``roll_forward_ms``: their difference, and ``us_per_entry`` it over the
    log entries rolled forward;
  - ``checkpoint_ms``: taking one checkpoint of the recovered store (what the
    store pays every interval).

  Reading the caches at the instances (a copy each, done in the sim) and the
  network are not in these times.  Ratios: ``x_base`` is ``recover_ms`` over
  ``base_ms`` of the same cell (what the roll forward adds), ``x_first`` is it
  over the first cell's (the growth with interval and instances).
* **Log sizes.**  ``wal_updates``: logged shared-state updates after the
  checkpoint's TS (rolled forward); ``wal_reads``: logged replies with a value of
  shared state (a ``pop``'s port) since the checkpoint, which TS selection and the
  order search use; ``re_executed``, ``reads_selected`` (Case 2 objects) and
  ``per_flow`` (per-flow updates rolled forward) are :func:`recover`'s.  Each
  instance coalesces its counter increments per flush (``incr_many``, §4.3), so
  the same packets over more instances make more entries.
* **On the proc runtime** (``--proc-runs K``, ``--proc-only``): a real SIGKILL of
  the store server process in the paper chain (``EO+C+NA``, the first
  ``--proc-packets`` LAN packets, the kill once ``--proc-kill-at`` were fed),
  the failover of docs/proc.md, per checkpoint interval: the run with recovery
  on and no kill (its checkpoints: how many, ms each, their share of the run)
  and the run with the kill (detection, logged updates rolled forward,
  recovery: detection to the failover store's clients re-pointed), each against
  a run without recovery measured in the same round; the three digests must be
  equal.
* **Checked.**  After the run the NAT's ``packets`` and ``tcp_packets`` counters
  equal the input's packets and TCP packets (every update exactly once across the
  failover), every re-timed :func:`recover` re-executes what the sim's did, and
  the port pool holds no port twice.

The paper's NATs processed 9.4 Gbps; the sim runs Python NATs over the bundled
capture (62,000 IP packets), so ``--pps`` defaults to 200,000 packets/s (the
capture's 74-byte frames: 0.12 Gbps, the most that fills two 150 ms intervals
without repeating the capture).  An interval's logs are then shorter than at the
paper's rate; the cost per entry (``us_per_entry``) is what carries over.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

from ..core.recovery import Checkpoint, InstanceLog, WriteAheadLog, recover
from ..packet import PROTO_TCP, Packet
from ..runtime.pacing import Pacer
from ..runtime.sim import SimRuntime
from ..scenario import Event
from ..spec import Chain, parse_spec
from .fig13_nf_recovery import sim_records
from .harness import compiled_build, cpu_ns, fmt, now_ns, progress, save_plot
from .inputs import BenchInput, lan_input
from .r2_move import output_arguments, write_outputs

VERTEX = "nat"
MODEL = "EO+C+NA"
PAPER = {"max_recovery_ms": 388.2, "at": "10 NATs, 150 ms checkpoints", "intervals_ms": [30, 75, 150],
         "nats": [5, 10], "traffic": "9.4 Gbps"}
COLORS = ("#4c72b0", "#c44e52", "#55a868", "#dd8452")
EVENT_FIELDS = ("crashed_vt", "detect_ns", "checkpoint", "checkpoint_age_ns", "re_executed", "wal_updates",
                "reads_selected", "per_flow_rolled", "commits_reported", "root_writes", "restore_ns",
                "recovery_ns")


def nat_chain(config: dict, nats: int) -> Chain:
    return parse_spec({"name": "fig14-nat", "vertices": {VERTEX: {"nf": "nat", "parallelism": nats,
                                                                   "config": config}}, "edges": []})


def _snapshot(log: InstanceLog) -> InstanceLog:
    """A copy of ``log`` as it is now: the live one grows as the run goes on."""
    wal = WriteAheadLog(log.wal.client_id)
    wal.updates = list(log.wal.updates)                  # (ops and logged reads are not changed)
    wal.reads = list(log.wal.reads)
    wal.results = dict(log.wal.results)
    wal.flow_updates = list(log.wal.flow_updates)
    wal.logged_seq = log.wal.logged_seq
    return dataclasses.replace(log, wal=wal)


class Captured:
    """What the sim's recovery started from, copied at detection (a recovery hook)."""

    def __init__(self) -> None:
        self.inputs: tuple[Checkpoint, list[InstanceLog], set[str]] | None = None
        self.wal_reads = 0

    def __call__(self, checkpoint: Checkpoint, logs: list[InstanceLog], users: set[str]) -> None:
        if self.inputs is not None:
            raise AssertionError("fig14: expected one store recovery")
        self.inputs = (checkpoint, [_snapshot(log) for log in logs], set(users))
        self.wal_reads = sum(len(log.wal.reads) for log in logs)


def run_cell(chain: Chain, records: list[tuple[int, bytes]], pps: float, interval_ms: float,
             batch: int) -> tuple[SimRuntime, Captured, dict]:
    """One run: the store crashes 1 µs before the second checkpoint; the runtime,
    the captured recovery inputs and the ``store-recovered`` event."""
    crash_ns = int(2 * interval_ms * 1e6) - 1000
    events = [Event("crash", "store", {"checkpoint_ms": interval_ms}, at_time_ns=crash_ns)]
    rt = SimRuntime(chain, model=MODEL, batch_size=batch, pacer=Pacer("pps", pps), events=events)
    cap = Captured()
    rt.store_failover.recovery_hooks.append(cap)
    rt.run(records)
    done = [e for e in rt.events_log if e["kind"] == "store-recovered"]
    if len(done) != 1 or cap.inputs is None:
        raise AssertionError(f"fig14: expected one store recovery, got {[e['kind'] for e in rt.events_log]}")
    return rt, cap, done[0]


def check(rt: SimRuntime, records: list[tuple[int, bytes]]) -> dict[str, int]:
    """Every packet counted once across the failover; no port in the pool twice."""
    state = rt.logical_state()[VERTEX]
    counted = {name: sum(state.get(name, {}).values()) for name in ("packets", "tcp_packets")}
    tcp = sum(1 for _, data in records if Packet(data).proto == PROTO_TCP)
    if counted != {"packets": len(records), "tcp_packets": tcp}:
        raise AssertionError(f"fig14: counters after the failover {counted}, input {len(records)} packets "
                             f"({tcp} TCP)")
    pool = [p for v in state.get("ports", {}).values() for p in v]
    if len(pool) != len(set(pool)):
        raise AssertionError("fig14: a port is twice in the pool after the failover")
    return counted


def _timed(fn: Any, n_rounds: int) -> tuple[dict[str, float], Any]:
    """Wall-clock ms of ``fn()``, best and median of ``n_rounds``, and the best CPU ms
    of this thread (a busy machine only ever slows a round down: the best is the
    cost, the CPU time tells a slow round from a descheduled one); its last result."""
    wall, cpu = [], []
    out = None
    for _ in range(n_rounds):
        t0, c0 = now_ns(), cpu_ns()
        out = fn()
        wall.append(now_ns() - t0)
        cpu.append(cpu_ns() - c0)
    return {"best": min(wall) / 1e6, "median": statistics.median(wall) / 1e6, "cpu": min(cpu) / 1e6}, out


def time_recovery(cap: Captured, sim_re_executed: int, n_rounds: int) -> dict[str, Any]:
    """The measured part: restore, restore + caches, full recovery, one checkpoint."""
    assert cap.inputs is not None
    ckpt, logs, users = cap.inputs
    restore, _ = _timed(ckpt.restore, n_rounds)
    base, _ = _timed(lambda: recover(ckpt, logs, users=users, no_wal=True), n_rounds)
    full, rec = _timed(lambda: recover(ckpt, logs, users=users), n_rounds)
    if len(rec.re_executed) != sim_re_executed:
        raise AssertionError(f"fig14: re-timed recovery re-executed {len(rec.re_executed)} updates, "
                             f"the sim's {sim_re_executed}")
    take, _ = _timed(rec.engine.checkpoint, n_rounds)
    entries = len(rec.re_executed)
    roll = max(full["best"] - base["best"], 0.0)
    return {
        "restore_ms": round(restore["best"], 3), "base_ms": round(base["best"], 3),
        "recover_ms": round(full["best"], 3), "recover_median_ms": round(full["median"], 3),
        "recover_cpu_ms": round(full["cpu"], 3), "base_cpu_ms": round(base["cpu"], 3),
        "roll_forward_ms": round(roll, 3),
        "us_per_entry": round(roll * 1e3 / entries, 2) if entries else None,
        "checkpoint_ms": round(take["best"], 3),
        "x_base": round(full["best"] / base["best"], 2) if base["best"] else None,
        "re_executed": entries, "reads_selected": len(rec.selected), "per_flow": rec.per_flow,
        "shared_objects": sum(not k.per_flow for k in ckpt.data), "users": len(users),
    }


def measure(inp: BenchInput, intervals_ms: Sequence[float] = (30, 75, 150), nats: Sequence[int] = (5, 10),
            pps: float = 200_000, batch: int = 64, n_rounds: int = 5) -> dict[str, Any]:
    config = inp.configs.get(VERTEX) or {}
    need = int(pps * 2 * max(intervals_ms) / 1e3) + int(pps / 1e3)        # + 1 ms after the last crash
    records_all = sim_records(inp, need)
    if len(records_all) < need:
        raise ValueError(f"fig14: {pps:,.0f} pps over {2 * max(intervals_ms) + 1:g} ms needs {need:,} packets; "
                         f"the capture has {len(records_all):,} (lower --pps)")
    mean_bytes = sum(len(d) for _, d in records_all) / len(records_all)
    res: dict[str, Any] = {
        "build": "compiled" if compiled_build() else "pure-python",
        "input": {"name": inp.name, "path": inp.path, "nat_config": config},
        "model": MODEL, "store": "memory (in-process), RecoverableEngine", "rounds": n_rounds,
        "sim": {"pacing": "pps", "pps": pps, "gbps": round(pps * mean_bytes * 8 / 1e9, 4),
                "mean_frame_bytes": round(mean_bytes, 1), "batch": batch, "heartbeat_us": 20, "misses": 3,
                "crash": "1 µs before the second checkpoint (virtual time 2 x interval)"},
        "cells": {}, "paper": PAPER,
    }
    first: float | None = None
    for n in nats:
        chain = nat_chain(config, n)
        for interval in intervals_ms:
            records = records_all[:int(pps * 2 * interval / 1e3) + int(pps / 1e3)]
            progress(f"fig14: {n} NATs, checkpoints every {interval:g} ms, {len(records):,} packets ...")
            rt, cap, ev = run_cell(chain, records, pps, interval, batch)
            counted = check(rt, records)
            timed = time_recovery(cap, ev["re_executed"], n_rounds)
            if first is None:
                first = timed["recover_ms"]
            res["cells"][f"{n}/{interval:g}"] = {
                "nats": n, "interval_ms": interval, "packets": len(records), "counted": counted,
                "wal_updates": ev["wal_updates"], "wal_reads": cap.wal_reads, **timed,
                "x_first": round(timed["recover_ms"] / first, 2) if first else None,
                "virtual": {k: ev.get(k) for k in EVENT_FIELDS},
            }
    return res


def plot(res: dict, outdir: str) -> str:
    """Recovery time against the checkpoint interval, one line per NAT count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (color, n) in enumerate(zip(COLORS, sorted({c["nats"] for c in res["cells"].values()}), strict=False)):
        cells = sorted((c for c in res["cells"].values() if c["nats"] == n), key=lambda c: c["interval_ms"])
        xs = [c["interval_ms"] for c in cells]
        ax.plot(xs, [c["recover_ms"] for c in cells], "o-", color=color, label=f"{n} NATs: recover()")
        ax.plot(xs, [c["base_ms"] for c in cells], "x:", color=color, lw=0.8,
                label=f"{n} NATs: checkpoint + caches only")
        for c in cells:
            ax.annotate(f"{c['wal_updates']:,}", (c["interval_ms"], c["recover_ms"]), textcoords="offset points",
                        xytext=(4, 4 - 12 * k), fontsize=7, color=color)
    ax.plot([150], [PAPER["max_recovery_ms"]], "k*", label=f"paper: <= {PAPER['max_recovery_ms']} ms (10 NATs, 150 ms)")
    ax.set_xlabel("checkpoint interval (ms of virtual time)")
    ax.set_ylabel("store recovery, wall clock (ms)")
    ax.set_title(f"Figure 14: store recovery, {res['build']} build, {res['sim']['pps']:,.0f} pps "
                 "(labels: log entries rolled forward)", fontsize=9)
    ax.legend(fontsize=7)
    return save_plot(fig, outdir, "fig14_store_recovery.png")


def _numbers(ap: argparse.ArgumentParser, text: str, option: str, kind: type) -> tuple:
    try:
        vals = tuple(kind(x) for x in text.split(","))
    except ValueError:
        ap.error(f"{option}: comma-separated numbers, got {text!r}")
    if not vals or any(v <= 0 for v in vals):
        ap.error(f"{option}: positive numbers, got {text!r}")
    return vals


NO_CHECKPOINTS_MS = 1e9     # (only the ones at declarations)


def measure_proc(runs: int, packets: int, kill_at: int, intervals_ms: Sequence[float]) -> dict:
    """Store-server failovers on the proc runtime (module doc); raises if a digest differs."""
    import itertools
    import time

    from ..capture import open_capture
    from ..runtime.proc import Kill, ProcRuntime
    from ..spec import load_spec
    from .inputs import LAN_CAPTURE, LAN_CHAIN

    with open_capture(str(LAN_CAPTURE)) as reader:
        records = list(itertools.islice(reader, packets))

    def run(**kw: Any) -> tuple[float, Any]:
        rt = ProcRuntime(load_spec(str(LAN_CHAIN)), model=MODEL, **kw)
        started = time.perf_counter()
        rt.run(records)
        return time.perf_counter() - started, rt

    rows = []
    for _ in range(runs):
        base_s, base = run()
        # recovery on, no periodic checkpoint: what the rest of it costs (logs, kept input, pre-images)
        rest_s, _ = run(failover=True, checkpoint_ms=NO_CHECKPOINTS_MS)
        for interval in intervals_ms:
            on_s, on = run(failover=True, checkpoint_ms=interval)
            killed_s, killed = run(kills=[Kill("store", 0, kill_at)], checkpoint_ms=interval)
            digests = {r.summary().state_digest for r in (base, on, killed)}
            if len(digests) != 1:
                raise AssertionError("a store-server failover changed the state digest")
            (event,) = killed.summary().events
            st = on.store_stats
            rows.append({"interval_ms": interval, "baseline_s": round(base_s, 3),
                         "x_without_checkpoints": round(rest_s / base_s, 3),
                         "failover_on_s": round(on_s, 3), "x_on": round(on_s / base_s, 3),
                         "checkpoints": st["checkpoints"],
                         "checkpoint_ms_mean": round(st["checkpoint_s"] * 1e3 / max(st["checkpoints"], 1), 2),
                         "checkpoint_share": round(st["checkpoint_s"] / on_s, 3),
                         "killed_s": round(killed_s, 3), "x_killed": round(killed_s / base_s, 3),
                         "detect_ms": round(event["detect_s"] * 1e3, 2), "wal_updates": event["wal_updates"],
                         "re_executed": event["re_executed"], "recovery_ms": round(event["recovery_s"] * 1e3, 2)})
    return {"packets": packets, "kill_at": kill_at, "model": MODEL, "runs": rows}


def _print_proc(res: dict) -> None:
    print(f"proc runtime: the paper chain, {res['packets']:,} LAN packets, {MODEL}; a SIGKILL of the store server "
          f"at input packet {res['kill_at']:,} (every run's digest the undisturbed run's)")
    print(f"  {'ckpt ms':>8}{'base s':>8}{'x rest':>7}{'on s':>7}{'x on':>6}{'ckpts':>6}{'ms/ckpt':>8}{'share':>6}"
          f"{'killed s':>9}{'x kill':>7}{'detect':>7}{'WAL upd':>8}{'re-exec':>8}{'recovery ms':>12}")
    for r in res["runs"]:
        print(f"  {r['interval_ms']:>8g}{r['baseline_s']:>8.2f}{r['x_without_checkpoints']:>7.2f}"
              f"{r['failover_on_s']:>7.2f}{r['x_on']:>6.2f}"
              f"{r['checkpoints']:>6}{r['checkpoint_ms_mean']:>8.1f}{r['checkpoint_share']:>6.2f}"
              f"{r['killed_s']:>9.2f}{r['x_killed']:>7.2f}{r['detect_ms']:>7.1f}{r['wal_updates']:>8,}"
              f"{r['re_executed']:>8,}{r['recovery_ms']:>12.1f}")
    print("  'x on': --failover (checkpoints, logs) over the run without recovery; 'x rest': the same with no "
          "periodic checkpoint; 'share': of the run, the store server taking checkpoints")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="Figure 14: store instance recovery time against the checkpoint "
                                             "interval, with 5 and 10 NAT instances")
    ap.add_argument("--intervals", default="30,75,150", help="checkpoint intervals, ms (default 30,75,150)")
    ap.add_argument("--nats", default="5,10", help="NAT instances (default 5,10)")
    ap.add_argument("--pps", type=float, default=200_000.0, help="offered packets/s, all NATs (default 200000)")
    ap.add_argument("--batch", type=int, default=64, help="sim input batch (default 64)")
    ap.add_argument("--rounds", type=int, default=5, help="timings per cell; the best counts (default 5)")
    ap.add_argument("--proc-runs", type=int, default=0, metavar="K",
                    help="also K rounds on the proc runtime: per interval, a run with recovery on and one with "
                         "the store server killed, beside a run without recovery (default 0)")
    ap.add_argument("--proc-only", action="store_true", help="only the proc runtime's rounds")
    ap.add_argument("--proc-packets", type=int, default=20000, metavar="N",
                    help="--proc-runs: the first N packets of the LAN capture (default 20000)")
    ap.add_argument("--proc-kill-at", type=int, default=12000, metavar="P",
                    help="--proc-runs: kill the store server once P packets have been fed (default 12000)")
    output_arguments(ap, "fig14_store_recovery.png")
    args = ap.parse_args(argv)
    if args.proc_runs < 0 or not 0 < args.proc_kill_at <= args.proc_packets or (args.proc_only and
                                                                                 not args.proc_runs):
        ap.error("--proc-runs >= 0 (and > 0 with --proc-only); --proc-kill-at between 1 and --proc-packets")
    intervals = _numbers(ap, args.intervals, "--intervals", float)
    nats = _numbers(ap, args.nats, "--nats", int)
    if args.pps <= 0 or args.batch < 1 or args.rounds < 1:
        ap.error("--pps positive; --batch, --rounds at least 1")
    if args.proc_only and args.png:
        ap.error("--png: the plot is the sim's Figure 14 (without --proc-only)")
    if args.proc_only:
        progress(f"store-server failover on the proc runtime: {args.proc_runs} rounds ...")
        res = {"proc": measure_proc(args.proc_runs, args.proc_packets, args.proc_kill_at, intervals)}
        _print_proc(res["proc"])
        write_outputs(res, args, None)
        return res
    inp = lan_input()
    try:
        res = measure(inp, intervals, nats, args.pps, args.batch, args.rounds)
    except ValueError as exc:
        ap.error(str(exc))
    sim = res["sim"]
    print(f"Figure 14: store recovery, {res['build']} build, NAT x N, {MODEL} on the memory store; "
          f"{sim['pps']:,.0f} pps ({sim['gbps']:g} Gbps of {sim['mean_frame_bytes']:g}-byte frames), "
          f"batch {sim['batch']}; crash 1 µs before the 2nd checkpoint; wall clock, best of {args.rounds}")
    print(f"  {'NATs':>4}{'ckpt ms':>8}{'packets':>9}{'WAL upd':>9}{'WAL rd':>8}{'case2':>6}{'per-flow':>9}"
          f"{'restore':>9}{'base ms':>9}{'recover':>9}{'cpu ms':>8}{'roll fwd':>9}{'µs/entry':>9}{'x base':>7}"
          f"{'x first':>8}{'ckpt take':>10}{'virt up µs':>11}")
    for c in res["cells"].values():
        v = c["virtual"]
        print(f"  {c['nats']:>4}{c['interval_ms']:>8g}{c['packets']:>9,}{c['wal_updates']:>9,}{c['wal_reads']:>8,}"
              f"{c['reads_selected']:>6}{c['per_flow']:>9,}{c['restore_ms']:>9.2f}{c['base_ms']:>9.2f}"
              f"{c['recover_ms']:>9.2f}{c['recover_cpu_ms']:>8.1f}{c['roll_forward_ms']:>9.2f}"
              f"{fmt(c['us_per_entry'], 1):>9}"
              f"{fmt(c['x_base'], 2):>7}{fmt(c['x_first'], 2):>8}{c['checkpoint_ms']:>10.2f}"
              f"{v['recovery_ns'] / 1e3:>11.0f}")
    print(f"  paper: <= {PAPER['max_recovery_ms']} ms ({PAPER['at']}, {PAPER['traffic']}); times in ms, "
          "'virt up': crash to failover store up in the sim's virtual time (modelled)")
    if args.proc_runs:
        progress(f"store-server failover on the proc runtime: {args.proc_runs} rounds ...")
        res["proc"] = measure_proc(args.proc_runs, args.proc_packets, args.proc_kill_at, intervals)
        _print_proc(res["proc"])
    write_outputs(res, args, plot)
    return res
