"""Store instance failover (§5.4, Figure 7): checkpoints, write-ahead logs, TS selection.

Theory of operation
-------------------
A store instance (one :class:`~chc.core.store.StoreEngine`) can fail and lose
everything it held.  §5.4 recovers it without losing or repeating an update and
without contradicting anything an NF instance has already seen.

The paper re-reads *per-flow state* from the instances' caches.  A cache does
not always hold it (a handover, a clone pair's end and an NF failover's catch-up
drop one; model ``EO`` keeps none), so here per-flow objects are checkpointed and
their updates logged like shared ones.  A per-flow object has one owner at a
time and the runtime takes a checkpoint at every change of owner, so its updates
since the latest checkpoint come from one instance and are re-executed in that
instance's send order (two writers are refused, never guessed).

*Shared (cross-flow) state* is recovered with checkpointing and write-ahead
logging:

1. **TS.**  :class:`RecoverableEngine` is a store engine that also keeps *TS*:
   for each client (NF instance), the :class:`Stamp` (logical clock and client
   sequence number) of the last shared-state update it executed on that
   client's behalf.  The paper names the clock; the client's seq stands beside
   it because it is what orders a client's ops at the store exactly (a
   coalesced ``incr_many`` carries clocks issued after later ops, a timer's
   update shares a packet's clock).
2. **Checkpoint.**  :meth:`RecoverableEngine.checkpoint` returns an immutable
   :class:`Checkpoint`: a copy of every object with per-flow owners, TS, and
   the metadata the exactly-once and duplicate checks and a later NF failover
   need after a restart (per-client seq marks, the whole clock log,
   subscriptions, pre-images).  The runtime takes one every checkpoint interval
   and at every change of per-flow owner, and keeps the latest outside the store.
3. **Write-ahead log.**  Every instance has a :class:`WriteAheadLog` between its
   client and its store connection (:func:`attach_wal` wraps the client's
   backend, so :mod:`chc.core.client` is untouched).  It logs every update the
   client sends (shared and per-flow), in send order, and every *read*: a reply the store
   returned with a value of shared state (a ``get``, or the result of an
   ``incr``/``apply``/``pop``/``cas``/custom op), together with the TS the store
   returned with it (:class:`Stamped`).  A retransmitted update is answered from
   the clock log without TS; the answers instances act on (a ``pop``, a ``cas``,
   a choice) are logged all the same.  Logging is write-ahead: an op is logged
   before its request leaves, so an op in flight when the store fails is in the
   log.  While NF failover is possible too, it also keeps the instance's part of
   the store's read log (:mod:`chc.core.failover`), from which a failover store
   rebuilds that log.
4. **Recovery** (:func:`recover`), per shared object: the paper's two cases.
   An object one instance alone updated since the checkpoint is re-executed in
   its send order from the checkpoint's value (the store applied them so).
   *Case 1*, nobody read the object since the checkpoint: start from the
   checkpoint's value and roll forward, re-executing each instance's logged
   updates after the checkpoint's seq mark for it (which covers TS and the ops
   the store answered from its clock log).  *Case 2*: start from the value of the
   most recent read of the object, found by the TS-selection procedure
   (:func:`select_ts`): form the set of the reads' TS's; traverse each
   instance's log backwards to the latest update whose stamp is in the set;
   drop the TS's that do not contain it; what is left is the most recent read.
   Then roll forward from that TS.  A read returns one object's value, so
   selection runs per object over that object's reads, with the instances'
   whole logs (TS counts updates of every shared object of the store).
   Re-executed updates of different instances are merged in logical clock
   order, which is a plausible order (§5.4 Case 1); a later read whose result
   depends on that order (a ``pop``, a ``cas``) pins it: the roll forward keeps
   the updates before and after it on the right side and searches the order
   of the ones in between until the read's logged result comes out again, so
   every read any instance made stays consistent (Case 2); a ``pop`` or ``cas``
   answer logged without TS must come out again too, without a place of its own.
   *The load balancer's choices* (``argmin_incr``) read every counter they
   choose from, so their order across instances matters: those counters roll
   forward from the checkpoint (their updates commute: Case 1, no read selected),
   and one order of all choices and counter updates is searched for
   (:func:`_choice_order`) in which every logged choice and increment answer
   comes out again; a choice whose reply was lost is made where it lands.  The
   failed store's own order is one such order.
5. **Unrecoverable** (Table 3): a store failure together with a component whose
   state it holds (an instance's write-ahead log, the root's persisted clock and
   packet log), with no replica.  :func:`recover` raises
   :class:`Unrecoverable` naming what was lost; it never returns a state that
   silently lacks it.

Costs.  Off (the default: a plain :class:`~chc.core.store.StoreEngine`, no WAL)
nothing of this runs.  On, the store copies TS (one entry per client) into each
read reply, and the instance appends each update to its log (a reference) and
each read with a copy of its value; recovery re-executes the ops logged since the
checkpoint, so a longer checkpoint interval means longer logs and a longer
roll forward.  Nothing here does I/O.
"""

from __future__ import annotations

import copy
import heapq
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from ..nf import least_loaded
from .failover import ReadLog, log_reads
from .store import _ABSENT, UPDATES, ClockLogOrder, ObjectKey, Op, Refused, StoreEngine, StoreError, _Recorded

# Replies that carry a value of shared state (a read, or an update's result),
# so the store returns TS with them (§5.4 Case 2).
OBSERVED = frozenset(("get", "incr", "apply", "pop", "cas", "custom"))
# Results that are the object's whole value after the op: a read the roll
# forward may start from.  pop/cas/custom results only constrain the order.
_FULL_VALUE = frozenset(("get", "incr", "apply"))
_EMPTY: Mapping = MappingProxyType({})


class RecoveryError(StoreError):
    """The logs cannot be made consistent (they contradict each other)."""


class Unrecoverable(RecoveryError):
    """Table 3: the store failed together with a component whose state it held."""

    def __init__(self, lost: Sequence[str]) -> None:
        self.lost = tuple(lost)
        super().__init__("store instance failover cannot recover: " + "; ".join(self.lost))


class Stamp(NamedTuple):
    """One TS entry: the last shared-state update the store executed for a client."""

    clock: int      # logical clock of the packet that caused it (the paper's TS)
    seq: int        # the client's sequence number of that op (orders it exactly)


TS = Mapping[str, Stamp]


class Stamped(NamedTuple):
    """A reply with the TS the store returned with it (§5.4: "the datastore
    returns TS along with the latest value of the shared state")."""

    result: Any
    ts: TS


_ATOMS = frozenset((int, float, str, bytes, bool, type(None)))


def _copy(value: Any) -> Any:
    """A deep copy of a stored value; a list or deque of atoms (the NAT's 40,000-port
    pool) by a shallow copy, which is one, in about a fifth of ``deepcopy``'s time."""
    cls = value.__class__
    if cls in _ATOMS:
        return value
    if (cls is deque or cls is list) and all(map(_ATOMS.__contains__, map(type, value))):
        return cls(value)
    return copy.deepcopy(value)


def _copy_data(data: Mapping[Any, Any]) -> dict[Any, Any]:
    return {k: _copy(v) for k, v in data.items()}


def _longer(value: Any, limit: int) -> bool:
    """A container with more than ``limit`` items."""
    return value.__class__ in (list, deque, dict, set, tuple) and len(value) > limit


def _seq(ts: TS, client: str) -> int:
    s = ts.get(client)
    return 0 if s is None else s.seq


def _cut(checkpoint: Checkpoint, client: str) -> int:
    """The client's seq up to which the store had taken its ops when ``checkpoint``
    was taken: applied (TS stamps those of shared state), answered from the clock
    log (a replayed packet's update, emulated) or refused.  Its later updates are
    the ones to roll forward; an emulated one at or below TS's stamp would be
    applied again once its clock left the clock log."""
    return max(checkpoint.applied_seq.get(client, 0), _seq(checkpoint.ts, client))


def _dominates(a: TS, b: TS) -> bool:
    """Every client's stamp in ``a`` is at or after its stamp in ``b``."""
    return all(_seq(a, c) >= s.seq for c, s in b.items())


# -- the store side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """The shared state of one store instance with TS, at one point of its op order.

    Immutable: the mappings are read-only views of private copies, and
    :meth:`restore` copies again, so one checkpoint can seed several recoveries."""

    number: int
    data: Mapping[ObjectKey, Any]
    ts: TS
    applied_seq: Mapping[str, int]
    clock_log: Mapping[ObjectKey, Mapping[tuple[int, int], Any]]
    log_order: tuple
    subscribers: Mapping[ObjectKey, frozenset[str]]
    users: frozenset[str]
    owner: Mapping[ObjectKey, int] = field(default_factory=lambda: _EMPTY)    # per-flow owners (§4.3)
    # §5.4 NF failover after this store failed over: the pre-images the replay starts
    # from (per object, clock -> value before that clock's first update), when kept.
    before: Mapping[ObjectKey, Mapping[int, Any]] = field(default_factory=lambda: _EMPTY)
    preimages: bool = False
    # Pre-images left out (``checkpoint(preimage_limit=...)``): per object, their clocks.
    unknown_before: Mapping[ObjectKey, frozenset[int]] = field(default_factory=lambda: _EMPTY)

    def __reduce__(self) -> tuple:
        """Pickled as plain dicts (a read-only view cannot be), the pre-images' absent
        marker as a token: the proc runtime keeps checkpoints in files (§5.4, durable
        outside the store server's process)."""
        before = {k: {c: _AbsentToken() if v is _ABSENT else v for c, v in b.items()}
                  for k, b in self.before.items()}
        return (_checkpoint, (self.number, dict(self.data), dict(self.ts), dict(self.applied_seq),
                              {k: dict(v) for k, v in self.clock_log.items()}, self.log_order,
                              dict(self.subscribers), self.users, dict(self.owner), before, self.preimages,
                              dict(self.unknown_before)))

    def restore(self, copy: bool = True) -> RecoverableEngine:
        """A new engine holding this checkpoint (the failover store's boot state);
        ``copy=False`` for a checkpoint used once (one just read from a file)."""
        engine = RecoverableEngine()
        engine.data = _copy_data(self.data) if copy else dict(self.data)
        engine.owner = dict(self.owner)
        engine.ts = dict(self.ts)
        engine.applied_seq = dict(self.applied_seq)
        engine.clock_log = {k: dict(v) for k, v in self.clock_log.items()}
        engine.log_order = ClockLogOrder(self.log_order)
        engine.subscribers = {k: set(v) for k, v in self.subscribers.items()}
        # (pre-images are never changed, the engine's or a checkpoint's: shared, not copied)
        engine.before = {k: dict(v) for k, v in self.before.items()}
        engine.preimages = self.preimages
        engine.checkpoints = self.number
        return engine


class _AbsentToken:
    """The pre-images' absent marker in a pickled checkpoint (an ``object()`` loses its identity)."""


def _checkpoint(number: int, data: dict, ts: dict, applied_seq: dict, clock_log: dict, log_order: tuple,
                subscribers: dict, users: frozenset, owner: dict, before: dict, preimages: bool,
                unknown_before: dict) -> Checkpoint:
    """A checkpoint again from what :meth:`Checkpoint.__reduce__` kept."""
    before = {k: MappingProxyType({c: _ABSENT if v.__class__ is _AbsentToken else v for c, v in b.items()})
              for k, b in before.items()}
    return Checkpoint(number, MappingProxyType(data), MappingProxyType(ts), MappingProxyType(applied_seq),
                      MappingProxyType({k: MappingProxyType(v) for k, v in clock_log.items()}), log_order,
                      MappingProxyType(subscribers), users, MappingProxyType(owner), MappingProxyType(before),
                      preimages, MappingProxyType(unknown_before))


class CheckpointImage:
    """A checkpoint of live state, pickled as a :class:`Checkpoint` (:meth:`RecoverableEngine.image`)."""

    def __init__(self, parts: tuple) -> None:
        self.parts = parts

    def __reduce__(self) -> tuple:
        return (_checkpoint, self.parts)


class RecoverableEngine(StoreEngine):
    """A store engine that keeps TS and takes checkpoints (§5.4).

    A subclass, so a run with recovery off pays nothing for it.  Replies to the
    ops in :data:`OBSERVED` on shared objects are :class:`Stamped`; a client of
    this engine needs a write-ahead log (:func:`attach_wal`), which unwraps them."""

    def __init__(self) -> None:
        super().__init__()
        self.ts: dict[str, Stamp] = {}
        self.checkpoints = 0
        self.refused = 0                # logged updates the roll forward saw refused again

    def apply(self, op: Op) -> Any:
        if op.key.per_flow:
            return StoreEngine.apply(self, op)
        before = self.ops_applied
        result = StoreEngine.apply(self, op)
        applied = self.ops_applied != before
        if applied and op.seq:              # a client's op (the root's writes carry no seq)
            tag = op.tag
            self.ts[op.client] = Stamp(-1 if tag is None else tag[0], op.seq)
        # A retransmitted update answered from the clock log says nothing of where
        # it stands in the order: only a read or an update applied now is stamped.
        if op.code in OBSERVED and (applied or op.code == "get"):
            # (a copy: a get answers the live object, which a later op of the same request
            # would change before the write-ahead log copies the reply; a review found it)
            return Stamped(_copy(result), MappingProxyType(dict(self.ts)))
        return result

    def checkpoint(self, preimage_limit: int = 0) -> Checkpoint:
        """Snapshot of every object with its owner, TS, the whole clock log and the
        pre-images: per-flow objects too, since a cache does not always hold them (an
        instance drops its cache at a handover; model EO keeps none).
        ``preimage_limit``: pre-images of containers longer than that are left out
        (named in ``unknown_before``): one of the NAT's 40,000-port pool per clock that
        took a port made a checkpoint of the proc runtime's store server take 1.3 s."""
        return _checkpoint(*self._parts(preimage_limit, _copy_data))

    def image(self, preimage_limit: int = 0) -> CheckpointImage:
        """:meth:`checkpoint` to be pickled at once (the proc runtime's store server writes
        it to a file): nothing is copied, pickling is the copy (half of a checkpoint's
        time was copying)."""
        return CheckpointImage(self._parts(preimage_limit, dict))

    def _parts(self, preimage_limit: int, copy_data: Callable) -> tuple:
        """:func:`_checkpoint`'s arguments, of plain dicts (pre-images absent as tokens).
        Pre-images are shared, not copied: each is a private copy the engine writes once
        and never changes (``StoreEngine._preimage``; copying them was 36% of a
        ``crash.yaml`` seed's time, the NAT's port pool once per clock that took a port)."""
        self.checkpoints += 1
        before: dict[ObjectKey, Any] = {}
        unknown: dict[ObjectKey, frozenset[int]] = {}
        for k, v in self.before.items():
            # (an object's pre-images are about its size now: one look, not one per clock)
            if preimage_limit and _longer(self.data.get(k), preimage_limit):
                unknown[k] = frozenset(v)
            else:
                before[k] = {c: _AbsentToken() if x is _ABSENT else x for c, x in v.items()}
        log = {k: {t: (r.result if r.__class__ is _Recorded else r) for t, r in v.items()}
               for k, v in self.clock_log.items()}
        users = set(self.applied_seq) | set(self.ts)
        if any(k.vertex == "root" for k in self.data):
            users.add("root")       # its persisted clock (and store-kept packet log) live here
        return (self.checkpoints, copy_data(self.data), dict(self.ts), dict(self.applied_seq), log,
                tuple(self.log_order), {k: frozenset(v) for k, v in self.subscribers.items()}, frozenset(users),
                dict(self.owner), before, self.preimages, unknown)


# -- the instance side -----------------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """A logged read: the op, the value or result the store returned, and its TS."""

    op: Op
    result: Any
    ts: TS

    @property
    def key(self) -> ObjectKey:
        return _effect_key(self.op, self.result)


class WriteAheadLog:
    """One instance's write-ahead log of updates and shared-state reads (§5.4)."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.updates: list[Op] = []         # shared-state updates, in send (seq) order
        self.flow_updates: list[Op] = []    # per-flow updates, in send (seq) order
        self.reads: list[Read] = []         # replies carrying shared state, with TS
        self.results: dict[int, Any] = {}   # seq -> result of a logged update (custom ops)
        self.logged_seq = 0                 # highest seq logged (a resent op is not logged again)
        # §5.4 this instance's part of the store's read log (its answers to reads of
        # shared objects, by the clock read for), kept while NF failover is possible:
        # a failover store rebuilds the log from these.  ``read_clock`` gives the clock
        # a request reads for; nothing is logged while ``replaying`` (a failover
        # instance took its part over from the store, as the store answers its replay).
        self.shared_reads: ReadLog | None = None
        self.read_clock: Callable[[], int | None] | None = None
        self.replaying = False
        # §5 with §5.4 several roots on the proc runtime: (logical instance, the batches it
        # ran in order), its copy of what the store server keeps of it for its failover
        # (chc.runtime.storeserver, Failover.orders); a failover store rebuilds from these
        self.orders: tuple[str, list] | None = None

    def log_sent(self, ops: Sequence[Op]) -> None:
        """Write-ahead: log a request's ops before it leaves (a reference each: a
        sent op is never changed again)."""
        for op in ops:
            if op.seq <= self.logged_seq:
                continue
            self.logged_seq = op.seq
            if op.code not in UPDATES:
                continue
            if op.key.per_flow:
                self.flow_updates.append(op)
            else:
                self.updates.append(op)

    def log_replies(self, ops: Sequence[Op], results: list[Any]) -> list[Any]:
        """Log the stamped replies as reads, and the updates' results; return the
        results as the client expects them.  A retransmitted update is answered from
        the clock log, unstamped: the result of one the instance acts on (the load
        balancer's choice, a pop, a cas) is logged too, or a recovery would take the
        choice for lost and choose again, or hand the popped item to another pop."""
        for i, r in enumerate(results):
            op = ops[i]
            if r.__class__ is Stamped:
                value = _copy(r.result)     # the store's live object must not move under the log
                self.reads.append(Read(op, value, r.ts))
                results[i] = r.result
            elif op.code in _ACTED_ON and not isinstance(r, BaseException):
                value = _copy(r)
            else:
                continue
            if op.code in UPDATES:
                self.results[op.seq] = value
        return results

    def truncate(self, checkpoint: Checkpoint) -> int:
        """Forget what ``checkpoint`` already holds (updates at or below its seq mark
        for this client, reads before its TS); call once the checkpoint is durable.
        How many entries."""
        cut = _cut(checkpoint, self.client_id)
        n = len(self.updates) + len(self.flow_updates) + len(self.reads)
        self.updates = [op for op in self.updates if op.seq > cut]
        self.flow_updates = [op for op in self.flow_updates if op.seq > cut]
        self.reads = [r for r in self.reads if _dominates(r.ts, checkpoint.ts)]
        self.results = {s: v for s, v in self.results.items() if s > cut}
        return n - len(self.updates) - len(self.flow_updates) - len(self.reads)


class WALBackend:
    """The client's store connection with its write-ahead log in front of it."""

    def __init__(self, backend: Any, wal: WriteAheadLog) -> None:
        self.backend = backend
        self.wal = wal
        if hasattr(backend, "submit"):
            self.submit = self._submit      # only a backend that can does not wait

    def execute(self, ops: list[Op]) -> list[Any]:
        wal = self.wal
        wal.log_sent(ops)
        try:
            results = self.backend.execute(ops)
        except Refused as exc:              # the others applied: their replies as ever
            exc.results = wal.log_replies(ops, exc.results)
            raise
        if wal.shared_reads is not None and not wal.replaying:
            clock = wal.read_clock()
            if clock is not None:
                log_reads(wal.shared_reads, ops, results, clock, None)
        return wal.log_replies(ops, results)

    def _submit(self, ops: list[Op], on_ack: Any) -> None:
        self.wal.log_sent(ops)
        self.backend.submit(ops, on_ack)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def attach_wal(client: Any) -> WriteAheadLog:
    """Give ``client`` (a :class:`~chc.core.client.StoreClient`) a write-ahead log
    between it and its store connection; the client's own code is unchanged."""
    wal = WriteAheadLog(client.client_id)
    client.backend = WALBackend(client.backend, wal)
    return wal


@dataclass
class InstanceLog:
    """What a surviving instance hands the failover store (§5.4)."""

    client_id: str
    instance: int | None
    wal: WriteAheadLog
    sent_seq: int = 0                   # the client's last seq sent: its exactly-once mark
    subscriptions: frozenset[ObjectKey] = frozenset()

    @classmethod
    def from_client(cls, client: Any) -> InstanceLog:
        """Read ``client``'s log.  Its queued ops stay queued: they were never sent,
        so the failover store gets them when they are."""
        backend = client.backend
        if not isinstance(backend, WALBackend):
            raise RecoveryError(f"{client.client_id} has no write-ahead log (attach_wal)")
        return cls(client.client_id, client.instance, backend.wal, client.seq,
                   frozenset(client.callback_caches))


# -- TS selection (§5.4) ------------------------------------------------------------------------


def select_ts(reads: Sequence[Read], logs: Mapping[str, Sequence[Op]]) -> Read | None:
    """The most recent of ``reads`` by the paper's TS-selection procedure.

    Form the set of the reads' TS's; for each instance, traverse its log of
    updates backwards to the latest one whose stamp is in the set, and drop every
    TS that does not contain that stamp.  What remains are reads with one TS; the
    last logged of them is returned (equal TS's saw the same state).  A result
    that is not the latest of all the reads means the logs contradict each other."""
    if not reads:
        return None
    left = list(reads)
    for client in sorted(logs):
        present = {_seq(r.ts, client) for r in left}
        for op in reversed(logs[client]):
            if op.seq in present:
                left = [r for r in left if _seq(r.ts, client) == op.seq]
                break
    chosen = left[-1]
    for r in reads:
        if not _dominates(chosen.ts, r.ts):
            raise RecoveryError(f"reads of {_name(chosen.key)} do not form one order: TS {dict(r.ts)} "
                                f"is not before the selected TS {dict(chosen.ts)}")
    return chosen


# -- roll forward --------------------------------------------------------------------------------


def _is_choice(op: Op) -> bool:
    """The load balancer's choice (``incr_least``, the store's ``argmin_incr``)."""
    return op.code == "custom" and bool(op.args) and op.args[0] == "argmin_incr"


def _effect_key(op: Op, result: Any = None) -> ObjectKey:
    """The object an op changes: its key, or for the load balancer's ``argmin_incr``
    the counter its (logged) result chose."""
    if _is_choice(op) and result is not None:
        return op.args[1][result]
    return op.key


def _name(key: ObjectKey) -> str:
    return f"{key.vertex}.{key.obj}[{key.key!r}]"


class _Step:
    """One logged update to re-execute, with what pins its place."""

    __slots__ = ("client", "op", "seq", "order", "segment", "observed", "result", "inert")

    def __init__(self, client: str, op: Op, result: Any, observed: bool) -> None:
        self.client = client
        self.op = op
        self.seq = op.seq
        tag = op.tag or (0, 0)
        self.order = (tag[0], tag[1], client, op.seq)    # logical clock order: the default merge
        self.segment = 0
        self.observed = observed
        self.result = result
        self.inert = False                  # re-executed as an emulated duplicate: no effect


_NOT_LOGGED = object()
_ACTED_ON = frozenset(("custom", "pop", "cas"))     # updates whose answers instances act on
_COMMUTE = frozenset(("incr", "incr_many"))     # updates whose order the state does not see
_SEARCH_LIMIT = 200_000


def _scratch_apply(key: ObjectKey, value: Any, op: Op) -> tuple[Any, Any]:
    """``op`` on a copy of one object's value: (value after, result)."""
    engine = StoreEngine()
    if value is not _NOT_LOGGED:
        engine.data[key] = _copy(value)
    result = engine.apply(op.replace(seq=0, tag=None, xor_id=0))
    return engine.data.get(key, _NOT_LOGGED), result


def _effect_op(step: _Step) -> Op:
    """What ``step`` does to its object: the op, or for ``argmin_incr`` with a logged
    result the increment of the chosen counter (the choice is replayed, not redone)."""
    op = step.op
    if op.code == "custom" and step.result is not _NOT_LOGGED:
        return Op("incr", op.args[1][step.result], (1,), default=0)
    return op


def _merge(runs: Iterable[list[_Step]]) -> list[_Step]:
    """Clients' runs merged in logical clock order, each client's kept in its send
    (seq) order: a timer's update carries the clock of the packet that armed it, so
    by clock alone it would move before updates its instance sent earlier."""
    return list(heapq.merge(*(sorted(run, key=lambda s: s.seq) for run in runs), key=lambda s: s.order))


def _pinned(step: _Step) -> bool:
    """A pop or cas whose answer came with TS: it ends its segment (the pins before it)."""
    return step.observed and step.op.code in ("pop", "cas")


def _checked(step: _Step) -> bool:
    """A pop or cas whose answer the instance logged (stamped or not): the order must
    give that answer again (a retransmission's answer has no TS, so no segment)."""
    return step.result is not _NOT_LOGGED and step.op.code in ("pop", "cas")


def _first_path(key: ObjectKey, start: Any, runs: list[list[_Step]], total: int) -> list[_Step] | None:
    """The search's first path, walked on one working copy of the object: in each
    segment the steps in clock order, a pinned read last.  ``None`` where the search
    would have to go back (a pinned result differs, or pinned reads compete for the
    end of a segment).  Linear in the steps; the search copies the object at every
    step and keeps a repr of it, which on the NAT's 40,000-port list cost about
    0.2 s a step (Figure 14's benchmark found it)."""
    engine = StoreEngine()
    if start is not _NOT_LOGGED:
        engine.data[key] = _copy(start)
    left = Counter(s.segment for run in runs for s in run)
    pos = [0] * len(runs)
    path: list[_Step] = []
    while len(path) < total:
        heads = [(r[p], i) for i, (r, p) in enumerate(zip(runs, pos, strict=True)) if p < len(r)]
        seg = min(s.segment for s, _ in heads)
        pick = next(((s, i) for s, i in sorted((h for h in heads if h[0].segment == seg), key=lambda h: h[0].order)
                     if not (_pinned(s) and left[seg] > 1)), None)
        if pick is None:
            return None
        step, i = pick
        result = engine.apply(_effect_op(step).replace(seq=0, tag=None, xor_id=0))
        if _checked(step) and result != step.result:
            return None
        left[seg] -= 1
        pos[i] += 1
        path.append(step)
    return path


def _order(key: ObjectKey, start: Any, steps: dict[str, list[_Step]], pins: list[Read]) -> list[_Step]:
    """An order of ``steps`` (each client's in log order) that reproduces every
    pinned read's result and every other logged pop or cas answer: logical clock
    order first, a search only when one fails."""
    if not pins and not any(_checked(s) for run in steps.values() for s in run):
        return _merge(steps.values())
    # A step's segment: the pins before it (it is after pin k when its seq is past
    # k's TS for its client).  The pins form one order, so per client their seqs do
    # not decrease and a bisection finds it (a pass per pin was quadratic).
    for client, run in steps.items():
        marks = [_seq(read.ts, client) for read in pins]
        if any(a > b for a, b in zip(marks, marks[1:], strict=False)):
            raise RecoveryError(f"reads of {_name(key)} do not form one order")
        for s in run:
            s.segment = bisect_left(marks, s.seq)
    runs = [steps[c] for c in sorted(steps)]
    for run in runs:
        if any(a.segment > b.segment for a, b in zip(run, run[1:], strict=False)):
            raise RecoveryError(f"{_name(key)}: a read's TS puts an update before an earlier one")
    total = sum(len(r) for r in runs)
    first = _first_path(key, start, runs, total)
    if first is not None:
        return first

    def moves(pos: tuple[int, ...], value: Any) -> Iterator[tuple[int, Any]]:
        """The steps that may come next, in clock order, with the value after each."""
        heads = [(r[p], i) for i, (r, p) in enumerate(zip(runs, pos, strict=True)) if p < len(r)]
        seg = min(s.segment for s, _ in heads)
        left = sum(1 for r, p in zip(runs, pos, strict=True) for s in r[p:] if s.segment == seg)
        for step, i in sorted((h for h in heads if h[0].segment == seg), key=lambda h: h[0].order):
            pinned = _pinned(step)
            if pinned and left > 1:
                continue                    # a pinned read comes last in its segment (its TS says so)
            new, result = _scratch_apply(key, value, _effect_op(step))
            if _checked(step) and result != step.result:
                continue
            yield i, new

    # Depth-first over interleavings, iteratively (a long log must not hit the
    # recursion limit); states already tried are not tried again.
    seen: set = set()
    pos0 = tuple(0 for _ in runs)
    path: list[_Step] = []
    stack = [(pos0, moves(pos0, start))]
    budget = _SEARCH_LIMIT
    while stack:
        if len(path) == total:
            return path
        pos, it = stack[-1]
        for i, new in it:
            nxt = pos[:i] + (pos[i] + 1,) + pos[i + 1:]
            memo = (nxt, repr(new))
            if memo in seen:
                continue
            seen.add(memo)
            budget -= 1
            if budget < 0:
                raise RecoveryError(f"{_name(key)}: no order of the logged updates reproducing the logged "
                                    f"reads found within {_SEARCH_LIMIT} states")
            path.append(runs[i][pos[i]])
            stack.append((nxt, moves(nxt, new) if len(path) < total else iter(())))
            break
        else:
            stack.pop()
            if path:
                path.pop()
    raise RecoveryError(f"{_name(key)}: no order of the logged updates reproduces the logged reads")


def _re_execute(engine: RecoverableEngine, step: _Step) -> None:
    """Apply one logged update on the recovered engine, with its clock-log tag and
    commit report, as the failed store applied (or would have applied) it."""
    op = step.op
    try:
        if _is_choice(op) and step.result is not _NOT_LOGGED:
            # The effect is known from the logged result: replay it, not the choice.
            if op.tag is not None and op.tag in engine.clock_log.get(op.key, ()):
                engine.emulated += 1        # a replayed packet's, emulated as the failed store did
                step.inert = True
                return
            target = op.args[1][step.result]
            if op.tag is not None and engine.preimages:
                engine._preimage(op.key, op.tag[0])
                for k in op.args[1]:        # as StoreEngine.apply keeps them
                    engine._preimage(k, op.tag[0])
                    engine.log_order.append((op.tag[0], k, op.tag))
            engine.data[target] = engine.data.get(target, 0) + 1
            if op.tag is not None:
                engine.clock_log.setdefault(op.key, {})[op.tag] = step.result
                engine.log_order.append((op.tag[0], op.key, op.tag))
                if op.xor_id:
                    engine.commits.append((op.tag[0], op.xor_id))
            return
        step.inert = op.tag is not None and op.tag in engine.clock_log.get(op.key, ())
        StoreEngine.apply(engine, op.replace(seq=0))
    except StoreError:
        engine.refused += 1                 # refused before, refused again: nothing to roll forward
    if op.key.per_flow:
        return                              # (TS stamps shared-state updates only)
    stamp = engine.ts.get(step.client)
    if op.tag is not None and (stamp is None or stamp.seq < op.seq):    # (objects roll forward one by one)
        engine.ts[step.client] = Stamp(op.tag[0], op.seq)


def _covered(engine: RecoverableEngine, step: _Step, unknown: dict[ObjectKey, set[int]]) -> None:
    """An update whose effect is in a Case 2 start value (applied before the selected
    read): not re-executed, yet the failover store knows it as the failed one did,
    in TS, the clock log (a resent copy is answered, never applied) and the
    commit reports (the failed store may have died before sending its report).
    The value before it is not known: its clock goes into ``unknown``."""
    op = step.op
    if op.tag is None:
        return
    clocks = op.args[0].clocks if op.code == "incr_many" else (op.tag[0],)
    unknown.setdefault(op.key, set()).update(clocks)
    stamp = engine.ts.get(step.client)
    if stamp is None or stamp.seq < op.seq:
        engine.ts[step.client] = Stamp(op.tag[0], op.seq)
    log = engine.clock_log.setdefault(op.key, {})
    result = None if step.result is _NOT_LOGGED else step.result
    if op.code == "incr_many":
        inc = op.args[0]
        for t in inc.tags:
            log[t] = result
        engine.log_order.append((max(inc.clocks), op.key, inc.tags))
        engine.commits.extend(inc.commits)
        return
    log[op.tag] = result
    engine.log_order.append((op.tag[0], op.key, op.tag))
    if op.xor_id:
        engine.commits.append((op.tag[0], op.xor_id))


@dataclass
class Recovery:
    """The failover store and what recovery did."""

    engine: RecoverableEngine
    selected: dict[ObjectKey, Read] = field(default_factory=dict)      # Case 2 objects: their start read
    re_executed: list[tuple[str, Op]] = field(default_factory=list)     # roll forward, in order
    per_flow: int = 0                   # of those, per-flow updates
    commits: list[tuple[int, int]] = field(default_factory=list)       # (clock, xor id) of re-executed ops
    runs: list[list[_Step]] = field(default_factory=list, repr=False)     # per object, as re-executed
    # (client, seq) of re-executed updates in the failed store's own order: their
    # object had one writer since the checkpoint, so it applied them in that
    # writer's send order, as the roll forward does (a history may keep them where
    # they were; the others are re-ordered).
    in_place: set[tuple[str, int]] = field(default_factory=set)
    # Per object, the clocks of covered updates (Case 2): the failover store has no
    # pre-image for them, so an NF failover's replay cannot start before them.
    unknown_before: dict[ObjectKey, set[int]] = field(default_factory=dict)


def _check_losses(checkpoint: Checkpoint, logs: Mapping[str, InstanceLog], users: Iterable[str],
                  failed: Iterable[str], retired: Iterable[str]) -> None:
    lost: list[str] = []
    failed = set(failed)
    # A failed component that kept nothing in this store (its state is in another
    # store instance) is NF or root failover's business, not a loss here.
    for user in sorted((set(checkpoint.users) | set(users)) - set(retired)):
        if user == "root":
            if user in failed:
                lost.append("root: its persisted logical clock and store-kept packet log were in this store")
            continue
        if user not in logs:
            why = "failed with the store" if user in failed else "no write-ahead log was handed in"
            lost.append(f"{user} ({why}): its updates since checkpoint {checkpoint.number}, shared and "
                        "per-flow, were in its write-ahead log")
    if lost:
        raise Unrecoverable(lost)


def _reads_of(step: _Step) -> Sequence[ObjectKey]:
    """The objects ``step``'s result depends on: its own, or every counter an
    ``argmin_incr`` chooses from."""
    op = step.op
    return op.args[1] if _is_choice(op) else (op.key,)


def _one_order(runs: list[list[_Step]], starts: Mapping[ObjectKey, Any] | None = None) -> list[_Step]:
    """The re-executed updates in one order: each object's as re-executed, each
    instance's in its send order, logical clock order where those leave a choice.

    Objects roll forward one by one, and the failover store's state does not depend
    on how their updates interleave; the history it hands the COE checker does: an
    ``argmin_incr`` reads every counter it chooses from, so grouped per object the
    history would contradict the choices the instances saw.  With ``starts`` (the
    counters' values where the re-execution starts) the choices are searched for
    (:func:`_choice_order`).  Where the per-object orders and the send orders cannot
    be met together, the per-object grouping is kept."""
    steps = [s for run in runs for s in run]
    counters = _choice_counters(steps) if starts is not None else {}
    free = frozenset(i for i, run in enumerate(runs) if all(s.op.code in _COMMUTE or _is_choice(s.op)
                                                            for s in run)) if counters else frozenset()
    after, needs = _precedence(runs, steps, free)
    order = _topological(steps, after, dict(needs))
    if order is None:
        return steps
    if counters:
        chosen = _choice_order(order, after, starts, counters)
        for x, y in zip(chosen, chosen[1:], strict=False):     # the choices' order, kept
            after[id(x)].append(y)
            needs[id(y)] += 1
        order = _topological(steps, after, needs)
        assert order is not None        # the chain follows every precedence among its steps
    return order


def _topological(steps: list[_Step], after: dict[int, list[_Step]], needs: dict[int, int]) -> list[_Step] | None:
    """``steps`` with every step after what ``after`` puts before it, logical clock
    order where that leaves a choice; None on a cycle (consumes ``needs``)."""
    ready = [(s.order, i, s) for i, s in enumerate(steps) if not needs[id(s)]]
    heapq.heapify(ready)
    index = {id(s): i for i, s in enumerate(steps)}
    out: list[_Step] = []
    while ready:
        _, _, s = heapq.heappop(ready)
        out.append(s)
        for b in after[id(s)]:
            needs[id(b)] -= 1
            if not needs[id(b)]:
                heapq.heappush(ready, (b.order, index[id(b)], b))
    return out if len(out) == len(steps) else None


def _precedence(runs: list[list[_Step]], steps: list[_Step], free: frozenset[int]
                ) -> tuple[dict[int, list[_Step]], dict[int, int]]:
    """What must come before what: each run's order (but the runs in ``free``, by
    index) and each client's send order."""
    after: dict[int, list[_Step]] = {id(s): [] for s in steps}
    needs = dict.fromkeys(after, 0)
    by_client: dict[str, list[_Step]] = {}
    for s in steps:
        by_client.setdefault(s.client, []).append(s)
    chains = [r for i, r in enumerate(runs) if i not in free] + [sorted(r, key=lambda s: s.seq)
                                                                  for r in by_client.values()]
    for chain in chains:
        for a, b in zip(chain, chain[1:], strict=False):
            after[id(a)].append(b)
            needs[id(b)] += 1
    return after, needs


def _choice_counters(steps: list[_Step]) -> dict[ObjectKey, None]:
    """The counters the ``argmin_incr`` steps choose from, if every step on them is
    a choice or an increment (so only the choices depend on the order); else none."""
    counters = {k: None for s in steps if _is_choice(s.op) for k in s.op.args[1]}
    for s in steps:
        op = s.op
        if not _is_choice(op) and op.key in counters and op.code != "incr":
            return {}
    return counters


def _choice_effect(step: _Step, values: dict[ObjectKey, Any]) -> tuple[bool, ObjectKey | None, Any]:
    """``step`` on the counters as they are: (whether a logged answer is given again,
    a choice or an increment's new value, the counter it changes, by how much)."""
    op = step.op
    if step.inert:
        return True, None, 0
    if not _is_choice(op):
        by = op.args[0]
        return step.result is _NOT_LOGGED or step.result == values[op.key] + by, op.key, by
    keys = op.args[1]
    best = least_loaded([values[k] for k in keys], op.args[2] if len(op.args) > 2 else None)
    if step.result is not _NOT_LOGGED:
        return best == step.result, (keys[step.result] if step.result is not None else None), 1
    return True, (keys[best] if best is not None else None), 1


def _choice_order(order: list[_Step], after: dict[int, list[_Step]], starts: Mapping[ObjectKey, Any],
                  counters: dict[ObjectKey, None]) -> list[_Step]:
    """§5.4 with the load balancer's choices: an order of the choices and the updates
    of the counters they choose from (``order``: all re-executed updates, one
    topological order of ``after``) that keeps every precedence among them and in
    which every logged ``argmin_incr`` chooses the counter its instance was answered,
    and every logged increment gives its new value, on the counters as the
    re-executed history has them.  Depth first in logical clock order over these
    steps alone, the (steps done, counters) that led nowhere remembered; none found is
    a RecoveryError (the failed store's own order is one, so there is one)."""
    touches = [s for s in order if s.op.key in counters or _is_choice(s.op)]
    bit = {id(s): 1 << i for i, s in enumerate(touches)}
    # Which of them must come before each (through any chain of precedences).
    before: dict[int, int] = {}
    for s in order:
        own = before.get(id(s), 0) | bit.get(id(s), 0)
        for b in after[id(s)]:
            before[id(b)] = before.get(id(b), 0) | own
    need = [before.get(id(s), 0) for s in touches]
    ranked = sorted(range(len(touches)), key=lambda i: touches[i].order)
    values = {k: starts.get(k, 0) for k in counters}
    done = 0
    # Failed (done, counters) pairs: with a lost reply's choice made where it lands,
    # the counters are not a function of the steps done alone.
    dead: set[tuple[int, tuple]] = set()
    path: list[tuple[int, ObjectKey | None, Any]] = []
    nexts = [0]                     # per depth: where in ``ranked`` the next try starts
    tries = 0
    while len(path) < len(touches):
        j = nexts[-1]
        pick = None
        while j < len(ranked):
            i = ranked[j]
            j += 1
            b = 1 << i
            if done & b or need[i] & ~done:
                continue
            tries += 1
            ok, key, by = _choice_effect(touches[i], values)
            if ok and key is not None:
                values[key] += by
                ok = (done | b, tuple(values.values())) not in dead
                values[key] -= by
            elif ok:
                ok = (done | b, tuple(values.values())) not in dead
            if ok:
                pick = (i, key, by)
                break
        nexts[-1] = j
        if tries > _SEARCH_LIMIT or (pick is None and not path):
            raise RecoveryError("no order of the re-executed updates reproduces the load balancer's "
                                f"choices (argmin_incr) its instances were answered ({tries} tried)")
        if pick is None:            # back: these steps done, these counters, lead nowhere
            dead.add((done, tuple(values.values())))
            nexts.pop()
            i, key, by = path.pop()
            done &= ~(1 << i)
            if key is not None:
                values[key] -= by
            continue
        i, key, by = pick
        if key is not None:
            values[key] += by
        done |= 1 << i
        path.append(pick)
        nexts.append(0)
    return [touches[i] for i, _, _ in path]


def _roll_flows_forward(checkpoint: Checkpoint, logs: Mapping[str, InstanceLog], out: Recovery) -> None:
    """Per-flow objects: from the checkpoint, each instance's per-flow updates since
    it (above the checkpoint's seq mark for that instance) re-executed in send order.
    A per-flow object has one owner at a time and a checkpoint is taken at every
    change of owner (a handover, a clone pair's end, an NF failover), so since the
    checkpoint one instance updated it: its send order is the order the store
    applied them.  Two instances' updates of one object since the checkpoint would
    leave the order unknown: refused, never guessed."""
    by_key: dict[ObjectKey, str] = {}
    steps: list[_Step] = []
    for cid, log in sorted(logs.items()):
        mark = _cut(checkpoint, cid)
        for op in log.wal.flow_updates:
            if op.seq <= mark:
                continue
            other = by_key.setdefault(op.key, cid)
            if other != cid:
                raise RecoveryError(f"per-flow object {_name(op.key)} was updated by {other} and {cid} since "
                                    f"checkpoint {checkpoint.number}: the order of their updates is unknown")
            steps.append(_Step(cid, op, _NOT_LOGGED, False))
    for step in steps:
        _re_execute(out.engine, step)
        out.in_place.add((step.client, step.seq))
    out.runs += [[s for s in steps if s.op.key == key] for key in by_key]
    out.per_flow = len(steps)


def recover(checkpoint: Checkpoint, logs: Iterable[InstanceLog], *, users: Iterable[str] = (),
            failed: Iterable[str] = (), retired: Iterable[str] = (), no_wal: bool = False,
            copy: bool = True) -> Recovery:
    """Build the failover store from ``checkpoint`` and the instances' logs.

    ``users``: the clients the runtime knows used the store (besides those the
    checkpoint names); ``failed``: components that failed with it.  Raises
    :class:`Unrecoverable` when one of them held state only this store had.
    ``retired``: clients whose work another took over before ``checkpoint`` (an NF
    instance failed over before it): nothing of theirs is missing.  ``no_wal``:
    restore the checkpoint only, no roll forward (what ``--break no-wal`` shows:
    the result is wrong).  ``copy=False``: ``checkpoint`` is used up (one read from a file)."""
    by_client = {log.client_id: log for log in logs}
    _check_losses(checkpoint, by_client, users, failed, retired)
    engine = checkpoint.restore() if copy else checkpoint.restore(copy=False)
    out = Recovery(engine)
    for cid, log in by_client.items():
        engine.applied_seq[cid] = max(engine.applied_seq.get(cid, 0), log.sent_seq)
        for k in log.subscriptions:
            engine.subscribers.setdefault(k, set()).add(cid)
    if no_wal:
        return out
    _roll_flows_forward(checkpoint, by_client, out)
    # Updates logged since the checkpoint, and reads since it, per object.
    updates: dict[ObjectKey, dict[str, list[_Step]]] = {}
    reads: dict[ObjectKey, list[Read]] = {}
    late: list[_Step] = []              # custom ops whose effect is unknown (no reply logged)
    for cid, log in sorted(by_client.items()):
        observed = {r.op.seq for r in log.wal.reads}
        cut = _cut(checkpoint, cid)
        for op in log.wal.updates:
            if op.seq <= cut:
                continue
            result = log.wal.results.get(op.seq, _NOT_LOGGED)
            step = _Step(cid, op, result, op.seq in observed)
            if op.code == "custom" and result is _NOT_LOGGED:
                late.append(step)
                continue
            if op.code == "custom" and not _is_choice(op):
                raise RecoveryError(f"custom op {op.args[0]!r} of {cid} cannot be rolled forward: "
                                    "the objects it changed are not known")
            updates.setdefault(_effect_key(op, result), {}).setdefault(cid, []).append(step)
        for r in log.wal.reads:
            if _dominates(r.ts, checkpoint.ts):
                reads.setdefault(r.key, []).append(r)
    wal_ops = {cid: log.wal.updates for cid, log in by_client.items()}
    writers = {k: set(runs) for k, runs in updates.items()}    # who updated each object since the checkpoint
    choices = late + [s for runs in updates.values() for run in runs.values() for s in run if _is_choice(s.op)]
    for step in choices:
        # A choice reads every counter it chooses from: none of them has one writer
        # whose updates could stay in place while the choice moves.
        for k in step.op.args[1]:
            writers.setdefault(k, set()).add(step.client)
    # Counters the choices read whose every update since the checkpoint commutes: each
    # is re-executed from the checkpoint (Case 1), never covered by a read (Case 2),
    # so every choice is made again in one history (_choice_order) rather than left
    # in place where it would no longer see the re-executed updates before it.
    commuting = {k for step in choices for k in step.op.args[1]}
    commuting -= {k for k in commuting for run in updates.get(k, {}).values() for s in run
                  if s.op.code not in _COMMUTE and not _is_choice(s.op)}
    chosen_from = {k for step in late for k in step.op.args[1]}     # counters a late choice may change
    joint: dict[str, list[_Step]] = {}
    for key in sorted(set(updates) | set(reads), key=repr):
        steps = updates.get(key, {})
        key_reads = reads.get(key, [])
        # Case 2 only where updates of several instances since the checkpoint may have
        # been applied in another order than clock order: one instance's were applied
        # in its send order, which is how Case 1 re-executes them (and then every
        # update's pre-image is known again).
        several = sum(1 for run in steps.values() if run) > 1 and key not in commuting
        start = select_ts([r for r in key_reads if r.op.code in _FULL_VALUE], wal_ops) if several else None
        cut_ts: TS = checkpoint.ts
        if start is not None:           # Case 2: start from the most recent read
            out.selected[key] = start
            cut_ts = start.ts
            value = start.result[0] if start.op.code == "apply" else start.result
            made = key in engine.data or any(s.seq <= _seq(cut_ts, c) for c, run in steps.items() for s in run)
            if value is None or (start.op.code == "get" and value == start.op.default and not made):
                # A read of an absent object answers its default: absent it stays if
                # nothing before the read created it (ops treat the two alike, the
                # object listing does not).
                engine.data.pop(key, None)
            else:
                engine.data[key] = _copy(value)
            for run in steps.values():
                for s in run:
                    if s.seq <= _seq(cut_ts, s.client):
                        _covered(engine, s, out.unknown_before)
            steps = {c: [s for s in run if s.seq > _seq(cut_ts, c)] for c, run in steps.items()}
        pins = sorted((r for r in key_reads if r.op.code in ("pop", "cas") and not _dominates(cut_ts, r.ts)),
                      key=lambda r: sum(s.seq for s in r.ts.values()))
        for a, b in zip(pins, pins[1:], strict=False):
            if not _dominates(b.ts, a.ts):
                raise RecoveryError(f"reads of {_name(key)} do not form one order")
        steps = {c: run for c, run in steps.items() if run}
        # Several instances' increments of an object the choices do not read: with
        # choices to place, the one history may order them otherwise than clock
        # order, and the clock log's answers must be those of the history the checker
        # is handed, so they are re-executed in it too (seen: proc store failover,
        # parallel.yaml seed 91, a nat.tcp_packets answer one off).
        interleaved = bool(choices) and len(steps) > 1 and not pins and all(
            s.op.code in _COMMUTE for run in steps.values() for s in run)
        if key in chosen_from or key in commuting or interleaved:
            if pins:
                raise RecoveryError(f"{_name(key)}: a pop or cas result and a choice whose result was lost")
            # A late choice may land on it, or the choices read it: rolled forward with
            # the choices, in the one order found for them (the clock log keeps each
            # update's answer as that order gives it, for a later replay's emulation).
            for c, run in steps.items():
                joint.setdefault(c, []).extend(run)
            continue
        start_value = engine.data.get(key, _NOT_LOGGED)
        run = _order(key, start_value, steps, pins)
        for step in run:
            _re_execute(engine, step)
            if not several and all(writers.get(k, set()) <= {step.client} for k in _reads_of(step)):
                out.in_place.add((step.client, step.seq))
        out.runs.append(run)
    late_clients = {k: {s.client for s in late if k in s.op.args[1]} for k in chosen_from}
    for step in late:
        # Only a read of a counter it may have changed depends on which one it chose;
        # re-executed as the sole user of its counters, it chooses as it did, in the
        # same order on the same values, whatever it read.
        counters = step.op.args[1]
        if all(k in commuting for k in counters):
            # The one history of the choices is searched for (_choice_order): every
            # logged answer is given again in it, and this choice is made at its place.
            joint.setdefault(step.client, []).append(step)
            continue
        alone = all(set(updates.get(k, {})) | late_clients[k] <= {step.client} for k in counters)
        if any(_seq(r.ts, step.client) >= step.seq and not (alone and r.op.client == step.client)
               for k in counters for r in reads.get(k, ())):
            raise RecoveryError(f"{step.client}'s custom op {step.op.args[0]!r} (seq {step.seq}) was executed "
                                "before the failure but its result was lost: its effect is unknown")
        joint.setdefault(step.client, []).append(step)
    # The late choices and the updates of the counters they choose from, together in
    # one plausible order (each client's in send order), so every choice sees the
    # counters as they were when it was made there: the order of the whole history,
    # in which every logged choice is made again (_choice_order).
    # The counters where their re-execution starts: those the search uses are in
    # ``commuting``, left untouched until now (no Case 2, deferred to the joint run).
    starts = {k: engine.data.get(k, 0) for step in choices for k in step.op.args[1]}
    for step in (s for run in joint.values() for s in run):
        step.inert = step.op.tag is not None and step.op.tag in engine.clock_log.get(step.op.key, ())
    order = _one_order(out.runs + [sorted(r, key=lambda s: s.seq) for r in joint.values()], starts)
    deferred = {id(s) for r in joint.values() for s in r}
    run = [s for s in order if id(s) in deferred]
    for step in run:
        _re_execute(engine, step)
        if len(joint) == 1:
            out.in_place.add((step.client, step.seq))
    out.runs.append(run)
    out.re_executed = [(step.client, step.op) for step in order]
    engine.log_order = ClockLogOrder(sorted(engine.log_order, key=lambda e: e[0]))
    out.commits = engine.drain_commits()
    return out


__all__ = [
    "OBSERVED", "TS", "Checkpoint", "InstanceLog", "Read", "RecoverableEngine", "Recovery",
    "RecoveryError", "Stamp", "Stamped", "Unrecoverable", "WALBackend", "WriteAheadLog", "attach_wal",
    "recover", "select_ts",
]
