"""Plant TCP SYN scans into a background capture (``chc trace scan``).

Theory of operation
-------------------
A first pass over the background collects its packet count, time span, and the
IPv4 hosts that send traffic (with the Ethernet address each one sends from).
Scanner hosts are new internal addresses (by default unused addresses of
``x.y.201.0/24`` in the background's most common private /16, e.g. 10.64.201.1
for lan-2012) -- or given with ``--host``.

Each scanner probes ``targets`` background hosts (the most active private
senders first, then the others, drawn by the seed) on every port of
``ports``, nmap style: a SYN with an MSS option from one source port, ports in
a random order per target, targets interleaved, ``rate`` probes per second.
Every (target, port) is *open* with probability ``answered`` (the target answers
SYN-ACK and the scanner resets the half-open connection, as a SYN scan does),
otherwise *closed* (RST-ACK) or, with probability ``silent``, *filtered* (no
answer).  Answers come after an RTT of 0.2-2 ms.  Scanners start at evenly
spread points of the background's time span (or at ``start`` seconds after its
first packet) and are merged into it by timestamp (background first on ties).
Frames are built from scratch with valid IPv4 and TCP checksums.

TRW only counts each scanner's *first* probe to each target, so one unlucky
probing order (the first probes hit open ports) clears a scanner however many
ports it then probes -- nmap's default order, which puts common ports first,
does exactly that against hosts with open 22/80/443 (docs/traces.md).  By
default (``ensure_flagged``) the builder keeps which ports are open on which
target, which is the targets' property, and redraws only the probing order, a
few times at most, until TRW flags the scanner.

Ground truth.  The scanners, their targets and probe counts, the input indices
of their first and last packets, and the verdict of the Threshold Random Walk
(:mod:`chc.nfs.portscan`, paper parameters) replayed on the first contact with
each target -- open is a success, closed or filtered a failure (filtered at the
5 s timeout) -- so a combination of parameters that does not make a scanner
detectable (e.g. ``answered 0.9``) is visible in the truth, not hidden.
``expected_alerts`` lists the scanners TRW flags.  The background's own hosts
are not changed; whether TRW flags any of them is a property of the background
(see docs/traces.md for lan-2012: it flags none).
"""

from __future__ import annotations

import heapq
import ipaddress
import os
import random
import struct
from collections.abc import Iterator, Sequence

from ..capture import CaptureWriter, open_capture
from ..nfs.portscan import TRWConfig
from ..packet import PROTO_TCP, TCP_ACK, TCP_RST, TCP_SYN, Packet, ip_bytes, ip_str
from .ops import fix_checksums
from .trojan import _GATEWAY_MAC, _mac, default_hosts

__all__ = ["parse_ports", "plant_scans"]

_TCP = struct.Struct("!12sHBBHHHBBH4s4sHHIIBBHHH")
_MSS = bytes([2, 4, 0x05, 0xB4])


def parse_ports(text: str) -> list[int]:
    """``'1-1024'``, ``'22,80,8000-8100'`` -> sorted distinct ports."""
    ports: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"not a port or port range: {part!r}") from None
        if not 1 <= a <= b <= 65535:
            raise ValueError(f"bad port range {part!r} (ports are 1-65535)")
        ports.update(range(a, b + 1))
    if not ports:
        raise ValueError("no ports given")
    return sorted(ports)


def _frame(macs: bytes, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int,
           flags: int, win: int, ipid: int, ttl: int, mss: bool) -> bytes:
    hlen = 24 if mss else 20
    hdr = _TCP.pack(macs, 0x0800, 0x45, 0, 20 + hlen, ipid, 0, ttl, PROTO_TCP, 0, src, dst,
                    sport, dport, seq, ack, (hlen // 4) << 4, flags, win, 0, 0)
    pkt = Packet(bytearray(hdr + _MSS if mss else hdr))
    fix_checksums(pkt)
    return bytes(pkt.data)


def _background(path: str) -> dict:
    n = 0
    first = last = None
    sent: dict[bytes, int] = {}
    mac: dict[bytes, bytes] = {}
    used: set[bytes] = set()
    with open_capture(path) as reader:
        nanosecond = reader.nanosecond
        for i, (ts, data) in enumerate(reader):
            n += 1
            first = ts if first is None else min(first, ts)
            last = ts if last is None else max(last, ts)
            p = Packet(data, ts, i)
            if p.is_ip:
                used.add(p.src)
                used.add(p.dst)
                if p.l3 == 4:
                    sent[p.src] = sent.get(p.src, 0) + 1
                    mac.setdefault(p.src, bytes(data[6:12]))
    return {"packets": n, "first": first or 0, "last": last or 0, "sent": sent, "mac": mac,
            "used": used, "nanosecond": nanosecond}


def _trw_verdict(outcomes: list[tuple[int, bool]], cfg: TRWConfig) -> tuple[bool, int]:
    """Replay TRW on (time, success) first-contact outcomes: (flagged, outcomes used)."""
    lam = 1.0
    up_s = cfg.theta1 / cfg.theta0
    up_f = (1 - cfg.theta1) / (1 - cfg.theta0)
    for k, (_t, ok) in enumerate(sorted(outcomes)):
        lam *= up_s if ok else up_f
        if lam >= cfg.eta1:
            return True, k + 1
        if lam <= cfg.eta0:
            return False, k + 1
    return False, len(outcomes)


def plant_scans(background: str | os.PathLike[str], out: str | os.PathLike[str], *, scanners: int = 1,
                ports: Sequence[int] | str = "1-1024", rate: float = 100.0, answered: float = 0.1,
                silent: float = 0.5, targets: int = 8, hosts: Sequence[str] | None = None,
                start_s: float | None = None, seed: int = 0, ensure_flagged: bool = True) -> dict:
    """Write ``background`` with SYN scans merged in to ``out``; return the ground truth."""
    background = os.fspath(background)
    if isinstance(ports, str):
        ports = parse_ports(ports)
    ports = list(ports)
    if scanners < 1 or targets < 1:
        raise ValueError("need at least one scanner and one target")
    if not rate > 0:
        raise ValueError("rate must be positive")
    for name, v in (("answered", answered), ("silent", silent)):
        if not 0 <= v <= 1:
            raise ValueError(f"{name} must be a share in [0, 1], got {v}")
    bg = _background(background)
    rng = random.Random(seed)
    if hosts:
        scan_hosts = [ip_bytes(h) for h in hosts]
        if any(len(h) != 4 for h in scan_hosts):
            raise ValueError("scanner hosts must be IPv4 addresses")
        if len(scan_hosts) < scanners:
            raise ValueError(f"{scanners} scanners but only {len(scan_hosts)} --host addresses")
        scan_hosts = scan_hosts[:scanners]
    else:
        scan_hosts = default_hosts(bg["used"], scanners, third=201)
    pool = sorted(bg["sent"], key=lambda a: (not ipaddress.IPv4Address(a).is_private, -bg["sent"][a], a))
    pool = [a for a in pool if a not in scan_hosts and not ipaddress.IPv4Address(a).is_multicast
            and a[3] != 255 and a[0] != 0]
    if not pool:
        raise ValueError(f"{background}: no IPv4 hosts to scan")
    span = max(0, bg["last"] - bg["first"])
    cfg = TRWConfig()
    timeout_ns = int(cfg.timeout_s * 1e9)
    res = 1 if bg["nanosecond"] else 1000
    streams: list[list[tuple[int, int, bytes]]] = []
    info = []
    for s, host in enumerate(scan_hosts):
        tg = pool[:targets] if len(pool) <= targets else rng.sample(pool[: max(targets, 4 * targets)], targets)
        if start_s is not None:
            t0 = bg["first"] + int(start_s * 1e9) + s * int(len(tg) * len(ports) / rate * 1e9)
        else:
            t0 = bg["first"] + span * (s + 1) // (scanners + 1)
        sport = 32768 + rng.randrange(28000)
        # What each target does on each port: a property of the target, fixed first.
        state: dict[tuple[int, int], tuple[str, int]] = {}
        for ti in range(len(tg)):
            for port in ports:
                u = rng.random()
                st = "open" if u < answered else "filtered" if rng.random() < silent else "closed"
                state[ti, port] = (st, int(200_000 + rng.random() * 1_800_000))
        # The probing order (ports shuffled per target, targets interleaved) is the
        # scanner's choice.  TRW only sees each target's first probe; if an order
        # makes TRW clear the scanner, draw another one (a few tries at most).
        tries = 0
        while True:
            perms = []
            for _t in tg:
                perm = list(ports)
                rng.shuffle(perm)
                perms.append(perm)
            first_contact = []
            for ti in range(len(tg)):
                st, rtt = state[ti, perms[ti][0]]
                t = t0 + int(ti * 1e9 / rate)
                first_contact.append((t + (timeout_ns if st == "filtered" else rtt), st == "open"))
            flagged, used_outcomes = _trw_verdict(first_contact, cfg)
            tries += 1
            if flagged or not ensure_flagged or tries >= 64:
                break
        events: list[tuple[int, int, bytes]] = []
        seqn = 0
        ipid = rng.randrange(65536)
        counts = {"open": 0, "closed": 0, "filtered": 0}
        smac = _mac(host)
        k = 0
        for j in range(len(ports)):
            for ti, target in enumerate(tg):
                port = perms[ti][j]
                t = t0 + int(k * 1e9 / rate)
                k += 1
                tmac = bg["mac"].get(target, _GATEWAY_MAC)
                seq = rng.getrandbits(32)
                ipid = (ipid + 1) & 0xFFFF
                events.append((t, seqn, _frame(tmac + smac, host, target, sport, port, seq, 0, TCP_SYN,
                                                1024, ipid, 48, True)))
                seqn += 1
                st, rtt = state[ti, port]
                if st == "open":
                    sseq = rng.getrandbits(32)
                    events.append((t + rtt, seqn, _frame(smac + tmac, target, host, port, sport, sseq,
                                                         (seq + 1) & 0xFFFFFFFF, TCP_SYN | TCP_ACK, 29200,
                                                         rng.randrange(65536), 64, True)))
                    ipid = (ipid + 1) & 0xFFFF
                    events.append((t + rtt + 30_000, seqn + 1, _frame(tmac + smac, host, target, sport, port,
                                                                      (seq + 1) & 0xFFFFFFFF, 0, TCP_RST, 0,
                                                                      ipid, 48, False)))
                    seqn += 2
                elif st == "closed":
                    events.append((t + rtt, seqn, _frame(smac + tmac, target, host, port, sport, 0,
                                                         (seq + 1) & 0xFFFFFFFF, TCP_RST | TCP_ACK, 0,
                                                         0, 64, False)))
                    seqn += 1
                counts[st] += 1
        events = [((t // res) * res, q, f) for t, q, f in events]
        events.sort()
        streams.append(events)
        info.append({
            "host": ip_str(host),
            "targets": [ip_str(a) for a in tg],
            "ports": len(ports),
            "probes": k,
            **counts,
            "packets": len(events),
            "start_ns": t0,
            "trw_flagged": flagged,
            "trw_first_contacts_used": used_outcomes,
            "order_draws": tries,
        })

    def background_records() -> Iterator[tuple[int, int, int, bytes]]:
        with open_capture(background) as reader:
            for i, (ts, data) in enumerate(reader):
                yield ts, 0, i, data

    def scanner_records(s: int) -> Iterator[tuple[int, int, int, bytes]]:
        for t, q, f in streams[s]:
            yield t, s + 1, q, f

    idx = 0
    spans = [[-1, -1] for _ in scan_hosts]
    with open_capture(background) as probe:
        linktype = probe.linktype
    with CaptureWriter(out, linktype=linktype, nanosecond=bg["nanosecond"]) as w:
        merged = heapq.merge(background_records(), *(scanner_records(s) for s in range(len(streams))))
        for ts, src, _q, data in merged:
            w.write(ts, data)
            if src:
                sp = spans[src - 1]
                if sp[0] < 0:
                    sp[0] = idx
                sp[1] = idx
            idx += 1
    for s, sp in enumerate(spans):
        info[s]["first_index"], info[s]["last_index"] = sp
    return {
        "scenario": "scan",
        "background": background,
        "output": os.fspath(out),
        "packets": idx,
        "background_packets": bg["packets"],
        "planted_packets": idx - bg["packets"],
        "ports": f"{ports[0]}-{ports[-1]}" if ports == list(range(ports[0], ports[-1] + 1)) else ports,
        "rate_pps": rate,
        "answered": answered,
        "silent": silent,
        "seed": seed,
        "targets_asked": targets,
        "targets_available": len(pool),          # hosts the background has to scan (fewer: all of them)
        "scanners": info,
        "expected_alerts": [x["host"] for x in info if x["trw_flagged"]],
    }
