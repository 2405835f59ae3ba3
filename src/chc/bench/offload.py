"""Operation offloading vs a naive lock + read + write-back (section ``offload``, §7.1).

Theory of operation
-------------------
Two NAT instances share the free-port list and the two counters (model EO, no
caching, ``exclusive=False``).  CHC: the ops are offloaded to the store.
Naive (:class:`NaiveObject`): every update of a shared object is lock + read
(one request: a compare-and-set on a lock object plus a get; retried while the
lock is taken) and write-back + unlock (one request), so >= 2 round trips per
update.  Memory store: the two instances alternate batch by batch in one thread
(no contention is possible; only the extra work shows).  Redis: one process and
one connection per instance, running concurrently.
"""

from __future__ import annotations

import gc
from array import array
from typing import Any

from ..core.instance import Instance
from ..core.splitter import Splitter
from ..core.store import ObjectKey, Op
from ..nf import build_config
from ..nfs import NAT
from ..packet import Packet
from .harness import (
    BenchError,
    RunContext,
    Section,
    combine,
    fmt,
    instrument,
    maintain,
    now_ns,
    pcts,
    progress,
    ratio,
    save_plot,
)
from .inputs import BenchInput
from .stores import StoreSpec


class NaiveStats:
    def __init__(self) -> None:
        self.lock_retries = 0
        self.updates = 0


class NaiveObject:
    """A shared state object updated the naive way (no offloading, no caching).

    An update takes a store-side lock (compare-and-set of a lock object from 0 to
    this instance's id, pipelined with the read of the value: one request,
    repeated while another instance holds the lock), modifies the value here,
    then writes it back and releases the lock (one request): two round trips
    when uncontended.  A read is one round trip (no lock).
    """

    def __init__(self, store: Any, vertex: str, name: str, owner: int, absent: Any, stats: NaiveStats) -> None:
        self.store = store
        self.vertex = vertex
        self.name = name
        self.me = owner + 1
        self.client = f"naive/{owner}"
        self.absent = absent
        self.stats = stats
        self._keys: dict[Any, tuple[ObjectKey, ObjectKey]] = {}

    def _k(self, key: Any) -> tuple[ObjectKey, ObjectKey]:
        k = self._keys.get(key)
        if k is None:
            k = self._keys[key] = (ObjectKey(self.vertex, self.name, key, False),
                                   ObjectKey(self.vertex, self.name + ".lock", key, False))
        return k

    def _lock_read(self, key: Any) -> Any:
        obj, lock = self._k(key)
        execute = self.store.execute
        while True:
            ok, value = execute([Op("cas", lock, (0, self.me), self.client, default=0),
                                 Op("get", obj, (), self.client, default=self.absent)])
            if ok:
                return value
            self.stats.lock_retries += 1

    def _write_unlock(self, key: Any, value: Any) -> None:
        obj, lock = self._k(key)
        self.stats.updates += 1
        self.store.execute([Op("set", obj, (value,), self.client), Op("set", lock, (0,), self.client)])

    def get(self, key: Any = None) -> Any:
        obj, _ = self._k(key)
        return self.store.execute([Op("get", obj, (), self.client, default=self.absent)])[0]

    def set(self, value: Any, key: Any = None) -> None:
        obj, _ = self._k(key)
        self.store.execute([Op("set", obj, (value,), self.client)])

    def incr(self, by: int = 1, key: Any = None) -> int:
        v = (self._lock_read(key) or 0) + by
        self._write_unlock(key, v)
        return v

    def decr(self, by: int = 1, key: Any = None) -> int:
        return self.incr(-by, key)

    def pop(self, key: Any = None) -> Any:
        items = list(self._lock_read(key) or ())
        head = items.pop(0) if items else None
        self._write_unlock(key, tuple(items))
        return head

    def push(self, value: Any, key: Any = None) -> None:
        items = list(self._lock_read(key) or ())
        items.append(value)
        self._write_unlock(key, tuple(items))


OFFLOAD_PORTS = [20000, 22047]        # 2,048 shared ports: a naive update reads and writes the whole list


def _offload_instance(cfg: Any, store: Any, i: int, variant: str, stats: NaiveStats) -> Instance:
    inst = Instance("nat", i, NAT, cfg, "EO", store, exclusive=False)
    if variant == "naive":
        for name in ("ports", "tcp_packets", "packets"):
            absent = () if name == "ports" else 0
            setattr(inst.nf, name, NaiveObject(store, "nat", name, i, absent, stats))
    return inst


def _run_batches(inst: Instance, batches: list[list[Packet]], lat: array) -> None:
    """Run ``batches`` through ``inst``; per-packet times (ns) into ``lat``."""
    proc = array("q")
    instrument(inst, proc)
    for b in batches:
        start = len(proc)
        t0 = now_ns()
        inst.run(b)
        dt = now_ns() - t0
        share = (dt - sum(proc[start:])) / len(b)
        lat.extend(x + share for x in proc[start:start + len(b)])
    inst.finish()


def _offload_worker(i: int, variant: str, store_spec: StoreSpec, cfg: Any, batches: list[list[Packet]],
                    barrier: Any, results: Any) -> None:
    """One NAT instance in its own process (Redis): its own connection, no shared GIL."""
    try:
        stats = NaiveStats()
        store = store_spec.open(fresh=False)
        inst = _offload_instance(cfg, store, i, variant, stats)
        lat = array("d")
        gc.collect()
        gc.freeze()
        rt0 = store.round_trips
        barrier.wait()
        t0 = now_ns()
        _run_batches(inst, batches, lat)
        t1 = now_ns()
        results.put({"i": i, "start": t0, "end": t1, "lat": lat.tobytes(), "rts": store.round_trips - rt0,
                     "dropped": inst.dropped, "alerts": len(inst.ctx.alerts), "nf_errors": inst.nf_errors,
                     "lock_retries": stats.lock_retries, "updates": stats.updates})
        store.close()
    except BaseException as exc:      # reported by the parent
        results.put({"i": i, "error": f"{type(exc).__name__}: {exc}"})


def run_offload(inp: BenchInput, store_spec: StoreSpec, variant: str, batch: int, limit: int | None) -> dict:
    """Two NAT instances sharing ports and counters; ``variant`` chc (offloaded) or naive."""
    raw = dict(inp.configs["nat"])
    raw["port_range"] = list(OFFLOAD_PORTS)
    cfg = build_config(NAT, raw, "nat.config")
    splitter = Splitter(NAT.partition_scope(), 2)
    per: list[list[list[Packet]]] = [[], []]
    n = nbytes = 0
    for batches in inp.chunks(batch, copy=True, limit=limit):
        for b in batches:
            n += len(b)
            nbytes += sum(len(p.data) for p in b)
            for i, part in enumerate(splitter.split(b)):
                if part:
                    per[i].append(part)
    res: dict[str, Any] = {"packets": n, "per_instance_packets": [sum(map(len, x)) for x in per]}
    if store_spec.name == "memory":
        stats = NaiveStats()
        store = store_spec.open()
        insts = [_offload_instance(cfg, store, i, variant, stats) for i in (0, 1)]
        procs = [array("q"), array("q")]
        lats = [array("d"), array("d")]
        for inst, proc in zip(insts, procs, strict=True):
            instrument(inst, proc)
        rt0 = store.round_trips
        gc.collect()
        gc.freeze()
        try:
            wall = 0
            # One thread: the instances take turns batch by batch (no lock is ever contended);
            # after each round, the root's maintenance (outside timing).
            for j in range(max(len(per[0]), len(per[1]))):
                last = 0
                for i in (0, 1):
                    if j < len(per[i]):
                        b = per[i][j]
                        start = len(procs[i])
                        b0 = now_ns()
                        insts[i].run(b)
                        dt = now_ns() - b0
                        wall += dt
                        share = (dt - sum(procs[i][start:])) / len(b)
                        lats[i].extend(x + share for x in procs[i][start:start + len(b)])
                        last = max(last, b[-1].clock)
                maintain(store, last + 1)
            b0 = now_ns()
            for inst in insts:
                inst.finish()
            wall += now_ns() - b0
        finally:
            gc.unfreeze()
        rts = store.round_trips - rt0
        all_lat = lats[0] + lats[1]
        res.update(dropped=sum(x.dropped for x in insts), alerts=sum(len(x.ctx.alerts) for x in insts),
                   nf_errors=sum(x.nf_errors for x in insts), lock_retries=stats.lock_retries,
                   naive_updates=stats.updates, concurrency="one thread, alternating batches")
        store.close()
    else:
        import multiprocessing
        ctx = multiprocessing.get_context("fork")
        store_spec.open().close()          # clear the CHC keys of an earlier run
        barrier = ctx.Barrier(3)
        queue = ctx.Queue()
        workers = [ctx.Process(target=_offload_worker, args=(i, variant, store_spec, cfg, per[i], barrier, queue),
                               daemon=True) for i in (0, 1)]
        for w in workers:
            w.start()
        try:
            barrier.wait(timeout=120)
            got = [queue.get(timeout=3600) for _ in workers]
        finally:
            for w in workers:
                w.join(30)
                if w.is_alive():
                    w.terminate()
        errors = [g["error"] for g in got if "error" in g]
        if errors:
            raise BenchError(f"offload worker failed: {errors[0]}")
        wall = max(g["end"] for g in got) - min(g["start"] for g in got)
        all_lat = array("d")
        for g in sorted(got, key=lambda g: g["i"]):
            all_lat.frombytes(g["lat"])
        rts = sum(g["rts"] for g in got)
        res.update(dropped=sum(g["dropped"] for g in got), alerts=sum(g["alerts"] for g in got),
                   nf_errors=sum(g["nf_errors"] for g in got), lock_retries=sum(g["lock_retries"] for g in got),
                   naive_updates=sum(g["updates"] for g in got),
                   concurrency="one process and one connection per instance, concurrently")
    res.update({"seconds": round(wall / 1e9, 6), "pps": round(n / wall * 1e9, 1) if wall else None,
                "gbps": round(nbytes * 8 / wall, 4) if wall else None,
                "rt_per_pkt": round(rts / n, 4) if n else 0.0})
    if variant != "naive":
        res.pop("lock_retries", None)
        res.pop("naive_updates", None)
    res.update(pcts(all_lat))
    return res


def bench_offload(inputs: list[BenchInput], stores: list[StoreSpec], batch: int, repeat: int,
                  limit: int | None) -> dict:
    out: dict[str, Any] = {}
    for inp in inputs:
        for st in stores:
            reps = repeat if st.name == "memory" else 1
            cap = st.packet_cap if limit is None else min(limit, st.packet_cap or limit)
            runs: dict[str, list[dict]] = {"chc": [], "naive": []}
            for r in range(reps):
                for v in (("chc", "naive") if r % 2 == 0 else ("naive", "chc")):
                    runs[v].append(run_offload(inp, st, v, batch, cap))
            cells = {}
            for v, rs in runs.items():
                cell = cells[v] = combine(rs, rs)
                pps = cell["pps"]
                progress(f"  offload {inp.name:<6} {st.name:<7} {v:<6} {pps / 1e3:9.1f} kpps (2 instances)  "
                     f"p50 {cell['p50_us']:8.2f} us  RT/pkt {cell['rt_per_pkt']:.3f}")
            ratios = {"p50_naive_over_chc": ratio(cells["naive"]["p50_us"], cells["chc"]["p50_us"]),
                      "pps_chc_over_naive": ratio(cells["chc"]["pps"], cells["naive"]["pps"])}
            out.setdefault(inp.name, {})[st.name] = {"variants": cells, "ratios": ratios,
                                                      "port_range": list(OFFLOAD_PORTS)}
    return out


def run_section(ctx: RunContext) -> dict:
    """Quick runs offload the primary input only; ``--packets`` replaces the packet cap."""
    args, primary = ctx.args, ctx.primary
    inputs = [primary] if args.quick and primary is not None else ctx.inputs
    limit = ctx.conf["offload_packets"] if args.packets is None else None
    return {"offload": bench_offload(inputs, ctx.stores, args.batch, ctx.conf["repeat"], limit)}


def table_rows(res: dict) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for inp, by_store in res.get("offload", {}).items():
        for st, d in by_store.items():
            v, r = d["variants"], d["ratios"]
            rows.append(("offload 2xNAT", inp, st, "kpps (naive, CHC)", "", fmt(v["naive"]["pps"] / 1e3),
                         fmt(v["chc"]["pps"] / 1e3), "", f"CHC/naive {fmt(r['pps_chc_over_naive'], 2)}"))
            rows.append(("", "", "", "p50 us (naive, CHC)", "", fmt(v["naive"]["p50_us"], 2),
                         fmt(v["chc"]["p50_us"], 2), "", f"naive/CHC {fmt(r['p50_naive_over_chc'], 2)}"))
            rows.append(("", "", "", "RT/pkt (naive, CHC)", "", fmt(v["naive"]["rt_per_pkt"], 2),
                         fmt(v["chc"]["rt_per_pkt"], 2), "", ""))
    return rows


def plots(res: dict, plt: Any, outdir: str) -> list[str]:
    """Median per-packet time and aggregate throughput, CHC vs naive."""
    files = []
    if res.get("offload"):
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        labels, x = [], 0
        for inp, by_store in res["offload"].items():
            for st, d in by_store.items():
                for j, v in enumerate(("chc", "naive")):
                    c = d["variants"][v]
                    col = "#c44e52" if v == "chc" else "#8c8c8c"
                    axes[0].bar(x + j, c["p50_us"], color=col, label=v if x == 0 else None)
                    axes[1].bar(x + j, c["pps"] / 1e3, color=col, label=v if x == 0 else None)
                labels.append((x + 0.5, f"{inp}\n{st}"))
                x += 3
        for ax, yl in zip(axes, ("median per-packet time (us)", "aggregate throughput (kpps)"), strict=True):
            ax.set_xticks([p for p, _ in labels], [t for _, t in labels])
            ax.set_ylabel(yl)
            ax.legend(fontsize=8)
        fig.suptitle("Offloaded ops vs lock + read + write-back, 2 NAT instances (EO)")
        files.append(save_plot(fig, outdir, "offload.png"))
    return files


SECTION = Section("offload", "operation offloading vs naive lock + read + write-back (2 NAT instances, model EO)",
                  run_section, table_rows, plots)
