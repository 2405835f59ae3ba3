# cython: infer_types=True
"""Store client library: the Table 1 strategies between NF code and the store.

Theory of operation
-------------------
Each instance has one :class:`StoreClient`.  At bind time it gives every state
declaration a handle with the Table 2 operations (the same methods as model
``T``'s :class:`~chc.core.state.LocalObject`), chosen from the model and the
object's scope and access pattern (Table 1, §4.3):

=============  =================================================================
model          handle
=============  =================================================================
``EO``         every op offloaded to the store and waited for (§7.1 model #1)
``EO+C``       write-mostly: offloaded updates, no cache; per-flow: cached, updates
               flushed per batch; cross-flow read-heavy: cached, refreshed by
               callbacks, updates sent at once; cross-flow write/read-often:
               cached while this instance is its only user (the splitter says so;
               with one instance per vertex it is), else offloaded blocking ops
``EO+C+NA``    as ``EO+C``, and non-blocking ops are never waited for: they go out
               as one pipelined request per batch and are retransmitted until
               acknowledged (§4.3)
=============  =================================================================

Ordering.  A client's ops reach the store in issue order: a blocking op first
sends every queued non-blocking op in the same pipelined request, so a read
sees all of this client's earlier updates (§4.3).

Exactly-once and retransmission (§4.3).  Every op gets ``(client id, seq)``
when it is first sent, seqs increasing in send order; the store keeps the
highest applied seq per client and answers a retransmitted update from its clock
log (or ignores it once acknowledged).  Non-blocking ops stay in ``unacked``
until the store's reply acknowledges them, and every request resends the
un-ACKed ops in front of its own (go-back-N): a request the store applies then
never overtakes a lost earlier one, so the high-water mark stays exact however
the network drops, duplicates or reorders requests.  A backend with ``submit``
(the sim's network links) really does not wait: the reply comes later and
acknowledges up to its highest seq; at the end of input ``settle`` resends
what is still un-ACKed after each timeout.

Clock log tags.  Updates carry ``(clock, n)``: the logical clock of the packet
being processed and the number of updates this instance issued for it so far,
so the store can recognise a replayed packet's updates (§5.3).

Coalescing (EO+C+NA, write-mostly objects).  The increments a batch makes to one
counter key join one queued ``incr_many`` op (placed where the first of them was
issued), each with its own tag and XOR id: the store does one addition instead
of one op per packet.  Only increments coalesce; any other op on that key, and
every request sent, closes the open op, so no increment moves past another op
on its key and none joins an op already sent (retransmission stays exact).
:class:`CoalescedObject` keeps the open ops; the client closes them all on send.

Order-dependent shared updates go to the store as one atomic step: ``pop``,
``cas``, ``incr_least`` (custom op ``argmin_incr``) and registered value
operations (``apply``, :func:`chc.nf.value_op`).

Refused updates (§5.4).  An op the store refuses for what it is (a value it cannot
hold, an increment of a non-number: :class:`~chc.core.store.Refused`) is final: the
request's other ops were applied, and the refused update never commits.  The client
keeps its commit ids in ``refused`` (``(clock, xor id)``), which the instance reports
to the root as ended, so its packet completes.  The refusal of an op the client
waits for (every op but EO+C+NA's non-blocking ones) is raised to the NF, as the
logical chain's NF raises on its own state; one the NF could not wait for (EO+C+NA:
refused after its packet went on) is kept in ``late`` for the instance to count.
The first value the store could not hold is kept in ``unstorable`` for the summary.

The client does no I/O itself: it hands op lists to a backend's ``execute``
(in-process engine or Redis).
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Hashable
from typing import Any

from ..nf import VALUE_OPS, Access, StateObject, least_loaded
from .state import LocalObject
from .store import Increments, ObjectKey, Op, Refused, StoreError, UnstorableValue

MODELS = ("T", "EO", "EO+C", "EO+C+NA")
_XOR_STEP = 0x9E3779B1          # §5.4 ids of one object's successive updates in a packet
_MASK32 = 0xFFFFFFFF
_MISSING = object()
_NOTED = 4096                   # refused ops remembered (their seqs), so each is noted once
_new_tuple = tuple.__new__


class StoreUnavailable(StoreError):
    """The store cannot be reached (the message names its address)."""


class StoreLost(StoreError):
    """The store no longer holds this run's state (restarted empty, flushed): fatal,
    never retried; the message names the store."""


class StoreClient:
    def __init__(self, backend: Any, vertex: str, instance: int, model: str,
                 exclusive: bool = True) -> None:
        if model not in MODELS or model == "T":
            raise ValueError(f"the store client serves models EO, EO+C, EO+C+NA, not {model!r}")
        self.backend = backend
        self.vertex = vertex
        self.instance = instance
        self.client_id = f"{vertex}/{instance}"
        self.caching = model != "EO"
        self.no_ack_wait = model == "EO+C+NA"
        self.exclusive = exclusive          # sole user of cross-flow objects (splitter)
        self.retransmit = True              # off only to show what it prevents (tests)
        self.callbacks = True               # off: callbacks dropped, read-heavy caches go stale (tests)
        self.seq = 0                        # the last seq given to a sent op
        self.pending: list[Op] = []         # non-blocking ops not yet sent
        self.unacked: list[Op] = []         # sent non-blocking ops not yet acknowledged
        self.abandoned = 0                  # un-ACKed ops not resent (retransmit off)
        # COE checker: (object key, tag) of every update issued, lost or not.
        self.issued: list | None = None
        self.coalesced: list[CoalescedObject] = []   # handles whose increments coalesce
        self.clock = 0
        self.n_in_packet = 0
        self.packet_xor = 0                 # §5.4: XOR of this packet's update ids
        self.faults: Any = None             # fault injection (chc check --break)
        self.prefetchable: list[CachedObject] = []   # cached per-flow objects
        self.callback_caches: dict[ObjectKey, CallbackObject] = {}
        # statistics for the summary's `store` section
        self.blocking_ops = 0
        self.nonblocking_ops = 0
        self.cache_hits = 0
        # Refused updates (see above): their (clock, xor id), the (op, error) of those the
        # NF did not see, and the first (op, error) of a value the store cannot hold.
        self.refused: list[tuple[int, int]] = []
        self.late: list[tuple[Op, StoreError]] = []
        self.unstorable: tuple[Op, UnstorableValue] | None = None
        # The seqs of the refusals noted (recent ones): a refused op resent before its
        # refusal came back is refused again, in the reply to each request that carried it.
        self.noted: dict[int, None] = {}

    # -- per packet -------------------------------------------------------------------
    def begin_packet(self, clock: int) -> None:
        self.clock = clock
        self.n_in_packet = 0
        self.packet_xor = 0

    def op(self, code: str, key: ObjectKey, args: tuple = (), default: Any = None,
           update: bool = True, xor_base: int = 0) -> Op:
        """A store op from this client; an update gets its clock-log tag (§5.3) and
        an XOR id (§5.4) that is folded into the packet's vector."""
        if not update:
            return Op(code, key, args, self.client_id, 0, self.instance, None, 0, default)
        n, xor_id = self._next_update(xor_base)
        if self.issued is not None:
            self.issued.append((key, (self.clock, n)))
        return Op(code, key, args, self.client_id, 0, self.instance,
                  (self.clock, n), xor_id, default)

    def _next_update(self, xor_base: int) -> tuple[int, int]:
        """Number the packet's next update (§5.3 tag) and fold its id into the vector (§5.4)."""
        self.n_in_packet = n = self.n_in_packet + 1
        xor_id = (xor_base + n * _XOR_STEP) & _MASK32
        if xor_id == 0:
            xor_id = 1
        self.packet_xor ^= xor_id
        return n, xor_id

    def open_increments(self, key: ObjectKey, n: int, default: Any) -> Increments | None:
        """Queue a new ``incr_many`` op for ``key`` (see Coalescing above), tagged
        with its first increment; None when fault injection swallowed it."""
        inc = Increments()
        op = Op("incr_many", key, (inc,), self.client_id, 0, self.instance,
                (self.clock, n), 0, default)
        if self.faults is not None and self.faults.swallow(op):
            return None                     # injected loss (this increment only)
        self.pending.append(op)
        return inc

    def _take_pending(self) -> list[Op]:
        """The queued ops, to be sent now, numbered in send order; an op once sent
        takes no more increments."""
        for h in self.coalesced:
            if h._open:
                h._open = {}
        ops = self.pending
        seq = self.seq
        for op in ops:
            seq += 1
            op.seq = seq
        self.seq = seq
        return ops

    def _resend(self) -> list[Op]:
        """The un-ACKed ops, to go out again in front of the next request (go-back-N)."""
        ops = self.unacked
        if not ops:
            return ops
        self.unacked = []
        if not self.retransmit:
            self.abandoned += len(ops)      # broken on purpose: lost if their request was
            return []
        return ops

    # -- sending ------------------------------------------------------------------------
    def call(self, op: Op) -> Any:
        """Blocking: send un-ACKed and queued non-blocking ops and ``op`` together,
        wait for the reply (which acknowledges them all)."""
        self.blocking_ops += 1
        self.pending.append(op)
        ops = self._resend() + self._take_pending()
        self.pending = []
        results = self._execute(ops, op)
        self._notifications()
        return results[-1]

    def _execute(self, ops: list[Op], waited: Any = None) -> list[Any]:
        """``backend.execute(ops)``; the ops it refuses for what they are are noted
        (see Refused updates above), their results None; ``waited``'s refusal is raised."""
        try:
            return self.backend.execute(ops)
        except Refused as exc:
            self._refuse(exc.refused, waited)
            return exc.results

    def _refuse(self, refused: list, waited: Any = None) -> None:
        mine = None
        noted = self.noted
        for op, err in refused:
            if op.seq in noted:
                continue                    # (noted from an earlier reply: once only, §5.4)
            noted[op.seq] = None
            if len(noted) > _NOTED:         # long answered: forget the older half
                for seq in list(noted)[:_NOTED // 2]:
                    del noted[seq]
            if op.code == "incr_many":
                inc = op.args[0]
                self.refused += [(c, x) for c, x in zip(inc.clocks, inc.xor_ids, strict=True) if x]
            elif op.tag is not None and op.xor_id:
                self.refused.append((op.tag[0], op.xor_id))
            if self.unstorable is None and isinstance(err, UnstorableValue):
                self.unstorable = (op, err)
            if op is waited:
                mine = err
            else:
                self.late.append((op, err))
        if mine is not None:
            raise mine from None

    def _acked(self, seq: int, refused: Any = None) -> None:
        """The store acknowledged every op up to ``seq``; ``refused``: the (op, error)
        pairs of those it refused for what they are."""
        if refused:
            self._refuse(refused)
        unacked = self.unacked
        if unacked and unacked[-1].seq <= seq:
            self.unacked = []
        elif unacked:
            self.unacked = [op for op in unacked if op.seq > seq]

    def send(self, op: Op) -> None:
        """Non-blocking update: in EO+C+NA queued for the batch flush (never waited
        for); otherwise sent now and its acknowledgement awaited."""
        self.nonblocking_ops += 1
        if self.faults is not None and self.faults.swallow(op):
            return                          # injected loss: never sent, never retransmitted
        self.pending.append(op)
        if not self.no_ack_wait:
            self.flush(op)                  # (waited for: a refusal is raised to the NF)

    def flush(self, waited: Any = None) -> None:
        """Send queued ops as one pipelined request.  In EO+C+NA over a backend that
        can (``submit``), do not wait: the reply acknowledges them later.  Otherwise
        wait; in EO+C+NA a failed request's ops stay un-ACKed and go out again.
        ``waited``: the op whose refusal, if the store refuses it, is raised here."""
        if not self.pending:
            return
        fresh = self._take_pending()
        self.pending = []
        ops = self._resend() + fresh
        if self.no_ack_wait:
            self.unacked = ops if self.retransmit else []
            submit = getattr(self.backend, "submit", None)
            if submit is not None:
                submit(ops, self._acked)
                self._notifications()
                return
        try:
            self._execute(ops, waited)
        except StoreUnavailable:
            if not self.no_ack_wait:
                raise
            return                          # un-ACKed: resent with the next request
        self.unacked = []
        self._notifications()

    def settle(self) -> None:
        """End of input: every non-blocking op sent and acknowledged."""
        self.flush()
        if not self.unacked:
            return
        settle = getattr(self.backend, "settle", None)
        if settle is None:
            try:
                self._execute(self._resend())
            except StoreUnavailable:
                return
            return
        settle(self._resubmit)

    def hand_over(self) -> None:
        """§5.1 step 5, after the ``last`` packet of moved flows: every update sent
        and acknowledged, the per-flow cache dropped, per-flow ownership given up.
        A key does not say which flow group it belongs to, so all per-flow objects
        are released; the flows this instance keeps take theirs back with their
        next update, as the splitter sends no one else their packets."""
        self.settle()
        for h in self.prefetchable:
            h.values.clear()
        self.backend.release_instance(self.vertex, self.instance)

    def _resubmit(self) -> bool:
        """Resend what is still un-ACKed (at the end of input); False when nothing is."""
        ops = self._resend()
        if not ops:
            return False
        self.unacked = ops
        self.backend.submit(ops, self._acked)
        return True

    def poll(self) -> None:
        """Take the callbacks that arrived since the last request (the instance runs
        this before each batch): a change another instance or the operator made to
        a cached read-heavy object reaches this cache before the batch reads it."""
        self._notifications(request=False)

    def _notifications(self, request: bool = True) -> None:
        if not self.callback_caches:
            return
        if request and getattr(self.backend, "callbacks_per_batch", False):
            # A backend where taking them is a round trip (Redis: a PING on the pub/sub
            # connection, a fifth of the LB's time) takes them before each batch only: a
            # callback is asynchronous (Table 1); the cache is fresh as of the batch's start.
            return
        for msg in self.backend.notifications(self.client_id):
            if msg[0] == "update" and self.callbacks:
                cache = self.callback_caches.get(msg[1])
                if cache is not None:
                    cache.values[msg[1].key] = msg[2]

    # -- binding ---------------------------------------------------------------------------
    def bind(self, decl: StateObject, config: Any, exclusive: bool | None = None) -> Any:
        """A handle on ``decl`` by Table 1; ``exclusive``: whether this instance is the
        object's sole user (default: the client's ``exclusive``)."""
        handle: Any
        per_flow = decl.scope.per_flow
        if exclusive is None:
            exclusive = self.exclusive
        if decl.access is Access.WRITE_MOSTLY and self.no_ack_wait:
            handle = CoalescedObject(self, decl, config)
            self.coalesced.append(handle)
        elif not self.caching or decl.access is Access.WRITE_MOSTLY:
            handle = RemoteObject(self, decl, config)
        elif per_flow or (decl.access is Access.READ_WRITE and exclusive):
            handle = CachedObject(self, decl, config)
        elif decl.access is Access.READ_HEAVY:
            handle = CallbackObject(self, decl, config)
        else:
            handle = RemoteObject(self, decl, config)
        handle.declare()
        if per_flow and type(handle) is CachedObject:
            self.prefetchable.append(handle)
        return handle

    def prefetch(self, batch: list, reads: Any = None) -> None:
        """Load the per-flow objects a batch will touch in one request (§4.3, batch
        everywhere): without it each new flow's first packet costs a blocking read,
        a fifth of the NAT's time in the profile (docs/benchmarks.md).  ``reads``
        (the NF's ``reads_flow_state`` hint) leaves out packets that touch none."""
        if reads is not None:
            batch = [p for p in batch if reads(p)]
        ops: list[Op] = []
        slots: list[tuple[CachedObject, Hashable]] = []
        for h in self.prefetchable:
            key_of = h.decl.scope.key
            values = h.values
            seen: set = set()
            for pkt in batch:
                k = key_of(pkt)
                if k in values or k in seen:
                    continue
                seen.add(k)
                ops.append(self.op("get", h.key(k), update=False))
                slots.append((h, k))
        if not ops:
            return
        self.blocking_ops += 1
        self.pending.extend(ops)
        sent = self._resend() + self._take_pending()
        self.pending = []
        results = self._execute(sent)[len(sent) - len(ops):]
        self._notifications()
        for (h, k), v in zip(slots, results, strict=True):
            h.values[k] = h._cached(v)


def _argmin_args(keys: list[ObjectKey], weights: list | tuple | None) -> tuple:
    # Unweighted: the op keeps its original form (stores, digests, COE steps unchanged).
    args: tuple = ("argmin_incr", keys)
    return args + (list(weights),) if weights is not None else args


class _Handle(LocalObject):
    """Common parts of the store-backed handles: addressing and the initial value."""

    __slots__ = ("client", "name", "per_flow", "_keys", "_absent", "_write_mostly", "_xor_base", "private")

    def __init__(self, client: StoreClient, decl: StateObject, config: Any) -> None:
        super().__init__(decl, config)
        self.client = client
        self.name = decl.name
        self.per_flow = decl.scope.per_flow
        self._keys: dict[Hashable, ObjectKey] = {}
        # What the store takes for an absent object.  Shared lists are declared
        # with their contents up front (declare), so no op needs to carry them.
        self._absent = None if isinstance(self._init, deque) else self._init
        # Write-mostly updates are non-blocking: their results are never waited for.
        self._write_mostly = decl.access is Access.WRITE_MOSTLY
        # §5.4: ids XORed into a packet's vector name (instance, object, n); the logical
        # instance's, so a clone or failover instance re-issues an update with its id.
        self._xor_base = zlib.crc32(f"{client.vertex}/{client.instance}/{decl.name}".encode())
        # §5.3 a clone pair's private view (the sim runtime sets it): a cache miss is
        # an object absent when the clone started, never a store read, so neither
        # copy reads what the other has already done.
        self.private = False

    def key(self, key: Hashable) -> ObjectKey:
        k = self._keys.get(key)
        if k is None:
            # tuple.__new__: the NamedTuple constructor is a Python-level function
            k = self._keys[key] = _new_tuple(ObjectKey, (self.client.vertex, self.name, key, self.per_flow))
        return k

    def declare(self) -> None:
        """Shared list objects start with their initial contents in the store."""
        if self.decl.kind == "list" and self._init and not self.per_flow:
            self.client.backend.declare(self.key(None), list(self._init))


class RemoteObject(_Handle):
    """Offloaded operations, no cache (EO; write-mostly objects; shared objects
    with several users)."""

    __slots__ = ()

    def _read(self, key: Hashable) -> Any:
        c = self.client
        v = c.call(c.op("get", self.key(key), update=False))
        if v is None:
            return self._fresh_value()
        return v

    def _fresh_value(self) -> Any:
        v = self._fresh()
        return list(v) if isinstance(v, deque) else v

    def _update(self, code: str, key: Hashable, args: tuple, blocking: bool) -> Any:
        c = self.client
        op = c.op(code, self.key(key), args, self._absent, xor_base=self._xor_base)
        if blocking:
            return c.call(op)
        c.send(op)
        return None

    def get(self, key: Hashable = None) -> Any:
        return self._read(key)

    def set(self, value: Any, key: Hashable = None) -> None:
        self._update("set", key, (value,), False)

    def incr(self, by: int = 1, key: Hashable = None) -> int | None:
        return self._update("incr", key, (by,), not self._write_mostly)

    def push(self, value: Any, key: Hashable = None) -> None:
        self._update("push", key, (value,), False)

    def pop(self, key: Hashable = None) -> Any:
        v = self._update("pop", key, (), True)
        if self.recorder is not None:
            self.recorder(self.name, key, "pop", v)
        return v

    def cas(self, expected: Any, new: Any, key: Hashable = None) -> bool:
        ok = bool(self._update("cas", key, (expected, new), True))
        if self.recorder is not None:
            self.recorder(self.name, key, "cas", ok)
        return ok

    def delete(self, key: Hashable = None) -> None:
        self._update("delete", key, (), False)

    def apply(self, op: str, *args: Any, key: Hashable = None) -> Any:
        """Offloaded value operation: one atomic step in the store (§4.3)."""
        new, result = self._update("apply", key, (op, *args), True)
        if self.recorder is not None:
            self.recorder(self.name, key, "apply", (new, result))
        return result

    def incr_least(self, keys: list, weights: list | tuple | None = None) -> int | None:
        c = self.client
        args = _argmin_args([self.key(k) for k in keys], weights)
        best = c.call(c.op("custom", self.key(None), args, xor_base=self._xor_base))
        if self.recorder is not None:
            self.recorder(self.name, None, "incr_least", best)
        return best


class CoalescedObject(RemoteObject):
    """Write-mostly objects in EO+C+NA: the increments of one key join the op
    queued for it until the next request goes out (see Coalescing above); every
    other op is offloaded as in :class:`RemoteObject` and closes that op."""

    __slots__ = ("_open",)

    def __init__(self, client: StoreClient, decl: StateObject, config: Any) -> None:
        super().__init__(client, decl, config)
        self._open: dict[Hashable, Increments] = {}     # scope key -> its queued incr_many

    def incr(self, by: int = 1, key: Hashable = None) -> None:
        c = self.client
        n, xor_id = c._next_update(self._xor_base)
        c.nonblocking_ops += 1
        if c.issued is not None:
            c.issued.append((self.key(key), (c.clock, n)))
        inc = self._open.get(key)
        if inc is None:
            inc = c.open_increments(self.key(key), n, self._absent)
            if inc is None:
                return
            self._open[key] = inc
        inc.add(c.clock, n, by, xor_id)

    def _update(self, code: str, key: Hashable, args: tuple, blocking: bool) -> Any:
        self._open.pop(key, None)
        return super()._update(code, key, args, blocking)


class CachedObject(_Handle):
    """Cached at the instance; every update applied locally and also queued to
    the store as a non-blocking op (per-flow objects; exclusive shared ones)."""

    __slots__ = ()

    def _slot_value(self, key: Hashable) -> Any:
        v = self.values.get(key, _MISSING)
        if v is not _MISSING:
            self.client.cache_hits += 1
            return v
        v = self.values[key] = self._cached(self._load(key))
        return v

    def _cached(self, stored: Any) -> Any:
        """The cache's form of a value read from the store (None: absent)."""
        if stored is None:
            return self._initial_value()
        return deque(stored) if self.decl.kind == "list" else stored

    def _load(self, key: Hashable) -> Any:
        """A cache miss: the value in the store (None when absent)."""
        if self.private:
            return None
        c = self.client
        return c.call(c.op("get", self.key(key), update=False))

    def _queue(self, code: str, key: Hashable, args: tuple) -> None:
        c = self.client
        c.send(c.op(code, self.key(key), args, self._absent, xor_base=self._xor_base))

    def get(self, key: Hashable = None) -> Any:
        v = self._slot_value(key)
        return list(v) if isinstance(v, deque) else v

    def set(self, value: Any, key: Hashable = None) -> None:
        self.values[key] = value
        self._queue("set", key, (value,))

    def incr(self, by: int = 1, key: Hashable = None) -> int:
        v = self.values[key] = self._slot_value(key) + by
        self._queue("incr", key, (by,))
        return v

    def push(self, value: Any, key: Hashable = None) -> None:
        self._slot_value(key).append(value)
        self._queue("push", key, (value,))

    def pop(self, key: Hashable = None) -> Any:
        lst = self._slot_value(key)
        v = lst.popleft() if lst else None
        # The store gets the op a RemoteObject sends, whatever the cache says (an empty
        # pop too): a replay with another caching mode re-issues the same tagged ops.
        self._queue("pop", key, ())
        if self.recorder is not None:
            self.recorder(self.name, key, "pop", v)
        return v

    def cas(self, expected: Any, new: Any, key: Hashable = None) -> bool:
        ok = self._slot_value(key) == expected
        if ok:
            self.values[key] = new
        self._queue("cas", key, (expected, new))
        if self.recorder is not None:
            self.recorder(self.name, key, "cas", ok)
        return ok

    def delete(self, key: Hashable = None) -> None:
        self.values.pop(key, None)
        self._queue("delete", key, ())

    def apply(self, op: str, *args: Any, key: Hashable = None) -> Any:
        new, result = VALUE_OPS[op].fn(self._slot_value(key), *args)
        self.values[key] = new
        self._queue("apply", key, (op, *args))
        if self.recorder is not None:
            self.recorder(self.name, key, "apply", (new, result))
        return result

    def incr_least(self, keys: list, weights: list | tuple | None = None) -> int | None:
        loads = [self._slot_value(k) for k in keys]
        best = least_loaded(loads, weights)
        if best is not None:
            self.values[keys[best]] = loads[best] + 1
        # The RemoteObject's op (see pop): the store, whose copy a sole user's cache
        # equals when the op arrives, picks the same counter.
        self._queue("custom", None, _argmin_args([self.key(k) for k in keys], weights))
        if self.recorder is not None:
            self.recorder(self.name, None, "incr_least", best)
        return best


class CallbackObject(CachedObject):
    """Cross-flow, read-heavy: cached and refreshed by store callbacks; updates go
    to the store at once (Table 1)."""

    __slots__ = ()

    def _load(self, key: Hashable) -> Any:
        """A cache miss: subscribe to the object's updates and take its value."""
        c = self.client
        k = self.key(key)
        c.callback_caches[k] = self
        return c.backend.subscribe(k, c.client_id)

    def _queue(self, code: str, key: Hashable, args: tuple) -> None:
        c = self.client
        c.call(c.op(code, self.key(key), args, self._absent, xor_base=self._xor_base))
