"""Helpers shared by the NFs: config address parsing, prefixes, TCP close tracking,
and (on a live wire) the expiry of closed connections' entries after a TIME_WAIT."""

from __future__ import annotations

import ipaddress

from ..nf import ConfigError
from ..packet import TCP_ACK, TCP_RST, TCP_SYN, ip_bytes


def parse_ip(field: str, text: object) -> bytes:
    if not isinstance(text, str):
        raise ConfigError(field, f"expected an IP address string, got {text!r}")
    try:
        return ip_bytes(text)
    except ValueError:
        raise ConfigError(field, f"not an IP address: {text!r}") from None


class Prefixes:
    """Membership test for a set of IP prefixes, memoised per address."""

    def __init__(self, field: str, cidrs: object) -> None:
        if isinstance(cidrs, str) or not isinstance(cidrs, (list, tuple)):
            raise ConfigError(field, f"expected a list of prefixes, got {cidrs!r}")
        nets = []
        for i, c in enumerate(cidrs):
            try:
                nets.append(ipaddress.ip_network(str(c), strict=False))
            except ValueError:
                raise ConfigError(f"{field}[{i}]", f"not an IP prefix: {c!r}") from None
        self.nets = nets
        self._memo: dict[bytes, bool] = {}

    def __contains__(self, addr: bytes) -> bool:
        hit = self._memo.get(addr)
        if hit is None:
            hit = self._memo[addr] = self._lookup(addr)
        return hit

    def _lookup(self, addr: bytes) -> bool:
        # Apart from __contains__: its generator would cost every (memoised) call.
        a = ipaddress.ip_address(addr)
        return any(a in n for n in self.nets if n.version == a.version)


# -- TCP connection close tracking (NAT and LB mappings) ---------------------------

FIN_A = 1       # FIN seen from the side that opened the mapping
FIN_B = 2       # FIN seen from the other side
CLOSED = 4      # both FINs or an RST


def track_close(state: int, flags: int, from_a: bool) -> int:
    """Close state after a FIN/RST segment; sets CLOSED once the connection ends."""
    state |= FIN_A if from_a else FIN_B
    if flags & TCP_RST or state & (FIN_A | FIN_B) == (FIN_A | FIN_B):
        state |= CLOSED
    return state


def time_wait_ns(field: str, seconds: object) -> int:
    """A TIME_WAIT from config, in ns (seconds > 0)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ConfigError(field, f"expected a number of seconds above 0, got {seconds!r}")
    return int(seconds * 1_000_000_000)


def forget_closed(mapping, key, slot: int, other, theirs) -> None:
    """A closed connection's TIME_WAIT is over (a timer set at its close, on a live
    wire): its entry ``key`` (``(slot, close state)``, ``slot`` its NAT port or LB
    backend) and its other side's entry ``other`` (which held ``theirs``) go, unless
    a new connection has taken them since.  Until then a late last ACK or a FIN sent
    again still crosses; after it, the other side's traffic to that connection is
    unsolicited, as on a real NAT or LB (it reached the inside host for ever before)."""
    entry = mapping.get(key)
    closed = entry is not None and entry[0] == slot and entry[1] & CLOSED
    if closed:
        mapping.delete(key)
    # (the 5-tuple reopened on the same slot: the other side's entry is the new one's)
    if (closed or entry is None or entry[0] != slot) and mapping.get(other) == theirs:
        mapping.delete(other)


def needs_new_mapping(entry: tuple | None, flags: int) -> bool:
    """No mapping yet, or a fresh SYN reuses the 5-tuple of a closed connection."""
    return entry is None or bool(entry[1] & CLOSED and flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
