"""Store engine: the datastore's semantics, as a state machine with no I/O.

Theory of operation
-------------------
The store holds every externalized NF state object (§4.3) and applies the
operations NF instances offload to it (Table 2).  One :class:`Op` in, one result
out, plus *notifications* for other clients (callbacks, ownership changes);
:meth:`StoreEngine.apply` is atomic per op, and ops on one object are applied in
one global order (the order ``apply`` is called).  The ``memory`` backend calls
this engine in-process; the ``redis`` backend implements the same semantics as
server-side functions (``chc/backends/redis_functions.lua``) and is held to it
by the same conformance suite.

Object keys (§4.3).  A shared (cross-flow) object is ``vertex + object + key``;
a per-flow object additionally records its owning instance: only the owner may
update it, any other instance is refused with :class:`OwnershipError`.
Ownership is released and taken explicitly (handover, §5.1 Figure 4); an
instance that asks to take an object another instance owns is queued and
notified when it is released.

Exactly-once per client (§4.3).  Every op carries ``(client, seq)``; the store
keeps the highest applied ``seq`` per client.  The client resends every
unacknowledged op, in seq order, ahead of each new request, so an op at or below
that mark was applied (or refused) before: an op missing from an applied request
had been acknowledged.  Such a retransmission is never applied again; its result
is the one recorded for its clock-log tag while the tag is in the log (the reply
that was lost carried it: a blocking ``pop`` must not lose its port), else None
(an untagged op, or one whose tag was pruned: it was acknowledged).  A tagged
update refused for what it is (an increment of a non-number: :class:`Refused` from
a backend) is refused again while its clock is kept (``refusals``): the lost reply
carried the refusal, which its client must hear of once (§5.4: the update never
commits).  ``dedup =
False`` turns both checks off (every copy is applied: what the COE checker's
``--break no-dedup`` shows).

Clock log (§5.3, Figure 5b).  An update may carry the logical clock of the
packet that caused it, as ``tag = (clock, n)`` with ``n`` numbering the packet's
updates at that instance.  The store records, per object, tag -> result; a
second update with a recorded tag (a replayed packet at a clone or a recovering
instance) is *emulated*: the recorded result is returned and nothing changes.
Entries are pruned once their root reports their clocks done (``prune_below``):
each root for its own clocks, which carry its id in their high bits
(:data:`CLOCK_BITS`), since one root's progress says nothing of another's packets.

Callbacks.  A client may subscribe to an object; every update made by another
client produces a notification ``(subscriber, ("update", key, value))``: the
read-heavy cache strategy of Table 1.

Commit reports (§5.4).  Each applied update that carries a tag is reported as
``(clock, xor id)`` in ``commits`` so the root can check the packet's XOR vector.

Coalesced increments (§4.3 batching).  ``incr_many`` carries one batch's
write-mostly increments of one counter (:class:`Increments`): it is applied as
one addition, yet each increment keeps its own clock-log tag (a replayed one is
left out of the sum) and its own commit report.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

from ..nf import VALUE_OPS, least_loaded

CLOCK_BITS = 48          # per-root sequence space of a logical clock; the root id sits above it (core.root)

READS = frozenset(("get",))
_ABSENT = object()      # (a pre-image of an object that did not exist)
_IMMUTABLE = frozenset((int, float, str, bytes, bool, type(None), tuple))
_ATOMS = _IMMUTABLE - {tuple}


def _private(value: Any) -> Any:
    """A copy of a stored value nothing else refers to (a deque as a list, as it was
    always kept; a list of atoms, the NAT's port pool, without deepcopy's cost)."""
    cls = value.__class__
    if cls in _ATOMS or (cls is tuple and all(map(_ATOMS.__contains__, map(type, value)))):
        return value
    if cls is deque or (cls is list and all(map(_ATOMS.__contains__, map(type, value)))):
        return list(value)
    return copy.deepcopy(value)     # (a tuple holding a list, say: its list is copied too)


UPDATES = frozenset(("set", "incr", "incr_many", "push", "pop", "cas", "delete", "custom", "apply"))


class StoreError(Exception):
    """An operation the store refuses (bad op, wrong type)."""


class OwnershipError(StoreError):
    """A per-flow object updated by an instance that does not own it (§4.3)."""


class UnstorableValue(StoreError):
    """A value a store cannot hold (a set or an object of the NF's own in Redis), refused
    before it is sent: ``what`` it is in the op (``value``, ``the scope key``, ...), the
    ``value`` and its innermost ``part`` the store cannot hold."""

    def __init__(self, message: str, what: str = "value", value: Any = None, part: Any = None) -> None:
        super().__init__(message)
        self.what = what
        self.value = value
        self.part = value if part is None else part


class Refused(StoreError):
    """Ops of one request a store refused for what they are: a value it cannot hold, an
    increment of a non-number, an unknown operation (the NF's doing; an
    :class:`OwnershipError` is not one of these).  Every other op of the request was
    applied, so nothing is sent again.  ``refused``: the (op, error) pairs in request
    order; ``results``: the request's results, None at a refused op.  A refused update
    is final: it never commits (§5.4), which the client library tells its instance.
    Raised by ``execute``; a non-blocking request's refusals come with its
    acknowledgement instead (``on_ack(seq, refused)``)."""

    def __init__(self, refused: list, results: list) -> None:
        super().__init__(str(refused[0][1]))
        self.refused = refused
        self.results = results


class ObjectKey(NamedTuple):
    """Store address of one object: vertex + object name + scope key (§4.3).

    A tuple, so hashing and comparing it stay in C on the store's hot path."""

    vertex: str
    obj: str
    key: Hashable
    per_flow: bool = False


class Op:
    """One operation from a client (Table 2), with what exactly-once delivery
    (``client``, ``seq``), the clock log (``tag``) and commits (``xor_id``) need.
    A plain slotted class: the compiled build (store.pxd) makes it a C struct,
    and a dataclass's generated ``__init__`` was a tenth of the NAT's client time."""

    __slots__ = ("code", "key", "args", "client", "seq", "instance", "tag", "xor_id", "default")

    def __init__(self, code: str, key: ObjectKey, args: tuple = (), client: str = "", seq: int = 0,
                 instance: int | None = None, tag: tuple[int, int] | None = None, xor_id: int = 0,
                 default: Any = None) -> None:
        self.code = code            # get set incr incr_many push pop cas delete custom apply
        self.key = key
        self.args = args
        self.client = client
        self.seq = seq              # per-client sequence number, 0 = not deduplicated
        self.instance = instance    # the issuing instance, for ownership checks
        self.tag = tag              # (clock, n): clock-log tag (§5.3)
        self.xor_id = xor_id        # (instance, object) id reported on commit (§5.4)
        self.default = default      # value of an absent object

    def replace(self, **changes: Any) -> Op:
        fields = {name: getattr(self, name) for name in Op.__slots__}
        fields.update(changes)
        return Op(**fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Op:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in Op.__slots__)

    def __repr__(self) -> str:
        return "Op(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in Op.__slots__) + ")"


class Increments:
    """Argument of ``incr_many``: increments of one counter, in issue order, each
    with its clock-log tag ``(clock, n)`` (§5.3) and XOR id (§5.4; 0: no commit
    report).  Flat lists: the client appends
    what it has, the store builds tags and commit reports once per op."""

    __slots__ = ("total", "clocks", "ns", "amounts", "xor_ids")

    def __init__(self) -> None:
        self.total = 0
        self.clocks: list[int] = []
        self.ns: list[int] = []
        self.amounts: list[int] = []
        self.xor_ids: list[int] = []

    def add(self, clock: int, n: int, by: Any, xor_id: int) -> None:
        self.total += by
        self.clocks.append(clock)
        self.ns.append(n)
        self.amounts.append(by)
        self.xor_ids.append(xor_id)

    @property
    def tags(self) -> list[tuple[int, int]]:
        return list(zip(self.clocks, self.ns, strict=True))

    @property
    def commits(self) -> list[tuple[int, int]]:
        """Commit reports ``(clock, xor id)`` of the packets' increments."""
        return [(c, x) for c, x in zip(self.clocks, self.xor_ids, strict=True) if x]

    def __repr__(self) -> str:
        return f"Increments(total={self.total}, n={len(self.clocks)})"


CustomOp = Callable[["StoreEngine", Op], Any]


def _argmin_incr(engine: StoreEngine, op: Op) -> int | None:
    """Built-in custom op: index of the least counter among ``args[0]`` (object
    keys), incremented by one atomically (the load balancer's choice, §6); with
    ``args[1]`` (weights) the least counter / weight among positive weights
    (:func:`chc.nf.least_loaded`), None when no weight is positive."""
    keys: list[ObjectKey] = op.args[0]
    values = [engine.data.get(k, 0) for k in keys]
    best = least_loaded(values, op.args[1] if len(op.args) > 1 else None)
    if best is None:
        return None
    engine.data[keys[best]] = values[best] + 1
    return best


def _add(value: Any, by: Any, key: ObjectKey) -> Any:
    try:
        return value + by
    except TypeError:
        raise StoreError(f"{key.obj}: incr on a non-number value") from None


class _Recorded:
    """What an ``incr_many`` application records for each of its tags (§5.3): one fresh
    object per application, so a tag recorded by an earlier application, even of the same
    :class:`Increments` object resent, is told from one this application records; the
    counter value after the addition is filled in once known."""

    __slots__ = ("result",)

    def __init__(self) -> None:
        self.result: Any = None


def _done(tag: Any, floors: dict[int, int]) -> bool:
    """Every clock of a clock-log entry (an ``incr_many``'s is a list) below its root's floor."""
    if tag.__class__ is list:
        return all(t[0] < floors.get(t[0] >> CLOCK_BITS, -1) for t in tag)
    return tag[0] < floors.get(tag[0] >> CLOCK_BITS, -1)


class ClockLogOrder:
    """The clock log's entries ``(clock, key, tag)`` in the order the store made them, a
    queue per root (by the entry's clock): each root's floor prunes its own queue from
    the front (§5.3), so a root that lags holds back none of another's."""

    __slots__ = ("queues",)

    def __init__(self, entries: Any = ()) -> None:
        self.queues: dict[int, deque] = {}
        for entry in entries:
            self.append(entry)

    def append(self, entry: tuple) -> None:
        root = entry[0] >> CLOCK_BITS
        queue = self.queues.get(root)
        if queue is None:
            queue = self.queues[root] = deque()
        queue.append(entry)

    def __iter__(self) -> Any:
        for queue in self.queues.values():
            yield from queue

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())


class StoreEngine:
    """One store node's state; ``apply`` is its only way in."""

    def __init__(self) -> None:
        self.dedup = True               # False: apply every copy of an op (--break no-dedup)
        # §5.3 emulation of another client's duplicate (a clone's, a replay's); off only
        # for --break no-dup-suppression, which then counts what it applies again.
        self.emulate = True
        self.emulated = 0               # duplicate updates answered from the clock log
        self.reapplied = 0              # duplicates applied again (emulation off)
        self.data: dict[ObjectKey, Any] = {}
        self.owner: dict[ObjectKey, int] = {}
        self.waiting: dict[ObjectKey, deque[tuple[str, int]]] = {}
        self.applied_seq: dict[str, int] = {}
        self.subscribers: dict[ObjectKey, set[str]] = {}
        self.clock_log: dict[ObjectKey, dict[tuple[int, int], Any]] = {}
        self.log_order = ClockLogOrder()
        self.floors: dict[int, int] = {}    # root id -> the clock its entries are kept from
        # (client, seq) -> (clock, error) of tagged updates refused for what they are: a
        # retransmission is refused again (its first reply may have been lost), until
        # the clock's root prunes it with the clock log.
        self.refusals: dict[tuple[str, int], tuple[int, StoreError]] = {}
        self.customs: dict[str, CustomOp] = {"argmin_incr": _argmin_incr}
        self.notifications: list[tuple[str, tuple]] = []
        self.commits: list[tuple[int, int]] = []
        self._commit_runs: list[Increments] = []     # incr_many ops' commits, not yet paired
        self.ops_applied = 0
        # §5.4 NF failover: per object, the value before the first update of each clock
        # still in the clock log (off unless a runtime may fail an instance over).  A
        # pre-image is a private copy, written once and never changed (objects_at hands
        # out copies), so a checkpoint shares it instead of copying it (§5.4).
        self.preimages = False
        self.before: dict[ObjectKey, dict[int, Any]] = {}

    # -- operations ---------------------------------------------------------------
    def apply(self, op: Op) -> Any:
        """Apply one op atomically and return its result."""
        seq = op.seq
        code = op.code
        if seq:
            if seq > self.applied_seq.get(op.client, 0):
                self.applied_seq[op.client] = seq
            elif self.dedup and code not in READS:
                if self.refusals:
                    refused = self.refusals.get((op.client, seq))
                    if refused is not None:
                        raise refused[1]    # refused again: its first reply may have been lost
                return self._retransmitted(op)
        if code in READS:
            # A read is answered again when resent: its first reply may have been lost.
            return self.data.get(op.key, op.default)
        key = op.key
        try:
            if code not in UPDATES:
                raise StoreError(f"unknown operation {code!r}")
            if code == "incr_many":
                if key.per_flow:
                    self._check_owner(op)
                result = self._incr_many(op)
            else:
                tag = op.tag
                if tag is not None:
                    log = self.clock_log.get(key)
                    if log is not None and tag in log and self.dedup:
                        if self.emulate:
                            # §5.3: emulate a duplicate update, whoever sends it (it writes
                            # nothing, so it takes no ownership: a failover replays updates of
                            # flows that have moved to another instance since, §5.1 with §5.4)
                            self.emulated += 1
                            r = log[tag]
                            return r.result if r.__class__ is _Recorded else r
                        self.reapplied += 1
                if key.per_flow:
                    self._check_owner(op)
                if tag is not None and self.preimages:
                    self._preimage(key, tag[0])
                    if code == "custom" and op.args[0] == "argmin_incr":
                        for k in op.args[1]:        # the counters it may change (pruned with the clock)
                            self._preimage(k, tag[0])
                            self.log_order.append((tag[0], k, tag))
                result = self._update(op)
                if tag is not None:
                    self.clock_log.setdefault(key, {})[tag] = result
                    self.log_order.append((tag[0], key, tag))
                    if op.xor_id:
                        self.commits.append((tag[0], op.xor_id))
        except OwnershipError:
            raise
        except StoreError as exc:
            # Refused for what it is: kept by (client, seq) for a retransmission (see refusals).
            clock = op.tag[0] if op.tag is not None else min(op.args[0].clocks) if code == "incr_many" else None
            if seq and clock is not None:
                self.refusals[(op.client, seq)] = (clock, exc)
            raise
        self.ops_applied += 1
        subs = self.subscribers.get(key)
        if subs:
            value = self.data.get(key, op.default)
            for client in subs:
                if client != op.client:
                    self.notifications.append((client, ("update", key, value)))
        return result

    def _preimage(self, key: ObjectKey, clock: int) -> None:
        before = self.before.get(key)
        if before is None:
            before = self.before[key] = {}
        if clock not in before:
            v = self.data.get(key, _ABSENT)
            before[clock] = v if v is _ABSENT else _private(v)

    def _retransmitted(self, op: Op) -> Any:
        """§4.3 an op at or below its client's seq mark: applied before, not applied again.
        Its result is the one recorded for its tag (§5.3; for ``incr_many``, for its first
        tag still recorded) while that is in the clock log, else None."""
        log = self.clock_log.get(op.key)
        if log is None or op.code not in UPDATES:
            return None
        if op.code == "incr_many":
            inc: Increments = op.args[0]
            tags: Any = zip(inc.clocks, inc.ns, strict=True)
        elif op.tag is not None:
            tags = (op.tag,)
        else:
            return None
        for t in tags:
            if t in log:
                r = log[t]
                return r.result if r.__class__ is _Recorded else r
        return None

    def _incr_many(self, op: Op) -> Any:
        """§4.3 coalesced increments; per increment, the §5.3 clock log and §5.4 commit."""
        inc: Increments = op.args[0]
        key = op.key
        # Refused (a non-number) before anything is recorded: a refused op leaves no trace.
        _add(self.data.get(key, op.default or 0), inc.total, key)
        tags = inc.tags
        log = self.clock_log.get(key)
        if log is None:
            log = self.clock_log[key] = {}
        # One pass, one hash per tag: each tag is recorded with this application's token
        # (whose result is filled in below); a tag found recorded with another token was
        # recorded before: a replayed packet's, or this very op's if it is a copy resent.
        token = _Recorded()
        setdefault = log.setdefault
        replayed = [i for i, t in enumerate(tags) if setdefault(t, token) is not token]
        by = inc.total
        clocks = inc.clocks
        if replayed and self.dedup and not self.emulate:
            self.reapplied += len(replayed)
        elif replayed and self.dedup:
            self.emulated += len(replayed)
        if replayed and not (self.dedup and self.emulate):
            for i in replayed:
                log[tags[i]] = token        # applied again (no-dedup): recorded anew
            replayed = []
        if replayed:
            # Emulate those (§5.3: not applied, not reported again), add the rest.
            again = set(replayed)
            fresh = [i for i in range(len(tags)) if i not in again]
            tags = [tags[i] for i in fresh]
            clocks = [inc.clocks[i] for i in fresh]
            by = sum([inc.amounts[i] for i in fresh])
            self.commits.extend([(inc.clocks[i], inc.xor_ids[i]) for i in fresh if inc.xor_ids[i]])
        else:
            self._commit_runs.append(inc)   # (clock, xor id) pairs made when the root drains
        value = token.result = self.data[key] = _add(self.data.get(key, op.default or 0), by, key)
        if tags:
            self.log_order.append((max(clocks), key, tags))
        elif not log:
            del self.clock_log[key]
        return value

    def _update(self, op: Op) -> Any:
        code, key, args, data = op.code, op.key, op.args, self.data
        if code == "set":
            data[key] = args[0]
            return None
        if code == "incr":
            value = data[key] = _add(data.get(key, op.default or 0), args[0], key)
            return value
        if code == "push":
            lst = self._list(key, op.default)
            lst.append(args[0])
            return len(lst)
        if code == "pop":
            lst = self._list(key, op.default)
            return lst.popleft() if lst else None
        if code == "cas":
            expected, new = args
            if data.get(key, op.default) != expected:
                return False
            data[key] = new
            return True
        if code == "delete":
            data.pop(key, None)
            return None
        if code == "apply":
            # A registered value operation (chc.nf.value_op): read-modify-write in one step.
            vop = VALUE_OPS.get(args[0])
            if vop is None:
                raise StoreError(f"unknown value operation {args[0]!r}")
            new, result = vop.fn(data.get(key, op.default), *args[1:])
            data[key] = new
            return (new, result)
        fn = self.customs.get(args[0])
        if fn is None:
            raise StoreError(f"unknown custom operation {args[0]!r}")
        return fn(self, op.replace(args=args[1:]))

    def _list(self, key: ObjectKey, default: Any) -> deque:
        lst = self.data.get(key)
        if lst is None:
            lst = self.data[key] = deque(default or ())
        elif not isinstance(lst, deque):
            raise StoreError(f"{key.obj}: push/pop on a non-list value")
        return lst

    def register(self, name: str, fn: CustomOp) -> None:
        """Load a custom operation (§4.3: developers can load custom operations)."""
        self.customs[name] = fn

    def declare(self, key: ObjectKey, initial: Any) -> None:
        """Create an object with its initial value unless it exists (idempotent)."""
        if key not in self.data:
            self.data[key] = deque(initial) if isinstance(initial, (list, tuple, range)) else initial

    # -- ownership (§4.3, §5.1) ------------------------------------------------------
    def _check_owner(self, op: Op) -> None:
        owner = self.owner.get(op.key)
        if owner is None:
            if op.instance is not None:
                self.owner[op.key] = op.instance
        elif op.instance != owner:
            raise OwnershipError(
                f"{op.key.vertex}.{op.key.obj}[{op.key.key!r}] is owned by instance {owner}; "
                f"instance {op.instance} may not update it")

    def release(self, key: ObjectKey, instance: int) -> None:
        """The owner gives up ``key``; the first waiting instance gets it and is notified."""
        if self.owner.get(key) not in (None, instance):
            raise OwnershipError(f"instance {instance} cannot release an object it does not own")
        self.owner.pop(key, None)
        queue = self.waiting.get(key)
        if queue:
            client, nxt = queue.popleft()
            self.owner[key] = nxt
            self.notifications.append((client, ("owned", key, nxt)))

    def release_instance(self, vertex: str, instance: int) -> int:
        """Handover (§5.1 step 5): ``instance`` of ``vertex`` gives up every per-flow
        object it owns; how many."""
        mine = [k for k, o in self.owner.items() if o == instance and k.vertex == vertex]
        for k in mine:
            self.release(k, instance)
        return len(mine)

    def take(self, key: ObjectKey, client: str, instance: int) -> bool:
        """Become the owner now (True) or queue for it and be notified (False)."""
        owner = self.owner.get(key)
        if owner is None or owner == instance:
            self.owner[key] = instance
            return True
        self.waiting.setdefault(key, deque()).append((client, instance))
        return False

    # -- callbacks (Table 1: read-heavy cross-flow objects) ------------------------------
    def subscribe(self, key: ObjectKey, client: str) -> Any:
        self.subscribers.setdefault(key, set()).add(client)
        return self.data.get(key)

    def drain_notifications(self) -> list[tuple[str, tuple]]:
        out, self.notifications = self.notifications, []
        return out

    def drain_commits(self) -> list[tuple[int, int]]:
        out, self.commits = self.commits, []
        for inc in self._commit_runs:
            out.extend(inc.commits)
        self._commit_runs = []
        return out

    # -- clock log pruning (§5.3) ---------------------------------------------------------
    def prune_below(self, clock: int) -> int:
        """Forget clock-log entries of clocks < ``clock`` that ``clock``'s root stamped
        (done in the whole chain).  An entry goes once every clock in it is below its
        own root's floor (an ``incr_many`` of a batch may hold clocks of several roots);
        a root that never pruned keeps all of its own.  With one floor for all roots, a
        chain of two roots kept every entry (the runtimes pruned only with one root:
        201,188 entries after the LAN capture, none with one root)."""
        floors = self.floors
        root = clock >> CLOCK_BITS
        if clock <= floors.get(root, -1):
            return 0
        floors[root] = clock
        if self.refusals:
            self.refusals = {k: v for k, v in self.refusals.items() if not _done((v[0],), floors)}
        n = 0
        for order in self.log_order.queues.values():
            while order and _done(order[0][2], floors):
                _, key, tag = order.popleft()
                n += self._forget(key, tag if tag.__class__ is list else (tag,))
        return n

    def _forget(self, key: ObjectKey, tags: Any) -> int:
        """Drop ``tags``' clock-log entries and pre-images of ``key``; how many entries went."""
        n = 0
        log = self.clock_log.get(key)
        if log is not None:
            for t in tags:
                n += log.pop(t, _ABSENT) is not _ABSENT
            if not log:
                del self.clock_log[key]
        before = self.before.get(key)
        if before is not None:
            for t in tags:
                before.pop(t[0], None)
            if not before:
                del self.before[key]
        return n

    # -- NF failover (§5.4) -------------------------------------------------------------------
    def objects_at(self, vertex: str, replayed: set[int]) -> dict[str, dict[Hashable, Any]]:
        """``vertex``'s objects as they were before the first update made by any of the
        ``replayed`` clocks (the packets a failover instance replays): the state its
        replay must start from, so that it recomputes the failed instance's updates,
        re-issuing the ones the store never got.  Needs ``preimages`` on."""
        out = self.objects(vertex)
        for key, before in self.before.items():
            if key.vertex != vertex:
                continue
            for clock, value in before.items():     # in the order the store applied them
                if clock in replayed:
                    if value is _ABSENT:
                        out.get(key.obj, {}).pop(key.key, None)
                    else:
                        out.setdefault(key.obj, {})[key.key] = _private(value)
                    break
        return out

    # -- introspection --------------------------------------------------------------------
    def objects(self, vertex: str) -> dict[str, dict[Hashable, Any]]:
        """Every stored object of ``vertex`` as {object name: {key: value}}."""
        out: dict[str, dict[Hashable, Any]] = {}
        for k, v in self.data.items():
            if k.vertex == vertex:
                out.setdefault(k.obj, {})[k.key] = list(v) if isinstance(v, deque) else v
        return out
