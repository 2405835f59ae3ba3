"""Building blocks for scenarios: merging and time-shifting captures, rewriting addresses.

Theory of operation
-------------------
*Merging.*  :func:`merge_records` merges any number of ``(timestamp_ns, frame)``
streams by timestamp with :func:`heapq.merge`; each stream may be shifted by a
constant number of nanoseconds first.  Ties keep the order of the inputs (a
frame of input 0 before one of input 1 at the same timestamp), and each input
keeps its own order, so an input that is not in time order is not reordered.
Only one pending record per input is in memory.

*Rewriting.*  :func:`rewrite_addresses` maps source and destination addresses
of one parsed packet through a dictionary, via :func:`chc.packet.rewrite_src` /
:func:`chc.packet.rewrite_dst`, which patch the bytes in place and update the
IPv4 header checksum and the TCP/UDP checksum incrementally (RFC 1624).  An
incremental update keeps a checksum that was wrong before wrong after (captures
taken on the sending host often carry unfinished checksums, offloaded to the
NIC), so :func:`fix_checksums` recomputes both from scratch; scenario builders
call it on every frame they plant whose checksum does not verify.

*Time offsets* are written like ``+1.5s``, ``-200ms``, ``30us``, ``12ns`` (no unit:
seconds); :func:`parse_offset` turns them into integer nanoseconds.
"""

from __future__ import annotations

import heapq
import os
import re
import struct
from collections.abc import Iterable, Iterator, Sequence

from ..capture import CaptureError, CaptureWriter, open_capture
from ..packet import (
    PROTO_TCP,
    PROTO_UDP,
    Packet,
    ip_bytes,
    ip_str,
    ipv4_header_ok,
    l4_checksum_ok,
    ones_sum,
    rewrite_dst,
    rewrite_src,
)

__all__ = [
    "fix_checksums",
    "merge_captures",
    "merge_records",
    "parse_address_map",
    "parse_offset",
    "rewrite_addresses",
    "rewrite_capture",
]

Record = tuple[int, bytes]
_U16 = struct.Struct("!H")
_UNITS = {"": 1_000_000_000, "s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_OFFSET = re.compile(r"^\s*([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*(s|ms|us|ns)?\s*$")


def parse_offset(text: str) -> int:
    """``'+1.5s'`` -> 1_500_000_000; units s, ms, us, ns (default s)."""
    m = _OFFSET.match(text)
    if not m:
        raise ValueError(f"not a time offset: {text!r} (use e.g. +1.5s, -200ms, 30us)")
    sign, number, unit = m.groups()
    whole, _, frac = number.partition(".")
    scale = _UNITS[unit or ""]
    value = int(whole or 0) * scale + (int(frac) * scale // 10 ** len(frac) if frac else 0)
    return -value if sign == "-" else value


def _shifted(records: Iterable[Record], shift: int) -> Iterator[Record]:
    for ts, data in records:
        yield ts + shift, data


def merge_records(streams: Sequence[Iterable[Record]], shifts: Sequence[int] | None = None) -> Iterator[Record]:
    """Merge record streams by timestamp (stable across inputs), each shifted by ``shifts[i]`` ns."""
    shifts = list(shifts) if shifts is not None else [0] * len(streams)
    if len(shifts) != len(streams):
        raise ValueError("one shift per stream")
    keyed = [
        ((ts, i, data) for ts, data in (_shifted(s, sh) if sh else s))
        for i, (s, sh) in enumerate(zip(streams, shifts, strict=True))
    ]
    for ts, _i, data in heapq.merge(*keyed):
        yield ts, data


def merge_captures(inputs: Sequence[str], out: str, shifts: Sequence[int] | None = None,
                   align: bool = False) -> dict:
    """Merge capture files into ``out``; returns counts.  ``align`` first shifts every
    input so that it starts when the first input starts (before ``shifts``)."""
    shifts = list(shifts) if shifts is not None else [0] * len(inputs)
    readers = [open_capture(p) for p in inputs]
    try:
        linktypes = {r.linktype for r in readers}
        if len(linktypes) > 1:
            raise CaptureError(f"inputs have different link types ({sorted(linktypes)}); cannot merge")
        streams: list[Iterable[Record]] = []
        if align:
            starts = []
            for r in readers:
                it = iter(r)
                head = next(it, None)
                starts.append(head[0] if head else None)
                streams.append([] if head is None else _prepend(head, it))
            base = next((s for s in starts if s is not None), 0)
            shifts = [sh + (base - s if s is not None else 0) for sh, s in zip(shifts, starts, strict=True)]
        else:
            streams = list(readers)
        counts = [0] * len(inputs)

        def counted(i: int, s: Iterable[Record]) -> Iterator[Record]:
            for rec in s:
                counts[i] += 1
                yield rec

        nanosecond = any(r.nanosecond for r in readers) or any(sh % 1000 for sh in shifts)
        total = 0
        with CaptureWriter(out, linktype=readers[0].linktype if readers else 1, nanosecond=nanosecond) as w:
            for ts, data in merge_records([counted(i, s) for i, s in enumerate(streams)], shifts):
                if ts < 0:
                    raise CaptureError(f"{out}: a shift moves a frame before 1970 ({ts} ns)")
                w.write(ts, data)
                total += 1
        return {"packets": total, "inputs": dict(zip(inputs, counts, strict=True)), "shifts_ns": shifts}
    finally:
        for r in readers:
            r.close()


def _prepend(head: Record, rest: Iterator[Record]) -> Iterator[Record]:
    yield head
    yield from rest


# -- rewriting ---------------------------------------------------------------------------

def parse_address_map(pairs: Iterable[str]) -> dict[bytes, bytes]:
    """``['10.0.0.1=192.0.2.1', ...]`` -> packed address map (same family on both sides)."""
    out: dict[bytes, bytes] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep:
            raise ValueError(f"expected OLD=NEW, got {pair!r}")
        a, b = ip_bytes(old.strip()), ip_bytes(new.strip())
        if len(a) != len(b):
            raise ValueError(f"{pair!r}: both addresses must be IPv4 or both IPv6")
        out[a] = b
    return out


def rewrite_addresses(pkt: Packet, mapping: dict[bytes, bytes]) -> bool:
    """Map ``pkt``'s source and destination through ``mapping`` (checksums updated); True if changed."""
    if not pkt.is_ip:
        return False
    changed = False
    new = mapping.get(pkt.src)
    if new is not None and new != pkt.src:
        rewrite_src(pkt, new)
        changed = True
    new = mapping.get(pkt.dst)
    if new is not None and new != pkt.dst:
        rewrite_dst(pkt, new)
        changed = True
    return changed


def checksums_ok(pkt: Packet) -> bool:
    """IPv4 header and TCP/UDP checksums verify (or cannot be checked)."""
    if not pkt.is_ip:
        return True
    if pkt.l3 == 4 and not ipv4_header_ok(pkt):
        return False
    return l4_checksum_ok(pkt) is not False


def fix_checksums(pkt: Packet) -> None:
    """Recompute the IPv4 header checksum and the TCP/UDP checksum from scratch, in place."""
    if not pkt.is_ip:
        return
    data = pkt.data
    if not isinstance(data, bytearray):
        data = pkt.data = bytearray(data)
    ip = pkt.ip_off
    if pkt.l3 == 4:
        ihl = (data[ip] & 0x0F) * 4
        _U16.pack_into(data, ip + 10, 0)
        _U16.pack_into(data, ip + 10, ~ones_sum(data[ip:ip + ihl]) & 0xFFFF)
    if pkt.frag or pkt.proto not in (PROTO_TCP, PROTO_UDP):
        return                          # a fragment's checksum covers the reassembled datagram
    c_at = pkt.l4_off + (16 if pkt.proto == PROTO_TCP else 6)
    end = pkt.ip_end
    if c_at + 2 > end:
        return
    if pkt.l3 == 4:
        tot = _U16.unpack_from(data, ip + 2)[0]
        if ip + tot > len(data):
            return                      # snapped frame: the payload is not all there
        seg = data[pkt.l4_off:ip + tot]
        pseudo = pkt.src + pkt.dst + struct.pack("!BBH", 0, pkt.proto, len(seg))
    else:
        plen = _U16.unpack_from(data, ip + 4)[0]
        if ip + 40 + plen > len(data):
            return
        seg = data[pkt.l4_off:ip + 40 + plen]
        pseudo = pkt.src + pkt.dst + struct.pack("!IxxxB", len(seg), pkt.proto)
    _U16.pack_into(data, c_at, 0)
    seg = data[pkt.l4_off:pkt.l4_off + len(seg)]
    c = ~_fold(ones_sum(pseudo) + ones_sum(seg)) & 0xFFFF
    if pkt.proto == PROTO_UDP and c == 0:
        c = 0xFFFF
    _U16.pack_into(data, c_at, c)


def _fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def rewrite_capture(path: str, out: str, mapping: dict[bytes, bytes], fix: bool = False) -> dict:
    """Copy a capture, rewriting addresses through ``mapping``; ``fix`` also repairs bad checksums."""
    rewritten = fixed = total = 0
    with open_capture(path) as reader, CaptureWriter(out, linktype=reader.linktype,
                                                     nanosecond=reader.nanosecond) as w:
        for i, (ts, data) in enumerate(reader):
            total += 1
            pkt = Packet(data, ts, i)
            if pkt.is_ip:
                bad_before = fix and not checksums_ok(pkt)
                if rewrite_addresses(pkt, mapping):
                    rewritten += 1
                if bad_before:
                    fix_checksums(pkt)
                    fixed += 1
            w.write(ts, bytes(pkt.data))
    return {"packets": total, "rewritten": rewritten, "checksums_fixed": fixed,
            "map": {ip_str(a): ip_str(b) for a, b in mapping.items()}, "output": os.fspath(out)}
