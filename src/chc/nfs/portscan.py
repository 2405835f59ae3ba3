"""Portscan detector: Threshold Random Walk (Jung, Paxson, Berger, Balakrishnan 2004).

For every host that initiates TCP connections, TRW keeps the likelihood ratio
Lambda = P(outcomes | scanner) / P(outcomes | benign), starting at 1.  Only a
host's *first contact* with each destination counts.  A successful attempt
(SYN-ACK) multiplies Lambda by theta1/theta0; a failed one (RST, or no answer
within ``timeout_s``) by (1-theta1)/(1-theta0).  Lambda >= eta1 flags the host a
scanner (alert ``portscan``, and from then on every packet it sends is dropped:
the host is blocked); Lambda <= eta0 declares it benign.  Either decision is
final.  With the paper's parameters (theta0=0.8, theta1=0.2, eta0=0.01, eta1=99)
four failed first contacts flag a host (4^4 = 256) and four successes clear it.

State (Table 4):

* ``likelihood``: Lambda per host, cross-flow, write/read often;
* ``pending``: pending connection initiation per flow with its timestamp and
  initiator, per-flow, write/read often;
* ``contacted``: the first-contact record TRW needs per (host, destination); the
  paper's Table 4 folds it into the per-host record.

Unanswered attempts are resolved by a framework timer (``ctx.set_timer``), so
the outcome depends only on packet timestamps, never on batching.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable

from ..nf import FLOW, INITIATOR, NF, Access, ConfigError, Context, Scope, Value, _initiator
from ..packet import PROTO_TCP, TCP_ACK, TCP_RST, TCP_SYN, Packet, ip_str

_SYN_ACK = TCP_SYN | TCP_ACK


def _pair_key(p: Packet) -> Hashable:
    init = _initiator(p)
    return (init, p.src if init == p.dst else p.dst)


HOST_PAIR = Scope("host-pair", 1, False, _pair_key, lambda p: b"".join(_pair_key(p)))


@dataclasses.dataclass
class TRWConfig:
    theta0: float = 0.8
    theta1: float = 0.2
    eta0: float = 0.01
    eta1: float = 99.0
    timeout_s: float = 5.0
    block: bool = True

    def validate(self) -> None:
        for name in ("theta0", "theta1"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ConfigError(name, f"must be a probability in (0, 1), got {v!r}")
        if self.theta1 >= self.theta0:
            raise ConfigError("theta1", "must be below theta0 (scanners succeed less often)")
        if not 0 < self.eta0 < 1 < self.eta1:
            raise ConfigError("eta0", f"need 0 < eta0 < 1 < eta1, got {self.eta0!r}, {self.eta1!r}")
        if not isinstance(self.timeout_s, (int, float)) or self.timeout_s <= 0:
            raise ConfigError("timeout_s", f"must be a positive number of seconds, got {self.timeout_s!r}")


class PortScanDetector(NF):
    kind = "portscan"
    Config = TRWConfig

    likelihood = Value(INITIATOR, Access.READ_WRITE, init=1.0, doc="TRW likelihood ratio per host")
    pending = Value(FLOW, Access.READ_WRITE, doc="pending initiation: (timestamp ns, initiator)")
    contacted = Value(HOST_PAIR, Access.READ_WRITE, init=False, doc="first contact made")

    def __init__(self, config: TRWConfig) -> None:
        super().__init__(config)
        self.up_success = config.theta1 / config.theta0
        self.up_failure = (1 - config.theta1) / (1 - config.theta0)
        self.eta0 = config.eta0
        self.eta1 = config.eta1
        self.timeout_ns = int(config.timeout_s * 1e9)
        self.block = config.block

    def process(self, pkt: Packet, ctx: Context) -> Packet | None:
        if self.block and self.likelihood.get(pkt.src) >= self.eta1:
            return None
        if pkt.proto != PROTO_TCP:
            return pkt
        flags = pkt.flags
        if flags & _SYN_ACK == TCP_SYN:
            self._attempt(pkt, ctx)
        elif flags & _SYN_ACK == _SYN_ACK or flags & TCP_RST:
            self._answer(pkt, ctx, success=not flags & TCP_RST)
        return pkt

    def _attempt(self, pkt: Packet, ctx: Context) -> None:
        pair = (pkt.src, pkt.dst)
        if self.contacted.get(pair):
            return                          # TRW: first contact per destination only
        self.contacted.set(True, pair)
        flow = FLOW.key(pkt)
        self.pending.set((ctx.now, pkt.src), flow)
        ctx.set_timer(ctx.now + self.timeout_ns, (flow, ctx.now))

    def _answer(self, pkt: Packet, ctx: Context, success: bool) -> None:
        flow = FLOW.key(pkt)
        entry = self.pending.get(flow)
        if entry is None or entry[1] != pkt.dst:
            return                          # not an answer to a pending first contact
        self.pending.delete(flow)
        self._outcome(entry[1], success, ctx)

    def on_timer(self, key: Hashable, ctx: Context) -> None:
        flow, started = key
        entry = self.pending.get(flow)
        if entry is not None and entry[0] == started:
            self.pending.delete(flow)
            self._outcome(entry[1], False, ctx)

    def _outcome(self, host: bytes, success: bool, ctx: Context) -> None:
        lam = self.likelihood.get(host)
        if lam >= self.eta1 or lam <= self.eta0:
            return                          # decision already made
        lam *= self.up_success if success else self.up_failure
        self.likelihood.set(lam, host)
        if lam >= self.eta1:
            ctx.alert("portscan", ip_str(host), likelihood=lam)
