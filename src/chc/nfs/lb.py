"""Load balancer (Table 4): spreads connections to a virtual IP over backends.

A new connection to ``vip`` (and ``port``, if set) goes to the backend with the
fewest active connections (ties: the first listed), and keeps it for its
lifetime.  With unequal ``weights`` the choice is weighted least-connections:
the fewest active connections per unit of weight, among backends of positive
weight (:func:`chc.nf.least_loaded`, exact integer comparison, so it is the same
wherever it runs).  Requests leave with the backend as destination; replies, which a
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
  per-flow, write rarely / read mostly;

and one the paper's Table 4 leaves in the configuration, made state so that an
operator can change it while traffic flows (§4.3 "read-heavy" cross-flow state):

* ``pool``: the backend addresses and their weights, cross-flow, write rarely /
  read heavy (every balanced packet reads it).  In the cached models each
  instance holds a copy refreshed by the store's callbacks (Table 1), so a
  change made at the store reaches every instance's copy before its next batch.

Changing the pool (operator control ``set-backends``, :meth:`LoadBalancer.control`).
The operator names the backends that should take new connections and their
weights.  A backend already in the pool keeps its index, so connections already
mapped to it keep their server (counters and mappings are keyed by index); one
left out gets weight 0: it takes no new connection and its open ones drain.  A
new backend is appended.  At least one weight stays positive.

On a wire (``wire: true``, for ``chc run --live``) replies come from the backend
itself, ``backend -> client``, and leave as ``vip -> client``; the mapping then
also holds each connection's backend-side 5-tuple (see the NAT's module doc).
A closed connection's entries expire ``time_wait_s`` (default 120) of input
time after its close, as the NAT's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..nf import FLOW, GLOBAL, NF, Access, ConfigError, Context, Counter, Value
from ..packet import PROTO_TCP, TCP_FIN, TCP_RST, Packet, rewrite_dst, rewrite_src
from ._common import CLOSED, closed_entry, expired, needs_new_mapping, parse_ip, time_wait_ns, track_close


def _addresses(field: str, raw: Any, family: int) -> tuple[bytes, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(field, f"expected a non-empty list of IP addresses, got {raw!r}")
    addrs = tuple(parse_ip(f"{field}[{i}]", b) for i, b in enumerate(raw))
    if any(len(b) != family for b in addrs):
        raise ConfigError(field, "backends and vip must be the same address family")
    if len(set(addrs)) != len(addrs):
        raise ConfigError(field, "backends must be distinct")
    return addrs


def _weights(field: str, raw: Any, n: int) -> tuple[int, ...]:
    if (not isinstance(raw, list) or len(raw) != n
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in raw)):
        raise ConfigError(field, f"expected {n} non-negative integers (one per backend), got {raw!r}")
    if not any(raw):
        raise ConfigError(field, "at least one weight must be positive")
    return tuple(raw)


@dataclasses.dataclass
class LBConfig:
    vip: str
    backends: list
    port: int | None = None
    weights: list | None = None
    wire: bool = False
    time_wait_s: float = 120
    vip_addr: bytes = dataclasses.field(init=False, default=b"")
    backend_addrs: tuple = dataclasses.field(init=False, default=())
    backend_weights: tuple = dataclasses.field(init=False, default=())

    def validate(self) -> None:
        self.vip_addr = parse_ip("vip", self.vip)
        self.backend_addrs = _addresses("backends", self.backends, len(self.vip_addr))
        n = len(self.backend_addrs)
        self.backend_weights = (1,) * n if self.weights is None else _weights("weights", self.weights, n)
        if self.port is not None and (not isinstance(self.port, int) or not 0 < self.port < 65536):
            raise ConfigError("port", f"expected a port number, got {self.port!r}")
        if not isinstance(self.wire, bool):
            raise ConfigError("wire", f"expected true or false, got {self.wire!r}")
        time_wait_ns("time_wait_s", self.time_wait_s)


class LoadBalancer(NF):
    kind = "lb"
    Config = LBConfig

    active = Counter(GLOBAL, Access.READ_WRITE, doc="active connections per server")
    bytes = Counter(GLOBAL, Access.WRITE_MOSTLY, doc="bytes per server")
    mapping = Value(FLOW, Access.READ_HEAVY, doc="connection -> (backend index, close state)")
    pool = Value(GLOBAL, Access.READ_HEAVY, init=lambda cfg: (cfg.backend_addrs, cfg.backend_weights),
                 doc="(backend addresses, weights); changed by the operator (set-backends)")

    def __init__(self, config: LBConfig) -> None:
        super().__init__(config)
        self.vip = config.vip_addr
        self.port = config.port
        self.wire = config.wire
        self.time_wait_ns = time_wait_ns("time_wait_s", config.time_wait_s)

    def process(self, pkt: Packet, ctx: Context) -> Packet:
        if pkt.dst == self.vip and (self.port is None or pkt.dport == self.port):
            to_server = True
        elif self.wire:
            if pkt.src in self.pool.get()[0] and (self.port is None or pkt.sport == self.port):
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
        # Indices are never reused (the pool only grows), so an open connection's
        # address does not depend on which version of the pool this copy holds.
        addr = self.pool.get()[0][server]
        if to_server:
            rewrite_dst(pkt, addr)
            if fresh and self.wire:
                self.mapping.set(entry, FLOW.key(pkt))   # the backend-side form, for _reply
        else:
            rewrite_src(pkt, addr)
        return self._track(pkt, key, entry, to_server)

    def _track(self, pkt: Packet, key, entry: tuple, to_server: bool) -> Packet:
        """Close tracking: a closed connection no longer counts as active on its
        server.  Its entries stay (on a wire the backend-side one too) for a
        TIME_WAIT: the last ACK of a close comes after both FINs (deleting that entry
        at the second FIN let the backend's last ACK out untranslated, and the NAT
        dropped it).  On a wire the closed entry keeps its close time (:meth:`_reply`
        expires it)."""
        if pkt.proto == PROTO_TCP and pkt.flags & (TCP_FIN | TCP_RST) and not entry[1] & CLOSED:
            server = entry[0]
            state = track_close(entry[1], pkt.flags, to_server)
            if state & CLOSED:
                self.active.decr(1, server)
            self.mapping.set(closed_entry(server, state, pkt.ts, self.wire), key)
        return pkt

    def _reply(self, pkt: Packet) -> Packet:
        """A reply on the wire, ``backend -> client``: it leaves from the VIP, unless its
        connection closed more than ``time_wait_s`` ago (both entries go then, as the
        NAT's: found expired by the packet that looks them up)."""
        backside = FLOW.key(pkt)
        entry = self.mapping.get(backside)
        if entry is None:
            return pkt                      # the backend's own traffic, not a balanced connection
        server = entry[0]
        backend = pkt.src
        rewrite_src(pkt, self.vip)
        key = FLOW.key(pkt)
        entry = self.mapping.get(key)
        if entry is not None and entry[0] == server and expired(entry, pkt.ts, self.time_wait_ns):
            self.mapping.delete(key)
            self.mapping.delete(backside)
            rewrite_src(pkt, backend)       # not a balanced connection any more: as the backend sent it
            return pkt
        self.bytes.incr(len(pkt.data), server)
        if entry is None or entry[0] != server:
            return pkt                      # (a stale backend-side entry)
        return self._track(pkt, key, entry, False)

    def reads_flow_state(self, pkt: Packet) -> bool:
        """Only the VIP's traffic reads a mapping (the batch prefetch's hint)."""
        return pkt.dst == self.vip or pkt.src == self.vip or (self.wire and pkt.src in self.pool.get()[0])

    def _assign(self, key) -> tuple[int, int] | None:
        # One atomic operation, so that instances racing for the least-loaded
        # backend are serialized by the store (§4.3).  Equal weights keep the
        # unweighted operation (the same choice, the same store op as before weights).
        addrs, weights = self.pool.get()
        uniform = all(w == weights[0] for w in weights)
        server = self.active.incr_least(range(len(addrs)), None if uniform else weights)
        if server is None:
            return None                     # no backend of positive weight (never by control)
        entry = (server, 0)
        self.mapping.set(entry, key)
        return entry

    @classmethod
    def control(cls, action: str, params: dict, current: Callable[[str], Any], config: LBConfig
                ) -> dict[str, Any]:
        """Operator control ``set-backends`` (see the module docstring): the new
        ``pool`` from ``params`` (``backends``: the addresses that take new
        connections; ``weights``: theirs, or the whole pool's when ``backends`` is
        left out) and the current pool.  Bad params: :class:`ConfigError` naming the field."""
        if action != "set-backends":
            return super().control(action, params, current, config)
        unknown = set(params) - {"backends", "weights"}
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown parameter (known: backends, weights)")
        if not params:
            raise ConfigError("backends", "set-backends needs backends, weights or both")
        addrs, weights = current("pool")
        addrs, weights = tuple(addrs), tuple(weights)
        if "backends" not in params:
            return {"pool": (addrs, _weights("weights", params["weights"], len(addrs)))}
        chosen = _addresses("backends", params["backends"], len(config.vip_addr))
        given = params.get("weights", [1] * len(chosen))
        given = _weights("weights", given, len(chosen))
        of = dict(zip(chosen, given, strict=True))
        new_addrs = addrs + tuple(a for a in chosen if a not in addrs)
        return {"pool": (new_addrs, tuple(of.get(a, 0) for a in new_addrs))}
