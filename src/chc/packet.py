# cython: infer_types=True
"""Packets: raw frame bytes, the L2-L4 fields NFs need, and CHC metadata.

Theory of operation
-------------------
A :class:`Packet` wraps one captured frame.  :func:`parse` walks the headers once
(Ethernet, any number of 802.1Q/802.1ad tags, IPv4 with options, IPv6 with its
extension headers, TCP/UDP/ICMP/ICMPv6) with precompiled ``struct`` formats and
stores *offsets and the few fields NFs key on* (5-tuple, TCP flags, lengths,
payload offset).  The payload is never copied: NFs that inspect it read
``pkt.payload`` (a ``memoryview`` slice) only when they need it.

A frame that is not IP gets ``l3 == 0``; a frame whose headers are cut short or
inconsistent gets ``malformed`` set to a short reason.  Neither raises: the root
counts them and passes or drops them by the chain's policy.

Rewrites (NAT, load balancer) go through :func:`rewrite_src` / :func:`rewrite_dst`,
which patch the address and port in place and update the IPv4 header checksum and
the TCP/UDP checksum incrementally (RFC 1624, eqn. 3), so a rewritten packet is
valid on a wire without recomputing checksums over the payload.

CHC metadata slots (filled by later components): ``clock`` (the root's logical
clock, root id in the high bits, §5), ``xor`` (the 32-bit commit vector, §5.4),
``marks`` (``last``/``first`` handover marks §5.1, replay marks §5.3), and
``flow_key`` (:func:`flow_key`, computed once, cleared by a rewrite).
"""

from __future__ import annotations

import socket
import struct

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = (0x8100, 0x88A8, 0x9100)

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMP6 = 58

FRAG_FIRST = 1   # first fragment: L4 header present, checksum covers the datagram
FRAG_LATER = 2   # later fragment: no L4 header in this frame

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

# IPv6 extension headers that use the generic (next header, length) layout.
_IP6_EXT = frozenset((0, 43, 60, 135, 139, 140))
_IP6_FRAG = 44
_IP6_AH = 51

_ETH = struct.Struct("!6s6sH")
_U16 = struct.Struct("!H")
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_PORTS = struct.Struct("!HH")
_TCP_OFF_FLAGS = struct.Struct("!BB")


class Packet:
    """One frame: bytes, parsed header fields (see :func:`parse`), CHC metadata."""

    __slots__ = (
        "data", "ts", "index",
        "l3", "ip_off", "l4_off", "payload_off", "ip_end",
        "proto", "src", "dst", "sport", "dport", "flags", "frag", "malformed",
        "clock", "xor", "marks", "vt", "flow_key",
    )

    def __init__(self, data: bytes | bytearray, ts: int = 0, index: int = 0) -> None:
        self.data = data
        self.ts = ts            # capture timestamp, integer nanoseconds
        self.index = index      # position in the input (0-based)
        self.clock = index      # §5 logical clock; the root overwrites it
        self.xor = 0            # §5.4 XOR commit vector
        self.marks = 0          # §5.1 / §5.3 marks (bit flags)
        self.vt = 0             # sim runtime: virtual time at the current hop (ns)
        self.flow_key = None    # chc.nf.FLOW's key, once computed (reset by rewrites)
        parse(self)

    def copy(self) -> Packet:
        """An independent copy (off-path taps, several successors): same fields,
        its own bytes, so a rewrite of one never shows in the other."""
        c = Packet.__new__(Packet)
        # Spelled out: a loop over __slots__ with getattr/setattr measured 1.66 µs
        # per copy against 0.45 µs here, and the Trojan tap copies every packet.
        data = self.data
        c.data = bytes(data) if data.__class__ is bytearray else data
        c.ts, c.index, c.clock, c.xor, c.marks, c.vt = self.ts, self.index, self.clock, self.xor, self.marks, self.vt
        c.l3, c.ip_off, c.l4_off = self.l3, self.ip_off, self.l4_off
        c.payload_off, c.ip_end = self.payload_off, self.ip_end
        c.proto, c.src, c.dst, c.sport, c.dport = self.proto, self.src, self.dst, self.sport, self.dport
        c.flags, c.frag, c.malformed = self.flags, self.frag, self.malformed
        c.flow_key = self.flow_key
        return c

    # -- derived views, computed on demand (not on the hot path) --------------
    @property
    def flow(self) -> tuple[bytes, bytes, int, int, int]:
        """Directional 5-tuple (src, dst, sport, dport, proto)."""
        return (self.src, self.dst, self.sport, self.dport, self.proto)

    @property
    def payload(self) -> memoryview:
        """L4 payload, up to the end of the IP datagram (no copy)."""
        return memoryview(self.data)[self.payload_off:self.ip_end]

    @property
    def is_ip(self) -> bool:
        return self.l3 != 0 and self.malformed is None

    def __repr__(self) -> str:
        if not self.l3:
            return f"<Packet #{self.index} non-IP {len(self.data)}B>"
        return (f"<Packet #{self.index} {ip_str(self.src)}:{self.sport} -> "
                f"{ip_str(self.dst)}:{self.dport} proto={self.proto} flags={self.flags:#x}"
                f"{' malformed=' + self.malformed if self.malformed else ''}>")


# Big-endian 2-byte forms of every port and 1-byte forms of every protocol number:
# indexing them builds a flow key with one join (int.to_bytes was 2/3 of its cost).
_U16_BYTES = [i.to_bytes(2, "big") for i in range(65536)]
_U8_BYTES = [bytes((i,)) for i in range(256)]


def flow_key(pkt: Packet) -> bytes:
    """The connection's canonical 5-tuple as bytes: lower endpoint (address, port),
    higher endpoint, protocol; both directions of a connection share it.  Kept on
    the packet until a rewrite changes the 5-tuple (:data:`chc.nf.FLOW` keys
    per-flow state and partitions by it)."""
    k = pkt.flow_key
    if k is None:
        src = pkt.src
        dst = pkt.dst
        sport = pkt.sport
        dport = pkt.dport
        if src < dst or (src == dst and sport <= dport):
            k = b"".join((src, _U16_BYTES[sport], dst, _U16_BYTES[dport], _U8_BYTES[pkt.proto]))
        else:
            k = b"".join((dst, _U16_BYTES[dport], src, _U16_BYTES[sport], _U8_BYTES[pkt.proto]))
        pkt.flow_key = k
    return k


def describe_flow(key: bytes) -> str:
    """A :func:`flow_key` for people: ``10.0.0.1:1234 <-> 10.0.0.2:80 tcp``; other
    bytes as their repr."""
    n = (len(key) - 5) // 2
    if n not in (4, 16) or len(key) != 2 * n + 5:
        return repr(key)
    ends = [f"{ip_str(key[i:i + n])}:{int.from_bytes(key[i + n:i + n + 2], 'big')}" for i in (0, n + 2)]
    proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6"}.get(key[-1], f"proto {key[-1]}")
    return f"{ends[0]} <-> {ends[1]} {proto}"


def ip_str(addr: bytes) -> str:
    """Printable form of a packed IPv4/IPv6 address."""
    if len(addr) == 4:
        return socket.inet_ntop(socket.AF_INET, addr)
    if len(addr) == 16:
        return socket.inet_ntop(socket.AF_INET6, addr)
    return addr.hex()


def ip_bytes(text: str) -> bytes:
    """Packed form of a printable IPv4/IPv6 address (raises ValueError)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, text)
        except OSError:
            continue
    raise ValueError(f"not an IP address: {text!r}")


def _reset(pkt: Packet) -> None:
    pkt.flow_key = None
    pkt.l3 = 0
    pkt.ip_off = pkt.l4_off = pkt.payload_off = pkt.ip_end = 0
    pkt.proto = pkt.sport = pkt.dport = pkt.flags = 0
    pkt.src = pkt.dst = b""
    pkt.frag = 0
    pkt.malformed = None


def parse(pkt: Packet) -> None:
    """Fill the header fields of ``pkt`` from ``pkt.data`` (Ethernet framing)."""
    _reset(pkt)
    data = pkt.data
    n = len(data)
    if n < 14:
        pkt.malformed = "short ethernet header"
        return
    etype = _U16.unpack_from(data, 12)[0]
    off = 14
    while etype in ETH_VLAN:
        if n < off + 4:
            pkt.malformed = "short 802.1Q tag"
            return
        etype = _U16.unpack_from(data, off + 2)[0]
        off += 4
    if etype == ETH_IPV4:
        _parse_ipv4(pkt, data, off, n)
    elif etype == ETH_IPV6:
        _parse_ipv6(pkt, data, off, n)


def _parse_ipv4(pkt: Packet, data, off: int, n: int) -> None:
    if n < off + 20:
        pkt.malformed = "short IPv4 header"
        return
    vihl, _tos, tot_len, _id, frag, _ttl, proto, _csum, src, dst = _IP4.unpack_from(data, off)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20:
        pkt.malformed = "bad IPv4 version/IHL"
        return
    if tot_len < ihl or off + ihl > n:
        pkt.malformed = "bad IPv4 length"
        return
    pkt.l3 = 4
    pkt.ip_off = off
    pkt.proto = proto
    pkt.src = src
    pkt.dst = dst
    # Trailing Ethernet padding is not part of the datagram; a snapped capture may
    # hold less than tot_len, so the datagram ends at whichever comes first.
    end = off + tot_len
    pkt.ip_end = end if end <= n else n
    l4 = off + ihl
    pkt.l4_off = pkt.payload_off = l4
    if frag & 0x1FFF:               # non-first fragment: no L4 header here
        pkt.frag = FRAG_LATER
        return
    if frag & 0x2000:
        pkt.frag = FRAG_FIRST
    _parse_l4(pkt, data, l4, pkt.ip_end)


def _parse_ipv6(pkt: Packet, data, off: int, n: int) -> None:
    if n < off + 40:
        pkt.malformed = "short IPv6 header"
        return
    vtcfl, plen, nxt, _hlim, src, dst = _IP6.unpack_from(data, off)
    if vtcfl >> 28 != 6:
        pkt.malformed = "bad IPv6 version"
        return
    pkt.l3 = 6
    pkt.ip_off = off
    pkt.src = src
    pkt.dst = dst
    end = off + 40 + plen
    pkt.ip_end = end if end <= n else n
    l4 = off + 40
    while nxt in _IP6_EXT or nxt in (_IP6_FRAG, _IP6_AH):
        if l4 + 8 > pkt.ip_end:
            pkt.malformed = "short IPv6 extension header"
            return
        if nxt == _IP6_FRAG:
            offlg = _U16.unpack_from(data, l4 + 2)[0]
            if offlg & 0xFFF8:                              # non-first fragment
                pkt.frag = FRAG_LATER
                pkt.proto = data[l4]
                pkt.l4_off = pkt.payload_off = l4 + 8
                return
            if offlg & 1:       # M flag; offset 0 without M is an atomic fragment (RFC 6946)
                pkt.frag = FRAG_FIRST
            size = 8
        elif nxt == _IP6_AH:
            size = (data[l4 + 1] + 2) * 4
        else:
            size = (data[l4 + 1] + 1) * 8
        nxt = data[l4]
        l4 += size
        if l4 > pkt.ip_end:
            pkt.malformed = "short IPv6 extension header"
            return
    pkt.proto = nxt
    pkt.l4_off = pkt.payload_off = l4
    _parse_l4(pkt, data, l4, pkt.ip_end)


def _parse_l4(pkt: Packet, data, l4: int, end: int) -> None:
    proto = pkt.proto
    if proto == PROTO_TCP:
        if end < l4 + 20:
            pkt.malformed = "short TCP header"
            return
        pkt.sport, pkt.dport = _PORTS.unpack_from(data, l4)
        doff, flags = _TCP_OFF_FLAGS.unpack_from(data, l4 + 12)
        doff = (doff >> 4) * 4
        if doff < 20 or l4 + doff > end:
            pkt.malformed = "bad TCP data offset"
            return
        pkt.flags = flags
        pkt.payload_off = l4 + doff
    elif proto == PROTO_UDP:
        if end < l4 + 8:
            pkt.malformed = "short UDP header"
            return
        pkt.sport, pkt.dport = _PORTS.unpack_from(data, l4)
        pkt.payload_off = l4 + 8
    elif proto in (PROTO_ICMP, PROTO_ICMP6):
        if end < l4 + 4:
            pkt.malformed = "short ICMP header"
            return
        pkt.payload_off = l4 + 4 if proto == PROTO_ICMP6 else l4 + 8 if end >= l4 + 8 else l4 + 4


# -- checksums -----------------------------------------------------------------

def _fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


_WORDS = {n: struct.Struct(f"!{n}H") for n in range(1, 33)}


def ones_sum(buf) -> int:
    """16-bit one's-complement sum of ``buf`` (odd length padded with a zero)."""
    if len(buf) & 1:
        buf = bytes(buf) + b"\0"
    words = _WORDS.get(len(buf) // 2)
    if words is None:       # long buffers (from-scratch checks), not the rewrite path
        return _fold(sum(struct.unpack(f"!{len(buf) // 2}H", buf)))
    return _fold(sum(words.unpack(buf)))


def _csum_update(old_csum: int, old_sum: int, new_sum: int, words: int) -> int:
    """RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), over ``words`` changed 16-bit words
    whose plain sums are ``old_sum`` (m) and ``new_sum`` (m').  Integer arithmetic
    throughout: the struct/bytes version cost the NAT a third of its time (py-spy,
    issue 7 profile)."""
    total = (~old_csum & 0xFFFF) + (words * 0xFFFF - old_sum) + new_sum
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _csum_at(pkt: Packet, icmp6: bool) -> int:
    """Offset of the L4 checksum that covers the pseudo-header (TCP, UDP, and with
    ``icmp6`` ICMPv6: RFC 4443 §2.3) in ``pkt.data``, or -1."""
    if pkt.malformed or pkt.frag == FRAG_LATER:
        return -1
    if pkt.proto == PROTO_TCP:
        return pkt.l4_off + 16
    if pkt.proto == PROTO_UDP:
        return pkt.l4_off + 6
    if icmp6 and pkt.proto == PROTO_ICMP6 and pkt.l3 == 6:
        return pkt.l4_off + 2
    return -1


def l4_checksum_offset(pkt: Packet) -> int | None:
    """Offset of the TCP/UDP checksum field in ``pkt.data``, or None."""
    at = _csum_at(pkt, False)
    return at if at >= 0 else None


def _writable(pkt: Packet, ip: bytes) -> bytearray:
    """The packet's bytes, made mutable, once the rewrite of an address is known legal."""
    if pkt.l3 == 0 or pkt.malformed is not None:
        raise ValueError("cannot rewrite a non-IP or malformed packet")
    if len(ip) != len(pkt.src):
        raise ValueError("address family mismatch in rewrite")
    if pkt.data.__class__ is not bytearray:
        pkt.data = bytearray(pkt.data)
    pkt.flow_key = None             # the 5-tuple changes
    return pkt.data


def _rewrite(pkt: Packet, data: bytearray, addr_at: int, port_at: int, ip: bytes, port: int) -> None:
    """Write ``ip`` at ``addr_at`` (and ``port`` at ``port_at`` unless either is
    negative) and update the checksums that cover them (RFC 1624).  Byte-indexed
    so that the compiled build (packet.pxd) runs it as C; the checksum fields are
    big-endian words."""
    n = len(ip)
    old_sum = 0
    new_sum = 0
    for i in range(addr_at, addr_at + n, 2):
        old_sum += (data[i] << 8) | data[i + 1]
    for i in range(0, n, 2):
        new_sum += (ip[i] << 8) | ip[i + 1]
    for i in range(n):              # byte by byte: a slice assignment is a generic call
        data[addr_at + i] = ip[i]
    if pkt.l3 == 4:
        # RFC 1624: the IP header checksum covers the address only.
        at = pkt.ip_off + 10
        c = _csum_update((data[at] << 8) | data[at + 1], old_sum, new_sum, n >> 1)
        data[at] = c >> 8
        data[at + 1] = c & 0xFF
    words = n >> 1
    if port >= 0 and port_at >= 0:
        old_sum += (data[port_at] << 8) | data[port_at + 1]
        new_sum += port
        words += 1
        data[port_at] = port >> 8
        data[port_at + 1] = port & 0xFF
    proto = pkt.proto
    at = _csum_at(pkt, True)
    if at < 0 or at + 2 > pkt.ip_end:
        return
    c = (data[at] << 8) | data[at + 1]
    if proto == PROTO_UDP and c == 0 and pkt.l3 == 4:
        return                  # UDP/IPv4: 0 = no checksum
    c = _csum_update(c, old_sum, new_sum, words)
    if proto == PROTO_UDP and c == 0:
        c = 0xFFFF
    data[at] = c >> 8
    data[at + 1] = c & 0xFF


def _port_at(pkt: Packet, offset: int) -> int:
    """Offset of a TCP/UDP port field, or -1 when the packet has none."""
    if (pkt.proto == PROTO_TCP or pkt.proto == PROTO_UDP) and pkt.frag != FRAG_LATER:
        return pkt.l4_off + offset
    return -1


def rewrite_src(pkt: Packet, ip: bytes, port: int | None = None) -> None:
    """Set source address (and port) in place, updating checksums incrementally."""
    data = _writable(pkt, ip)
    port_at = _port_at(pkt, 0)
    _rewrite(pkt, data, pkt.ip_off + (12 if pkt.l3 == 4 else 8), port_at, ip, -1 if port is None else port)
    pkt.src = ip
    if port is not None and port_at >= 0:
        pkt.sport = port


def rewrite_dst(pkt: Packet, ip: bytes, port: int | None = None) -> None:
    """Set destination address (and port) in place, updating checksums incrementally."""
    data = _writable(pkt, ip)
    port_at = _port_at(pkt, 2)
    _rewrite(pkt, data, pkt.ip_off + (16 if pkt.l3 == 4 else 24), port_at, ip, -1 if port is None else port)
    pkt.dst = ip
    if port is not None and port_at >= 0:
        pkt.dport = port


def ipv4_header_ok(pkt: Packet) -> bool:
    """From-scratch check of the IPv4 header checksum."""
    ihl = (pkt.data[pkt.ip_off] & 0x0F) * 4
    return ones_sum(pkt.data[pkt.ip_off:pkt.ip_off + ihl]) == 0xFFFF


def l4_checksum_ok(pkt: Packet) -> bool | None:
    """From-scratch check of the TCP/UDP checksum; None when not checkable
    (fragment, snapped capture, UDP without checksum, not TCP/UDP)."""
    c_at = l4_checksum_offset(pkt)
    if c_at is None or pkt.frag:
        return None
    data = pkt.data
    ip = pkt.ip_off
    if pkt.l3 == 4:
        tot = _U16.unpack_from(data, ip + 2)[0]
        if ip + tot > len(data):
            return None
        seg_len = ip + tot - pkt.l4_off
        pseudo = pkt.src + pkt.dst + struct.pack("!BBH", 0, pkt.proto, seg_len)
    else:
        plen = _U16.unpack_from(data, ip + 4)[0]
        if ip + 40 + plen > len(data):
            return None
        seg_len = ip + 40 + plen - pkt.l4_off
        pseudo = pkt.src + pkt.dst + struct.pack("!IxxxB", seg_len, pkt.proto)
    if pkt.proto == PROTO_UDP and pkt.l3 == 4 and _U16.unpack_from(data, c_at)[0] == 0:
        return None
    total = ones_sum(pseudo) + ones_sum(data[pkt.l4_off:pkt.l4_off + seg_len])
    return _fold(total) == 0xFFFF
