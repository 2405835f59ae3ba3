"""Synthetic traces with the statistics of the paper's Trace1 and Trace2 (``chc trace gen``).

Theory of operation
-------------------
The paper (§7) evaluates on two campus-to-EC2 traces that are not public:
Trace1 has 3.8M packets, 1.7K connections and a median packet of 368 B; Trace2
6.4M packets, 199K connections and 1434 B.  A *profile* holds those three
numbers plus the structure knobs below; ``--packets``, ``--connections`` and
``--scale`` override or scale them (the duration scales with them, so the
packet rate stays the profile's).

**Plan (O(connections) memory).**  One pass over a seeded :class:`random.Random`
draws, per connection, its protocol (a UDP share, most of it one-query /
one-answer DNS-like exchanges), for TCP its teardown (FIN or RST), and a
lognormal weight.  Weights are scaled so that the packet counts, after each
connection's minimum (TCP: handshake + one data segment + teardown), add up to
*exactly* the requested packet count (largest remainders get the rounding), so
flow sizes are heavy-tailed and the packet and connection counts are exact.
Each connection also gets a packet gap and RTT (lognormal) and a start time
such that it ends within the trace.

**Packet sizes.**  Every TCP connection has a fixed skeleton: SYN, SYN-ACK, ACK
(66/66/54 B with MSS/WS/SACK options on the SYNs), then a data phase in which
one pure ACK follows every ``ack_every`` data segments (in the other
direction), then FIN/ACK, FIN/ACK, ACK or one RST.  The number of these small
control frames (and of the small DNS-like UDP frames) is known from the plan,
so the share ``c`` of packets below the target median is known before any
packet is written.  Data frames draw their size from a table whose CDF at the
median ``m`` is ``(0.5 - c) / (1 - c)``: a log-uniform band of small payloads,
a uniform band ``[0.96 m, 1.04 m]`` around the median, and large frames (mostly
full 1514 B segments).  The overall median therefore lands on ``m`` up to
sampling noise, and the band keeps it within a few percent even if the
control share were off by several points.

**Streaming.**  Connections are started lazily in start-time order; each is a
generator that yields its packets ``(timestamp_ns, frame)`` in order, and a
heap keyed by ``(timestamp, connection id)`` merges the active ones.  Memory is
bounded by the plan plus one pending frame per active connection.

**Frames, fast.**  A frame is one ``struct.pack`` of the Ethernet, IPv4 and TCP
(or UDP) headers plus a slice of a fixed filler payload.  Checksums are never
computed over bytes: the one's-complement sums of the constant header words of
each direction are precomputed per connection, the filler's prefix sums are
precomputed per length, so each checksum is a handful of integer additions and
two folds.  Every IPv4 header checksum and TCP/UDP checksum is valid.

Addresses: clients in 10.20.0.0/16, servers in 172.16.0.0/12 (both private),
host popularity Zipf-like; client ports are handed out per client so no two
connections share a 5-tuple; server ports from a weighted table of common
services and random high ports (IRC and FTP control ports are avoided, so the
Trojan detector stays quiet on generated traces).
"""

from __future__ import annotations

import array
import bisect
import heapq
import math
import random
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from ..capture import CaptureWriter

__all__ = ["PROFILES", "GenPlan", "Profile", "generate", "make_plan", "resolve_profile"]

#: Timestamp of the first connection start: 2019-02-26 00:00:00 UTC (NSDI '19).
EPOCH_NS = 1_551_139_200 * 1_000_000_000


@dataclass(frozen=True)
class Profile:
    """What a synthetic trace looks like (see the module docstring)."""

    name: str
    packets: int
    connections: int
    median: int                 # median frame length, bytes (Ethernet frame as captured)
    duration_s: float = 600.0
    udp_share: float = 0.10     # share of connections that are UDP
    dns_share: float = 0.75     # share of UDP connections that are one query + one answer
    rst_share: float = 0.15     # share of TCP connections closed by an RST (others by FINs)
    ack_every: int = 2          # data segments per pure ACK in a TCP data phase
    size_sigma: float = 2.0     # sigma of the lognormal flow-size weights (heavy tail)
    gap_ms: float = 5.0         # median gap between two packets of a connection
    rtt_ms: float = 15.0        # median round-trip time
    clients_per_conn: float = 1 / 40   # client hosts per connection
    servers_per_conn: float = 1 / 60   # server hosts per connection
    # Relative rate over equal slices of the duration (``--shape 1,4,1``: a rise
    # and a fall); empty: constant.  Connections start with that density.
    shape: tuple[float, ...] = ()


PROFILES: dict[str, Profile] = {
    "trace1": Profile("trace1", 3_800_000, 1_700, 368, udp_share=0.10, ack_every=2,
                      size_sigma=2.0, gap_ms=20.0, clients_per_conn=1 / 8, servers_per_conn=1 / 6),
    "trace2": Profile("trace2", 6_400_000, 199_000, 1434, udp_share=0.15, ack_every=3,
                      size_sigma=1.8, gap_ms=2.0),
}


def resolve_profile(name: str, packets: int | None = None, connections: int | None = None,
                    scale: float = 1.0, shape: tuple[float, ...] = ()) -> Profile:
    """The named profile, scaled by ``scale``, then with explicit overrides."""
    if shape and (any(not w >= 0 for w in shape) or not sum(shape) > 0):
        raise ValueError(f"shape: relative rates >= 0, not all 0, got {','.join(map(str, shape))}")
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    p = PROFILES[name]
    n = packets if packets is not None else max(1, round(p.packets * scale))
    c = connections if connections is not None else max(1, round(p.connections * scale))
    # Keep the profile's packet rate: the duration follows the packet count.
    duration = p.duration_s * n / p.packets
    return replace(p, packets=n, connections=c, duration_s=duration, shape=tuple(shape))


def _shaped(shape: tuple[float, ...]) -> Callable[[float], float]:
    """Inverse CDF of the piecewise-constant density ``shape`` on [0, 1): maps a
    uniform draw to a start position, so connections start at the shape's rate."""
    if not shape:
        return lambda u: u
    total = sum(shape)
    cum = [0.0]
    for w in shape:
        cum.append(cum[-1] + w / total)
    k = len(shape)

    def warp(u: float) -> float:
        i = min(bisect.bisect_right(cum, u) - 1, k - 1)
        while shape[i] == 0:            # u on a zero slice's edge: the next slice with weight
            i += 1
        return (i + (u - cum[i]) / (cum[i + 1] - cum[i])) / k
    return warp


# -- the plan ------------------------------------------------------------------------

KIND_FIN, KIND_RST, KIND_UDP, KIND_DNS = 0, 1, 2, 3
_MIN_PACKETS = {KIND_FIN: 7, KIND_RST: 5, KIND_UDP: 1, KIND_DNS: 2}
_UDP_WEIGHT = 0.3        # UDP flows carry fewer packets than TCP flows of the same draw


@dataclass
class GenPlan:
    """Per connection (index = connection id): kind, packets, start, gap and RTT."""

    profile: Profile
    kind: array.array
    size: array.array
    start_ns: array.array
    gap_ns: array.array
    rtt_ns: array.array
    small_packets: int          # control frames and DNS-like frames (all below the median)
    size_table: array.array = field(default_factory=lambda: array.array("H"))

    @property
    def small_share(self) -> float:
        return self.small_packets / self.profile.packets


def _control_packets(kind: int, n: int, ack_every: int) -> int:
    if kind == KIND_DNS:
        return n
    if kind == KIND_UDP:
        return 0
    teardown = 3 if kind == KIND_FIN else 1
    return 3 + teardown + (n - 3 - teardown) // (ack_every + 1)


def make_plan(profile: Profile, seed: int) -> GenPlan:
    """Draw every connection's kind, size and timing (deterministic by ``seed``)."""
    p = profile
    if p.connections < 1 or p.packets < 1:
        raise ValueError("need at least one packet and one connection")
    if not 64 <= p.median <= 1514:
        raise ValueError(f"median packet size must be within 64..1514 bytes, got {p.median}")
    rng = random.Random(seed)
    rnd = rng.random
    lognorm = rng.lognormvariate
    c = p.connections
    kind = array.array("b", bytes(c))
    weight = array.array("d", bytes(8 * c))
    fixed = 0
    for i in range(c):
        if rnd() < p.udp_share:
            k = KIND_DNS if rnd() < p.dns_share else KIND_UDP
        else:
            k = KIND_RST if rnd() < p.rst_share else KIND_FIN
        kind[i] = k
        fixed += _MIN_PACKETS[k]
        if k != KIND_DNS:
            w = lognorm(0.0, p.size_sigma)
            weight[i] = w * _UDP_WEIGHT if k == KIND_UDP else w
    budget = p.packets - fixed
    if budget < 0:
        raise ValueError(
            f"{p.packets} packets are too few for {c} connections (they need at least {fixed}: "
            f"a TCP connection has at least 5 packets)")
    total_w = sum(weight)
    size = array.array("q", (_MIN_PACKETS[k] for k in kind))
    if budget:
        if total_w <= 0:        # only DNS-like flows: the first one takes the rest
            size[0] += budget
        else:
            f = budget / total_w
            fracs = []
            given = 0
            for i in range(c):
                x = weight[i] * f
                whole = int(x)
                size[i] += whole
                given += whole
                if weight[i]:
                    fracs.append((x - whole, i))
            rest = budget - given
            fracs.sort(reverse=True)
            for j in range(rest):
                size[fracs[j % len(fracs)][1]] += 1
    small = sum(_control_packets(kind[i], size[i], p.ack_every) for i in range(c))
    duration_ns = max(1, int(p.duration_s * 1e9))
    start = array.array("q", bytes(8 * c))
    gap = array.array("q", bytes(8 * c))
    rtt = array.array("q", bytes(8 * c))
    warp = _shaped(p.shape)
    for i in range(c):
        g = p.gap_ms * 1e6 * lognorm(0.0, 0.8)
        r = p.rtt_ms * 1e6 * lognorm(0.0, 0.5)
        n = size[i]
        longest = 0.9 * duration_ns - 1.1 * r
        if n * g > longest:
            g = max(1000.0, longest / n)
        d = min(duration_ns, n * g + 1.1 * r)
        gap[i] = int(g)
        rtt[i] = int(r)
        start[i] = int(warp(rnd()) * max(0.0, duration_ns - d))
    plan = GenPlan(p, kind, size, start, gap, rtt, small)
    plan.size_table = size_table(p.median, plan.small_share)
    return plan


_TABLE_BITS = 16
_MIN_FRAME = 60


def size_table(median: int, small_share: float) -> array.array:
    """Inverse CDF of data frame sizes (65536 entries) that puts the overall median at ``median``."""
    f = (0.5 - small_share) / (1.0 - small_share) if small_share < 1 else 0.0
    f = min(1.0, max(0.0, f))
    lo = max(_MIN_FRAME + 1, round(median * 0.96))
    hi = min(1514, round(median * 1.04))
    w_band = min(0.2, 2 * f, 2 * (1 - f))
    w_small = max(0.0, f - w_band / 2)
    w_large = max(0.0, 1.0 - w_small - w_band)
    q = 1 << _TABLE_BITS
    out = array.array("H", bytes(2 * q))
    for i in range(q):
        u = (i + 0.5) / q
        if u < w_small:
            x = u / w_small
            s = int(_MIN_FRAME * (lo / _MIN_FRAME) ** x)
            s = min(lo - 1, max(_MIN_FRAME, s))
        elif u < w_small + w_band:
            x = (u - w_small) / w_band
            s = min(hi, lo + int(x * (hi - lo + 1)))
        else:
            x = (u - w_small - w_band) / w_large if w_large else 1.0
            if hi < 1513 and x < 0.3:
                s = hi + 1 + int(x / 0.3 * (1514 - hi - 1))
            else:
                s = 1514
        out[i] = s
    return out


# -- frames --------------------------------------------------------------------------

_TCP_HDR = struct.Struct("!12sHBBHHHBBH4s4sHHIIBBHHH")   # Ethernet + IPv4 + TCP (no options)
_UDP_HDR = struct.Struct("!12sHBBHHHBBH4s4sHHHH")         # Ethernet + IPv4 + UDP
_SYN_OPTS = bytes([2, 4, 0x05, 0xB4, 1, 3, 3, 7, 1, 1, 4, 2])  # MSS 1460, NOP, WS 7, NOP, NOP, SACK-perm
_SYN_OPTS_SUM = sum(struct.unpack("!6H", _SYN_OPTS))
_FILL = (b"CHC synthetic trace payload, NSDI 2019 Trace profile. " * 30)[:1500]
_MAC_CAMPUS = bytes.fromhex("02434843000a")   # locally administered
_MAC_CLOUD = bytes.fromhex("02434843000b")
_MACS_C2S = _MAC_CLOUD + _MAC_CAMPUS          # dst, src
_MACS_S2C = _MAC_CAMPUS + _MAC_CLOUD
_FIN, _SYN, _RST, _PSH, _ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def _prefix_sums(data: bytes) -> list[int]:
    """One's-complement (unfolded) sums of every prefix, odd lengths zero-padded."""
    sums = [0] * (len(data) + 1)
    total = 0
    for n in range(1, len(data) + 1):
        if n & 1:
            sums[n] = total + (data[n - 1] << 8)
        else:
            total += (data[n - 2] << 8) | data[n - 1]
            sums[n] = total
    return sums


_FILL_SUM = _prefix_sums(_FILL)


def _dns_pair(name: str, qid: int) -> tuple[tuple[bytes, int], tuple[bytes, int]]:
    """A well-formed DNS query for ``name`` (type A) and its answer (192.0.2.x), with payload sums."""
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    question = qname + struct.pack("!HH", 1, 1)
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question
    answer = (struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question
              + struct.pack("!HHHIH4s", 0xC00C, 1, 1, 300, 4, bytes((192, 0, 2, qid & 0x3F))))
    return (query, _prefix_sums(query)[-1]), (answer, _prefix_sums(answer)[-1])


_DNS = [_dns_pair(name, 0x4300 + k) for k, name in enumerate(
    ("example.com", "www.example.org", "api.example.net", "cdn.example.com", "mail.example.org",
     "s3.example.net", "login.example.com", "updates.example.org"))]


def _addr_sum(a: bytes) -> int:
    return ((a[0] << 8) | a[1]) + ((a[2] << 8) | a[3])


def _tcp_flow(kind: int, n: int, t: int, gap: int, rtt: int, mode: int, ack_every: int,
              cip: bytes, sip: bytes, cport: int, sport: int, rng: random.Random,
              table: array.array) -> Iterator[tuple[int, bytes]]:
    """Packets of one TCP connection: handshake, data phase, FIN or RST teardown."""
    rnd = rng.random
    bits = rng.getrandbits
    pack = _TCP_HDR.pack
    fill = _FILL
    fsum = _FILL_SUM
    ttl_c = 64 if rnd() < 0.7 else 128
    ttl_s = 40 + int(rnd() * 24)
    win_c = 502 + int(rnd() * 64000)
    win_s = 235 + int(rnd() * 30000)
    addr = _addr_sum(cip) + _addr_sum(sip)
    # Per side: MACs, src, dst, sport, dport, IP sum base, TCP sum base, window, TTL.
    sides = (
        (_MACS_C2S, cip, sip, cport, sport, 0x4500 + 0x4000 + (ttl_c << 8 | 6) + addr,
         addr + 6 + cport + sport + win_c, win_c, ttl_c),
        (_MACS_S2C, sip, cip, sport, cport, 0x4500 + 0x4000 + (ttl_s << 8 | 6) + addr,
         addr + 6 + cport + sport + win_s, win_s, ttl_s),
    )
    seq = [bits(32), bits(32)]
    ipid = [bits(16), bits(16)]

    def mk(side: int, flags: int, plen: int, syn: bool = False) -> bytes:
        macs, src, dst, sp, dp, ipb, tb, win, ttl = sides[side]
        i = ipid[side] = (ipid[side] + 1) & 0xFFFF
        s = seq[side]
        a = seq[1 - side] if flags & _ACK else 0
        tcplen = (32 if syn else 20) + plen
        tot = 20 + tcplen
        c = ipb + tot + i
        c = (c & 0xFFFF) + (c >> 16)
        ipc = ~((c & 0xFFFF) + (c >> 16)) & 0xFFFF
        off = 0x80 if syn else 0x50
        c = (tb + tcplen + (s >> 16) + (s & 0xFFFF) + (a >> 16) + (a & 0xFFFF) + (off << 8) + flags
             + fsum[plen] + (_SYN_OPTS_SUM if syn else 0))
        c = (c & 0xFFFF) + (c >> 16)
        tc = ~((c & 0xFFFF) + (c >> 16)) & 0xFFFF
        seq[side] = (s + plen + (1 if flags & (_SYN | _FIN) else 0)) & 0xFFFFFFFF
        hdr = pack(macs, 0x0800, 0x45, 0, tot, i, 0x4000, ttl, 6, ipc, src, dst, sp, dp, s, a,
                   off, flags, win, tc, 0)
        if syn:
            return hdr + _SYN_OPTS
        return hdr + fill[:plen] if plen else hdr

    yield t, mk(0, _SYN, 0, True)
    t += rtt
    yield t, mk(1, _SYN | _ACK, 0, True)
    t += 1 + rtt // 20
    yield t, mk(0, _ACK, 0)
    fin = kind == KIND_FIN
    data = n - 3 - (3 if fin else 1)
    cyc = ack_every + 1
    last = 0
    for j in range(data):
        t += 1 + int(gap * (0.5 + rnd()))
        pos = j % cyc
        if pos == ack_every:
            yield t, mk(1 - last, _ACK, 0)
            continue
        if mode == 0:           # download: one request, then the server sends
            side = 0 if j == 0 else 1
        elif mode == 1:         # upload
            side = 0
        else:                   # interactive: each cycle flips direction
            side = (j // cyc) & 1
        flags = _ACK | _PSH if pos == ack_every - 1 or j == data - 1 else _ACK
        yield t, mk(side, flags, table[bits(_TABLE_BITS)] - 54)
        last = side
    t += 1 + int(gap * (0.5 + rnd()))
    if fin:
        a = 0 if rnd() < 0.6 else 1
        yield t, mk(a, _FIN | _ACK, 0)
        t += rtt
        yield t, mk(1 - a, _FIN | _ACK, 0)
        t += 1 + rtt // 20
        yield t, mk(a, _ACK, 0)
    else:
        yield t, mk(0 if rnd() < 0.5 else 1, _RST | _ACK, 0)


def _udp_flow(kind: int, n: int, t: int, gap: int, rtt: int, cip: bytes, sip: bytes,
              cport: int, sport: int, rng: random.Random, table: array.array) -> Iterator[tuple[int, bytes]]:
    """Packets of one UDP exchange: a DNS-like query/answer, or a longer mostly-one-way flow."""
    rnd = rng.random
    bits = rng.getrandbits
    pack = _UDP_HDR.pack
    fill = _FILL
    fsum = _FILL_SUM
    ttl_c, ttl_s = 64, 40 + int(rnd() * 24)
    addr = _addr_sum(cip) + _addr_sum(sip)
    sides = (
        (_MACS_C2S, cip, sip, cport, sport, 0x4500 + 0x4000 + (ttl_c << 8 | 17) + addr, ttl_c),
        (_MACS_S2C, sip, cip, sport, cport, 0x4500 + 0x4000 + (ttl_s << 8 | 17) + addr, ttl_s),
    )
    ubase = addr + 17 + cport + sport
    ipid = [bits(16), bits(16)]
    alternate = kind == KIND_DNS or rnd() < 0.5
    dns = _DNS[int(rnd() * len(_DNS))] if kind == KIND_DNS else None
    for j in range(n):
        if j:
            t += rtt if kind == KIND_DNS else 1 + int(gap * (0.5 + rnd()))
        side = (j & 1) if alternate else (0 if j == 0 else 1)
        if kind == KIND_DNS:
            payload, psum = dns[side]
            plen = len(payload)
        else:
            plen = table[bits(_TABLE_BITS)] - 42
            payload, psum = fill[:plen], fsum[plen]
        macs, src, dst, sp, dp, ipb, ttl = sides[side]
        i = ipid[side] = (ipid[side] + 1) & 0xFFFF
        ulen = 8 + plen
        tot = 20 + ulen
        c = ipb + tot + i
        c = (c & 0xFFFF) + (c >> 16)
        ipc = ~((c & 0xFFFF) + (c >> 16)) & 0xFFFF
        c = ubase + 2 * ulen + psum
        c = (c & 0xFFFF) + (c >> 16)
        uc = ~((c & 0xFFFF) + (c >> 16)) & 0xFFFF or 0xFFFF
        yield t, pack(macs, 0x0800, 0x45, 0, tot, i, 0x4000, ttl, 17, ipc, src, dst, sp, dp, ulen, uc) + payload


# -- hosts and ports -------------------------------------------------------------------

_IRC_PORTS = frozenset((*range(6660, 6670), 6697, 7000))
_TCP_PORTS = ((443, 40), (80, 18), (22, 5), (8080, 4), (8443, 3), (3306, 2), (5432, 2), (6379, 2),
              (9200, 1), (27017, 1), (25, 1), (993, 1), (5000, 1), (8000, 1))
_UDP_PORTS = ((443, 30), (123, 10), (1194, 5), (3478, 5), (5060, 3), (4500, 3))


class _Hosts:
    """Clients and servers with Zipf-like popularity; unique client ports."""

    def __init__(self, rng: random.Random, clients: int, servers: int) -> None:
        self.rng = rng
        self.clients = [bytes((10, 20, (k + 1) >> 8, (k + 1) & 0xFF)) for k in range(min(clients, 65000))]
        self.servers = [bytes((172, 16 + ((k + 1) >> 16), ((k + 1) >> 8) & 0xFF, (k + 1) & 0xFF))
                        for k in range(min(servers, 1_000_000))]
        self.cw = self._zipf(len(self.clients), 0.8)
        self.sw = self._zipf(len(self.servers), 1.0)
        self.next_port = [32768 + rng.randrange(28000) for _ in self.clients]
        self.used = [0] * len(self.clients)
        tw = [w for _, w in _TCP_PORTS]
        uw = [w for _, w in _UDP_PORTS]
        self.tcp_ports = [p for p, _ in _TCP_PORTS]
        self.tcp_cw = [sum(tw[: i + 1]) for i in range(len(tw))]
        self.udp_ports = [p for p, _ in _UDP_PORTS]
        self.udp_cw = [sum(uw[: i + 1]) for i in range(len(uw))]

    @staticmethod
    def _zipf(n: int, s: float) -> list[float]:
        total = 0.0
        out = []
        for k in range(n):
            total += 1.0 / (k + 1) ** s
            out.append(total)
        return out

    def pick(self, udp: bool, dns: bool) -> tuple[bytes, bytes, int, int]:
        rng = self.rng
        ci = rng.choices(range(len(self.clients)), cum_weights=self.cw)[0]
        while self.used[ci] >= 64000:           # never reuse a client port
            ci = (ci + 1) % len(self.clients)
        self.used[ci] += 1
        cport = self.next_port[ci]
        self.next_port[ci] = 1024 if cport >= 65535 else cport + 1
        sip = self.servers[rng.choices(range(len(self.servers)), cum_weights=self.sw)[0]]
        if dns:
            sport = 53
        elif rng.random() < 0.12:               # a random registered / dynamic port
            sport = 1024 + rng.randrange(48000)
            while sport in _IRC_PORTS:
                sport += 11
        elif udp:
            sport = rng.choices(self.udp_ports, cum_weights=self.udp_cw)[0]
        else:
            sport = rng.choices(self.tcp_ports, cum_weights=self.tcp_cw)[0]
        return self.clients[ci], sip, cport, sport


# -- generation ------------------------------------------------------------------------

def generate(out: str, profile: Profile, seed: int = 0, nanosecond: bool = False,
             progress: Callable[[int], object] | None = None) -> dict:
    """Write the trace of ``profile`` to ``out`` (.pcap, .pcapng, optionally .gz).

    Returns a summary: packets, connections (TCP/UDP), the planned small-frame
    share, elapsed seconds and packets per second.  ``progress(k)`` is called
    every few thousand packets with the number written since the last call.
    """
    t0 = time.perf_counter()
    plan = make_plan(profile, seed)
    p = plan.profile
    rng = random.Random(f"{seed}/packets")
    hosts = _Hosts(rng, max(4, math.ceil(p.connections * p.clients_per_conn)),
                   max(4, math.ceil(p.connections * p.servers_per_conn)))
    table = plan.size_table
    kind, size, start, gap, rtt = plan.kind, plan.size, plan.start_ns, plan.gap_ns, plan.rtt_ns
    order = sorted(range(p.connections), key=start.__getitem__)
    ack_every = p.ack_every
    heap: list = []
    push, replace_top, pop = heapq.heappush, heapq.heapreplace, heapq.heappop
    written = 0
    step = 1 << 14
    pending = 0
    nconn = len(order)
    nxt = 0
    next_start = EPOCH_NS + start[order[0]] if nconn else None
    with CaptureWriter(out, nanosecond=nanosecond) as writer:
        write = writer.write
        while True:
            if next_start is not None and (not heap or next_start <= heap[0][0]):
                i = order[nxt]
                nxt += 1
                next_start = EPOCH_NS + start[order[nxt]] if nxt < nconn else None
                k = kind[i]
                udp = k >= KIND_UDP
                cip, sip, cport, sport = hosts.pick(udp, k == KIND_DNS)
                ts0 = EPOCH_NS + start[i]
                if udp:
                    g = _udp_flow(k, size[i], ts0, gap[i], rtt[i], cip, sip, cport, sport, rng, table)
                else:
                    u = rng.random()
                    mode = 0 if u < 0.7 else 1 if u < 0.85 else 2
                    g = _tcp_flow(k, size[i], ts0, gap[i], rtt[i], mode, ack_every, cip, sip, cport, sport,
                                  rng, table)
                ts, frame = next(g)
                push(heap, (ts, i, frame, g))
                continue
            if not heap:
                break
            ts, i, frame, g = heap[0]
            write(ts, frame)
            nx = next(g, None)
            if nx is None:
                pop(heap)
            else:
                replace_top(heap, (nx[0], i, nx[1], g))
            written += 1
            pending += 1
            if pending == step:
                if progress is not None:
                    progress(pending)
                pending = 0
    if progress is not None and pending:
        progress(pending)
    elapsed = time.perf_counter() - t0
    tcp = sum(1 for k in kind if k < KIND_UDP)
    return {
        "profile": p.name,
        "seed": seed,
        "packets": written,
        "connections": p.connections,
        "tcp_connections": tcp,
        "udp_connections": p.connections - tcp,
        "target_median": p.median,
        "planned_small_share": round(plan.small_share, 4),
        "duration_s": round(p.duration_s, 3),
        "elapsed_s": round(elapsed, 3),
        "pps": round(written / elapsed) if elapsed > 0 else None,
    }
