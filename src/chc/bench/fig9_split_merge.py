"""Figure 9 experiment (§7.1 "Cross-flow state caching"; Table 1, last column):
the port-scan detector's per-host likelihood cached while one instance uses it,
uncached while a split shares it, cached again after the merge.

Theory of operation
-------------------
One port-scan detector (:mod:`chc.nfs.portscan`, model EO+C+NA) runs in the
sim runtime over a capture with many connections.  Its ``likelihood`` object
(per initiating host, cross-flow, read/write-often) is cached at the instance
while it is the object's only user: a TRW step is a local update plus a queued
non-blocking op flushed once per batch (§4.3).

* At packet ``--split-at`` the scenario action ``scale-out`` adds a second
  instance and gives it half of the flow groups.  The portscan partitions on the
  unordered host pair (``HOST_PAIR``), so a host's connections to different
  destinations now reach both instances: the host's likelihood is processed at
  both, which is the paper's set H (here: every host that talks to destinations
  on both sides).  The runtime's ``_share`` tells both instances the object is
  shared; they flush and rebind it uncached, so each TRW step is a blocking
  offloaded op (``trw_step``) serialized by the store.  ``--refine`` adds the
  ``refine`` action (partition on the 5-tuple): then the per-host-pair
  first-contact record is shared too, and first SYNs pay a blocking read.
* At packet ``--merge-at`` ``scale-in`` hands the second instance's flow groups
  back (Figure 4); when it has retired the scope returns to the coarsest and
  the survivor caches the likelihood again.

What is timed: the wall time (``perf_counter_ns``) of every ``process`` call at
every portscan instance, i.e. the NF's own work including any blocking store
op made inside it.  With the Redis store (the default when ``redis-server`` 7+
is on PATH: a private one on loopback is started) a blocking op is a real round
trip; with ``--store memory`` it is an in-process call, so the rise is small.
The store calls made outside ``process`` (the per-batch prefetch of per-flow
state, the flush of queued non-blocking ops, their acknowledgements) are timed
apart, at the client's store connection, and reported per phase as
``batch_io_us_per_packet``, so nothing the cache defers is hidden.

An *updating* packet is one whose processing made a TRW step (a SYN-ACK or RST
answering a host's first contact with a destination); other SYN-ACK/RSTs, and
all other packets, are *other*.  Timer-driven steps (unanswered attempts) run
between packets and are not packets.

Rounds and baseline: every round runs the split/merge and, in the same process,
a control with one instance throughout on the same packets (order alternating
per round).  The per-packet latency is the median over ``--rounds`` rounds
(the machine is shared and noisy; the sim is deterministic, so a packet is
processed by the same instance in every round, which is checked).  Phases are
by packet index: before ``--split-at``, shared, from ``--merge-at``; each phase
reports percentiles for updating and other packets, and how many updating
packets met the object shared (after the merge a few do, until the handover of
the retiring instance completes) and how many made a blocking store op: besides
every shared step, a cache miss, i.e. a host's first step in a cache that starts
empty (at the start, and again after the merge, since rebinding the object
cached starts a fresh cache).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from ..backends.memory import MemoryStore
from ..capture import open_capture
from ..core.instance import Instance
from ..packet import Packet
from ..runtime.sim import SimRuntime
from ..scenario import Event
from ..spec import parse_spec
from .harness import fmt, percentile, progress, save_plot
from .r2_move import write_outputs
from .stores import PrivateRedis, redis_server_binary

VERTEX = "portscan"
OBJECT = "likelihood"
PHASES = ("before", "shared", "after")
PCTS = (5, 25, 50, 75, 95, 99)
BIN = 500                         # packets per point of the binned series of other packets


def chain(block: bool) -> Any:
    """One portscan vertex.  ``block`` off by default: with it on, every packet reads
    its sender's verdict, so every packet (not only the TRW steps) would pay a round
    trip while the likelihood is shared; the paper's Figure 9 shows the steps."""
    return parse_spec({"name": "fig9", "vertices": {VERTEX: {"nf": "portscan", "config": {"block": block}}},
                       "edges": []})


def generated_capture(path: str, packets: int, connections: int, seed: int) -> str:
    """A trace2-shaped capture (``chc trace gen --profile trace2``) with ``connections``."""
    from ..trace.gen import generate, resolve_profile
    generate(path, resolve_profile("trace2", packets=packets, connections=connections), seed=seed)
    return path


def read_records(path: str, limit: int) -> list[tuple[int, bytes]]:
    out = []
    with open_capture(path) as reader:
        for ts, data in reader:
            if len(out) >= limit:
                break
            out.append((ts, bytes(data)))
    return out


class Recorder:
    """Times every ``process`` call of every portscan instance (and the batch I/O
    around them) into per-packet rows ``index -> (ns, instance, updated, shared, blocking)``
    (``blocking``: whether the packet made a blocking store op: a shared object's
    update, or a cache miss)."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[int, int, bool, bool, bool]] = {}
        self.io: list[tuple[int, int]] = []       # (index of the instance's last packet, ns)
        self.in_process = False
        self.last_index = 0

    def attach(self, inst: Instance) -> None:
        nf = inst.nf
        process = nf.process
        outcome = nf._outcome
        pc = time.perf_counter_ns
        rows = self.rows
        stepped = [False]
        client = inst.client

        def counted(host: bytes, success: bool, ctx: Any) -> None:
            stepped[0] = True
            outcome(host, success, ctx)

        def timed(pkt: Packet, ctx: Any) -> Any:
            stepped[0] = False
            shared = OBJECT in inst.shared
            b0 = client.blocking_ops
            self.in_process = True
            t0 = pc()
            try:
                return process(pkt, ctx)
            finally:
                dt = pc() - t0
                self.in_process = False
                rows[pkt.index] = (dt, inst.instance_id, stepped[0], shared, client.blocking_ops != b0)
                self.last_index = pkt.index

        nf._outcome = counted
        nf.process = timed
        # The client's methods are read-only in the compiled build: time its store
        # connection instead (calls made inside ``process`` are in its row already).
        client.backend = _TimedStore(client.backend, self, lambda: self.in_process)
        self.in_process = False

    def note_io(self, ns: int) -> None:
        self.io.append((self.last_index, ns))


class _TimedStore:
    """A store connection whose calls outside ``process`` are timed (batch I/O)."""

    def __init__(self, inner: Any, rec: Recorder, busy: Any) -> None:
        self._inner, self._rec, self._busy = inner, rec, busy

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr
        pc = time.perf_counter_ns

        def timed(*a: Any, **kw: Any) -> Any:
            if self._busy():
                return attr(*a, **kw)
            t0 = pc()
            try:
                return attr(*a, **kw)
            finally:
                self._rec.note_io(pc() - t0)
        return timed


def one_run(records: list[tuple[int, bytes]], store: Any, split_at: int | None, merge_at: int | None,
            refine: bool, block: bool, batch: int) -> tuple[Recorder, list[dict]]:
    """One run of the chain; ``split_at`` None: the control (one instance throughout)."""
    events = []
    if split_at is not None:
        events.append(Event("scale-out", VERTEX, at_packet=split_at))
        if refine:
            events.append(Event("refine", VERTEX, at_packet=split_at))
        events.append(Event("scale-in", VERTEX, at_packet=merge_at))
    rt = SimRuntime(chain(block), model="EO+C+NA", batch_size=batch, store=store, events=events)
    rec = Recorder()
    for inst in rt._all_instances():
        rec.attach(inst)
    rt.instance_hooks.append(rec.attach)
    gc.collect()
    gc.freeze()                     # a full collection of the input inside a packet is noise
    try:
        rt.run(records)
    finally:
        gc.unfreeze()
    return rec, rt.events_log


def phase_of(index: int, split_at: int, merge_at: int) -> str:
    return "before" if index < split_at else "shared" if index < merge_at else "after"


def _pcts(vals: list[float]) -> dict[str, float | int]:
    s = sorted(vals)
    out: dict[str, float | int] = {"packets": len(s)}
    out.update({f"p{q}_us": round(percentile(s, q), 3) if s else None for q in PCTS})
    return out


def _median_rows(recs: list[Recorder]) -> dict[int, tuple[float, int, bool, bool, bool]]:
    """Per packet: the median time over rounds (µs), its instance, updated, shared, blocking."""
    first = recs[0].rows
    out = {}
    for idx, (_, inst, upd, shared, blocking) in first.items():
        times = [r.rows[idx][0] for r in recs]
        if any(r.rows[idx][1:] != first[idx][1:] for r in recs[1:]):
            raise AssertionError(f"packet {idx} was processed differently in two rounds (the sim is deterministic)")
        out[idx] = (statistics.median(times) / 1e3, inst, upd, shared, blocking)
    return out


def summarize(rows: dict[int, tuple[float, int, bool, bool, bool]], recs: list[Recorder], split_at: int,
              merge_at: int) -> dict[str, Any]:
    phases: dict[str, Any] = {}
    for ph in PHASES:
        mine = [(i, r) for i, r in rows.items() if phase_of(i, split_at, merge_at) == ph]
        upd = [r[0] for _, r in mine if r[2]]
        oth = [r[0] for _, r in mine if not r[2]]
        io = statistics.median(sum(ns for i, ns in r.io if phase_of(i, split_at, merge_at) == ph) for r in recs)
        phases[ph] = {
            "packets": len(mine), "update": _pcts(upd), "other": _pcts(oth),
            "update_shared": sum(1 for _, r in mine if r[2] and r[3]),
            "update_blocking": sum(1 for _, r in mine if r[2] and r[4]),
            "other_blocking": sum(1 for _, r in mine if not r[2] and r[4]),
            "instances": sorted({r[1] for _, r in mine}),
            "batch_io_us_per_packet": round(io / 1e3 / len(mine), 3) if mine else None,
        }
    return phases


def _binned(rows: dict[int, tuple[float, int, bool, bool, bool]]) -> list[list[float]]:
    bins: dict[int, list[float]] = {}
    for i, r in rows.items():
        if not r[2]:
            bins.setdefault(i // BIN * BIN, []).append(r[0])
    return [[b, round(statistics.median(v), 3), len(v)] for b, v in sorted(bins.items())]


def _stores(kind: str) -> Iterator[Any]:
    """Fresh stores of ``kind``, one per run (a private redis-server for all of them)."""
    if kind == "memory":
        while True:
            yield MemoryStore()
    binary = redis_server_binary()
    if binary is None:
        raise SystemExit("fig9: --store redis needs redis-server 7+ on PATH (or use --store memory)")
    from ..backends.redis import RedisStore
    server = PrivateRedis(binary, 1)
    try:
        while True:
            store = RedisStore(server.urls, fresh=True)
            try:
                yield store
            finally:
                store.close()
    finally:
        server.close()


def measure(records: list[tuple[int, bytes]], split_at: int, merge_at: int, rounds: int = 3,
            store: str = "memory", refine: bool = False, block: bool = False, batch: int = 64) -> dict[str, Any]:
    """The split/merge and the control, ``rounds`` times each; the report dict."""
    split: list[Recorder] = []
    control: list[Recorder] = []
    events: list[dict] = []
    stores = _stores(store)
    try:
        for r in range(rounds):
            for kind in (("split", "control") if r % 2 == 0 else ("control", "split")):
                progress(f"fig9: round {r + 1}/{rounds}, {kind} ...")
                if kind == "split":
                    rec, events = one_run(records, next(stores), split_at, merge_at, refine, block, batch)
                    split.append(rec)
                else:
                    control.append(one_run(records, next(stores), None, None, refine, block, batch)[0])
    finally:
        stores.close()
    rows = _median_rows(split)
    crows = _median_rows(control)
    keep = ("kind", "instance", "packet", "scope", "groups")
    return {
        "packets": len(records), "split_at": split_at, "merge_at": merge_at, "rounds": rounds, "store": store,
        "refine": refine, "block": block, "batch": batch, "model": "EO+C+NA",
        "phases": summarize(rows, split, split_at, merge_at),
        "control": summarize(crows, control, split_at, merge_at),
        "events": [{k: e[k] for k in keep if k in e} for e in events],
        "series": {
            "update": [[i, round(r[0], 3), r[1], int(r[3]), int(r[4])] for i, r in sorted(rows.items()) if r[2]],
            "control_update": [[i, round(r[0], 3)] for i, r in sorted(crows.items()) if r[2]],
            "other_binned": _binned(rows),
            "columns": {"update": ["index", "us", "instance", "shared", "blocking"], "control_update": ["index", "us"],
                        "other_binned": ["bin_start", "median_us", "packets"]},
        },
        "paper": "at ~212K packets a second instance shares the likelihood of hosts in H: every SYN-ACK/RST "
                 "of those hosts becomes a blocking store update and its latency rises; at ~213K one instance "
                 "caches again and the latency drops back",
    }


def plot(res: dict, outdir: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(outdir, exist_ok=True)
    s = res["series"]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    cu = s["control_update"]
    ax.scatter([x[0] for x in cu], [x[1] for x in cu], s=5, color="0.75",
               label="updating packets, control (1 instance)")
    for shared, blocking, color, label in (
            (0, 0, "tab:blue", "updating packets, likelihood cached"),
            (0, 1, "tab:orange", "updating packets, cached, miss (blocking load)"),
            (1, 1, "tab:red", "updating packets, likelihood shared (blocking op)")):
        pts = [x for x in s["update"] if x[3] == shared and x[4] == blocking]
        ax.scatter([x[0] for x in pts], [x[1] for x in pts], s=6, color=color, label=label)
    ob = s["other_binned"]
    ax.plot([x[0] + BIN / 2 for x in ob], [x[1] for x in ob], color="k", lw=1,
            label=f"other packets (median per {BIN})")
    for x, name in ((res["split_at"], "split"), (res["merge_at"], "merge")):
        ax.axvline(x, color="0.4", ls="--", lw=0.8)
        ax.text(x, 1.0, f" {name}", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("packet index")
    ax.set_ylabel("per-packet processing time (µs)")
    ax.set_title(f"Figure 9: portscan split and merged ({res['store']} store, median of {res['rounds']} rounds)")
    # The band between the other packets and the cached updates is empty: the legend goes there.
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 0.13), ncol=2)
    return save_plot(fig, outdir, "fig9_split_merge.png")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="Figure 9: portscan per-packet latency across a split and a merge")
    ap.add_argument("--capture", metavar="PCAP", help="input capture (default: a generated trace2-shaped one)")
    ap.add_argument("--packets", type=int, default=60000, help="packets used (default 60000)")
    ap.add_argument("--connections", type=int, default=0,
                    help="connections of the generated capture (default packets/10)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the generated capture (default 1)")
    ap.add_argument("--split-at", type=int, help="packet index of the scale-out (default packets/3)")
    ap.add_argument("--merge-at", type=int, help="packet index of the scale-in (default 2*packets/3)")
    ap.add_argument("--refine", action="store_true", help="also refine to the 5-tuple at the split")
    ap.add_argument("--block", action="store_true", help="portscan blocks flagged hosts (reads on every packet)")
    ap.add_argument("--store", choices=("redis", "memory", "auto"), default="auto",
                    help="auto (default): a private redis-server if redis-server 7+ is on PATH, else memory")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; per-packet medians over them (default 3)")
    ap.add_argument("--batch", type=int, default=64, help="packets per instance batch (default 64)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--png", metavar="DIR", help="write fig9_split_merge.png into DIR")
    args = ap.parse_args(argv)
    if args.packets < 30 or args.rounds < 1 or args.batch < 1:
        ap.error("--packets at least 30, --rounds and --batch at least 1")
    store = args.store
    if store == "auto":
        store = "redis" if redis_server_binary() else "memory"
        if store == "memory":
            progress("fig9: no redis-server 7+ on PATH: memory store (blocking ops are in-process calls)")
    with tempfile.TemporaryDirectory(prefix="chc-fig9-") as tmp:
        path = args.capture
        if path is None:
            conns = args.connections or max(1, args.packets // 10)
            progress(f"fig9: generating a trace2-shaped capture, {args.packets:,} packets, {conns:,} connections ...")
            path = generated_capture(os.path.join(tmp, "fig9.pcap"), args.packets, conns, args.seed)
        records = read_records(path, args.packets)
    n = len(records)
    split_at = args.split_at if args.split_at is not None else n // 3
    merge_at = args.merge_at if args.merge_at is not None else 2 * n // 3
    if not 0 < split_at < merge_at < n:
        ap.error(f"need 0 < --split-at < --merge-at < packets ({n}), got {split_at}, {merge_at}")
    res = measure(records, split_at, merge_at, args.rounds, store, args.refine, args.block, args.batch)
    res["capture"] = args.capture or f"generated trace2-shaped, seed {args.seed}"
    print(f"Figure 9: portscan split at packet {split_at:,}, merged at {merge_at:,} of {n:,} "
          f"({store} store, median of {args.rounds} rounds{', refined to 5-tuple' if args.refine else ''})")
    print(f"{'phase':<8}{'updating':>9}{'p50 µs':>9}{'p95 µs':>9}{'shared':>8}  |{'other':>7}{'p50 µs':>9}"
          f"{'p95 µs':>9}  | control p50 upd/other µs  | batch I/O µs/pkt")
    for ph in PHASES:
        row, ctl = res["phases"][ph], res["control"][ph]
        u, o = row["update"], row["other"]
        print(f"{ph:<8}{u['packets']:>9}{fmt(u['p50_us'], 2):>9}{fmt(u['p95_us'], 2):>9}{row['update_shared']:>8}  |"
              f"{o['packets']:>7}{fmt(o['p50_us'], 2):>9}{fmt(o['p95_us'], 2):>9}  | "
              f"{fmt(ctl['update']['p50_us'], 2):>8} / {fmt(ctl['other']['p50_us'], 2):<8}       | "
              f"{fmt(row['batch_io_us_per_packet'], 2)}")
    write_outputs(res, args, plot)
    return res
