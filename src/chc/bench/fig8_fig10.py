"""Figures 8 and 10 (section ``nfs``): each NF alone, in every state model, on every store.

Theory of operation
-------------------
One :class:`~chc.core.instance.Instance` per run, fed batches of ``--batch``
packets (IP frames only, as the root would pass them), for every model T, EO,
EO+C, EO+C+NA, on every store.  A *throughput run* times each ``Instance.run``
call (and the final ``finish``: remaining timers and the last flush) and reports
packets/s and Gbit/s at the input's frame sizes (Ethernet frames as captured, no
preamble/IFG).  A separate *latency run* wraps the NF's ``process`` with
``perf_counter_ns``: a packet's time is its own processing, state operations and
blocking waits on the store included, plus an equal share of what its batch cost
beyond the ``process`` calls (the batch's pipelined flush of non-blocking ops,
timers, loop bookkeeping).  The mean of these per-packet times is therefore
exactly the instrumented run's time per packet; ``instr_us`` reports how much
the wrapper itself adds.  Round trips per packet are the store's
``round_trips`` during the runs divided by the packets.  Every run starts from
fresh state (a new instance and a new store); models are interleaved and
rotated across repetitions and the throughput is the median over ``--repeat``
runs.

What the root does with the store between batches (commit reports, clock-log
pruning) goes over a connection of its own every ``ROOT_EVERY`` batches and is
not timed.  On Redis the NF's non-blocking requests overlap the server's work
(the client's pipeline window bounds them) and the final ``finish`` waits for
the last acknowledgement: the server's work is in the throughput, without the
instance waiting for it after every batch.
"""

from __future__ import annotations

import gc
from array import array
from typing import Any

from ..core.instance import Instance
from ..nf import build_config
from ..nfs import REGISTRY
from .harness import (
    MODEL_COLORS,
    MODELS,
    RunContext,
    Section,
    combine,
    cpu_ns,
    fmt,
    instrument,
    maintain,
    now_ns,
    pcts,
    progress,
    ratio,
    rounds,
    save_plot,
    throughput,
)
from .inputs import BenchInput
from .stores import StoreSpec

NFS = ("nat", "portscan", "trojan", "lb")
ROOT_EVERY = 8          # batches between the root's store round trips (procworker.SETTLE_EVERY)


def run_nf(inp: BenchInput, nf: str, model: str, store_spec: StoreSpec, batch: int,
           latency: bool, sink: array | None = None) -> dict:
    """One run of ``nf`` alone over ``inp`` (see the module docstring).  With
    ``latency``, ``sink`` (if given) receives every packet's time in ns, in input
    order (R1 feeds them to a queue simulation)."""
    cls = REGISTRY[nf]
    cfg = build_config(cls, inp.configs.get(nf) or {}, f"{nf}.config")
    store = store_spec.open() if model != "T" else None
    root_store = store
    try:
        inst = Instance(nf, 0, cls, cfg, model, store, exclusive=True)
        proc = array("q")
        per_pkt = sink if sink is not None else array("d")
        if latency:
            instrument(inst, proc)
        mutates = nf in ("nat", "lb")
        # The root's store work (commit reports, clock-log pruning, §5.3/§5.4) goes over a
        # connection of its own, every few batches, as the root does it (not timed: the
        # root's).  On the NF's connection its blocking round trips made the instance wait
        # out the server's work on every batch, which EO+C+NA is there to avoid; the NF's
        # requests now overlap the server's work, bounded by the client's pipeline window,
        # and the final settle (timed) waits for the last acknowledgement.
        pipelined = getattr(store, "wait", None) is not None    # a store with non-blocking requests (Redis)
        root_store = store_spec.open(fresh=False) if pipelined else store
        total = cpu = 0
        n = nbytes = rewritten = rts = 0
        last = batches_done = 0
        for batches in inp.chunks(batch, copy=mutates, limit=store_spec.packet_cap):
            gc.collect()
            gc.freeze()
            try:
                for b in batches:
                    rt0 = store.round_trips if store is not None else 0
                    start = len(proc)
                    c0 = cpu_ns()
                    t0 = now_ns()
                    out = inst.run(b)
                    dt = now_ns() - t0
                    cpu += cpu_ns() - c0
                    total += dt
                    if store is not None:
                        rts += store.round_trips - rt0
                    if latency:
                        k = len(b)
                        share = (dt - sum(proc[start:])) / k
                        per_pkt.extend(x + share for x in proc[start:start + k])
                    n += len(b)
                    for p in b:
                        nbytes += len(p.data)
                    if mutates:
                        rewritten += sum(1 for p in out if p.data.__class__ is bytearray)
                    last = b[-1].clock
                    batches_done += 1
                    if store is not None and batches_done % ROOT_EVERY == 0:
                        maintain(root_store, last + 1)
            finally:
                gc.unfreeze()
        rt0 = store.round_trips if store is not None else 0
        c0 = cpu_ns()
        t0 = now_ns()
        inst.finish()
        total += now_ns() - t0
        cpu += cpu_ns() - c0
        if store is not None:
            rts += store.round_trips - rt0
        client = inst.client
        res: dict[str, Any] = {
            **throughput(n, nbytes, total, cpu),
            "rt_per_pkt": round(rts / n, 4) if n else 0.0,
            "blocking_per_pkt": round(client.blocking_ops / n, 4) if client is not None and n else 0.0,
            "nonblocking_per_pkt": round(client.nonblocking_ops / n, 4) if client is not None and n else 0.0,
            "out": inst.packets_out, "dropped": inst.dropped, "nf_errors": inst.nf_errors,
            "alerts": len(inst.ctx.alerts),
        }
        if mutates:
            res["rewritten_share"] = round(rewritten / n, 4) if n else 0.0
        if latency and per_pkt:
            res.update(pcts(per_pkt))
        return res
    finally:
        if store is not None:
            store.close()
            if root_store is not store:
                root_store.close()


def _warm(inp: BenchInput, nf: str, models: tuple[str, ...], batch: int) -> None:
    cap = StoreSpec("memory", packet_cap=min(5000, inp.packets))
    for m in models:
        run_nf(inp, nf, m, cap, batch, latency=False)


def bench_nfs(inputs: list[BenchInput], stores: list[StoreSpec], nfs: tuple[str, ...], models: tuple[str, ...],
              batch: int, repeat: int, min_time: float = 0.0) -> dict:
    """Figures 8 and 10: {input: {store: {nf: {model: cell}}}} plus ratios."""
    out: dict[str, Any] = {}
    for inp in inputs:
        for st in stores:
            reps = repeat if st.name == "memory" else 1
            for nf in nfs:
                _warm(inp, nf, models, batch)
                thr: dict[str, list[dict]] = {m: [] for m in models}
                lat: dict[str, list[dict]] = {m: [] for m in models}
                for k in rounds(reps, min_time, len(models)):
                    for m in models[k:] + models[:k]:
                        thr[m].append(run_nf(inp, nf, m, st, batch, latency=False))
                        lat[m].append(run_nf(inp, nf, m, st, batch, latency=True))
                cells = {}
                for m in models:
                    cell = combine(thr[m], lat[m])
                    cells[m] = cell
                    progress(f"  nfs {inp.name:<6} {st.name:<7} {nf:<8} {m:<8} {cell['pps'] / 1e3:9.1f} kpps "
                         f"{cell['gbps'] or 0:7.3f} Gbit/s  p50 {cell['p50_us']:8.2f} us  "
                         f"RT/pkt {cell['rt_per_pkt']:.3f}"
                         + (f"  rewritten {cell['rewritten_share']:.1%}" if "rewritten_share" in cell else ""))
                out.setdefault(inp.name, {}).setdefault(st.name, {})[nf] = cells
    return out


def nf_ratios(grid: dict) -> dict:
    """Per input, store and NF: EO+C+NA / T (throughput, median) and EO / EO+C+NA."""
    out: dict[str, Any] = {}
    for inp, by_store in grid.items():
        for st, by_nf in by_store.items():
            for nf, cells in by_nf.items():
                t, na, eo = cells.get("T"), cells.get("EO+C+NA"), cells.get("EO")
                r: dict[str, Any] = {}
                if t and na:
                    r["pps_NA_over_T"] = ratio(na["pps"], t["pps"])
                    r["pps_cpu_NA_over_T"] = ratio(na.get("pps_cpu"), t.get("pps_cpu"))
                    r["p50_NA_over_T"] = ratio(na["p50_us"], t["p50_us"])
                    r["p50_NA_minus_T_us"] = round(na["p50_us"] - t["p50_us"], 3)
                if eo and na:
                    r["pps_EO_over_NA"] = ratio(eo["pps"], na["pps"])
                    r["pps_NA_over_EO"] = ratio(na["pps"], eo["pps"])
                    r["p50_EO_over_NA"] = ratio(eo["p50_us"], na["p50_us"])
                out.setdefault(inp, {}).setdefault(st, {})[nf] = r
    return out


# -- §7.1 chain ------------------------------------------------------------------------------------
def run_section(ctx: RunContext) -> dict:
    """The grid (``fig8_fig10``), its ``ratios``, and the primary input's memory-store
    cells again as ``nfs`` (the headline numbers)."""
    grid = bench_nfs(ctx.inputs, ctx.stores, NFS, MODELS, ctx.args.batch, ctx.conf["repeat"], ctx.min_time)
    results: dict[str, Any] = {"fig8_fig10": grid, "ratios": nf_ratios(grid)}
    primary = ctx.primary
    if primary is not None:
        results["nfs"] = {nf: {m: c for m, c in cells.items()}
                          for nf, cells in grid[primary.name]["memory"].items()}
        results["nfs_input"] = primary.name
    return results


def table_rows(res: dict) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for inp, by_store in res.get("fig8_fig10", {}).items():
        for st, by_nf in by_store.items():
            for nf, cells in by_nf.items():
                r = res.get("ratios", {}).get(inp, {}).get(st, {}).get(nf, {})
                vals = [cells.get(m) for m in MODELS]
                rows.append((nf, inp, st, "kpps", *[fmt(c["pps"] / 1e3) if c else "-" for c in vals],
                             f"NA/T {fmt(r.get('pps_NA_over_T'), 2)}"))
                rows.append(("", "", "", "Gbit/s", *[fmt(c["gbps"], 3) if c else "-" for c in vals],
                             f"NA/EO kpps {fmt(r.get('pps_NA_over_EO'), 1)}"))
                rows.append(("", "", "", "p50 us", *[fmt(c["p50_us"], 2) if c else "-" for c in vals],
                             f"NA/T {fmt(r.get('p50_NA_over_T'), 2)}"))
                rows.append(("", "", "", "p5/p95 us",
                             *[f"{fmt(c['p5_us'], 2)}/{fmt(c['p95_us'], 2)}" if c else "-" for c in vals], ""))
                rows.append(("", "", "", "RT/pkt", *[fmt(c["rt_per_pkt"], 3) if c else "-" for c in vals],
                             f"EO/NA p50 {fmt(r.get('p50_EO_over_NA'), 1)}"))
    return rows


def plots(res: dict, plt: Any, outdir: str) -> list[str]:
    """Figure 8 (per-packet time boxes) and Figure 10 (throughput bars) per input and store."""
    files = []
    for inp, by_store in res.get("fig8_fig10", {}).items():
        for st, by_nf in by_store.items():
            fig, ax = plt.subplots(figsize=(9, 4.5))
            stats, positions, cols = [], [], []
            for i, cells in enumerate(by_nf.values()):
                for j, m in enumerate(MODELS):
                    c = cells.get(m)
                    if not c:
                        continue
                    stats.append({"med": c["p50_us"], "q1": c["p25_us"], "q3": c["p75_us"], "whislo": c["p5_us"],
                                  "whishi": c["p95_us"], "label": m, "fliers": []})
                    positions.append(i * 5 + j)
                    cols.append(MODEL_COLORS[m])
            bp = ax.bxp(stats, positions=positions, showfliers=False, patch_artist=True, widths=0.8)
            for patch, col in zip(bp["boxes"], cols, strict=True):
                patch.set_facecolor(col)
            ax.set_xticks([i * 5 + 1.5 for i in range(len(by_nf))], list(by_nf))
            ax.set_yscale("log")
            ax.set_ylabel("per-packet processing time (us), p5/p25/p50/p75/p95")
            ax.set_title(f"Figure 8: per-packet time, {inp}, {st} store")
            ax.legend([plt.Rectangle((0, 0), 1, 1, fc=MODEL_COLORS[m]) for m in MODELS], MODELS, fontsize=8)
            files.append(save_plot(fig, outdir, f"fig8_{inp}_{st}.png"))
            fig, ax = plt.subplots(figsize=(9, 4.5))
            for i, nf in enumerate(by_nf):
                for j, m in enumerate(MODELS):
                    c = by_nf[nf].get(m)
                    if c:
                        ax.bar(i * 5 + j, c["gbps"], color=MODEL_COLORS[m], label=m if i == 0 else None)
            ax.set_xticks([i * 5 + 1.5 for i in range(len(by_nf))], list(by_nf))
            ax.axhline(10, color="#888888", linestyle="--", linewidth=1)
            ax.set_ylabel("max throughput per instance (Gbit/s)")
            ax.set_title(f"Figure 10: per-instance throughput, {inp}, {st} store")
            ax.legend(fontsize=8)
            files.append(save_plot(fig, outdir, f"fig10_{inp}_{st}.png"))
    return files


SECTION = Section("nfs", "Figures 8 and 10: each NF alone", run_section, table_rows, plots)
