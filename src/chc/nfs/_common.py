"""Helpers shared by the NFs: config address parsing, prefixes, TCP close tracking."""

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


def needs_new_mapping(entry: tuple | None, flags: int) -> bool:
    """No mapping yet, or a fresh SYN reuses the 5-tuple of a closed connection."""
    return entry is None or bool(entry[1] & CLOSED and flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
