"""Helpers shared by the NFs: config address parsing, prefixes, TCP close tracking,
and (on a live wire) the expiry of closed connections' entries after a TIME_WAIT."""

from __future__ import annotations

import ipaddress
import math

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
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf:
        raise ConfigError(field, f"expected a number of seconds above 0, got {seconds!r}")
    return int(seconds * 1_000_000_000)


def closed_entry(slot: int, state: int, ts: int, wire: bool) -> tuple:
    """A mapping entry after a FIN or RST: ``(slot, close state)``, on a wire with the
    close time once closed (its TIME_WAIT runs from there: :func:`expired`)."""
    return (slot, state, ts) if wire and state & CLOSED else (slot, state)


def expired(entry: tuple, ts: int, time_wait_ns: int) -> bool:
    """Whether a closed entry's TIME_WAIT was over at input time ``ts``."""
    return len(entry) > 2 and ts - entry[2] > time_wait_ns


def needs_new_mapping(entry: tuple | None, flags: int) -> bool:
    """No mapping yet, or a fresh SYN reuses the 5-tuple of a closed connection."""
    return entry is None or bool(entry[1] & CLOSED and flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
