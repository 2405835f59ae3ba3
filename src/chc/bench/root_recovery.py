"""Root recovery (§5.4, §7.3 "Root": the paper's root recovers in < 41.2 µs):
how long a new root takes to resume after its predecessor failed.

Theory of operation
-------------------
A root's state is its clock counter and its packet log (§5).  The failed root
had persisted every ``n``-th clock to the store and, with the store-backed log
(``--packet-log store``), every log entry and its accounting (live copies, XOR
accumulator).  Its replacement (:meth:`chc.runtime.sim.SimRuntime.restart_root`)
reads the last persisted clock, resumes ``n`` above it, and takes the log over
(:meth:`chc.core.root.Root.restore`).  This module times exactly that, on a
store into which a root with ``N`` packets in flight wrote its metadata:

* **clock only** (the baseline, a root with a ``local`` log, which it loses):
  one read of the persisted clock and a new root;
* **clock + store log**: the same, plus reading back the ``N`` entries and
  their accounting and rebuilding the log.

``N`` is the number of packets in flight at the crash (logged, not yet done):
at 10 Gbit/s of 800-byte packets and ~100 µs in the chain, about 150.  Failure
detection (missed heartbeats: 3 x 20 µs by default in the sim) comes on top and
is reported separately.  Unrelated NF state in the store (``--state-keys``)
shows what finding the root's keys costs when the store holds other objects.
Every cell is the best of ``--rounds`` runs.

**On the proc runtime** (``--proc-runs K``): a real SIGKILL of the root's
process in the paper chain (``EO+C+NA``, the first ``--proc-packets`` packets
of the LAN capture), the failover of docs/proc.md (the kept input stamped again,
the log rebuilt); per run, from the summary's ``root-failover`` event: detection
(kill to the coordinator seeing the death), the replay (input packets and time),
recovery (detection to the replay's report); and the run's time against an
undisturbed run of the same input measured in the same round, with the state
digests compared.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..backends.memory import MemoryStore
from ..core.root import Root, clock_key
from ..core.store import ObjectKey, Op
from ..packet import Packet
from .harness import progress
from .r2_move import output_arguments, write_outputs

PAPER_US = 41.2
_FRAME = bytes.fromhex("45000028000100004006000a0a000001" "0a000002" "04d20050000000010000000050022000" "00000000")


def _frame() -> bytes:
    # An Ethernet frame: IPv4/TCP from 10.0.0.1 to 10.0.0.2 (never parsed beyond its headers).
    return b"\x00" * 12 + b"\x08\x00" + _FRAME


def _store_with(n: int, state_keys: int, every: int) -> MemoryStore:
    """A store as a root with ``n`` packets in flight left it (plus unrelated state)."""
    store = MemoryStore()
    if state_keys:
        store.execute([Op("set", ObjectKey("nat", "mapping", i, True), ((i, i),)) for i in range(state_keys)])
    root = Root(0, persist_every=every, log_mode="store")
    frame = _frame()
    pkts = [Packet(frame, 1_000 * i, i) for i in range(n + 500)]
    admitted, _ = root.ingest(pkts)
    root.record(admitted)
    for p in admitted[:500]:                # the older ones are done and deleted
        root.done(p.clock, 0)
    for p in admitted[500::3]:              # some of the others have copies and pending commits
        root.fork(p.clock, 1)
        root.done(p.clock, 0x5A5A)
    store.execute(root.drain_outbox())
    return store


def _recover(store: Any, with_log: bool, every: int) -> Root:
    persisted = store.execute([Op("get", clock_key(0))])[0]
    new = Root(0, persist_every=every, resume_from=persisted, log_mode="store" if with_log else "local")
    if with_log:
        new.restore(store.objects("root"))
    return new


def _best_us(fn: Any, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        fn()
        best = min(best, time.perf_counter_ns() - t0)
    return best / 1000


def measure(sizes: tuple[int, ...], state_keys: int, rounds: int, every: int = 1000) -> dict:
    rows = {}
    for n in sizes:
        for keys in sorted({0, state_keys}):
            store = _store_with(n, keys, every)
            check = _recover(store, True, every)
            if len(check.log) != n:
                raise AssertionError(f"restored {len(check.log)} entries, expected {n}")
            clock_us = _best_us(lambda s=store: _recover(s, False, every), rounds)
            log_us = _best_us(lambda s=store: _recover(s, True, every), rounds)
            rows[f"{n}/{keys}"] = {"in_flight": n, "state_keys": keys, "clock_only_us": round(clock_us, 2),
                                   "with_store_log_us": round(log_us, 2),
                                   "ratio_to_clock_only": round(log_us / clock_us, 2) if clock_us else None,
                                   "vs_paper": round(log_us / PAPER_US, 3)}
    return {"store": "memory", "rounds": rounds, "paper_us": PAPER_US,
            "detection_us_default": 3 * 20, "cells": rows}


def measure_proc(runs: int, packets: int, kill_at: int) -> dict:
    """Root failovers on the proc runtime (module doc); raises if a digest differs."""
    import itertools

    from ..capture import open_capture
    from ..runtime.proc import Kill, ProcRuntime
    from ..spec import load_spec
    from .inputs import LAN_CAPTURE, LAN_CHAIN

    with open_capture(str(LAN_CAPTURE)) as reader:
        records = list(itertools.islice(reader, packets))
    rows = []
    for _ in range(runs):
        timed = []
        for kills in ([], [Kill("root", 0, kill_at)]):
            rt = ProcRuntime(load_spec(str(LAN_CHAIN)), model="EO+C+NA", kills=kills, failover=True)
            started = time.perf_counter()
            rt.run(records)
            timed.append((time.perf_counter() - started, rt.summary()))
        (plain_s, plain), (killed_s, killed) = timed
        if plain.state_digest != killed.state_digest:
            raise AssertionError("a root failover changed the state digest")
        (event,) = killed.events
        rows.append({"detect_ms": round(event["detect_s"] * 1e3, 2), "kept_input": event["handed_over"],
                     "replayed": event["replayed"], "replay_ms": round(event["replay_s"] * 1e3, 2),
                     "replay_us_per_packet": round(event["replay_s"] * 1e6 / max(event["replayed"], 1), 2),
                     "recovery_ms": round(event["recovery_s"] * 1e3, 2), "run_s": round(killed_s, 3),
                     "undisturbed_run_s": round(plain_s, 3), "run_ratio": round(killed_s / plain_s, 3)})
    return {"packets": packets, "kill_at": kill_at, "model": "EO+C+NA", "runs": rows}


def plot(res: dict, outdir: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .harness import save_plot
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for keys in sorted({c["state_keys"] for c in res["cells"].values()}):
        cells = [c for c in res["cells"].values() if c["state_keys"] == keys]
        ax.plot([c["in_flight"] for c in cells], [c["with_store_log_us"] for c in cells], "o-",
                label=f"clock + store log ({keys:,} other keys)")
        ax.plot([c["in_flight"] for c in cells], [c["clock_only_us"] for c in cells], "x--",
                label=f"clock only ({keys:,} other keys)")
    ax.axhline(res["paper_us"], color="grey", lw=0.8, ls=":", label="paper: < 41.2 µs")
    ax.set_xscale("symlog")
    ax.set_yscale("log")
    ax.set_xlabel("packets in flight at the crash")
    ax.set_ylabel("root recovery (µs)")
    ax.legend(fontsize=7)
    return save_plot(fig, outdir, "root_recovery.png")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="Root recovery time: clock from the store, log taken over")
    ap.add_argument("--in-flight", default="0,150,1000,10000",
                    help="packets logged at the crash (default 0,150,1000,10000)")
    ap.add_argument("--state-keys", type=int, default=50000, help="unrelated objects in the store (default 50000)")
    ap.add_argument("--rounds", type=int, default=20, help="runs per cell; the best counts (default 20)")
    ap.add_argument("--proc-runs", type=int, default=0, metavar="K",
                    help="also K root failovers on the proc runtime, each beside an undisturbed run (default 0)")
    ap.add_argument("--proc-packets", type=int, default=6000, metavar="N",
                    help="--proc-runs: the first N packets of the LAN capture (default 6000)")
    ap.add_argument("--proc-kill-at", type=int, default=3000, metavar="P",
                    help="--proc-runs: kill the root once P packets have been fed (default 3000)")
    output_arguments(ap, "root_recovery.png")
    args = ap.parse_args(argv)
    if args.proc_runs < 0 or not 0 < args.proc_kill_at <= args.proc_packets:
        ap.error("--proc-runs >= 0; --proc-kill-at between 1 and --proc-packets")
    sizes = tuple(int(x) for x in args.in_flight.split(",") if x.strip().isdigit())
    if len(sizes) != len(args.in_flight.split(",")) or args.state_keys < 0 or args.rounds < 1:
        ap.error("--in-flight: comma-separated counts >= 0; --state-keys >= 0, --rounds at least 1")
    progress(f"root recovery: in flight {sizes}, {args.state_keys:,} other keys, {args.rounds} rounds ...")
    res = measure(sizes, args.state_keys, args.rounds)
    print(f"root recovery on the memory store, best of {args.rounds} (detection, 3 x 20 µs heartbeats, not included)")
    print(f"{'in flight':>10}{'other keys':>12}{'clock only µs':>15}{'+ store log µs':>16}{'vs paper':>10}")
    for c in res["cells"].values():
        print(f"{c['in_flight']:>10,}{c['state_keys']:>12,}{c['clock_only_us']:>15.1f}"
              f"{c['with_store_log_us']:>16.1f}{c['vs_paper']:>9.2f}x")
    print(f"paper: < {PAPER_US} µs")
    if args.proc_runs:
        progress(f"root failover on the proc runtime: {args.proc_runs} runs, {args.proc_packets:,} packets, "
                 f"kill at {args.proc_kill_at:,} ...")
        res["proc"] = measure_proc(args.proc_runs, args.proc_packets, args.proc_kill_at)
        print(f"proc runtime, a SIGKILL of the root at input packet {args.proc_kill_at:,} of {args.proc_packets:,} "
              "(same digest as the undisturbed run each time)")
        print(f"{'detect ms':>10}{'kept input':>12}{'replay ms':>11}{'µs/packet':>11}{'recovery ms':>13}"
              f"{'run / undisturbed':>19}")
        for r in res["proc"]["runs"]:
            print(f"{r['detect_ms']:>10.1f}{r['kept_input']:>12,}{r['replay_ms']:>11.1f}"
                  f"{r['replay_us_per_packet']:>11.1f}{r['recovery_ms']:>13.1f}{r['run_ratio']:>18.2f}x")
    write_outputs(res, args, plot)
    return res
