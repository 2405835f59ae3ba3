"""NAT (Table 4): source NAT for connections initiated from the internal prefixes.

State, exactly as Table 4 of the paper:

* ``ports``: the available external ports, cross-flow, write/read often.  A new
  connection pops one (the store pops on the NF's behalf, §6); a closed
  connection pushes it back at the tail, so a port is reused as late as possible.
* ``tcp_packets`` and ``packets``: L4/L3 packet counters, cross-flow, write
  mostly / read rarely (updated on every packet, never read on the data path).
* ``mapping``: per-connection port mapping, per-flow, write rarely / read mostly:
  ``(external port, close state)`` keyed by the connection's 5-tuple.

Translation.  A packet from an internal host to an external one gets source
``external_ip:port``.  Replies are translated to their form on the external wire
too: a capture replayed through the chain is the *inside* view of each
connection, and the NAT's output is the outside view, so the reply
``remote -> internal:iport`` leaves as ``remote -> external_ip:port``.  Both
directions of a connection therefore carry the same external port in the
output capture.  Packets between internal hosts, IPv6, and non-TCP/UDP packets
pass unchanged; unsolicited packets from outside to an internal host pass or are
dropped according to ``unsolicited``; a connection opened from outside that is
passed gets an untranslated mapping (port 0), so its packets pass unchanged in
both directions and use no port of the pool.  When the pool is empty a new connection
is dropped with a ``nat-ports-exhausted`` alert naming the internal host.

On a wire (``wire: true``, for ``chc run --live``).  Between two live hosts a
reply reaches the NAT as the outside host sent it, ``remote -> external_ip:port``,
and must leave as ``remote -> internal:iport``.  With ``wire`` the NAT also keeps,
in ``mapping``, the connection's outside 5-tuple (its output form) with the
internal endpoint, translates such replies back, and treats a packet from outside
sent straight to an internal address as unsolicited.  A closed connection's
entries expire ``time_wait_s`` (default 120, Linux's TIME_WAIT) of input time
after its close: from then on the outside host's packets to that port are
unsolicited, and the first of them deletes both entries.  The live runtime sends
replies through the chain in reverse vertex order (:mod:`chc.live`), so the NAT
sees a reply exactly in the form its own output had.
"""

from __future__ import annotations

import dataclasses

from ..nf import FLOW, GLOBAL, NF, Access, ConfigError, Context, Counter, List, Value
from ..packet import PROTO_TCP, PROTO_UDP, TCP_FIN, TCP_RST, Packet, ip_str, rewrite_dst, rewrite_src
from ._common import (
    CLOSED,
    Prefixes,
    closed_entry,
    expired,
    needs_new_mapping,
    parse_ip,
    time_wait_ns,
    track_close,
)

_UNTRANSLATED = 0      # mapping of a connection opened from outside (passed as is)


@dataclasses.dataclass
class NATConfig:
    external_ip: str
    internal: list = dataclasses.field(default_factory=lambda: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"])
    port_range: list = dataclasses.field(default_factory=lambda: [1024, 65535])
    unsolicited: str = "pass"
    wire: bool = False
    time_wait_s: float = 120
    external: bytes = dataclasses.field(init=False, default=b"")
    inside: Prefixes = dataclasses.field(init=False, default=None)

    def validate(self) -> None:
        self.external = parse_ip("external_ip", self.external_ip)
        if len(self.external) != 4:
            raise ConfigError("external_ip", "the NAT translates IPv4 only")
        self.inside = Prefixes("internal", self.internal)
        pr = self.port_range
        if (not isinstance(pr, list) or len(pr) != 2 or not all(isinstance(p, int) for p in pr)
                or not 1 <= pr[0] <= pr[1] <= 65535):
            raise ConfigError("port_range", f"expected [low, high] with 1 <= low <= high <= 65535, got {pr!r}")
        if self.unsolicited not in ("pass", "drop"):
            raise ConfigError("unsolicited", f"expected 'pass' or 'drop', got {self.unsolicited!r}")
        if not isinstance(self.wire, bool):
            raise ConfigError("wire", f"expected true or false, got {self.wire!r}")
        time_wait_ns("time_wait_s", self.time_wait_s)


class NAT(NF):
    kind = "nat"
    Config = NATConfig

    ports = List(GLOBAL, Access.READ_WRITE,
                 init=lambda cfg: range(cfg.port_range[0], cfg.port_range[1] + 1),
                 doc="available external ports", equivalence="multiset")
    tcp_packets = Counter(GLOBAL, Access.WRITE_MOSTLY, doc="total TCP packets")
    packets = Counter(GLOBAL, Access.WRITE_MOSTLY, doc="total packets")
    mapping = Value(FLOW, Access.READ_HEAVY, doc="per-connection (external port, close state)")

    def __init__(self, config: NATConfig) -> None:
        super().__init__(config)
        self.external = config.external
        self.inside = config.inside
        self.drop_unsolicited = config.unsolicited == "drop"
        self.wire = config.wire
        self.time_wait_ns = time_wait_ns("time_wait_s", config.time_wait_s)

    def process(self, pkt: Packet, ctx: Context) -> Packet | None:
        self.packets.incr()
        proto = pkt.proto
        if proto == PROTO_TCP:
            self.tcp_packets.incr()
        elif proto != PROTO_UDP:
            return pkt
        if pkt.l3 != 4 or pkt.frag:
            return pkt
        inside = self.inside
        src_in = pkt.src in inside
        dst_in = pkt.dst in inside
        if src_in == dst_in:
            if self.wire and not src_in and pkt.dst == self.external:
                return self._inbound(pkt)
            return pkt
        if self.wire and not src_in:
            # On a wire, outside hosts reach inside ones only through external_ip.
            return None if self.drop_unsolicited else pkt
        key = FLOW.key(pkt)
        entry = self.mapping.get(key)
        if entry is not None and entry[0] == _UNTRANSLATED:
            return pkt
        if src_in:
            fresh = needs_new_mapping(entry, pkt.flags)
            if fresh:
                entry = self._open(key)
                if entry is None:
                    ctx.alert("nat-ports-exhausted", ip_str(pkt.src))
                    return None
            inner = (pkt.src, pkt.sport) if fresh and self.wire else None
            rewrite_src(pkt, self.external, entry[0])
            if fresh and self.wire:
                # The outside form of the connection, for its replies (_inbound).
                self.mapping.set((entry[0], inner), FLOW.key(pkt))
        else:
            if entry is None:
                if self.drop_unsolicited:
                    return None
                # A connection opened from outside stays untranslated both ways.
                self.mapping.set((_UNTRANSLATED, 0), key)
                return pkt
            rewrite_dst(pkt, self.external, entry[0])
        return self._track(pkt, key, entry, src_in)

    def _track(self, pkt: Packet, key, entry: tuple, src_in: bool) -> Packet:
        """Close tracking of a translated connection: on close its port goes back to
        the pool (at the tail: reused as late as possible).  Its entries stay, the
        inside one closed and on a wire the outside one, for a TIME_WAIT: the last ACK
        of a close comes after both FINs, and a retransmitted FIN after it (on a live
        wire, deleting the outside entry at the second FIN dropped the server's last
        ACK as unsolicited, and the client retransmitted its FIN for seconds).  On a
        wire the closed entry keeps its close time (:meth:`_inbound` expires it)."""
        if pkt.proto == PROTO_TCP and pkt.flags & (TCP_FIN | TCP_RST) and not entry[1] & CLOSED:
            state = track_close(entry[1], pkt.flags, src_in)
            if state & CLOSED:
                self.ports.push(entry[0])
            self.mapping.set(closed_entry(entry[0], state, pkt.ts, self.wire), key)
        return pkt

    def _inbound(self, pkt: Packet) -> Packet | None:
        """A reply on the wire, ``remote -> external_ip:port``: back to the internal host,
        unless its connection has a new one on its 5-tuple since (a stale outside entry)
        or closed more than ``time_wait_s`` ago (both entries go then, found expired by
        the packet that looks them up: a timer per close would hold every packet of the
        TIME_WAIT in the root's log and the store's clock log, §5.3-§5.4)."""
        outside = FLOW.key(pkt)
        back = self.mapping.get(outside)
        if back is None:
            return None if self.drop_unsolicited else pkt
        port, (ip, iport) = back
        rewrite_dst(pkt, ip, iport)
        key = FLOW.key(pkt)
        entry = self.mapping.get(key)
        stale = entry is None or entry[0] != port
        if stale or expired(entry, pkt.ts, self.time_wait_ns):
            self.mapping.delete(outside)                # (a stale one can never be valid again)
            if not stale:
                self.mapping.delete(key)
            rewrite_dst(pkt, self.external, port)       # unsolicited: not let through to the inside host
            return None if self.drop_unsolicited else pkt
        return self._track(pkt, key, entry, False)

    def _open(self, key) -> tuple[int, int] | None:
        port = self.ports.pop()
        if port is None:
            return None
        entry = (port, 0)
        self.mapping.set(entry, key)
        return entry
