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

    def process(self, pkt: Packet, ctx: Context) -> Packet:
        if pkt.dst == self.vip and (self.port is None or pkt.dport == self.port):
            to_server = True
        elif pkt.src == self.vip and (self.port is None or pkt.sport == self.port):
            to_server = False
        else:
            return pkt
        key = FLOW.key(pkt)
        entry = self.mapping.get(key)
        if to_server and needs_new_mapping(entry, pkt.flags):
            entry = self._assign(key)
        if entry is None:
            return pkt                      # reply of a connection we never saw open
        server = entry[0]
        self.bytes.incr(len(pkt.data), server)
        if to_server:
            rewrite_dst(pkt, self.backends[server])
        else:
            rewrite_src(pkt, self.backends[server])
        if pkt.proto == PROTO_TCP and pkt.flags & (TCP_FIN | TCP_RST) and not entry[1] & CLOSED:
            state = track_close(entry[1], pkt.flags, to_server)
            if state & CLOSED:
                self.active.decr(1, server)
            self.mapping.set((server, state), key)
        return pkt

    def reads_flow_state(self, pkt: Packet) -> bool:
        """Only the VIP's traffic reads a mapping (the batch prefetch's hint)."""
        return pkt.dst == self.vip or pkt.src == self.vip

    def _assign(self, key) -> tuple[int, int]:
        # One atomic operation, so that instances racing for the least-loaded
        # backend are serialized by the store (§4.3).
        server = self.active.incr_least(range(len(self.backends)))
        entry = (server, 0)
        self.mapping.set(entry, key)
        return entry
