"""Benchmarks (``chc bench``, ``bench/*.py``): Figures 8 and 10, the §7.1 chain,
operation offloading vs a naive lock/read/write-back, and the store engine.

Theory of operation
-------------------
Every section measures its baseline in the same process and the same run, so a
ratio never compares numbers taken under different machine load.  Timed regions
hold only the work being measured: captures are read and parsed before timing,
fresh copies of the packets (NAT and LB rewrite them in place) are made before
timing, and store maintenance the root would drive once per batch (draining
commit reports, pruning the clock log, §5.3/§5.4) runs between batches, outside
timing.  The cyclic garbage collector is frozen over the pre-parsed input (a
runtime streaming packets would not hold them all) but runs as usual otherwise.

Sections (``--sections``, default all):

``nfs`` (Figures 8 and 10)
    Each NF alone: one :class:`~chc.core.instance.Instance` per run, fed batches
    of ``--batch`` packets (IP frames only, as the root would pass them), for
    every model T, EO, EO+C, EO+C+NA, on every store.  A *throughput run* times
    each ``Instance.run`` call (and the final ``finish``: remaining timers and
    the last flush) and reports packets/s and Gbit/s at the input's frame sizes
    (Ethernet frames as captured, no preamble/IFG).  A separate *latency run*
    wraps the NF's ``process`` with ``perf_counter_ns``: a packet's time is its
    own processing, state operations and blocking waits on the store included,
    plus an equal share of what its batch cost beyond the ``process`` calls
    (the batch's pipelined flush of non-blocking ops, timers, loop bookkeeping).
    The mean of these per-packet times is therefore exactly the instrumented
    run's time per packet; ``instr_us`` reports how much the wrapper itself adds.
    Round trips per packet are the store's ``round_trips`` during the runs
    divided by the packets.  Every run starts from fresh state (a new instance
    and a new store); models are interleaved and rotated across repetitions and
    the throughput is the median over ``--repeat`` runs.
``chain`` (§7.1)
    NAT -> portscan -> LB with the Trojan detector off-path on the NAT's input,
    in the sim runtime (roots, clocks, packet log, splitters, commit reports and
    pruning included), end to end, T vs EO+C+NA; per-packet time as above with
    the per-packet times of every vertex summed.
``offload`` (§7.1 "Operation offloading")
    Two NAT instances share the free-port list and the two counters (model EO,
    no caching, ``exclusive=False``).  CHC: the ops are offloaded to the store.
    Naive: every update of a shared object is lock + read (one request: a
    compare-and-set on a lock object plus a get; retried while the lock is
    taken) and write-back + unlock (one request), so >= 2 round trips per
    update.  Memory store: the two instances alternate batch by batch in one
    thread (no contention is possible; only the extra work shows).  Redis: one
    thread and one connection per instance, running concurrently.
``store`` (§7.1 "Datastore performance")
    get/set/incr ops/s with 128-bit (16-byte) scope keys and 64-bit values over
    ``--entries`` keys per shard: the engine (``StoreEngine.apply`` in a loop),
    the memory backend (``execute`` of pipelined batches) and Redis (pipelined
    batches, one and two shards).

Inputs: ``lan`` (``traces/pathspider/lan-2012.pcap.gz`` with the configs of
``examples/paper_chain.yaml``) and ``trace2`` (``chc trace gen --profile
trace2 --scale F`` with the configs of ``examples/paper_chain_trace2.yaml``:
NAT inside prefix 10.20.0.0/16, the generator's clients; the LB's VIP is checked
to be the most-contacted server:port of the generated trace, else replaced).

Redis: ``--redis URL[,URL]`` uses those servers (only CHC's keys are cleared);
otherwise a private ``redis-server`` (two for the sharded store test) is started
on free loopback ports with ``--save "" --appendonly no`` and stopped at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import __version__
from . import packet as packet_module
from .backends.memory import MemoryStore
from .capture import open_capture
from .cliargs import UsageError
from .core.instance import Instance
from .core.splitter import Splitter
from .core.store import ObjectKey, Op, StoreEngine
from .nf import build_config
from .nfs import NAT, REGISTRY
from .packet import TCP_ACK, TCP_SYN, Packet, ip_str
from .runtime.sim import SimRuntime
from .spec import parse_spec

MODELS = ("T", "EO", "EO+C", "EO+C+NA")
NFS = ("nat", "portscan", "trojan", "lb")
SECTIONS = ("nfs", "chain", "offload", "store")
PERCENTILES = (5, 25, 50, 75, 95)
ROOT = Path(__file__).resolve().parents[2]          # the repository (editable install / checkout)
LAN_CAPTURE = ROOT / "traces" / "pathspider" / "lan-2012.pcap.gz"
LAN_CHAIN = ROOT / "examples" / "paper_chain.yaml"
TRACE2_CHAIN = ROOT / "examples" / "paper_chain_trace2.yaml"
TRACE2_INSIDE = "10.20.0.0/16"       # chc.trace.gen: clients in 10.20.0.0/16, servers in 172.16.0.0/12
CACHE_MAX = 400_000                  # inputs up to this many packets are parsed once and kept
CHUNK = 65_536                       # larger inputs are streamed from disk in chunks of this many

_pc = time.perf_counter_ns
_cpu = time.thread_time_ns          # CPU time of this thread: immune to being descheduled


class BenchError(Exception):
    """A benchmark cannot run as asked (bad option, missing input, unreachable store)."""


def _log(msg: str) -> None:
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


def _pcts(times_ns: array) -> dict[str, float]:
    s = sorted(times_ns)
    out = {f"p{q}_us": round(percentile(s, q) / 1e3, 3) for q in PERCENTILES}
    out["mean_us"] = round(sum(s) / len(s) / 1e3, 3) if s else float("nan")
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)


# -- inputs -------------------------------------------------------------------------------

def _copy(p: Packet) -> Packet:
    """A fresh packet with the same fields and (immutable) bytes, as the root makes it."""
    c = p.copy()
    c.clock = p.index
    c.xor = c.marks = c.vt = 0
    return c


@dataclasses.dataclass
class BenchInput:
    """One input: a capture, the NF configs and chain that fit it, and its packets."""

    name: str
    path: str
    configs: dict[str, dict]
    chain: dict
    limit: int | None = None
    note: str = ""
    frames: int = 0                  # frames read (up to ``limit``)
    packets: int = 0                 # IP frames fed to NFs alone
    bytes: int = 0                   # bytes of those
    median_bytes: float = 0
    _base: list[Packet] | None = None

    def load(self) -> None:
        """Read and parse once: statistics, and the packets themselves if small enough."""
        base: list[Packet] = []
        sizes: list[int] = []
        keep = True
        n = 0
        for chunk in self._read_chunks():
            for p in chunk:
                if p.l3 and p.malformed is None:
                    sizes.append(len(p.data))
            n += len(chunk)
            if keep:
                base.extend(chunk)
                if len(base) > CACHE_MAX:
                    keep = False
                    base = []
        self.frames = n
        self.packets = len(sizes)
        self.bytes = sum(sizes)
        self.median_bytes = statistics.median(sizes) if sizes else 0
        self._base = base if keep else None

    def _read_chunks(self) -> Iterator[list[Packet]]:
        with open_capture(self.path) as reader:
            chunk: list[Packet] = []
            for i, (ts, data) in enumerate(reader):
                if self.limit is not None and i >= self.limit:
                    break
                chunk.append(Packet(data, ts, i))
                if len(chunk) >= CHUNK:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

    def chunks(self, batch: int, ip_only: bool = True, copy: bool = True,
               limit: int | None = None) -> Iterator[list[list[Packet]]]:
        """Fresh packets, as lists of batches (at most ~CHUNK packets per yield)."""
        taken = 0
        source = ((self._base[i:i + CHUNK] for i in range(0, len(self._base), CHUNK))
                  if self._base is not None else self._read_chunks())
        for raw in source:
            pkts = [p for p in raw if p.l3 and p.malformed is None] if ip_only else raw
            if limit is not None:
                pkts = pkts[:limit - taken]
            if copy:
                pkts = [_copy(p) for p in pkts]
            else:
                for p in pkts:
                    p.xor = 0
                    p.clock = p.index
            taken += len(pkts)
            if pkts:
                yield [pkts[i:i + batch] for i in range(0, len(pkts), batch)]
            if limit is not None and taken >= limit:
                return

    def describe(self) -> dict:
        return {"path": self.path, "frames": self.frames, "ip_packets": self.packets,
                "mean_bytes": round(self.bytes / self.packets, 1) if self.packets else 0,
                "median_bytes": self.median_bytes, "configs": self.configs, "note": self.note}


def most_contacted_service(path: str, limit: int | None = None) -> tuple[str, int, int]:
    """(server address, port, connections): the destination of the most TCP SYNs."""
    syns: Counter = Counter()
    with open_capture(path) as reader:
        for i, (ts, data) in enumerate(reader):
            if limit is not None and i >= limit:
                break
            p = Packet(data, ts, i)
            if p.l3 == 4 and p.malformed is None and p.proto == 6 and p.flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
                syns[(p.dst, p.dport)] += 1
    if not syns:
        raise BenchError(f"{path}: no TCP connection opens; cannot pick a load-balanced service")
    (addr, port), n = syns.most_common(1)[0]
    return ip_str(addr), port, n


def _chain_spec(nat: dict, lb: dict, name: str) -> dict:
    return {
        "name": name,
        "input": {"malformed": "drop", "non_ip": "pass"},
        "vertices": {"nat": {"nf": "nat", "config": nat}, "portscan": {"nf": "portscan"},
                     "lb": {"nf": "lb", "config": lb}, "trojan": {"nf": "trojan"}},
        "edges": ["nat -> portscan", "portscan -> lb"],
        "offpath": [{"from": "nat", "to": "trojan", "tap": "input"}],
    }


def lan_input(limit: int | None = None) -> BenchInput:
    import yaml
    if not LAN_CAPTURE.exists() or not LAN_CHAIN.exists():
        raise BenchError(f"the lan input needs {LAN_CAPTURE} and {LAN_CHAIN} (a repository checkout)")
    spec = yaml.safe_load(LAN_CHAIN.read_text(encoding="utf-8"))
    configs = {name: dict(v.get("config") or {}) for name, v in spec["vertices"].items()}
    try:
        vip, port, n = most_contacted_service(str(LAN_CAPTURE), limit)
    except BenchError:
        vip, port, n = "none", 0, 0
    note = (f"configs of {LAN_CHAIN.relative_to(ROOT)}; most-contacted service {vip}:{port} "
            f"({n} SYNs) is the LB's VIP" if configs["lb"].get("vip") == vip else
            f"configs of {LAN_CHAIN.relative_to(ROOT)} (most-contacted service: {vip}:{port})")
    inp = BenchInput("lan", str(LAN_CAPTURE), configs, spec, limit, note)
    inp.load()
    return inp


def trace2_input(scale: float, workdir: str, limit: int | None = None, seed: int = 0) -> BenchInput:
    from .trace.gen import generate, resolve_profile
    profile = resolve_profile("trace2", scale=scale)
    path = os.path.join(workdir, f"trace2-{scale:g}.pcap")
    if not os.path.exists(path):
        _log(f"generating a trace2-shaped input: {profile.packets} packets, {profile.connections} "
             f"connections (scale {scale:g}) -> {path}")
        generate(path, profile, seed=seed)
    vip, port, n = most_contacted_service(path, limit)
    octets = vip.split(".")
    lb = {"vip": vip, "port": port, "backends": [f"198.18.{octets[2]}.{k}" for k in (11, 12, 13)]}   # RFC 2544
    note = (f"chc trace gen --profile trace2 --scale {scale:g} --seed {seed}; NAT inside {TRACE2_INSIDE}; "
            f"LB VIP = most-contacted service {vip}:{port} ({n} SYNs)")
    if TRACE2_CHAIN.exists():
        import yaml
        spec = yaml.safe_load(TRACE2_CHAIN.read_text(encoding="utf-8"))
        configs = {name: dict(v.get("config") or {}) for name, v in spec["vertices"].items()}
        if (configs["lb"].get("vip"), configs["lb"].get("port")) != (vip, port):
            configs["lb"] = lb                      # the example's VIP is not this trace's busiest service
            spec["vertices"]["lb"]["config"] = lb
            note += f"; configs of {TRACE2_CHAIN.relative_to(ROOT)} except the LB's"
        else:
            note += f"; configs of {TRACE2_CHAIN.relative_to(ROOT)}"
    else:
        configs = {"nat": {"external_ip": "198.51.100.7", "internal": [TRACE2_INSIDE], "port_range": [1024, 65535]},
                   "portscan": {}, "trojan": {}, "lb": lb}
        spec = _chain_spec(configs["nat"], configs["lb"], "paper-chain-trace2")
    inp = BenchInput("trace2", path, configs, spec, limit, note)
    inp.load()
    return inp


# -- stores -------------------------------------------------------------------------------

@dataclasses.dataclass
class StoreSpec:
    name: str                        # memory | redis | redis-2shards
    urls: list[str] | None = None
    packet_cap: int | None = None    # cells on this store use at most this many packets

    def open(self, fresh: bool = True) -> Any:
        if self.name == "memory":
            return MemoryStore()
        from .backends.redis import RedisStore
        return RedisStore(list(self.urls or []), fresh=fresh)

    def describe(self) -> str:
        return "memory (in-process)" if self.name == "memory" else f"{self.name} {','.join(self.urls or [])}"


def redis_server_binary() -> str | None:
    """A redis-server of version 7 or later on PATH, else None."""
    path = shutil.which("redis-server")
    if path is None:
        return None
    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for part in text.split():
        if part.startswith("v="):
            try:
                return path if int(part[2:].split(".")[0]) >= 7 else None
            except ValueError:
                return None
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """``n`` redis-server processes of this benchmark alone, on free loopback ports."""

    def __init__(self, binary: str, n: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="chc-bench-redis-")
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []
        try:
            for i in range(n):
                port = _free_port()
                log = open(os.path.join(self.dir, f"redis-{i}.log"), "wb")  # noqa: SIM115 - owned by the process
                proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", self.dir, "--daemonize", "no"],
                                        stdout=log, stderr=subprocess.STDOUT)
                log.close()
                self.procs.append(proc)
                self.urls.append(f"redis://127.0.0.1:{port}")
                self._wait(port, proc)
        except Exception:
            self.close()
            raise

    def _wait(self, port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"redis-server on port {port} exited at start")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise BenchError(f"redis-server on port {port} did not answer PING in {timeout:g} s")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)


# -- Figures 8 and 10: one NF alone -----------------------------------------------------------

def _maintain(store: Any, clock: int) -> None:
    """What the root does between batches (§5.3, §5.4), outside timing."""
    store.commits()
    store.prune_below(clock)


def _instrument(inst: Instance, sink: array) -> None:
    """Time every ``process`` call of ``inst`` into ``sink`` (ns)."""
    orig = inst.nf.process
    append = sink.append
    pc = _pc

    def timed(pkt: Packet, ctx: Any) -> Any:
        t0 = pc()
        try:
            return orig(pkt, ctx)
        finally:
            append(pc() - t0)

    inst.nf.process = timed


def run_nf(inp: BenchInput, nf: str, model: str, store_spec: StoreSpec, batch: int,
           latency: bool) -> dict:
    """One run of ``nf`` alone over ``inp`` (see the module docstring)."""
    cls = REGISTRY[nf]
    cfg = build_config(cls, inp.configs.get(nf) or {}, f"{nf}.config")
    store = store_spec.open() if model != "T" else None
    try:
        inst = Instance(nf, 0, cls, cfg, model, store, exclusive=True)
        proc = array("q")
        per_pkt = array("d")
        if latency:
            _instrument(inst, proc)
        mutates = nf in ("nat", "lb")
        total = cpu = 0
        n = nbytes = rewritten = rts = 0
        last = 0
        for batches in inp.chunks(batch, copy=mutates, limit=store_spec.packet_cap):
            gc.collect()
            gc.freeze()
            try:
                for b in batches:
                    rt0 = store.round_trips if store is not None else 0
                    start = len(proc)
                    c0 = _cpu()
                    t0 = _pc()
                    out = inst.run(b)
                    dt = _pc() - t0
                    cpu += _cpu() - c0
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
                    if store is not None:
                        _maintain(store, last + 1)
            finally:
                gc.unfreeze()
        rt0 = store.round_trips if store is not None else 0
        c0 = _cpu()
        t0 = _pc()
        inst.finish()
        total += _pc() - t0
        cpu += _cpu() - c0
        if store is not None:
            rts += store.round_trips - rt0
        client = inst.client
        res: dict[str, Any] = {
            "packets": n, "bytes": nbytes, "seconds": round(total / 1e9, 6),
            "pps": round(n / total * 1e9, 1) if total else None,
            "gbps": round(nbytes * 8 / total, 4) if total else None,
            "pps_cpu": round(n / cpu * 1e9, 1) if cpu else None,
            "rt_per_pkt": round(rts / n, 4) if n else 0.0,
            "blocking_per_pkt": round(client.blocking_ops / n, 4) if client is not None and n else 0.0,
            "nonblocking_per_pkt": round(client.nonblocking_ops / n, 4) if client is not None and n else 0.0,
            "out": inst.packets_out, "dropped": inst.dropped, "nf_errors": inst.nf_errors,
            "alerts": len(inst.ctx.alerts),
        }
        if mutates:
            res["rewritten_share"] = round(rewritten / n, 4) if n else 0.0
        if latency and per_pkt:
            res.update(_pcts(per_pkt))
        return res
    finally:
        if store is not None:
            store.close()


def _warm(inp: BenchInput, nf: str, models: tuple[str, ...], batch: int) -> None:
    cap = StoreSpec("memory", packet_cap=min(5000, inp.packets))
    for m in models:
        run_nf(inp, nf, m, cap, batch, latency=False)


def _combine(thr: list[dict], lat: list[dict]) -> dict:
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


def _rounds(reps: int, min_time: float, n_models: int, cap: int = 25) -> Iterator[int]:
    """Rounds of runs over every model (yields the rotation of the model order):
    at least ``reps``, and more while less than ``min_time`` seconds went by, so
    short cells are repeated enough to find an undisturbed run."""
    started = time.perf_counter()
    r = 0
    while r < reps or (r < cap and time.perf_counter() - started < min_time):
        yield r % n_models
        r += 1


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
                for k in _rounds(reps, min_time, len(models)):
                    for m in models[k:] + models[:k]:
                        thr[m].append(run_nf(inp, nf, m, st, batch, latency=False))
                        lat[m].append(run_nf(inp, nf, m, st, batch, latency=True))
                cells = {}
                for m in models:
                    cell = _combine(thr[m], lat[m])
                    cells[m] = cell
                    _log(f"  nfs {inp.name:<6} {st.name:<7} {nf:<8} {m:<8} {cell['pps'] / 1e3:9.1f} kpps "
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
                    r["pps_NA_over_T"] = _ratio(na["pps"], t["pps"])
                    r["pps_cpu_NA_over_T"] = _ratio(na.get("pps_cpu"), t.get("pps_cpu"))
                    r["p50_NA_over_T"] = _ratio(na["p50_us"], t["p50_us"])
                    r["p50_NA_minus_T_us"] = round(na["p50_us"] - t["p50_us"], 3)
                if eo and na:
                    r["pps_EO_over_NA"] = _ratio(eo["pps"], na["pps"])
                    r["pps_NA_over_EO"] = _ratio(na["pps"], eo["pps"])
                    r["p50_EO_over_NA"] = _ratio(eo["p50_us"], na["p50_us"])
                out.setdefault(inp, {}).setdefault(st, {})[nf] = r
    return out


# -- §7.1 chain ------------------------------------------------------------------------------------

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
                    c0 = _cpu()
                    t0 = _pc()
                    out += len(rt.step(b))
                    dt = _pc() - t0
                    cpu += _cpu() - c0
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
        c0 = _cpu()
        t0 = _pc()
        out += len(rt.drain())
        total += _pc() - t0
        cpu += _cpu() - c0
        s = rt.summary()
        res: dict[str, Any] = {
            "packets": n, "bytes": nbytes, "seconds": round(total / 1e9, 6),
            "pps": round(n / total * 1e9, 1) if total else None,
            "gbps": round(nbytes * 8 / total, 4) if total else None,
            "pps_cpu": round(n / cpu * 1e9, 1) if cpu else None,
            "out": out, "dropped": s.dropped, "alerts": len(s.alerts), "nf_errors": s.nf_errors,
            "rt_per_pkt": round(s.store.get("round_trips", 0) / n, 4) if n and store is not None else 0.0,
        }
        if latency and per_pkt:
            res.update(_pcts(per_pkt))
        return res
    finally:
        if store is not None:
            store.close()


def _instrument_chain(inst: Instance, acc: dict[int, int], in_proc: list[int]) -> None:
    orig = inst.nf.process
    pc = _pc
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
            for k in _rounds(reps, min_time, len(models)):
                for m in models[k:] + models[:k]:
                    thr[m].append(run_chain(inp, m, st, batch, latency=False))
                    lat[m].append(run_chain(inp, m, st, batch, latency=True))
            cells = {}
            for m in models:
                cell = _combine(thr[m], lat[m])
                pps = cell["pps"]
                cells[m] = cell
                _log(f"  chain {inp.name:<6} {st.name:<7} {m:<8} {pps / 1e3:9.1f} kpps  "
                     f"p50 {cell['p50_us']:8.2f} us  RT/pkt {cell['rt_per_pkt']:.3f}")
            t, na = cells.get("T"), cells.get("EO+C+NA")
            ratios = {}
            if t and na:
                ratios = {"pps_NA_over_T": _ratio(na["pps"], t["pps"]),
                          "pps_cpu_NA_over_T": _ratio(na.get("pps_cpu"), t.get("pps_cpu")),
                          "p50_NA_over_T": _ratio(na["p50_us"], t["p50_us"]),
                          "p50_overhead_us": round(na["p50_us"] - t["p50_us"], 3),
                          "mean_overhead_us": round(na["us_per_pkt"] - t["us_per_pkt"], 3)}
            out.setdefault(inp.name, {})[st.name] = {"models": cells, "ratios": ratios}
    return out


# -- operation offloading vs naive lock + read + modify + write-back -----------------------------

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
    _instrument(inst, proc)
    for b in batches:
        start = len(proc)
        t0 = _pc()
        inst.run(b)
        dt = _pc() - t0
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
        t0 = _pc()
        _run_batches(inst, batches, lat)
        t1 = _pc()
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
            _instrument(inst, proc)
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
                        b0 = _pc()
                        insts[i].run(b)
                        dt = _pc() - b0
                        wall += dt
                        share = (dt - sum(procs[i][start:])) / len(b)
                        lats[i].extend(x + share for x in procs[i][start:start + len(b)])
                        last = max(last, b[-1].clock)
                _maintain(store, last + 1)
            b0 = _pc()
            for inst in insts:
                inst.finish()
            wall += _pc() - b0
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
    res.update(_pcts(all_lat))
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
                cell = cells[v] = _combine(rs, rs)
                pps = cell["pps"]
                _log(f"  offload {inp.name:<6} {st.name:<7} {v:<6} {pps / 1e3:9.1f} kpps (2 instances)  "
                     f"p50 {cell['p50_us']:8.2f} us  RT/pkt {cell['rt_per_pkt']:.3f}")
            ratios = {"p50_naive_over_chc": _ratio(cells["naive"]["p50_us"], cells["chc"]["p50_us"]),
                      "pps_chc_over_naive": _ratio(cells["chc"]["pps"], cells["naive"]["pps"])}
            out.setdefault(inp.name, {})[st.name] = {"variants": cells, "ratios": ratios,
                                                      "port_range": list(OFFLOAD_PORTS)}
    return out


# -- store engine ------------------------------------------------------------------------------------

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
        t0 = _pc()
        for u in units:
            call(u)
        return n_ops / (_pc() - t0) * 1e9
    finally:
        gc.unfreeze()


def _time_engine(ops: list[Op], apply: Callable[[Op], Any]) -> float:
    return _ops_per_s(ops, apply, len(ops))


def _time_execute(ops: list[Op], execute: Callable[[list[Op]], Any], pipeline: int) -> float:
    batches = [ops[i:i + pipeline] for i in range(0, len(ops), pipeline)]
    return _ops_per_s(batches, execute, len(ops))


def bench_store(stores: list[StoreSpec], entries: int, pipeline: int, repeat: int) -> dict:
    """ops/s per op kind for the engine, the memory backend and Redis (1 and 2 shards)."""
    out: dict[str, Any] = {"entries_per_shard": entries, "key_bytes": 16, "value_bits": 64,
                           "pipeline": pipeline, "backends": {}}
    kinds = ("set", "get", "incr", "incr_chc")

    def record(name: str, fn: Callable[[dict[str, list[Op]]], dict[str, float]], n: int, note: str) -> None:
        ops = _store_ops(n)
        runs = [fn(ops) for _ in range(repeat)]
        res = {k: round(statistics.median(r[k] for r in runs)) for k in kinds}
        res["note"] = note
        res["entries"] = n
        out["backends"][name] = res
        _log(f"  store {name:<16} " + "  ".join(f"{k} {res[k] / 1e6:6.3f} Mops/s" for k in kinds))

    def engine(ops: dict[str, list[Op]]) -> dict[str, float]:
        e = StoreEngine()
        return {k: _time_engine(ops[k], e.apply) for k in kinds}

    def memory(ops: dict[str, list[Op]]) -> dict[str, float]:
        s = MemoryStore()
        return {k: _time_execute(ops[k], s.execute, pipeline) for k in kinds}

    record("engine", engine, entries, "StoreEngine.apply in a loop (one Python thread)")
    record("memory", memory, entries, f"MemoryStore.execute, {pipeline} ops per request")
    for st in stores:
        if st.name == "memory":
            continue
        shards = len(st.urls or [])

        def redis(ops: dict[str, list[Op]], st: StoreSpec = st) -> dict[str, float]:
            s = st.open()
            try:
                return {k: _time_execute(ops[k], s.execute, pipeline) for k in kinds}
            finally:
                s.close()

        record(st.name, redis, entries * shards,
               f"RedisStore.execute, {pipeline} ops per request, {shards} server(s), one client thread")
    return out


# -- orchestration ----------------------------------------------------------------------------------

QUICK = {"trace2_scale": 0.005, "repeat": 2, "min_time": 1.0, "entries": 100_000, "redis_packets": 3000,
         "offload_packets": 8000}
FULL = {"trace2_scale": 0.01, "repeat": 3, "min_time": 5.0, "entries": 100_000, "redis_packets": None,
        "offload_packets": 30000}


def add_arguments(p: argparse.ArgumentParser, sections: tuple[str, ...] = SECTIONS) -> None:
    p.add_argument("--quick", action="store_true",
                   help="reduced grid (trace2-shaped input only, 2 repetitions, Redis cells capped): "
                        "under 2 minutes")
    p.add_argument("--json", metavar="FILE", help="write every result as JSON")
    p.add_argument("--png", metavar="DIR", help="write plots (PNG, needs matplotlib) into DIR")
    p.add_argument("--redis", metavar="URL",
                   help="Redis server(s) to use, redis://HOST:PORT[,redis://...] (a second URL enables the "
                        "2-shard store test); default: start a private redis-server if one is installed")
    p.add_argument("--no-redis", action="store_true", help="memory store only")
    p.add_argument("--trace2-scale", type=float, metavar="F",
                   help="scale of the generated trace2-shaped input (default: 0.01 = 64,000 packets; "
                        "quick: 0.005; 1 = full size, 6.4M packets)")
    p.add_argument("--inputs", default=None, metavar="LIST",
                   help="comma-separated inputs: lan, trace2 (default: both; quick: trace2)")
    p.add_argument("--packets", type=int, metavar="N", help="use only the first N frames of each input")
    p.add_argument("--repeat", type=int, metavar="R", help="rounds of runs per cell, at least (default: 3; quick: 2)")
    p.add_argument("--batch", type=int, default=256, help="packets per Instance.run batch (default: %(default)s)")
    p.add_argument("--redis-packets", type=int, metavar="N",
                   help="at most N packets per Redis cell (default: all; quick: 3000)")
    p.add_argument("--entries", type=int, metavar="N", help="store section: keys per shard (default: 100000)")
    if len(sections) > 1:
        p.add_argument("--sections", default=",".join(sections), metavar="LIST",
                       help=f"comma-separated sections to run (default: {','.join(sections)})")
    p.add_argument("--workdir", metavar="DIR", help="where generated inputs go (default: a temporary directory)")


def _positive(name: str, value: Any) -> None:
    if value is not None and not value > 0:
        raise BenchError(f"--{name} must be positive, got {value!r}")


def run(args: argparse.Namespace, sections: tuple[str, ...] = SECTIONS) -> dict:
    """Run the selected sections; return the results (as written to --json)."""
    started = time.perf_counter()
    conf = dict(QUICK if args.quick else FULL)
    for key in ("trace2_scale", "repeat", "redis_packets"):
        if getattr(args, key, None) is not None:
            conf[key] = getattr(args, key)
    if getattr(args, "entries", None) is not None:
        conf["entries"] = args.entries
    for key in ("trace2_scale", "repeat", "redis_packets", "entries"):
        _positive(key.replace("_", "-"), conf.get(key))
    _positive("packets", args.packets)
    _positive("batch", args.batch)
    chosen = tuple(s.strip() for s in getattr(args, "sections", ",".join(sections)).split(",") if s.strip())
    bad = [s for s in chosen if s not in sections]
    if bad:
        raise BenchError(f"--sections: unknown section {bad[0]!r} (known: {', '.join(sections)})")
    names = [s.strip() for s in (args.inputs or ("trace2" if args.quick else "lan,trace2")).split(",") if s.strip()]
    for nm in names:
        if nm not in ("lan", "trace2"):
            raise BenchError(f"--inputs: unknown input {nm!r} (known: lan, trace2)")
    # --repeat R alone means exactly R rounds; tests (--packets) never spin.
    min_time = 0.0 if args.repeat is not None or args.packets is not None else conf["min_time"]
    conf["min_time"] = min_time
    results: dict[str, Any] = {"meta": _meta(args, conf, chosen)}
    workdir = args.workdir or tempfile.mkdtemp(prefix="chc-bench-")
    private: PrivateRedis | None = None
    try:
        inputs: list[BenchInput] = []
        if chosen != ("store",):
            for nm in names:
                inputs.append(lan_input(args.packets) if nm == "lan"
                              else trace2_input(conf["trace2_scale"], workdir, args.packets))
        results["inputs"] = {inp.name: inp.describe() for inp in inputs}
        stores = [StoreSpec("memory")]
        redis_note = "not used (--no-redis)"
        if not args.no_redis:
            urls: list[str] = []
            if args.redis:
                urls = [u.strip() for u in args.redis.split(",") if u.strip()]
                redis_note = f"given: {', '.join(urls)}"
            else:
                binary = redis_server_binary()
                if binary is None:
                    redis_note = "skipped: no redis-server (Redis 7+) on PATH"
                else:
                    private = PrivateRedis(binary, 2 if "store" in chosen else 1)
                    urls = private.urls
                    redis_note = (f"private redis-server(s) {', '.join(urls)} (--save '' --appendonly no), "
                                  "loopback")
            if urls:
                stores.append(StoreSpec("redis", urls[:1], conf["redis_packets"]))
        results["meta"]["redis"] = redis_note
        _log(f"chc bench: sections {', '.join(chosen)}; inputs {', '.join(names)}; redis: {redis_note}")
        primary = next((i for i in inputs if i.name == "trace2"), inputs[0] if inputs else None)
        if "nfs" in chosen:
            _log("Figures 8 and 10: each NF alone")
            grid = bench_nfs(inputs, stores, NFS, MODELS, args.batch, conf["repeat"], min_time)
            results["fig8_fig10"] = grid
            results["ratios"] = nf_ratios(grid)
            if primary is not None:
                results["nfs"] = {nf: {m: c for m, c in cells.items()}
                                  for nf, cells in grid[primary.name]["memory"].items()}
                results["nfs_input"] = primary.name
        if "chain" in chosen:
            _log("§7.1 chain: nat -> portscan -> lb, trojan off-path")
            results["chain"] = bench_chain(inputs, stores, ("T", "EO+C+NA"), args.batch, conf["repeat"], min_time)
        if "offload" in chosen:
            _log("operation offloading vs naive lock + read + write-back (2 NAT instances, model EO)")
            off_inputs = [primary] if args.quick and primary is not None else inputs
            results["offload"] = bench_offload(off_inputs, stores, args.batch, conf["repeat"],
                                               conf["offload_packets"] if args.packets is None else None)
        if "store" in chosen:
            _log("store engine: get/set/incr, 16-byte keys, 64-bit values")
            sstores = []
            redis = next((s for s in stores if s.name == "redis"), None)
            all_urls = (private.urls if private is not None else
                        [u.strip() for u in (args.redis or "").split(",") if u.strip()])
            if redis is not None:
                sstores.append(StoreSpec("redis", all_urls[:1]))
                if len(all_urls) >= 2:
                    sstores.append(StoreSpec("redis-2shards", all_urls[:2]))
            results["store_engine"] = bench_store(sstores, conf["entries"], 1000, 1 if args.quick else 3)
    finally:
        if private is not None:
            private.close()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)
    results["meta"]["loadavg_end"] = _loadavg()
    return results


def _loadavg() -> list[float] | None:
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


def _meta(args: argparse.Namespace, conf: dict, sections: tuple[str, ...]) -> dict:
    try:
        import hiredis  # noqa: F401
        has_hiredis = True
    except ImportError:
        has_hiredis = False
    return {
        "chc": __version__, "python": platform.python_version(), "implementation": platform.python_implementation(),
        "machine": platform.machine(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_start": _loadavg(), "hiredis": has_hiredis,
        # the compiled build (setup.py) or the pure-Python fallback
        "compiled": not packet_module.__file__.endswith(".py"),
        "quick": bool(args.quick), "sections": list(sections), "batch": args.batch, "packets_limit": args.packets,
        **{k: v for k, v in conf.items()},
    }


# -- output ----------------------------------------------------------------------------------------

def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def summary_table(res: dict) -> str:
    """The one summary table of a run (every section that ran)."""
    head = ("benchmark", "input", "store", "metric", "T", "EO", "EO+C", "EO+C+NA", "ratio")
    rows: list[tuple[str, ...]] = []
    for inp, by_store in res.get("fig8_fig10", {}).items():
        for st, by_nf in by_store.items():
            for nf, cells in by_nf.items():
                r = res.get("ratios", {}).get(inp, {}).get(st, {}).get(nf, {})
                vals = [cells.get(m) for m in MODELS]
                rows.append((nf, inp, st, "kpps", *[_fmt(c["pps"] / 1e3) if c else "-" for c in vals],
                             f"NA/T {_fmt(r.get('pps_NA_over_T'), 2)}"))
                rows.append(("", "", "", "Gbit/s", *[_fmt(c["gbps"], 3) if c else "-" for c in vals],
                             f"NA/EO kpps {_fmt(r.get('pps_NA_over_EO'), 1)}"))
                rows.append(("", "", "", "p50 us", *[_fmt(c["p50_us"], 2) if c else "-" for c in vals],
                             f"NA/T {_fmt(r.get('p50_NA_over_T'), 2)}"))
                rows.append(("", "", "", "p5/p95 us",
                             *[f"{_fmt(c['p5_us'], 2)}/{_fmt(c['p95_us'], 2)}" if c else "-" for c in vals], ""))
                rows.append(("", "", "", "RT/pkt", *[_fmt(c["rt_per_pkt"], 3) if c else "-" for c in vals],
                             f"EO/NA p50 {_fmt(r.get('p50_EO_over_NA'), 1)}"))
    for inp, by_store in res.get("chain", {}).items():
        for st, d in by_store.items():
            cells, r = d["models"], d["ratios"]
            vals = [cells.get(m) for m in MODELS]
            rows.append(("chain", inp, st, "kpps", *[_fmt(c["pps"] / 1e3) if c else "-" for c in vals],
                         f"NA/T {_fmt(r.get('pps_NA_over_T'), 2)}"))
            rows.append(("", "", "", "p50 us", *[_fmt(c["p50_us"], 2) if c else "-" for c in vals],
                         f"+{_fmt(r.get('p50_overhead_us'), 2)} us"))
            rows.append(("", "", "", "RT/pkt", *[_fmt(c["rt_per_pkt"], 3) if c else "-" for c in vals], ""))
    for inp, by_store in res.get("offload", {}).items():
        for st, d in by_store.items():
            v, r = d["variants"], d["ratios"]
            rows.append(("offload 2xNAT", inp, st, "kpps (naive, CHC)", "", _fmt(v["naive"]["pps"] / 1e3),
                         _fmt(v["chc"]["pps"] / 1e3), "", f"CHC/naive {_fmt(r['pps_chc_over_naive'], 2)}"))
            rows.append(("", "", "", "p50 us (naive, CHC)", "", _fmt(v["naive"]["p50_us"], 2),
                         _fmt(v["chc"]["p50_us"], 2), "", f"naive/CHC {_fmt(r['p50_naive_over_chc'], 2)}"))
            rows.append(("", "", "", "RT/pkt (naive, CHC)", "", _fmt(v["naive"]["rt_per_pkt"], 2),
                         _fmt(v["chc"]["rt_per_pkt"], 2), "", ""))
    se = res.get("store_engine")
    if se:
        for name, d in se["backends"].items():
            rows.append(("store " + name, "-", "-", "Mops/s: get set incr incr-tagged", _fmt(d["get"] / 1e6, 3),
                         _fmt(d["set"] / 1e6, 3), _fmt(d["incr"] / 1e6, 3), _fmt(d["incr_chc"] / 1e6, 3),
                         f"{d['entries']} keys"))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), line]
    for row in rows:
        if row[0] and out[-1] != line and len(out) > 2:
            out.append("")
        out.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(out)


def write_plots(res: dict, outdir: str) -> list[str]:
    """PNG plots of every section that ran; [] with a message if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("chc bench: matplotlib is not installed; no plots (pip install matplotlib)")
        return []
    os.makedirs(outdir, exist_ok=True)
    files = []
    colors = {"T": "#4c72b0", "EO": "#dd8452", "EO+C": "#55a868", "EO+C+NA": "#c44e52"}
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
                    cols.append(colors[m])
            bp = ax.bxp(stats, positions=positions, showfliers=False, patch_artist=True, widths=0.8)
            for patch, col in zip(bp["boxes"], cols, strict=True):
                patch.set_facecolor(col)
            ax.set_xticks([i * 5 + 1.5 for i in range(len(by_nf))], list(by_nf))
            ax.set_yscale("log")
            ax.set_ylabel("per-packet processing time (us), p5/p25/p50/p75/p95")
            ax.set_title(f"Figure 8: per-packet time, {inp}, {st} store")
            ax.legend([plt.Rectangle((0, 0), 1, 1, fc=colors[m]) for m in MODELS], MODELS, fontsize=8)
            files.append(_save(fig, outdir, f"fig8_{inp}_{st}.png"))
            fig, ax = plt.subplots(figsize=(9, 4.5))
            for i, nf in enumerate(by_nf):
                for j, m in enumerate(MODELS):
                    c = by_nf[nf].get(m)
                    if c:
                        ax.bar(i * 5 + j, c["gbps"], color=colors[m], label=m if i == 0 else None)
            ax.set_xticks([i * 5 + 1.5 for i in range(len(by_nf))], list(by_nf))
            ax.axhline(10, color="#888888", linestyle="--", linewidth=1)
            ax.set_ylabel("max throughput per instance (Gbit/s)")
            ax.set_title(f"Figure 10: per-instance throughput, {inp}, {st} store")
            ax.legend(fontsize=8)
            files.append(_save(fig, outdir, f"fig10_{inp}_{st}.png"))
    if res.get("chain"):
        fig, ax = plt.subplots(figsize=(7, 4))
        labels, x = [], 0
        for inp, by_store in res["chain"].items():
            for st, d in by_store.items():
                for j, (m, c) in enumerate(d["models"].items()):
                    ax.bar(x + j, c["pps"] / 1e3, color=colors[m], label=m if x == 0 else None)
                labels.append((x + 0.5, f"{inp}\n{st}"))
                x += 3
        ax.set_xticks([p for p, _ in labels], [t for _, t in labels])
        ax.set_ylabel("end-to-end throughput (kpps)")
        ax.set_title("§7.1 chain: nat -> portscan -> lb (+ trojan off-path)")
        ax.legend(fontsize=8)
        files.append(_save(fig, outdir, "chain.png"))
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
        files.append(_save(fig, outdir, "offload.png"))
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
        files.append(_save(fig, outdir, "store_engine.png"))
    return files


def _save(fig: Any, outdir: str, name: str) -> str:
    import matplotlib.pyplot as plt
    path = os.path.join(outdir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def finish(res: dict, args: argparse.Namespace) -> None:
    """Print the summary table; write --json and --png."""
    print(summary_table(res))
    print(f"\n{res['meta']['elapsed_s']} s; load average {res['meta']['loadavg_start']} -> "
          f"{res['meta']['loadavg_end']} ({res['meta']['cpus']} CPUs)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1)
            fh.write("\n")
    if args.png:
        files = write_plots(res, args.png)
        if files:
            _log(f"plots: {', '.join(files)}")


def main(argv: list[str] | None = None, sections: tuple[str, ...] = SECTIONS, prog: str = "chc bench") -> int:
    """Entry point of the ``bench/`` scripts: ``sections`` is what the script runs."""
    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").split("\n\n")[0])
    add_arguments(parser, sections)
    args = parser.parse_args(argv)
    try:
        res = run(args, sections)
    except BenchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    finish(res, args)
    return 0


# -- profiling -------------------------------------------------------------------------------------

def profile_main(argv: list[str] | None = None, prog: str = "bench/profile_nf.py") -> int:
    """Profile one NF alone (``cProfile``, or ``pyinstrument`` with ``--pyinstrument``)."""
    p = argparse.ArgumentParser(prog=prog, description="Profile one NF alone over a benchmark input "
                                "(the same runs as the nfs section) and print where the time goes.")
    p.add_argument("--nf", default="nat", choices=sorted(REGISTRY))
    p.add_argument("--model", default="EO+C+NA", choices=MODELS)
    p.add_argument("--input", default="trace2", choices=("trace2", "lan"))
    p.add_argument("--trace2-scale", type=float, default=0.01, metavar="F")
    p.add_argument("--packets", type=int, metavar="N", help="use only the first N frames")
    p.add_argument("--runs", type=int, default=3, help="runs profiled (default: %(default)s)")
    p.add_argument("--top", type=int, default=25, help="functions listed (default: %(default)s)")
    p.add_argument("--pyinstrument", action="store_true", help="a call tree from pyinstrument instead")
    p.add_argument("--workdir", metavar="DIR", help="where the generated input goes")
    args = p.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="chc-profile-")
    try:
        inp = (lan_input(args.packets) if args.input == "lan"
               else trace2_input(args.trace2_scale, workdir, args.packets))
        st = StoreSpec("memory")
        pps = max(run_nf(inp, args.nf, args.model, st, 256, latency=False)["pps"] for _ in range(2))
        _log(f"{args.nf} {args.model} on {inp.name}: {pps / 1e3:.1f} kpps without profiler (best of 2)")
        if args.pyinstrument:
            from pyinstrument import Profiler
            prof = Profiler(interval=0.0002)
            prof.start()
            for _ in range(args.runs):
                run_nf(inp, args.nf, args.model, st, 256, latency=False)
            prof.stop()
            print(prof.output_text(unicode=False, color=False))
        else:
            import cProfile
            import pstats
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.runs):
                run_nf(inp, args.nf, args.model, st, 256, latency=False)
            prof.disable()
            pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(args.top)
    except BenchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


# -- chc bench ---------------------------------------------------------------------------------------

def register_bench(sub: Any) -> None:
    """Add the ``bench`` subcommand to the ``chc`` parser."""
    p = sub.add_parser("bench", help="run the benchmarks (Figures 8 and 10, §7.1 chain, offloading, store)",
                       description="Run the benchmark set and print one summary table: each NF alone in every "
                                   "state model (Figures 8 and 10), the §7.1 chain, offloaded ops vs naive "
                                   "lock + read + write-back, and store ops/s. See docs/benchmarks.md.")
    add_arguments(p)


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        res = run(args)
    except BenchError as exc:
        raise UsageError(str(exc)) from None
    finish(res, args)
    return 0


__all__ = ["MODELS", "NFS", "SECTIONS", "BenchError", "BenchInput", "NaiveObject", "StoreSpec", "bench_chain",
           "bench_nfs", "bench_offload", "bench_store", "cmd_bench", "main", "register_bench", "run",
           "run_chain", "run_nf", "run_offload", "summary_table", "write_plots"]
