"""Capture statistics (``chc trace inspect``).

Theory of operation
-------------------
One streaming pass over the capture: every frame is parsed with
:class:`chc.packet.Packet` (Ethernet, VLAN tags, IPv4/IPv6, TCP/UDP/ICMP) and
counted.  Memory holds a histogram of frame lengths (so percentiles are exact,
whatever the number of packets), the set of flows and the set of hosts.

Definitions:

* **packets**: frames read; **bytes**: their captured lengths.
* **flows**: connections, keyed by bidirectional 5-tuple -- protocol plus the
  unordered pair of (address, port) endpoints -- for TCP and UDP; other IP
  protocols count one flow per (protocol, address pair).  Both directions of a
  TCP connection are one flow (what the paper calls a connection), and a SYN
  with a new initial sequence number on a 5-tuple seen before starts a new one
  (port reuse; a retransmitted SYN does not), as Wireshark's TCP streams do.
  ``five_tuples`` counts distinct keys.  Non-first IP fragments carry no ports
  and are not counted into flows.
* **hosts**: distinct IP addresses seen as source or destination.
* **sizes**: nearest-rank percentiles of the frame length (the smallest length
  such that at least p% of the frames are no longer).
* **protocols**: frames per L4 protocol among IP frames; ``non_ip`` (ARP,
  LLDP...) and ``malformed`` (headers cut short or inconsistent, as
  :func:`chc.packet.parse` defines it) are counted separately.
* **duration**: last minus first timestamp (max minus min if the capture is not
  in time order; ``out_of_order`` counts frames older than their predecessor).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from ..capture import open_capture
from ..packet import FRAG_LATER, PROTO_ICMP, PROTO_ICMP6, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN, Packet

__all__ = ["PERCENTILES", "inspect_capture", "render"]

PERCENTILES = (5, 25, 50, 75, 95)
_U32 = struct.Struct("!I")
_NEW = object()
_PROTO_NAMES = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMP: "icmp", PROTO_ICMP6: "icmpv6",
                # (IANA numbers of the others a LAN capture holds: a new user read IGMP as "ip-proto-2")
                2: "igmp", 4: "ipip", 41: "ipv6-in-ipv4", 47: "gre", 50: "esp", 51: "ah", 89: "ospf",
                103: "pim", 112: "vrrp", 132: "sctp"}


def _percentiles(hist: dict[int, int], total: int) -> dict[str, int]:
    out: dict[str, int] = {}
    if not total:
        return {f"p{p}": 0 for p in PERCENTILES}
    lengths = sorted(hist)
    targets = [(p, max(1, -(-p * total // 100))) for p in PERCENTILES]   # ceil(p * n / 100)
    seen = 0
    t = 0
    for length in lengths:
        seen += hist[length]
        while t < len(targets) and seen >= targets[t][1]:
            out[f"p{targets[t][0]}"] = length
            t += 1
    return out


def inspect_capture(path: str | os.PathLike[str], progress: Callable[[int], object] | None = None) -> dict:
    """Statistics of a capture (see the module docstring); raises CaptureError on bad input."""
    reader = open_capture(path)
    hist: dict[int, int] = {}
    flows: dict = {}            # flow key -> ISN of the last SYN seen on it (TCP), else None
    flow_proto: dict[int, int] = {}
    hosts: set[bytes] = set()
    protos: dict[str, int] = {}
    packets = nbytes = malformed = non_ip = ipv4 = ipv6 = fragments = syns = reused = 0
    first = last = None
    lo = hi = 0
    out_of_order = 0
    step = 1 << 14
    with reader:
        for ts, data in reader:
            n = len(data)
            packets += 1
            nbytes += n
            hist[n] = hist.get(n, 0) + 1
            if first is None:
                first = lo = hi = ts
            else:
                if ts < last:
                    out_of_order += 1
                if ts < lo:
                    lo = ts
                elif ts > hi:
                    hi = ts
            last = ts
            if progress is not None and not packets % step:
                progress(step)
            pkt = Packet(data, ts, packets - 1)
            if pkt.malformed is not None:
                malformed += 1
                continue
            if not pkt.l3:
                non_ip += 1
                continue
            if pkt.l3 == 4:
                ipv4 += 1
            else:
                ipv6 += 1
            proto = pkt.proto
            name = _PROTO_NAMES.get(proto) or f"ip-proto-{proto}"
            protos[name] = protos.get(name, 0) + 1
            src, dst = pkt.src, pkt.dst
            hosts.add(src)
            hosts.add(dst)
            if pkt.frag == FRAG_LATER:
                fragments += 1
                continue
            if proto in (PROTO_TCP, PROTO_UDP):
                a = (src, pkt.sport)
                b = (dst, pkt.dport)
                key = (proto, a, b) if a <= b else (proto, b, a)
                if proto == PROTO_TCP and pkt.flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
                    syns += 1
                    isn = _U32.unpack_from(data, pkt.l4_off + 4)[0]
                    prev_isn = flows.get(key, _NEW)
                    flows[key] = isn
                    if prev_isn is _NEW:
                        flow_proto[proto] = flow_proto.get(proto, 0) + 1
                    elif prev_isn is not None and prev_isn != isn:
                        reused += 1         # a new connection on a 5-tuple seen before
                        flow_proto[proto] = flow_proto.get(proto, 0) + 1
                    continue
            else:
                key = (proto, src, dst) if src <= dst else (proto, dst, src)
            if key not in flows:
                flows[key] = None
                flow_proto[proto] = flow_proto.get(proto, 0) + 1
    if progress is not None and packets % step:
        progress(packets % step)
    by_proto = {_PROTO_NAMES.get(p, f"ip-proto-{p}"): c for p, c in sorted(flow_proto.items())}
    sizes = {"min": min(hist) if hist else 0, **_percentiles(hist, packets),
             "max": max(hist) if hist else 0, "mean": round(nbytes / packets, 1) if packets else 0}
    ip_packets = ipv4 + ipv6
    return {
        "path": os.fspath(path),
        "format": reader.format,
        "linktype": reader.linktype,
        "packets": packets,
        "bytes": nbytes,
        "flows": len(flows) + reused,
        "five_tuples": len(flows),
        "flows_by_protocol": by_proto,
        "tcp_syns": syns,
        "hosts": len(hosts),
        "sizes": sizes,
        "protocols": dict(sorted(protos.items())),
        "ipv4": ipv4,
        "ipv6": ipv6,
        "fragments": fragments,
        "non_ip": non_ip,
        "malformed": malformed,
        "ip_packets": ip_packets,
        "first_ts_ns": lo if first is not None else None,
        "last_ts_ns": hi if first is not None else None,
        "duration_s": round((hi - lo) / 1e9, 6) if first is not None else 0.0,
        "out_of_order": out_of_order,
        "truncated": reader.truncated,
        "corrupt": reader.corrupt,
        "warnings": list(reader.warnings),
    }


def render(s: dict) -> str:
    """Human-readable form of :func:`inspect_capture`'s result."""
    n = s["packets"] or 1
    lines = [
        f"{s['path']} ({s['format']}, link type {s['linktype']})",
        f"  packets      {s['packets']:,}  ({s['bytes']:,} bytes)",
        f"  flows        {s['flows']:,}  ("
        + "".join(f"{k} {v:,}, " for k, v in s["flows_by_protocol"].items()).removesuffix(", ")
        + ("; " if s["flows_by_protocol"] else "") + f"{s['five_tuples']:,} distinct 5-tuples)",
        f"  TCP SYNs     {s['tcp_syns']:,}",
        f"  hosts        {s['hosts']:,}",
        "  sizes        " + "  ".join(f"{k} {v}" for k, v in s["sizes"].items()),
        "  protocols    " + (", ".join(f"{k} {v:,} ({100 * v / n:.1f}%)" for k, v in s["protocols"].items())
                             or "none (no IP packet)"),
        f"  IPv4 {s['ipv4']:,}  IPv6 {s['ipv6']:,}  fragments {s['fragments']:,}  "
        f"non-IP {s['non_ip']:,}  malformed {s['malformed']:,}",
        f"  duration     {s['duration_s']:.6f} s" + (f"  ({s['out_of_order']:,} frames out of time order)"
                                                    if s["out_of_order"] else ""),
    ]
    if s["truncated"] or s["corrupt"]:
        lines.append(f"  damaged      truncated={s['truncated']} corrupt={s['corrupt']}")
    lines.extend(f"  warning: {w}" for w in s["warnings"])
    return "\n".join(lines)
