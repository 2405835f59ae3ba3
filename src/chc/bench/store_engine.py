"""Store performance (section ``store``, §7.1 "Datastore performance").

Theory of operation
-------------------
get/set/incr ops/s with 128-bit (16-byte) scope keys and 64-bit values over
``--entries`` keys per shard: the engine (``StoreEngine.apply`` in a loop), the
memory backend (``execute`` of pipelined batches) and Redis (pipelined batches,
one and two shards, and a private 3-node Redis Cluster when ``redis-cli`` is there
too).  ``incr_chc`` is an increment as a CHC client sends it (exactly-once
sequence number, clock-log tag, XOR id), waited for per request; ``incr_chc_nb``
the same ops sent as an instance sends its updates in EO+C+NA (§4.3: ``submit``,
never waited for; the acknowledgements read as they come, and all of them at the
end, inside the timing): the client encodes the next request while the server
applies this one.  Backends without a non-blocking path (the engine, the memory
backend) give their ``incr_chc`` there.  Every Redis row is also given as a
ratio to the one-server row and to the engine of the same run.  No capture is read.

On one Redis server the section also measures issue 15's *floor*: one Lua function
applying 1,000 ops per call, an ``HINCRBY`` and an ``HSET`` of a clock-log tag each
(no reads, no dedup, no commit reports), the calls pipelined as ``incr_chc_nb``'s
requests are; and the server's CPU time per op of both (``INFO cpu``), which the
client's speed does not change.  A CHC increment does what the floor does plus
what §5.3/§5.4 need of it (its tag looked up in the clock log, the sequence mark,
the commit report, the pruning index), so its server time over the floor's is the
cost of those in Lua (docs/benchmarks.md, "The Redis store").
"""

from __future__ import annotations

import gc
import random
import shutil
import statistics
from collections.abc import Callable
from typing import Any

from ..backends.memory import MemoryStore
from ..core.store import ObjectKey, Op, StoreEngine
from .floor import FLOOR_KEYS, FLOOR_LIB, floor_calls
from .harness import RunContext, Section, fmt, now_ns, progress, save_plot
from .stores import PrivateRedis, StoreSpec, redis_server_binary


def _store_ops(entries: int, shard_families: int = 16, seed: int = 7) -> dict[str, list[Op]]:
    rng = random.Random(seed)
    keys = [ObjectKey("bench", f"f{i % shard_families}", rng.getrandbits(128).to_bytes(16, "big"), False)
            for i in range(entries)]
    values = [rng.getrandbits(52) for _ in range(entries)]   # 64-bit slots; < 2^53 for Redis (Lua doubles)
    return {
        "set": [Op("set", k, (v,)) for k, v in zip(keys, values, strict=True)],
        "get": [Op("get", k) for k in keys],
        "incr": [Op("incr", k, (1,), default=0) for k in keys],
        # as a CHC client sends an update: exactly-once seq, clock-log tag (§5.3), XOR id (§5.4)
        "incr_chc": [Op("incr", k, (1,), "bench/0", i + 1, 0, (i, 1), (i * 0x9E3779B1) & 0xFFFFFFFF or 1, 0)
                     for i, k in enumerate(keys)],
    }


def _ops_per_s(units: list, call: Callable[[Any], Any], n_ops: int) -> float:
    """``call`` on every unit (an op, or a pipelined batch), timed with GC frozen."""
    gc.collect()
    gc.freeze()
    try:
        t0 = now_ns()
        for u in units:
            call(u)
        return n_ops / (now_ns() - t0) * 1e9
    finally:
        gc.unfreeze()


def _time_engine(ops: list[Op], apply: Callable[[Op], Any]) -> float:
    return _ops_per_s(ops, apply, len(ops))


def _time_execute(ops: list[Op], execute: Callable[[list[Op]], Any], pipeline: int) -> float:
    batches = [ops[i:i + pipeline] for i in range(0, len(ops), pipeline)]
    return _ops_per_s(batches, execute, len(ops))


def _time_submit(ops: list[Op], store: Any, pipeline: int) -> float:
    """Non-blocking requests (EO+C+NA's updates), the last acknowledgement inside the timing."""
    batches = [ops[i:i + pipeline] for i in range(0, len(ops), pipeline)]
    acked: list[int] = []

    def send(batch: list[Op]) -> None:
        store.submit(batch, acked.append)
        if batch is batches[-1]:
            store.wait()

    rate = _ops_per_s(batches, send, len(ops))
    if not acked or acked[-1] != ops[-1].seq:
        raise RuntimeError(f"store bench: the non-blocking increments were not all acknowledged ({acked[-1:]})")
    return rate


def _server_cpu(r: Any) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _time_floor(url: str, n_ops: int) -> dict[str, float]:
    """The floor on ``url``: ops/s (calls pipelined, every reply read inside the timing)
    and the server's CPU microseconds per op."""
    import redis
    r = redis.Redis.from_url(url)
    try:
        r.function_load(FLOOR_LIB, replace=True)
        calls = floor_calls(n_ops)
        pipe = r.pipeline(transaction=False)
        for args in calls:
            pipe.fcall("chcfloor", 2, *FLOOR_KEYS, *args)
        cpu0 = _server_cpu(r)
        rate = _ops_per_s([pipe], lambda p: p.execute(), n_ops)
        cpu1 = _server_cpu(r)
        if r.hlen(FLOOR_KEYS[1]) != n_ops:      # every op's log tag written: the floor ran them all
            raise RuntimeError(f"store bench: the floor logged {r.hlen(FLOOR_KEYS[1])} of {n_ops} ops")
        return {"floor": rate, "floor_server_us": (cpu1 - cpu0) / n_ops * 1e6}
    finally:
        r.delete(*FLOOR_KEYS)
        r.function_delete("chcfloor")
        r.close()


def bench_store(stores: list[StoreSpec], entries: int, pipeline: int, repeat: int) -> dict:
    """ops/s per op kind for the engine, the memory backend and Redis (1 and 2 shards)."""
    out: dict[str, Any] = {"entries_per_shard": entries, "key_bytes": 16, "value_bits": 64,
                           "pipeline": pipeline, "backends": {}}
    kinds = ("set", "get", "incr", "incr_chc", "incr_chc_nb")

    def record(name: str, fn: Callable[[dict[str, list[Op]]], dict[str, float]], n: int, note: str) -> None:
        ops = _store_ops(n)
        runs = [fn(ops) for _ in range(repeat)]
        res = {k: round(statistics.median(r[k] for r in runs)) for k in kinds}
        for k in ("floor", "floor_server_us", "incr_chc_nb_server_us"):
            if k in runs[0]:
                res[k] = round(statistics.median(r[k] for r in runs), 3 if k.endswith("_us") else None)
        res["note"] = note
        res["entries"] = n
        out["backends"][name] = res
        progress(f"  store {name:<16} " + "  ".join(f"{k} {res[k] / 1e6:6.3f} Mops/s" for k in kinds))
        if "floor" in res:
            progress(f"  store {name:<16} floor (HINCRBY + HSET in Lua) {res['floor'] / 1e6:6.3f} Mops/s; server "
                     f"CPU per op: incr_chc_nb {res['incr_chc_nb_server_us']:.2f} us, "
                     f"floor {res['floor_server_us']:.2f} us")

    def engine(ops: dict[str, list[Op]]) -> dict[str, float]:
        e = StoreEngine()
        out = {k: _time_engine(ops[k], e.apply) for k in kinds[:-1]}
        return {**out, "incr_chc_nb": out["incr_chc"]}

    def memory(ops: dict[str, list[Op]]) -> dict[str, float]:
        s = MemoryStore()
        out = {k: _time_execute(ops[k], s.execute, pipeline) for k in kinds[:-1]}
        return {**out, "incr_chc_nb": out["incr_chc"]}

    record("engine", engine, entries, "StoreEngine.apply in a loop (one Python thread)")
    record("memory", memory, entries, f"MemoryStore.execute, {pipeline} ops per request")
    for st in stores:
        if st.name == "memory":
            continue
        shards = st.shards

        def redis(ops: dict[str, list[Op]], st: StoreSpec = st) -> dict[str, float]:
            s = st.open()
            try:
                out = {k: _time_execute(ops[k], s.execute, pipeline) for k in kinds[:-1]}
            finally:
                s.close()
            s = st.open()           # a fresh client and namespace: incr_chc's seqs are its own
            try:
                s.execute(ops["set"])                   # the same keys present, as for incr_chc
                if st.name == "redis":
                    import redis as redis_py
                    probe = redis_py.Redis.from_url(st.urls[0])
                    cpu0 = _server_cpu(probe)
                out["incr_chc_nb"] = _time_submit(ops["incr_chc"], s, pipeline)
                if st.name == "redis":
                    cpu = _server_cpu(probe) - cpu0
                    probe.close()
                    out["incr_chc_nb_server_us"] = cpu / len(ops["incr_chc"]) * 1e6
            finally:
                s.close()
            if st.name == "redis":
                out.update(_time_floor(st.urls[0], len(ops["incr_chc"])))
            return out

        what = f"{shards} cluster primaries" if st.name == "redis-cluster" else f"{shards} server(s)"
        record(st.name, redis, entries * shards,
               f"RedisStore.execute, {pipeline} ops per request, {what}, one client thread")
    out["ratios"] = _ratios(out["backends"], kinds)
    for name, r in out["ratios"].items():
        progress(f"  store {name:<16} incr_chc x{r['incr_chc_vs_redis']} of one Redis server, "
                 f"x{r['incr_chc_vs_engine']} of the engine; non-blocking x{r['incr_chc_nb_vs_redis']}, "
                 f"x{r['incr_chc_nb_vs_engine']}")
    return out


def _ratios(backends: dict[str, dict], kinds: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Each Redis row against the one-server row and the engine (same run)."""
    one, engine = backends.get("redis"), backends["engine"]
    out = {}
    for name, d in backends.items():
        if not name.startswith("redis") or one is None:
            continue
        r = {f"{k}_vs_redis": round(d[k] / one[k], 2) for k in kinds}
        r.update({f"{k}_vs_engine": round(d[k] / engine[k], 3) for k in kinds})
        out[name] = r
    return out


CLUSTER_NODES = 3


def run_section(ctx: RunContext) -> dict:
    """The engine and the memory backend always; Redis on one server and, given two, sharded;
    a private Redis Cluster when the servers are private ones and redis-cli is on PATH."""
    stores = []
    urls = ctx.redis_urls
    cluster: PrivateRedis | None = None
    try:
        if urls:
            stores.append(StoreSpec("redis", urls[:1]))
            if len(urls) >= 2:
                stores.append(StoreSpec("redis-2shards", urls[:2]))
            binary, cli = redis_server_binary(), shutil.which("redis-cli")
            if getattr(ctx.args, "redis", None):
                progress("  store: --redis given: no private Redis Cluster row")
            elif binary is None or cli is None:
                progress("  store: no redis-cli on PATH: no Redis Cluster row")
            else:
                cluster = PrivateRedis(binary, CLUSTER_NODES, cluster=cli)
                stores.append(StoreSpec("redis-cluster", [str(cluster.cluster_url)], nodes=CLUSTER_NODES))
        return {"store_engine": bench_store(stores, ctx.conf["entries"], 1000, 1 if ctx.args.quick else 3)}
    finally:
        if cluster is not None:
            cluster.close()


def table_rows(res: dict) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    se = res.get("store_engine")
    if se:
        # (the table's model columns hold op kinds here: a header row of the section's own says so)
        rows.append(("store (columns:)", "", "", "", "get", "set", "incr", "incr-tagged", "keys"))
        for name, d in se["backends"].items():
            rows.append(("store " + name, "-", "-", "Mops/s: get set incr incr-tagged", fmt(d["get"] / 1e6, 3),
                         fmt(d["set"] / 1e6, 3), fmt(d["incr"] / 1e6, 3), fmt(d["incr_chc"] / 1e6, 3),
                         f"{d['entries']} keys"))
            if "incr_chc_nb" in d:
                rows.append(("", "", "", "Mops/s: incr-tagged non-blocking", "-", "-", "-",
                             fmt(d["incr_chc_nb"] / 1e6, 3), ""))
            if "floor" in d:
                rows.append(("", "", "", "Mops/s: floor (HINCRBY+HSET, Lua)", "-", "-", "-",
                             fmt(d["floor"] / 1e6, 3), f"nb/floor x{d['incr_chc_nb'] / d['floor']:.2f}"))
                rows.append(("", "", "", "server us/op: incr-tagged nb, floor", "-", "-",
                             fmt(d["incr_chc_nb_server_us"], 2), fmt(d["floor_server_us"], 2), ""))
    return rows


def plots(res: dict, plt: Any, outdir: str) -> list[str]:
    """ops/s per op kind and backend."""
    files = []
    if res.get("store_engine"):
        fig, ax = plt.subplots(figsize=(7, 4))
        backends = res["store_engine"]["backends"]
        for i, d in enumerate(backends.values()):
            for j, k in enumerate(("get", "set", "incr", "incr_chc")):
                ax.bar(i * 5 + j, d[k] / 1e6, color=("#4c72b0", "#55a868", "#c44e52", "#8172b2")[j],
                       label=k if i == 0 else None)
        ax.set_xticks([i * 5 + 1.5 for i in range(len(backends))], list(backends))
        ax.set_yscale("log")
        ax.set_ylabel("Mops/s")
        ax.set_title("Store: 16-byte keys, 64-bit values")
        ax.legend(fontsize=8)
        files.append(save_plot(fig, outdir, "store_engine.png"))
    return files


SECTION = Section("store", "store engine: get/set/incr, 16-byte keys, 64-bit values", run_section, table_rows,
                  plots, uses_inputs=False, redis_servers=2)
