"""Link types other than Ethernet: what the chain sees, and what goes back on the wire.

Theory of operation
-------------------
NFs and the runtime parse Ethernet frames (:func:`chc.packet.parse`).  A capture
of another link type -- Linux cooked v1/v2 (``tcpdump -i any``), raw IP,
BSD null/loopback -- is fed to the chain through a :class:`LinkAdapter`:

* :meth:`LinkAdapter.to_ether` cuts the frame's link-layer header off, keeps it
  in a table of distinct headers, and puts a 14-byte Ethernet header in its
  place whose EtherType is the protocol the link header names (IPv4, IPv6,
  anything else) and whose source MAC address carries the header's number in
  that table (destination ``02:00:00:00:00:00``, source ``02:00`` + 4 bytes;
  locally administered addresses, never a real NIC's).
* :meth:`LinkAdapter.from_ether` does the reverse on the chain's output: it
  reads the number back, and puts the original header in front of the
  (possibly rewritten) network-layer bytes.  So the output keeps the input's
  link type and each packet its own link header, byte for byte.

NFs never read or write MAC addresses, so the number survives the chain.  The
table holds each distinct header once (Linux cooked headers differ by direction,
interface and sender address: a handful per capture), not one per packet.
"""

from __future__ import annotations

from collections.abc import Callable

from .capture import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from .packet import ETH_IPV4, ETH_IPV6

__all__ = ["LINK_NAMES", "SUPPORTED", "LinkAdapter", "adapter_for"]

#: Link types ``chc run`` reads and writes, with tcpdump's names for them.
LINK_NAMES = {
    LINKTYPE_ETHERNET: "EN10MB (Ethernet)",
    LINKTYPE_LINUX_SLL: "LINUX_SLL (Linux cooked v1)",
    LINKTYPE_LINUX_SLL2: "LINUX_SLL2 (Linux cooked v2)",
    LINKTYPE_RAW: "RAW (raw IPv4/IPv6)",
    LINKTYPE_IPV4: "IPV4 (raw IPv4)",
    LINKTYPE_IPV6: "IPV6 (raw IPv6)",
    LINKTYPE_NULL: "NULL (BSD loopback, host byte order)",
    LINKTYPE_LOOP: "LOOP (OpenBSD loopback, network byte order)",
}
SUPPORTED = frozenset(LINK_NAMES)

_ETHER_HEADER = 14
_DST_MAC = b"\x02\x00\x00\x00\x00\x00"
_SRC_MAC_PREFIX = b"\x02\x00"
_ID_AT = 8          # the header number: bytes 8..11, the last four of the source MAC
_AF_INET = 2
_AF_INET6 = frozenset((10, 24, 28, 30))   # Linux, NetBSD/OpenBSD, FreeBSD, macOS


def _af_ethertype(family: int) -> int:
    if family == _AF_INET:
        return ETH_IPV4
    return ETH_IPV6 if family in _AF_INET6 else 0


def _split_null(frame: bytes) -> tuple[int, int]:
    # The address family is in the byte order of the machine that captured.
    family = int.from_bytes(frame[:4], "little")
    if family > 0xFFFF:
        family = int.from_bytes(frame[:4], "big")
    return 4, _af_ethertype(family)


def _split_loop(frame: bytes) -> tuple[int, int]:
    return 4, _af_ethertype(int.from_bytes(frame[:4], "big"))


def _split_raw(frame: bytes) -> tuple[int, int]:
    version = frame[0] >> 4 if frame else 0
    return 0, ETH_IPV4 if version == 4 else ETH_IPV6 if version == 6 else 0


def _fixed(header: int, at: int | None, ethertype: int = 0) -> Callable[[bytes], tuple[int, int]]:
    """A header of ``header`` bytes whose protocol is the 16-bit field at ``at``
    (or always ``ethertype``)."""
    def split(frame: bytes) -> tuple[int, int]:
        return header, ethertype if at is None else int.from_bytes(frame[at:at + 2], "big")
    return split


# Per link type: frame -> (length of its link header, EtherType of what follows).
_SPLITTERS: dict[int, Callable[[bytes], tuple[int, int]]] = {
    LINKTYPE_LINUX_SLL: _fixed(16, 14),      # type, ARPHRD, addr len, addr[8], protocol
    LINKTYPE_LINUX_SLL2: _fixed(20, 0),      # protocol, reserved, ifindex, ARPHRD, type, addr len, addr[8]
    LINKTYPE_RAW: _split_raw,
    LINKTYPE_IPV4: _fixed(0, None, ETH_IPV4),
    LINKTYPE_IPV6: _fixed(0, None, ETH_IPV6),
    LINKTYPE_NULL: _split_null,
    LINKTYPE_LOOP: _split_loop,
}


class LinkAdapter:
    """Frames of one non-Ethernet link type to Ethernet and back (see module doc)."""

    def __init__(self, linktype: int) -> None:
        if linktype not in _SPLITTERS:
            raise ValueError(f"no adapter for link type {linktype}")
        self.linktype = linktype
        self._split = _SPLITTERS[linktype]
        self._ids: dict[bytes, bytes] = {}     # link header -> its Ethernet header
        self._headers: list[bytes] = []        # number -> link header

    def to_ether(self, frame: bytes) -> bytes:
        """The frame as the chain sees it: an Ethernet header, then the network layer."""
        size, ethertype = self._split(frame)
        if len(frame) < size:       # cut short: the whole frame is its "header"
            size, ethertype = len(frame), 0
        header = frame[:size]
        ether = self._ids.get(header)
        if ether is None:
            number = len(self._headers)
            self._headers.append(header)
            ether = _DST_MAC + _SRC_MAC_PREFIX + number.to_bytes(4, "big")
            self._ids[header] = ether
        return ether + ethertype.to_bytes(2, "big") + frame[size:]

    def from_ether(self, frame: bytes | bytearray) -> bytes:
        """A frame the chain put out, with its original link header again."""
        number = int.from_bytes(frame[_ID_AT:_ID_AT + 4], "big")
        if number >= len(self._headers) or frame[:_ID_AT] != _DST_MAC + _SRC_MAC_PREFIX:
            raise ValueError("frame did not come through this adapter (its MAC addresses were changed)")
        return self._headers[number] + bytes(frame[_ETHER_HEADER:])


def adapter_for(linktype: int) -> LinkAdapter | None:
    """None for Ethernet (the chain's own framing), else an adapter; ValueError for
    a link type chc does not read."""
    if linktype == LINKTYPE_ETHERNET:
        return None
    if linktype not in SUPPORTED:
        known = ", ".join(f"{t} {n}" for t, n in sorted(LINK_NAMES.items()))
        raise ValueError(f"link type {linktype} is not supported (supported: {known})")
    return LinkAdapter(linktype)
