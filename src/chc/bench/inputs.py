"""Benchmark inputs: a capture, the NF configs and chain that fit it, its packets.

Theory of operation
-------------------
An input is read and parsed once, before any timing (:meth:`BenchInput.load`):
up to :data:`CACHE_MAX` packets are kept in memory, a larger input is streamed
from disk again in chunks of :data:`CHUNK` for every run.  Every run gets fresh
copies of the packets (NAT and LB rewrite them in place), made before timing.

``lan``
    ``traces/pathspider/lan-2012.pcap.gz`` with the configs of
    ``examples/paper_chain.yaml``.
``trace2``
    ``chc trace gen --profile trace2 --scale F`` with the configs of
    ``examples/paper_chain_trace2.yaml``: NAT inside prefix 10.20.0.0/16, the
    generator's clients; the LB's VIP is checked to be the most-contacted
    server:port of the generated trace, else replaced.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ..capture import open_capture
from ..packet import TCP_ACK, TCP_SYN, Packet, ip_str
from .harness import BenchError, progress

ROOT = Path(__file__).resolve().parents[3]          # the repository (editable install / checkout)
LAN_CAPTURE = ROOT / "traces" / "pathspider" / "lan-2012.pcap.gz"
LAN_CHAIN = ROOT / "examples" / "paper_chain.yaml"
TRACE2_CHAIN = ROOT / "examples" / "paper_chain_trace2.yaml"
TRACE2_INSIDE = "10.20.0.0/16"       # chc.trace.gen: clients in 10.20.0.0/16, servers in 172.16.0.0/12
CACHE_MAX = 400_000                  # inputs up to this many packets are parsed once and kept
CHUNK = 65_536                       # larger inputs are streamed from disk in chunks of this many


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
    from ..trace.gen import generate, resolve_profile
    profile = resolve_profile("trace2", scale=scale)
    path = os.path.join(workdir, f"trace2-{scale:g}.pcap")
    if not os.path.exists(path):
        progress(f"generating a trace2-shaped input: {profile.packets} packets, {profile.connections} "
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
