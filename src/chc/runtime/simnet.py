"""The sim runtime's network: messages between components in virtual time.

Theory of operation
-------------------
Every store request and reply, and every commit report, is a message on a
simulated link with a latency distribution and, where the real transport allows
it, faults drawn from the run's seed.  Messages wait in one queue ordered by
(delivery time, send order); whoever waits for something (a client blocked on a
reply, the runtime at the end of a step) delivers them in that order, so a seed
replays a run exactly.  With no latency and no faults configured (``chc run``)
a message is delivered the moment it is sent: the data path keeps its speed.

Links, and what may happen on them (the transports of the ``proc`` runtime):

``data``     root -> instance and instance -> instance packet batches: ZeroMQ
             PUSH/PULL over one TCP or ipc connection per pair, FIFO and
             reliable while both ends live.  Latency only; FIFO is kept.
``store``    instance <-> store requests and replies (§4.3).  One connection is
             FIFO, but the client library gives up on a connection that does
             not answer in time and resends on a new one, so a request or its
             reply can be lost, a resent request can arrive after newer ones
             (reorder) or beside a copy still travelling (duplicate).  Latency,
             drop, duplicate and reorder.
``commits``  store -> root commit reports (§5.4): FIFO, latency only.

Reports of finished and forked packets (instance -> root) are delivered at
once: a fork must reach the root before any report of the copy's end, which a
real deployment gets by sending both on the instance's one connection to its
root (see docs/coe.md).

:class:`StoreNode` is the store server's side: it applies each request it
receives to the backend (the in-process engine or Redis), answers it, and
records the serialization it produced for the COE checker
(:class:`chc.reference.StoreStep`); the runtime drains the commit reports at
the end of each step and sends them on the ``commits`` link.  A blocking
request carries the clock its client is processing: the checker follows reads
of shared state by it, and, while an instance can crash, the node keeps each
logical instance's answers to shared reads by clock (its read log), which
answer a failover instance's replay (§5.4).
:class:`StoreLink` is one client's connection: the backend its
:class:`~chc.core.client.StoreClient` talks to.  ``execute`` is a blocking
request (resent after a timeout until answered); ``submit`` sends a
non-blocking request and calls back with the highest acknowledged sequence
number when the reply arrives.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..core.client import StoreUnavailable
from ..core.failover import ReadLog, log_reads
from ..core.recovery import Stamped
from ..core.store import Op, Refused, StoreError
from .pacing import Delay

LINKS = {"data": ("latency",), "store": ("latency", "drop", "duplicate", "reorder", "timeout_us"),
         "commits": ("latency",)}
FIFO = {"data": "ZeroMQ PUSH/PULL over one TCP or ipc connection: FIFO and reliable",
        "commits": "commit reports travel on one FIFO connection to the root"}
DEFAULT_TIMEOUT_NS = 1_000_000          # retransmission timeout of a store request: 1 ms
MAX_TRIES = 10_000                      # a blocking request resent this often: the store is gone


@dataclasses.dataclass
class LinkModel:
    """How one class of links behaves: latency (µs distribution) and fault rates."""

    latency: str | None = None
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    timeout_us: float | None = None

    @property
    def faulty(self) -> bool:
        return bool(self.drop or self.duplicate or self.reorder)


def parse_network(raw: Any, error: Callable[[str], Exception]) -> dict[str, LinkModel]:
    """``{link: {latency: DIST, drop: P, ...}}`` from a scenario, validated by field."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error("network: a mapping of link (data, store, commits) -> {latency, drop, duplicate, reorder}")
    out: dict[str, LinkModel] = {}
    for link, spec in raw.items():
        where = f"network.{link}"
        if link not in LINKS:
            raise error(f"{where}: unknown link (known: {', '.join(LINKS)})")
        if not isinstance(spec, dict):
            raise error(f"{where}: a mapping of {', '.join(LINKS[link])}")
        model = LinkModel()
        for field, value in spec.items():
            if field not in LINKS[link]:
                if link in FIFO and field in ("drop", "duplicate", "reorder"):
                    raise error(f"{where}.{field}: the {link} link cannot {field} messages "
                                f"({FIFO[link]}); it can only be delayed (latency)")
                raise error(f"{where}.{field}: unknown field (known: {', '.join(LINKS[link])})")
            if field == "latency":
                try:
                    Delay(str(value), 0, where)
                except ValueError as exc:
                    raise error(f"{where}.latency: {exc}") from None
                model.latency = str(value)
            elif field == "timeout_us":
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                    raise error(f"{where}.timeout_us: a positive number of microseconds, got {value!r}")
                model.timeout_us = float(value)
            else:
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                    raise error(f"{where}.{field}: a probability in [0, 1), got {value!r}")
                setattr(model, field, float(value))
        out[link] = model
    return out


class Network:
    """The message queue in virtual time (ns), the links' models and the faults."""

    def __init__(self, links: dict[str, LinkModel] | None = None, seed: int = 0) -> None:
        self.links = links or {}
        self.seed = seed
        self.rng = random.Random(seed * 7919 + 17)
        self._latency = {name: Delay(m.latency, seed, f"link:{name}")
                         for name, m in self.links.items() if m.latency}
        self.queue: list[tuple[int, int, Callable[[], None]]] = []
        self.sent = 0
        self.now = 0
        self.stats: Counter = Counter()
        # Scripted faults (scenario events): (kind, endpoint or None, remaining count, extra ns).
        self.scripted: list[list] = []
        # Partitions: (endpoint or None for every endpoint, until ns).
        self.partitions: list[tuple[str | None, int]] = []
        store = self.links.get("store", LinkModel())
        self.timeout_ns = int(store.timeout_us * 1000) if store.timeout_us else DEFAULT_TIMEOUT_NS
        self.store_instant = store.latency is None and not store.faulty
        self.commits_instant = "commits" not in self._latency
        self.data_latency = self._latency.get("data")
        self._data_last: dict[tuple, int] = {}
        self.store_down = False             # §5.4: the store crashed; requests to it are lost

    @property
    def instant(self) -> bool:
        """No message on a store link can be delayed or lost right now."""
        return self.store_instant and not self.scripted and not self.partitions and not self.store_down

    def at(self, t: int, action: Callable[[], None]) -> None:
        """Run ``action`` at virtual time ``t``, in order with the messages (a timer
        of the framework's, e.g. a failure detector's; on no link, never lost)."""
        self.sent += 1
        heapq.heappush(self.queue, (t, self.sent, action))

    # -- sending -------------------------------------------------------------------------
    def send(self, link: str, endpoint: str, t: int, deliver: Callable[[], None]) -> None:
        """Send a message at virtual time ``t``; ``deliver`` runs when (if) it arrives."""
        self.stats[f"{link}.sent"] += 1
        extra, copies = 0, 1
        if link == "store":                 # scripted faults and partitions: store links only
            if self._partitioned(endpoint, t):
                self.stats[f"{link}.partitioned"] += 1
                return
            extra, copies = self._scripted(endpoint)
        model = self.links.get(link)
        if copies == 0:
            self.stats[f"{link}.dropped"] += 1
            return
        if model is not None and model.faulty:
            rng = self.rng
            if model.drop and rng.random() < model.drop:
                self.stats[f"{link}.dropped"] += 1
                return
            if model.duplicate and rng.random() < model.duplicate:
                self.stats[f"{link}.duplicated"] += 1
                copies += 1
        for _ in range(copies):
            at = t + extra + self._delay(link)
            if model is not None and model.reorder and self.rng.random() < model.reorder:
                # Held back by up to a timeout: later messages overtake it.
                self.stats[f"{link}.reordered"] += 1
                at += int(self.rng.uniform(0, self.timeout_ns))
            self.sent += 1
            heapq.heappush(self.queue, (at, self.sent, deliver))

    def _delay(self, link: str) -> int:
        d = self._latency.get(link)
        return d.sample() if d is not None else 0

    def _partitioned(self, endpoint: str, t: int) -> bool:
        if not self.partitions:
            return False
        self.partitions = [(e, until) for e, until in self.partitions if until > t]
        return any(e is None or e == endpoint for e, _ in self.partitions)

    def _scripted(self, endpoint: str) -> tuple[int, int]:
        """Scripted faults for the next message of ``endpoint``: (extra delay, copies)."""
        extra, copies = 0, 1
        for fault in self.scripted:
            kind, target, _, more = fault
            if target is not None and target != endpoint:
                continue
            fault[2] -= 1
            self.stats[f"scripted.{kind}"] += 1
            if kind == "drop":
                copies = 0
            elif kind == "duplicate":
                copies = 2
            else:
                extra += more
        self.scripted = [f for f in self.scripted if f[2] > 0]
        return extra, copies

    def data_arrival(self, link: tuple, vt: int) -> int:
        """Arrival time of a packet sent at ``vt`` on a FIFO data link."""
        at = vt + self.data_latency.sample()
        last = self._data_last.get(link, 0)
        if at < last:
            at = last
        self._data_last[link] = at
        return at

    # -- delivering ------------------------------------------------------------------------
    def run_until(self, t: float) -> None:
        """Deliver every message due by ``t``, in (time, send order)."""
        q = self.queue
        while q and q[0][0] <= t:
            at, _, deliver = heapq.heappop(q)
            if at > self.now:
                self.now = at
            deliver()

    def run_next(self) -> bool:
        """Deliver the next message; False when none is travelling."""
        if not self.queue:
            return False
        at, _, deliver = heapq.heappop(self.queue)
        if at > self.now:
            self.now = at
        deliver()
        return True

    def next_time(self) -> float:
        return self.queue[0][0] if self.queue else float("inf")

    def describe(self) -> dict[str, int]:
        return dict(sorted(self.stats.items()))


class StoreNode:
    """The store server's side of the store links: requests in, replies out, and the
    record of the serialization it produced."""

    def __init__(self, net: Network, backend: Any) -> None:
        self.net = net
        self.backend = backend
        self.record: Any = None             # COE checker: a StoreSteps recorder
        self.crashed = False
        # §5.4 store failover: the store instance answering (one more at each failover
        # detected).  A reply the failed one sent that is still on the wire when its
        # failure is detected is dropped on arrival: recovery has read the instances'
        # logs without it, and the client asks the failover store again.
        self.epoch = 0
        # §5.4 links of failed instances: what they sent before they died and arrives
        # after their failover instance took over is refused, never applied.
        self.fenced: set[str] = set()
        # §5.4 (with §5.3's emulation applied to reads): while a scenario can crash an
        # instance, the answers to each logical instance's reads of shared objects, by
        # the clock they were read for, as long as that clock is logged.  A failover
        # instance's replay is answered from here, so it decides as the failed one did
        # (a shared object others kept updating has moved on since).
        self.read_log: ReadLog | None = None
        self.replaying: dict[str, dict[tuple[Any, int], int]] = {}   # link -> read cursor

    def handle(self, ops: list[Op], read_clock: int | None = None, link: str = "") -> list[Any]:
        """Apply one request to the backend: its results (raises StoreError).
        ``read_clock``: the clock a blocking request reads for (the checker follows
        shared reads by it; the read log keeps them by it)."""
        replaying = self.replaying.get(link)
        try:
            results = self.backend.execute(ops)
        except Refused as exc:
            if self.record is not None:
                self._record_refused(ops, exc, None if replaying is not None else read_clock)
            raise
        if self.record is not None:
            # A recoverable store stamps replies with TS (§5.4): the record keeps the value.
            # A replay's reads are the store's to answer, not the logical chain's to follow.
            self.record.request(ops, [r.result if r.__class__ is Stamped else r for r in results],
                                None if replaying is not None else read_clock)
        if read_clock is not None and self.read_log is not None:
            self._reads(ops, results, read_clock, replaying)
        return results

    def _record_refused(self, ops: list[Op], exc: Refused, read_clock: int | None) -> None:
        """A request some ops of which the store refused for what they are, the others
        applied: each in its place, a refused one unobserved (the checker's re-execution
        decides again that it is refused: a store that applied it shows in the state)."""
        refused = {id(op) for op, _ in exc.refused}
        self.record.request(ops, [r.result if r.__class__ is Stamped else r for r in exc.results], read_clock,
                            {i for i, op in enumerate(ops) if id(op) in refused})

    def _reads(self, ops: list[Op], results: list[Any], clock: int, cursor: dict | None) -> None:
        """Log the answers to reads of shared objects, or, for a replay, answer them
        from the log (the value the failed instance read for that clock)."""
        log_reads(self.read_log, ops, results, clock, cursor)

    def commits(self) -> list[tuple[int, int]]:
        return self.backend.commits()

    def declare(self, key: Any, initial: Any) -> None:
        self.backend.declare(key, initial)
        if self.record is not None:
            self.record.declare(key, initial)

    def request(self, link: StoreLink, rid: int, ops: list[Op], read_clock: int | None = None) -> None:
        """A request message arrived: apply it, send the reply and the commit reports."""
        if self.crashed or link.name in self.fenced:
            return
        try:
            reply: Any = self.handle(ops, read_clock, link.name)
        except StoreUnavailable:
            return                          # the backend itself is down: no reply
        except StoreError as exc:
            reply = exc
        net = self.net
        epoch = self.epoch
        net.send("store", link.name, net.now, lambda: self.epoch == epoch and link.reply(rid, reply))


class StoreLink:
    """One client's connection to the store through the network: the backend of its
    :class:`~chc.core.client.StoreClient`."""

    def __init__(self, net: Network, node: StoreNode, name: str) -> None:
        self.net = net
        self.node = node
        self.name = name
        self.backend = node.backend
        self.t = 0                          # the client's virtual time (ns)
        self._rid = 0
        self._replies: dict[int, Any] = {}
        self._acks: dict[int, tuple[int, Callable[[int], None]]] = {}
        self.retransmissions = 0
        self.awaiting: list[Op] = []        # the blocking request being waited for (§5.4 store failover)
        # The clock its instance is processing (set by the runtime): a blocking request's
        # reads are made for it, which the COE checker follows (coe.Serialization).
        self.clock_of: Callable[[], int] | None = None

    # -- requests ---------------------------------------------------------------------------
    def execute(self, ops: list[Op]) -> list[Any]:
        """A blocking request: sent, resent after each timeout, until answered."""
        net = self.net
        clock = self.clock_of() if self.clock_of is not None else None
        if net.instant:
            return self.node.handle(ops, clock, self.name)
        self._rid += 1
        rid = self._rid
        self.awaiting = ops
        for tries in range(MAX_TRIES):
            if tries:
                self.retransmissions += 1
            self._send(rid, ops, clock)
            deadline = self.t + net.timeout_ns
            while rid not in self._replies and net.next_time() <= deadline:
                net.run_next()
            if rid in self._replies:
                if net.now > self.t:
                    self.t = net.now
                self.awaiting = []
                reply = self._replies.pop(rid)
                if isinstance(reply, BaseException):
                    raise reply
                return reply
            self.t = deadline
        raise StoreUnavailable(f"sim store: no reply to {self.name} after {MAX_TRIES} tries")

    def submit(self, ops: list[Op], on_ack: Callable[[int], None]) -> None:
        """A non-blocking request; ``on_ack(highest seq)`` when its reply arrives."""
        net = self.net
        if net.instant:
            try:
                self.node.handle(ops)
            except StoreUnavailable:
                return                      # lost: un-ACKed, resent with the next request
            except Refused as exc:
                on_ack(ops[-1].seq, exc.refused)    # the others applied; these refused (final)
                return
            on_ack(ops[-1].seq)
            return
        self._rid += 1
        rid = self._rid
        self._acks[rid] = (ops[-1].seq, on_ack)
        self._send(rid, ops)
        net.run_until(self.t)

    def _send(self, rid: int, ops: list[Op], read_clock: int | None = None) -> None:
        node = self.node
        net = self.net
        if net.now > self.t:
            self.t = net.now                # nothing is sent into the network's past
        net.send("store", self.name, self.t, lambda: node.request(self, rid, ops, read_clock))

    def reply(self, rid: int, reply: Any) -> None:
        ack = self._acks.pop(rid, None)
        if ack is not None:
            if reply.__class__ is Refused:
                ack[1](ack[0], reply.refused)       # the others applied; these refused (final)
            elif not isinstance(reply, BaseException):
                ack[1](ack[0])
            return
        if rid == self._rid and rid not in self._replies:
            self._replies[rid] = reply      # the awaited reply (later copies are ignored)

    def settle(self, resend: Callable[[], bool]) -> None:
        """End of input: wait for every acknowledgement, resending after each timeout
        (``resend()`` sends what is still un-ACKed; False when nothing is)."""
        net = self.net
        for _ in range(MAX_TRIES):
            deadline = self.t + net.timeout_ns
            while net.next_time() <= deadline:
                net.run_next()
            self.t = max(self.t, deadline)
            if not resend():
                return
            self.retransmissions += 1
        raise StoreUnavailable(f"sim store: {self.name} still has unacknowledged updates after {MAX_TRIES} tries")

    # -- the control plane (bind time, ownership): direct calls ---------------------------------
    def declare(self, key: Any, initial: Any) -> None:
        self.node.declare(key, initial)

    def subscribe(self, key: Any, client: str) -> Any:
        return self.backend.subscribe(key, client)

    def notifications(self, client: str) -> list[tuple]:
        return self.backend.notifications(client)

    def register(self, *args: Any, **kw: Any) -> None:
        self.backend.register(*args, **kw)

    def release(self, key: Any, instance: int) -> None:
        self.backend.release(key, instance)

    def take(self, key: Any, client: str, instance: int) -> bool:
        return self.backend.take(key, client, instance)

    def release_instance(self, vertex: str, instance: int) -> int:
        return self.backend.release_instance(vertex, instance)
