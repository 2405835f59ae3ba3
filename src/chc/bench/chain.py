"""The §7.1 chain (section ``chain``): NAT -> portscan -> LB, Trojan detector off-path.

Theory of operation
-------------------
The chain of the input (its NAT's input tapped to the Trojan detector) runs in
the sim runtime, roots, clocks, packet log, splitters, commit reports and
pruning included, end to end, T vs EO+C+NA.  Throughput times each
``SimRuntime.step`` and the final drain; per-packet time is as in
:mod:`chc.bench.fig8_fig10`, with the per-packet times of every vertex summed
(keyed by the packet's clock) plus an equal share of the step's remaining cost.
"""

from __future__ import annotations

import gc
from array import array
from typing import Any

from ..core.instance import Instance
from ..packet import Packet
from ..runtime.sim import SimRuntime
from ..spec import parse_spec
from .harness import (
    MODEL_COLORS,
    MODELS,
    RunContext,
    Section,
    combine,
    cpu_ns,
    fmt,
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


def run_chain(inp: BenchInput, model: str, store_spec: StoreSpec, batch: int, latency: bool) -> dict:
    chain = parse_spec(inp.chain)
    store = store_spec.open() if model != "T" else None
    try:
        rt = SimRuntime(chain, model=model, batch_size=batch, store=store)
        acc: dict[int, int] = {}
        in_proc = [0]
        if latency:
            for inst in rt._all_instances():
                _instrument_chain(inst, acc, in_proc)
        per_pkt = array("d")
        total = cpu = 0
        n = nbytes = out = 0
        for batches in inp.chunks(batch, ip_only=False, copy=True, limit=store_spec.packet_cap):
            gc.collect()
            gc.freeze()
            try:
                for b in batches:
                    in_proc[0] = 0
                    c0 = cpu_ns()
                    t0 = now_ns()
                    out += len(rt.step(b))
                    dt = now_ns() - t0
                    cpu += cpu_ns() - c0
                    total += dt
                    n += len(b)
                    for p in b:
                        nbytes += len(p.data)
                    if latency:
                        share = (dt - in_proc[0]) / len(b)
                        pop = acc.pop
                        per_pkt.extend(pop(p.clock, 0) + share for p in b)
            finally:
                gc.unfreeze()
        c0 = cpu_ns()
        t0 = now_ns()
        out += len(rt.drain())
        total += now_ns() - t0
        cpu += cpu_ns() - c0
        s = rt.summary()
        res: dict[str, Any] = {
            **throughput(n, nbytes, total, cpu),
            "out": out, "dropped": s.dropped, "alerts": len(s.alerts), "nf_errors": s.nf_errors,
            "rt_per_pkt": round(s.store.get("round_trips", 0) / n, 4) if n and store is not None else 0.0,
        }
        if latency and per_pkt:
            res.update(pcts(per_pkt))
        return res
    finally:
        if store is not None:
            store.close()


def _instrument_chain(inst: Instance, acc: dict[int, int], in_proc: list[int]) -> None:
    orig = inst.nf.process
    pc = now_ns
    get = acc.get

    def timed(pkt: Packet, ctx: Any) -> Any:
        clock = pkt.clock
        t0 = pc()
        try:
            return orig(pkt, ctx)
        finally:
            d = pc() - t0
            acc[clock] = get(clock, 0) + d
            in_proc[0] += d

    inst.nf.process = timed


def bench_chain(inputs: list[BenchInput], stores: list[StoreSpec], models: tuple[str, ...], batch: int,
                repeat: int, min_time: float = 0.0) -> dict:
    out: dict[str, Any] = {}
    for inp in inputs:
        for st in stores:
            reps = repeat if st.name == "memory" else 1
            thr: dict[str, list[dict]] = {m: [] for m in models}
            lat: dict[str, list[dict]] = {m: [] for m in models}
            for k in rounds(reps, min_time, len(models)):
                for m in models[k:] + models[:k]:
                    thr[m].append(run_chain(inp, m, st, batch, latency=False))
                    lat[m].append(run_chain(inp, m, st, batch, latency=True))
            cells = {}
            for m in models:
                cell = combine(thr[m], lat[m])
                pps = cell["pps"]
                cells[m] = cell
                progress(f"  chain {inp.name:<6} {st.name:<7} {m:<8} {pps / 1e3:9.1f} kpps  "
                     f"p50 {cell['p50_us']:8.2f} us  RT/pkt {cell['rt_per_pkt']:.3f}")
            t, na = cells.get("T"), cells.get("EO+C+NA")
            ratios = {}
            if t and na:
                ratios = {"pps_NA_over_T": ratio(na["pps"], t["pps"]),
                          "pps_cpu_NA_over_T": ratio(na.get("pps_cpu"), t.get("pps_cpu")),
                          "p50_NA_over_T": ratio(na["p50_us"], t["p50_us"]),
                          "p50_overhead_us": round(na["p50_us"] - t["p50_us"], 3),
                          "mean_overhead_us": round(na["us_per_pkt"] - t["us_per_pkt"], 3)}
            out.setdefault(inp.name, {})[st.name] = {"models": cells, "ratios": ratios}
    return out


def run_section(ctx: RunContext) -> dict:
    return {"chain": bench_chain(ctx.inputs, ctx.stores, ("T", "EO+C+NA"), ctx.args.batch, ctx.conf["repeat"],
                                 ctx.min_time)}


def table_rows(res: dict) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for inp, by_store in res.get("chain", {}).items():
        for st, d in by_store.items():
            cells, r = d["models"], d["ratios"]
            vals = [cells.get(m) for m in MODELS]
            rows.append(("chain", inp, st, "kpps", *[fmt(c["pps"] / 1e3) if c else "-" for c in vals],
                         f"NA/T {fmt(r.get('pps_NA_over_T'), 2)}"))
            rows.append(("", "", "", "p50 us", *[fmt(c["p50_us"], 2) if c else "-" for c in vals],
                         f"+{fmt(r.get('p50_overhead_us'), 2)} us"))
            rows.append(("", "", "", "RT/pkt", *[fmt(c["rt_per_pkt"], 3) if c else "-" for c in vals], ""))
    return rows


def plots(res: dict, plt: Any, outdir: str) -> list[str]:
    """End-to-end throughput per input, store and model."""
    files = []
    if res.get("chain"):
        fig, ax = plt.subplots(figsize=(7, 4))
        labels, x = [], 0
        for inp, by_store in res["chain"].items():
            for st, d in by_store.items():
                for j, (m, c) in enumerate(d["models"].items()):
                    ax.bar(x + j, c["pps"] / 1e3, color=MODEL_COLORS[m], label=m if x == 0 else None)
                labels.append((x + 0.5, f"{inp}\n{st}"))
                x += 3
        ax.set_xticks([p for p, _ in labels], [t for _, t in labels])
        ax.set_ylabel("end-to-end throughput (kpps)")
        ax.set_title("§7.1 chain: nat -> portscan -> lb (+ trojan off-path)")
        ax.legend(fontsize=8)
        files.append(save_plot(fig, outdir, "chain.png"))
    return files


SECTION = Section("chain", "§7.1 chain: nat -> portscan -> lb, trojan off-path", run_section, table_rows, plots)
