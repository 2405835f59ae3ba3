"""Craft Ethernet/IPv4/TCP/UDP/ICMP frames with correct checksums (struct only).

Addresses are dotted strings; every builder returns the frame as ``bytes``.
``packets(frames, ...)`` wraps frames into :class:`chc.packet.Packet` objects with
indices and timestamps, the way the runtime feeds them to instances.

    >>> f = tcp("10.0.0.1", "192.0.2.1", 40000, 80, SYN)
    >>> p = Packet(f)           # parses; checksums verify from scratch
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable

from chc.packet import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, Packet

FIN = TCP_FIN
SYN = TCP_SYN
RST = TCP_RST
PSH = TCP_PSH
ACK = TCP_ACK
SYN_ACK = TCP_SYN | TCP_ACK
RST_ACK = TCP_RST | TCP_ACK
FIN_ACK = TCP_FIN | TCP_ACK
PSH_ACK = TCP_PSH | TCP_ACK

SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806


def checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071) of ``data``."""
    if len(data) & 1:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def addr(text: str) -> bytes:
    return socket.inet_aton(text)


def ether(payload: bytes, ethertype: int = ETH_IPV4, src: bytes = SRC_MAC, dst: bytes = DST_MAC) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, l4: bytes, ttl: int = 64, ident: int = 1, tos: int = 0) -> bytes:
    """An IPv4 datagram (20-byte header, DF set) carrying ``l4``."""
    total = 20 + len(l4)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, tos, total, ident, 0x4000, ttl, proto, 0, addr(src), addr(dst))
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + l4


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    return addr(src) + addr(dst) + struct.pack("!BBH", 0, proto, length)


def tcp_segment(src: str, dst: str, sport: int, dport: int, flags: int, payload: bytes = b"",
                seq: int = 1000, ack: int = 0, window: int = 65535) -> bytes:
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0)
    csum = checksum(_pseudo(src, dst, 6, len(hdr) + len(payload)) + hdr + payload)
    return hdr[:16] + struct.pack("!H", csum) + hdr[18:] + payload


def udp_datagram(src: str, dst: str, sport: int, dport: int, payload: bytes = b"",
                 with_checksum: bool = True) -> bytes:
    length = 8 + len(payload)
    hdr = struct.pack("!HHHH", sport, dport, length, 0)
    if with_checksum:
        csum = checksum(_pseudo(src, dst, 17, length) + hdr + payload) or 0xFFFF
        hdr = hdr[:6] + struct.pack("!H", csum)
    return hdr + payload


def tcp(src: str, dst: str, sport: int, dport: int, flags: int, payload: bytes = b"",
        seq: int = 1000, ack: int = 0) -> bytes:
    """An Ethernet/IPv4/TCP frame."""
    return ether(ipv4(src, dst, 6, tcp_segment(src, dst, sport, dport, flags, payload, seq, ack)))


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"", with_checksum: bool = True) -> bytes:
    """An Ethernet/IPv4/UDP frame (``with_checksum=False``: checksum field 0)."""
    return ether(ipv4(src, dst, 17, udp_datagram(src, dst, sport, dport, payload, with_checksum)))


def icmp_echo(src: str, dst: str, ident: int = 1, seq: int = 1, payload: bytes = b"ping") -> bytes:
    """An Ethernet/IPv4/ICMP echo request frame."""
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return ether(ipv4(src, dst, 1, body))


def arp() -> bytes:
    """A (non-IP) ARP request frame."""
    return ether(bytes(28), ETH_ARP, dst=b"\xff" * 6)


def packets(frames: Iterable[bytes], start_index: int = 0, start_ts: int = 0, step_ns: int = 1000) -> list[Packet]:
    """Packets with consecutive indices (clock = index) and timestamps ``step_ns`` apart."""
    return [Packet(f, start_ts + i * step_ns, start_index + i) for i, f in enumerate(frames, 0)]


def reparse(pkt: Packet) -> Packet:
    """A fresh parse of ``pkt``'s bytes (checks the wire bytes, not cached fields)."""
    return Packet(bytes(pkt.data), pkt.ts, pkt.index)
