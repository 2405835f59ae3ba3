"""Load balancer (Table 4): spreads connections to a virtual IP over backends.

A new connection to ``vip`` (and ``port``, if set) goes to the backend with the
fewest active connections (ties: the first listed), and keeps it for its
lifetime.  Requests leave with the backend as destination; replies, which a
replayed capture shows coming from the VIP, leave with the backend as source,
so the output capture is the backend-side view of every balanced connection
(the same convention as the NAT's).  Other traffic passes unchanged.

State, exactly as Table 4:

* ``active``: per-server number of active connections, cross-flow, write/read
  often (read to pick the least loaded, incremented on open, decremented on
  close);
* ``bytes``: per-server byte counter, cross-flow, write mostly / read rarely
  (every packet of a balanced connection, both directions);
* ``mapping``: connection-to-server mapping ``(backend index, close state)``,
  per-flow, write rarely / read mostly.

On a wire (``wire: true``, for ``chc run --live``) replies come from the backend
itself, ``backend -> client``, and leave as ``vip -> client``; the mapping then
also holds each connection's backend-side 5-tuple (see the NAT's module doc).
"""

from __future__ import annotations

import dataclasses

from ..nf import FLOW, GLOBAL, NF, Access, ConfigError, Context, Counter, Value
from ..packet import PROTO_TCP, TCP_FIN, TCP_RST, Packet, rewrite_dst, rewrite_src
from ._common import CLOSED, needs_new_mapping, parse_ip, track_close


@dataclasses.dataclass
class LBConfig:
    vip: str
    backends: list
    port: int | None = None
    wire: bool = False
    vip_addr: bytes = dataclasses.field(init=False, default=b"")
    backend_addrs: tuple = dataclasses.field(init=False, default=())

    def validate(self) -> None:
        self.vip_addr = parse_ip("vip", self.vip)
        if not isinstance(self.backends, list) or not self.backends:
            raise ConfigError("backends", f"expected a non-empty list of IP addresses, got {self.backends!r}")
        self.backend_addrs = tuple(parse_ip(f"backends[{i}]", b) for i, b in enumerate(self.backends))
        if any(len(b) != len(self.vip_addr) for b in self.backend_addrs):
            raise ConfigError("backends", "backends and vip must be the same address family")
        if len(set(self.backend_addrs)) != len(self.backend_addrs):
            raise ConfigError("backends", "backends must be distinct")
        if self.port is not None and (not isinstance(self.port, int) or not 0 < self.port < 65536):
            raise ConfigError("port", f"expected a port number, got {self.port!r}")
        if not isinstance(self.wire, bool):
            raise ConfigError("wire", f"expected true or false, got {self.wire!r}")


class LoadBalancer(NF):
    kind = "lb"
    Config = LBConfig

    active = Counter(GLOBAL, Access.READ_WRITE, doc="active connections per server")
    bytes = Counter(GLOBAL, Access.WRITE_MOSTLY, doc="bytes per server")
    mapping = Value(FLOW, Access.READ_HEAVY, doc="connection -> (backend index, close state)")

    def __init__(self, config: LBConfig) -> None:
        super().__init__(config)
        self.vip = config.vip_addr
        self.port = config.port
        self.backends = config.backend_addrs
        self.wire = config.wire

    def process(self, pkt: Packet, ctx: Context) -> Packet:
        if pkt.dst == self.vip and (self.port is None or pkt.dport == self.port):
            to_server = True
        elif self.wire:
            if pkt.src in self.backends and (self.port is None or pkt.sport == self.port):
                return self._reply(pkt)
            return pkt
        elif pkt.src == self.vip and (self.port is None or pkt.sport == self.port):
            to_server = False
        else:
            return pkt
        key = FLOW.key(pkt)
        entry = self.mapping.get(key)
        fresh = to_server and needs_new_mapping(entry, pkt.flags)
        if fresh:
            entry = self._assign(key)
        if entry is None:
            return pkt                      # reply of a connection we never saw open
        server = entry[0]
        self.bytes.incr(len(pkt.data), server)
        if to_server:
            rewrite_dst(pkt, self.backends[server])
            if fresh and self.wire:
                self.mapping.set(entry, FLOW.key(pkt))   # the backend-side form, for _reply
        else:
            rewrite_src(pkt, self.backends[server])
        return self._track(pkt, key, entry, to_server)

    def _track(self, pkt: Packet, key, entry: tuple[int, int], to_server: bool, backside=None) -> Packet:
        """Close tracking: a closed connection no longer counts as active on its
        server (and on a wire its backend-side entry goes; ``backside`` is that
        key for a reply, whose own key after translation is the VIP one)."""
        if pkt.proto == PROTO_TCP and pkt.flags & (TCP_FIN | TCP_RST) and not entry[1] & CLOSED:
            server = entry[0]
            state = track_close(entry[1], pkt.flags, to_server)
            if state & CLOSED:
                self.active.decr(1, server)
                if self.wire:
                    self.mapping.delete(FLOW.key(pkt) if to_server else backside)
            self.mapping.set((server, state), key)
        return pkt

    def _reply(self, pkt: Packet) -> Packet:
        """A reply on the wire, ``backend -> client``: it leaves from the VIP."""
        backside = FLOW.key(pkt)
        entry = self.mapping.get(backside)
        if entry is None:
            return pkt                      # the backend's own traffic, not a balanced connection
        server = entry[0]
        self.bytes.incr(len(pkt.data), server)
        rewrite_src(pkt, self.vip)
        key = FLOW.key(pkt)
        entry = self.mapping.get(key)
        if entry is None or entry[0] != server:
            return pkt                      # (a stale backend-side entry)
        return self._track(pkt, key, entry, False, backside)

    def reads_flow_state(self, pkt: Packet) -> bool:
        """Only the VIP's traffic reads a mapping (the batch prefetch's hint)."""
        return pkt.dst == self.vip or pkt.src == self.vip or (self.wire and pkt.src in self.backends)

    def _assign(self, key) -> tuple[int, int]:
        # One atomic operation, so that instances racing for the least-loaded
        # backend are serialized by the store (§4.3).
        server = self.active.incr_least(range(len(self.backends)))
        entry = (server, 0)
        self.mapping.set(entry, key)
        return entry
