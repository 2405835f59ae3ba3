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

* ``likelihood``: Lambda per host, cross-flow, write/read often, held as the
  counts of successful and failed first contacts and the verdict (Lambda is
  (theta1/theta0)^s * ((1-theta1)/(1-theta0))^f, computed from them);
* ``pending``: pending connection initiation per flow with its timestamp and
  initiator, per-flow, write/read often;
* ``contacted``: the first-contact record TRW needs per (host, destination); the
  paper's Table 4 folds it into the per-host record.

Unanswered attempts are resolved by a framework timer (``ctx.set_timer``), so
the outcome depends only on packet timestamps, never on batching.

Partitioning: on the unordered host pair, so that both directions of a
connection (and its pending record, and the pair's first-contact record) stay
on one instance and in order.  A host's likelihood is then shared by the
instances that see its connections; each TRW step is one offloaded, atomic
value operation (``trw_step``) so concurrent steps are serialized by the store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable

from ..nf import FLOW, INITIATOR, NF, Access, ConfigError, Context, Scope, Value, _initiator, value_op
from ..packet import PROTO_TCP, TCP_ACK, TCP_RST, TCP_SYN, Packet, ip_str

_SYN_ACK = TCP_SYN | TCP_ACK


def _pair_key(p: Packet) -> Hashable:
    init = _initiator(p)
    return (init, p.src if init == p.dst else p.dst)


def _pair_bytes(p: Packet) -> bytes:
    a, b = p.src, p.dst
    return a + b if a <= b else b + a


# Both directions of every connection between two hosts: the partition keeps a
# connection's packets together (per-flow order) and a (host, destination)
# first-contact record on one instance; the per-host likelihood is shared.
HOST_PAIR = Scope("host-pair", 1, False, _pair_key, _pair_bytes, joins_flows=True)


SCANNER, UNDECIDED, BENIGN = 1, 0, -1


@value_op("trw_step", lua="""
local s, f, verdict = 0, 0, 0
if value then s, f, verdict = value[1], value[2], value[3] end
if verdict ~= 0 then return value, nil end
local success, up_s, up_f, eta0, eta1 = args[1], args[2], args[3], args[4], args[5]
if success then s = s + 1 else f = f + 1 end
local lam = (up_s ^ s) * (up_f ^ f)
if lam >= eta1 then verdict = 1 elseif lam <= eta0 then verdict = -1 end
return {s, f, verdict}, lam
""")
def trw_step(value: tuple | None, success: bool, up_s: float, up_f: float,
             eta0: float, eta1: float) -> tuple[tuple[int, int, int], float | None]:
    """One TRW step on a host's record ``(successes, failures, verdict)``, atomic
    wherever it runs.  Lambda is computed from the counts, so the record after
    any set of steps is exact and independent of their order (until a verdict,
    which is final).  Returns the new Lambda, or None once decided."""
    s, f, verdict = value if value is not None else (0, 0, UNDECIDED)
    if verdict != UNDECIDED:
        return (s, f, verdict), None
    if success:
        s += 1
    else:
        f += 1
    lam = up_s ** s * up_f ** f
    verdict = SCANNER if lam >= eta1 else BENIGN if lam <= eta0 else UNDECIDED
    return (s, f, verdict), lam


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

    @classmethod
    def partition_scope(cls) -> Scope:
        return HOST_PAIR

    likelihood = Value(INITIATOR, Access.READ_WRITE, init=(0, 0, UNDECIDED),
                       doc="TRW likelihood per host: (successes, failures, verdict)")
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
        if self.block and self.likelihood.get(pkt.src)[2] == SCANNER:
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
        # TRW: first contact per destination only.  One atomic cas (§4.3), not a read
        # then a write: instances that share the pair's record after a refinement to
        # a finer scope never both count the same first contact.
        if not self.contacted.cas(False, True, (pkt.src, pkt.dst)):
            return
        flow = FLOW.key(pkt)
        self.pending.set((ctx.now, pkt.src), flow)
        ctx.set_timer(ctx.now + self.timeout_ns, (flow, ctx.now))

    def _answer(self, pkt: Packet, ctx: Context, success: bool) -> None:
        flow = FLOW.key(pkt)
        entry = self.pending.get(flow)
        if entry is None or entry[1] != pkt.dst:
            return                          # not an answer to a pending first contact
        self.pending.delete(flow)
        # An answer after the timeout is a failure, as the timer would have decided
        # had the packets arrived in input order (they may not, downstream of
        # slowed or parallel instances).
        if pkt.ts > entry[0] + self.timeout_ns:
            success = False
        self._outcome(entry[1], success, ctx)

    def on_timer(self, key: Hashable, ctx: Context) -> None:
        flow, started = key
        entry = self.pending.get(flow)
        if entry is not None and entry[0] == started:
            self.pending.delete(flow)
            self._outcome(entry[1], False, ctx)

    def _outcome(self, host: bytes, success: bool, ctx: Context) -> None:
        # One offloaded read-modify-write (§4.3): instances sharing a host's
        # likelihood never lose each other's steps.
        lam = self.likelihood.apply("trw_step", success, self.up_success, self.up_failure,
                                    self.eta0, self.eta1, key=host)
        if lam is not None and lam >= self.eta1:
            ctx.alert("portscan", ip_str(host), likelihood=lam)
