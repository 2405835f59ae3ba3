"""The COE oracle's independent half: the store's serialization re-executed, and
the logical chain interpreted on its own.

Theory of operation
-------------------
DESIGN.md ("An independent oracle") asks for a reference that shares the NF
code with the physical run and nothing else: no root, splitter, instance
runtime, client library or store engine, so that a bug in any of them cannot
hide by being made twice.  This module therefore imports only the NF API
(:mod:`chc.nf`), packets, chain specs and the canonical state form, and has two
parts.

1. :func:`replay` takes the operations the physical store received, in the
   order it applied them (:class:`StoreStep`), and re-executes them over a
   plain dict with its own implementation of Table 2 (§4.3) and of the clock
   log (§5.3): an update whose (object, tag) was already applied is a
   duplicate, not applied again, and answers what the first one answered.
   Every physical result that was observed is compared with the re-executed
   one; a difference is a :class:`Mismatch` (the store, or whatever answered
   for it, gave a result its own serialization does not yield).  The
   re-executed results of tagged updates, by (vertex, object, key, clock, op),
   are what the logical run follows: the store's *order*, never its answers.

2. :func:`logical_run` interprets the logical chain: one NF object per vertex,
   every input packet in input order, no delays.  The root's part (screening
   by the chain's input policies, clocks with the root id above
   ``CLOCK_BITS``), traffic classes, copies to taps and successors, timers and
   contained NF errors are re-implemented here after the physical runtime's
   documented semantics (``chc.runtime.sim``, ``chc.core.root``,
   ``chc.core.instance``).  Each input packet is carried through the whole DAG,
   in topological order, before the next one enters; since every vertex's state
   is its own, each vertex sees exactly the packet sequence the physical
   runtime gives it (clock order, copies of one packet in the order their
   producers run).  NF state lives in :class:`RefObject` handles (model ``T``
   semantics).  A shared object's order-dependent operations (``pop``, ``cas``,
   ``apply``, ``incr_least``, and ``incr``'s result) take the store's result for the same vertex,
   object, key, packet clock and op from the replay when it is legal in the
   reference's own state, and the reference's own value always advances by its
   own operation in input order; anything odd goes to ``notes``.  Reads of an
   object more than one logical instance used take what the replay gives the
   store read made for that clock (reads are serialized with the updates); a
   packet that then overwrites the object by ``set`` or ``delete``, having read
   another value than the reference's own, is a ``conflict`` (a non-atomic
   read-modify-write: an update lost).  Every
   packet a ``process`` call returns carries its input's clock.

With several roots the clocks of different roots are not ordered by time; the
logical chain still takes packets in input order, which is what the physical
runtime does with one packet per batch.
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import os
import sys
import traceback
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any
from zlib import crc32

from .nf import NF, VALUE_OPS, Access, Context, StateObject, least_loaded, wrong_return
from .packet import Packet
from .spec import Chain, Vertex
from .summary import canonical

# The physical roots' clock layout (root id above a 48-bit sequence, §5),
# restated rather than imported: the reference must not import the root.
CLOCK_BITS = 48

# Operations that change an object; only these carry clock-log tags (§5.3).
UPDATES = frozenset(("set", "incr", "push", "pop", "cas", "delete", "apply", "argmin_incr"))
# Those whose result depends on the order the store serializes them in: the
# logical run takes the store's choice for them (on shared objects).
FOLLOWED = frozenset(("pop", "cas", "apply", "argmin_incr", "incr"))

Address = tuple[str, str, Hashable]                   # (vertex, object, scope key)
ResultKey = tuple[str, str, Hashable, int, str]       # (vertex, object, key, clock, code)


# -- 1. the store's serialization, re-executed ------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class StoreStep:
    """One operation as a store received and answered it, in that store's order."""

    vertex: str
    obj: str
    key: Hashable          # scope key (None for global scope)
    per_flow: bool
    code: str              # declare get set incr push pop cas delete apply argmin_incr recover (§5.4)
    args: tuple            # set (v,) incr (by,) push (v,) cas (expected, new) apply (op_name, *op_args)
                           # argmin_incr (list of scope keys of the same vertex/obj,) declare (initial items,)
    tag: tuple[int, int] | None   # clock-log tag (clock, n) of an update, None for reads/untagged
    default: Any           # the value of an absent object (as Op.default)
    result: Any            # what the physical store answered
    observed: bool = True  # False: the physical result is unknown (e.g. parts of a coalesced increment)
    client: str = ""
    read_clock: int | None = None  # a get's: the clock of the packet (or timer) it read for


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    """The expected answer to a step the store must refuse (an increment of a
    non-number, a pop from a non-list, an unknown value operation): nothing is
    applied."""

    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Mismatch:
    """A physical answer that the store's own serialization does not yield."""

    index: int             # position of the step in the serialization
    step: StoreStep
    expected: Any          # what re-executing the serialization answers

    def __str__(self) -> str:
        s = self.step
        at = f" at clock {s.tag[0]}" if s.tag is not None else ""
        return (f"step {self.index}: {s.code} on {s.vertex}.{s.obj}[{s.key!r}]{at}: "
                f"the store answered {s.result!r}, its serialization gives {self.expected!r}")


@dataclasses.dataclass
class Replay:
    """What re-executing a serialization found."""

    mismatches: list[Mismatch] = dataclasses.field(default_factory=list)
    final: dict[Address, Any] = dataclasses.field(default_factory=dict)
    # Re-executed results of non-duplicate tagged updates, and of gets made for a
    # clock, in store order.
    results: dict[ResultKey, list[Any]] = dataclasses.field(default_factory=dict)
    duplicates: int = 0
    # The tagged updates the store took once: applied, or (also in ``refused``) refused
    # for what they are, an increment of a non-number: final, not a lost update.
    applied: set[tuple[str, str, Hashable, tuple[int, int]]] = dataclasses.field(default_factory=set)
    refused: set[tuple[str, str, Hashable, tuple[int, int]]] = dataclasses.field(default_factory=set)
    # The weights each of those argmin_incr choices was made with (None: unweighted), in
    # the same order: an instance that chose by a stale copy of its weights is not followed.
    weights: dict[ResultKey, list[Any]] = dataclasses.field(default_factory=dict)
    # Objects more than one logical instance operated on: their reads are followed.
    shared: set[Address] = dataclasses.field(default_factory=set)


class _Refuse(Exception):
    """Raised by an op of the re-execution that the store would refuse."""


def _list(data: dict, addr: Address, default: Any) -> deque:
    lst = data.get(addr)
    if lst is None:
        lst = data[addr] = deque(default or ())
    elif not isinstance(lst, deque):
        raise _Refuse("push/pop on a non-list value")
    return lst


def _declare(data: dict, addr: Address, step: StoreStep) -> None:
    if addr not in data:
        init = step.args[0]
        data[addr] = deque(init) if isinstance(init, (list, tuple, range)) else init


def _get(data: dict, addr: Address, step: StoreStep) -> Any:
    return data.get(addr, step.default)


def _set(data: dict, addr: Address, step: StoreStep) -> None:
    data[addr] = step.args[0]


def _incr(data: dict, addr: Address, step: StoreStep) -> Any:
    value = data[addr] = data.get(addr, step.default or 0) + step.args[0]
    return value


def _push(data: dict, addr: Address, step: StoreStep) -> int:
    lst = _list(data, addr, step.default)
    lst.append(step.args[0])
    return len(lst)


def _pop(data: dict, addr: Address, step: StoreStep) -> Any:
    lst = _list(data, addr, step.default)
    return lst.popleft() if lst else None


def _cas(data: dict, addr: Address, step: StoreStep) -> bool:
    expected, new = step.args
    if data.get(addr, step.default) != expected:
        return False
    data[addr] = new
    return True


def _delete(data: dict, addr: Address, step: StoreStep) -> None:
    data.pop(addr, None)


def _apply(data: dict, addr: Address, step: StoreStep) -> tuple[Any, Any]:
    name, *args = step.args
    vop = VALUE_OPS.get(name)
    if vop is None:
        raise _Refuse(f"unknown value operation {name!r}")
    new, result = vop.fn(data.get(addr, step.default), *args)
    data[addr] = new
    return (new, result)


def _argmin_incr(data: dict, addr: Address, step: StoreStep) -> int | None:
    # The least counter among sibling keys of the same object; an absent
    # counter is 0 whatever the step's default (as the store's custom op);
    # with weights (args[1]) the least counter / weight among positive weights.
    vertex, obj, _ = addr
    addrs = [(vertex, obj, k) for k in step.args[0]]
    loads = [data.get(a, 0) for a in addrs]
    best = least_loaded(loads, step.args[1] if len(step.args) > 1 else None)
    if best is None:
        return None
    data[addrs[best]] = loads[best] + 1
    return best


_OPS: dict[str, Callable[[dict, Address, StoreStep], Any]] = {
    "declare": _declare, "get": _get, "set": _set, "incr": _incr, "push": _push, "pop": _pop,
    "cas": _cas, "delete": _delete, "apply": _apply, "argmin_incr": _argmin_incr,
}


def _execute(data: dict, addr: Address, step: StoreStep) -> Any:
    """One step's effect on ``data`` and its answer; a refused step changes nothing."""
    op = _OPS.get(step.code)
    if op is None:
        return Refused(f"unknown operation {step.code!r}")
    try:
        return op(data, addr, step)
    except _Refuse as exc:
        return Refused(str(exc))
    except Exception as exc:        # what raises here (a bad operand) raises in the store too
        return Refused(f"{type(exc).__name__}: {exc}")


def same(a: Any, b: Any) -> bool:
    """Equal as store answers: lists, tuples and deques with equal items are the same."""
    seq = (list, tuple, deque)
    if isinstance(a, seq) and isinstance(b, seq):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def replay(steps: Iterable[StoreStep]) -> Replay:
    """Re-execute a store's serialization; compare every observed answer.

    A ``recover`` step (§5.4 store failover; args: the position of the failover
    store's checkpoint, and the (vertex, object, key, tag) of the updates it
    re-executed) rewrites the history in effect: those updates are taken out of it
    from that position on (the failover store never applied them there) and the
    steps that follow apply them again in the failover store's order.  Answers
    given before stay as they were checked."""
    steps = list(steps)
    data: dict[Address, Any] = {}
    first: dict[tuple, Any] = {}     # (vertex, obj, key, tag) -> answer of its applied update
    out = Replay()
    out.shared = _shared(steps)
    history: list[tuple[int, StoreStep]] | None = [] if any(s.code == "recover" for s in steps) else None
    for i, step in enumerate(steps):
        if step.code == "recover":
            history = _rewrite(history, step)
            data, first = {}, {}
            out.results, out.weights, out.refused = {}, {}, set()
            duplicates = out.duplicates
            for _, s in history:
                _replay_step(data, first, s, out)
            out.duplicates = duplicates
            continue
        if history is not None:
            history.append((i, step))
        expected, ok = _replay_step(data, first, step, out)
        if step.observed and not ok:
            out.mismatches.append(Mismatch(i, step, expected))
    out.final = {a: list(v) if isinstance(v, deque) else v for a, v in data.items()}
    out.applied = set(first) | out.refused
    return out


def _shared(steps: list[StoreStep]) -> set[Address]:
    """Objects that operations of more than one logical instance reached (a clone or
    a failover instance is its straggler's or failed instance's: ``V/i+...``)."""
    users: dict[Address, set[str]] = {}
    for s in steps:
        if s.client:
            users.setdefault((s.vertex, s.obj, s.key), set()).add(s.client.split("+", 1)[0])
    return {a for a, u in users.items() if len(u) > 1}


def _rewrite(history: list[tuple[int, StoreStep]], recover: StoreStep) -> list[tuple[int, StoreStep]]:
    """The history in effect after a failover store took over (see :func:`replay`)."""
    since, removed = recover.args
    return [(i, s) for i, s in history
            if i < since or (s.vertex, s.obj, s.key, s.tag) not in removed]


def _replay_step(data: dict, first: dict, step: StoreStep, out: Replay) -> tuple[Any, bool]:
    """(expected answer, whether the physical answer agrees) for one step."""
    addr = (step.vertex, step.obj, step.key)
    tagged = step.tag is not None and step.code in UPDATES
    ident = (*addr, step.tag) if tagged else None
    if ident is not None and ident in first:
        # §5.3: a duplicate is emulated, answering what the first one answered; an
        # acknowledged duplicate (its log entry pruned) may answer nothing.
        out.duplicates += 1
        expected = first[ident]
        return expected, step.result is None or same(step.result, expected)
    if ident is not None and ident in out.refused:
        # A copy of an update the store refused: refused again, or (its refusal pruned
        # with the clock log once its packet was done) answered nothing.
        return Refused("refused before"), step.result is None
    expected = _execute(data, addr, step)
    if step.read_clock is not None and step.observed and addr in out.shared:
        # A read of shared state is serialized with the other instances' updates
        # (DESIGN "COE, precisely"): the logical run reads what the store's order
        # gives here.  (An object one instance uses alone is read in its own order,
        # which an NF may see differ from clock order, R4: not followed.)
        out.results.setdefault((*addr, step.read_clock, "get"), []).append(copy.copy(expected))
    if ident is not None and isinstance(expected, Refused):
        out.refused.add(ident)
    elif ident is not None:
        first[ident] = expected
        out.results.setdefault((*addr, step.tag[0], step.code), []).append(expected)
        if step.code == "argmin_incr":
            used = list(step.args[1]) if len(step.args) > 1 else None
            out.weights.setdefault((*addr, step.tag[0], step.code), []).append(used)
    return expected, same(step.result, expected)


# -- 2. the logical chain ----------------------------------------------------------------

_MISSING = object()


class _Choices:
    """The store's results of order-dependent ops (from a :class:`Replay`), each
    taken once, in store order, by the logical run."""

    __slots__ = ("results", "taken", "notes", "weights", "conflicts")

    def __init__(self, results: dict[ResultKey, list[Any]], notes: list[str],
                 weights: dict[ResultKey, list[Any]] | None = None) -> None:
        self.results = results
        self.taken: dict[ResultKey, int] = {}
        self.notes = notes
        self.weights = weights or {}
        # (vertex, object, key, clock): a read of shared state that saw another order
        # than the logical chain's, then overwritten by the same packet.
        self.conflicts: list[tuple[str, str, Hashable, int]] = []

    def unused(self) -> Iterator[tuple[ResultKey, int]]:
        """Results never taken, by key, with how many are left."""
        for k, found in self.results.items():
            left = len(found) - self.taken.get(k, 0)
            if left > 0:
                yield k, left


class _Follow:
    """One vertex's view of the store's choices: at the clock of the packet (or
    timer) its NF is running for."""

    __slots__ = ("choices", "vertex", "ctx")

    def __init__(self, choices: _Choices, vertex: str, ctx: Context) -> None:
        self.choices = choices
        self.vertex = vertex
        self.ctx = ctx

    def take(self, obj: str, key: Hashable, code: str) -> tuple[bool, Any]:
        """(True, the store's next result) for this op at the current clock, or
        (False, None) when the store has none left."""
        c = self.choices
        k = (self.vertex, obj, key, self.ctx.packet_clock, code)
        found = c.results.get(k)
        i = c.taken.get(k, 0)
        if not found or i >= len(found):
            return False, None
        c.taken[k] = i + 1
        return True, found[i]

    def weights_used(self, obj: str, key: Hashable, code: str) -> Any:
        """The weights the store's last taken result for this op was chosen with."""
        c = self.choices
        k = (self.vertex, obj, key, self.ctx.packet_clock, code)
        used = c.weights.get(k)
        i = c.taken.get(k, 0) - 1
        return used[i] if used and 0 <= i < len(used) else None

    def note(self, obj: str, what: str) -> None:
        self.choices.notes.append(f"clock {self.ctx.packet_clock}: {self.vertex}.{obj}: {what}")

    def clock(self) -> int:
        return self.ctx.packet_clock

    def conflict(self, obj: str, key: Hashable) -> None:
        self.choices.conflicts.append((self.vertex, obj, key, self.ctx.packet_clock))


class RefObject:
    """One declared state object as the logical chain holds it (model ``T``: a
    dict of scope key -> value), with the operations NF code uses.  With a
    ``follow``, order-dependent operations take the store's choice when legal."""

    __slots__ = ("decl", "config", "values", "follow", "_init", "_init_mutable", "_diverted")

    def __init__(self, decl: StateObject, config: Any, follow: _Follow | None = None) -> None:
        self.decl = decl
        self.config = config
        self.values: dict[Hashable, Any] = {}
        self.follow = follow
        self._init = self._fresh()
        self._init_mutable = isinstance(self._init, (deque, dict, set))
        self._diverted: dict[Hashable, int] = {}    # key -> clock of a followed read unlike ours

    def _fresh(self) -> Any:
        v = self.decl.initial(self.config)
        # Lists are popped at the head: a deque, as the physical local state keeps them.
        return deque(v) if self.decl.kind == "list" else v

    def _slot(self, key: Hashable) -> Any:
        v = self.values.get(key, _MISSING)
        if v is _MISSING:
            v = self.values[key] = self._fresh()
        return v

    def _take(self, key: Hashable, code: str) -> tuple[bool, Any]:
        if self.follow is None:
            return False, None
        return self.follow.take(self.decl.name, key, code)

    def _note(self, what: str) -> None:
        self.follow.note(self.decl.name, what)

    # -- Table 2 -----------------------------------------------------------------------
    def get(self, key: Hashable = None) -> Any:
        """The value; of a shared object, what the store's serialization gave this
        packet's read when the physical chain read it there (DESIGN "COE, precisely":
        a read is serialized with the other instances' updates like any operation)."""
        if self.follow is not None:
            found, value = self.follow.take(self.decl.name, key, "get")
            if found:
                # Absent in the store reads as the initial value, as a client's read does.
                value = self._fresh() if value is None else copy.copy(value)
                if not same(value, self._own(key)):
                    self._diverted[key] = self.follow.clock()
                return value
        return self._own(key)

    def _overwrite(self, key: Hashable) -> None:
        """A packet that read this key in another order than the logical chain's now
        writes it from what it read: one packet's read-modify-write was not atomic
        against another instance's update (§4.3 asks for an offloaded operation)."""
        if self._diverted and self._diverted.get(key) == self.follow.clock():
            self.follow.conflict(self.decl.name, key)

    def _own(self, key: Hashable) -> Any:
        """The value by the logical chain's own operations, in input order."""
        v = self.values.get(key, _MISSING)
        if v is not _MISSING:
            return v
        # An absent key reads as the initial value; a mutable one as a fresh copy,
        # so that an NF mutating what it read cannot change the initial value.
        return self._fresh() if self._init_mutable else self._init

    def set(self, value: Any, key: Hashable = None) -> None:
        self._overwrite(key)
        self.values[key] = value

    def incr(self, by: int = 1, key: Hashable = None) -> Any:
        """The reference's value advances by ``by``; the NF sees the store's result when
        there is one: a shared counter's new value depends on the order the store
        serialized the instances' increments in (a per-host threshold crossed "at the
        300th packet" is crossed by whichever packet the store counted 300th)."""
        v = self._add(key, by)
        if self.decl.access is Access.WRITE_MOSTLY:
            return None             # blind, as in every physical model (Table 1)
        found, counted = self._take(key, "incr")
        if found and isinstance(counted, (int, float)) and not isinstance(counted, bool):
            return counted
        return v

    def _add(self, key: Hashable, by: int) -> Any:
        """The reference's own counter advanced (no store result taken: ``incr_least``'s
        own increment must not take that of a later ``incr`` of the same key)."""
        v = self.values[key] = self.values.get(key, self._init) + by
        return v

    def decr(self, by: int = 1, key: Hashable = None) -> Any:
        return self.incr(-by, key)

    def push(self, value: Any, key: Hashable = None) -> None:
        self._slot(key).append(value)

    def delete(self, key: Hashable = None) -> None:
        self._overwrite(key)
        self.values.pop(key, None)

    def pop(self, key: Hashable = None) -> Any:
        """Head of a list object (None when empty); the store's pick when it has one."""
        lst = self._slot(key)
        found, value = self._take(key, "pop")
        if found:
            if value is None:
                if lst:
                    self._note(f"the store found the list empty, the reference holds {len(lst)} items")
                return None
            try:
                lst.remove(value)
                return value
            except ValueError:
                self._note(f"the store popped {value!r}, which the reference does not hold")
        return lst.popleft() if lst else None

    def cas(self, expected: Any, new: Any, key: Hashable = None) -> bool:
        found, ok = self._take(key, "cas")
        if not found:
            ok = self._own(key) == expected
        if ok:
            self.values[key] = new
        return bool(ok)

    def apply(self, op: str, *args: Any, key: Hashable = None) -> Any:
        """A registered value operation.  The reference's value always advances by
        its own step, in input order; the NF sees the store's result when there is one."""
        found, outcome = self._take(key, "apply")
        new, result = VALUE_OPS[op].fn(self._own(key), *args)
        self.values[key] = new
        if not found:
            return result
        if isinstance(outcome, (tuple, list)) and len(outcome) == 2:
            return outcome[1]
        self._note(f"the store answered {outcome!r} to {op}, not a (value, result) pair")
        return result

    def incr_least(self, keys: Iterable[Hashable], weights: list | tuple | None = None) -> int | None:
        """Index of the least counter among ``keys`` (first on ties), incremented;
        with ``weights`` the least counter / weight among positive weights.  The
        store's choice is legal when it is an index whose weight, by the logical
        chain's own (operator-set) weights, is positive: a physical instance that
        chose by stale weights (a drained backend) is not followed."""
        keys = list(keys)
        found, best = self._take(None, "argmin_incr")
        if found:
            mine = list(weights) if weights is not None else None
            used = self.follow.weights_used(self.decl.name, None, "argmin_incr")
            if used != mine:
                self._note(f"the store chose with weights {used}, the logical chain has {mine}")
            elif best is None and mine is not None and not any(mine):
                return None
            elif (isinstance(best, int) and not isinstance(best, bool) and 0 <= best < len(keys)
                    and (weights is None or weights[best] > 0)):
                self._add(keys[best], 1)
                return best
            else:
                self._note(f"the store chose index {best!r} among {len(keys)} keys")
        else:
            # A sole user caches the object and sends its choice as an increment of
            # the chosen key: that increment's place in the store's order is the choice.
            for i, k in enumerate(keys):
                if (weights is None or weights[i] > 0) and self._take(k, "incr")[0]:
                    self._add(k, 1)
                    return i
        loads = [self._own(k) for k in keys]
        best = least_loaded(loads, weights)
        if best is not None:
            self._add(keys[best], 1)
        return best

    # -- the final state ---------------------------------------------------------------
    def items(self) -> Iterator[tuple[Hashable, Any]]:
        """Keys whose value differs from the initial value, with their values."""
        init = self._init
        for k, v in self.values.items():
            if v != init:
                yield k, list(v) if isinstance(v, deque) else v


class _Node:
    """One vertex of the logical chain: its NF object, context, state and counts."""

    __slots__ = ("vertex", "nf", "ctx", "objects", "packets_in", "packets_out", "dropped",
                 "nf_errors", "first_error", "kinds")

    def __init__(self, vertex: Vertex, choices: _Choices | None) -> None:
        self.vertex = vertex
        nf_cls: type[NF] = vertex.nf
        self.nf = nf_cls(vertex.config)
        self.ctx = Context(vertex.name, 0)
        shared = _Follow(choices, vertex.name, self.ctx) if choices is not None else None
        self.objects: dict[str, RefObject] = {}
        for name, decl in nf_cls.state_objects().items():
            # Per-flow objects have one owner and no order to follow (§4.3).
            handle = RefObject(decl, vertex.config, None if decl.scope.per_flow else shared)
            self.objects[name] = handle
            setattr(self.nf, name, handle)
        self.packets_in = self.packets_out = self.dropped = self.nf_errors = 0
        self.first_error = ""
        self.kinds: dict[tuple[str, str], list] = {}     # (error, where raised) -> [how many, first]

    def process(self, pkt: Packet) -> list[Packet]:
        """The NF on one packet, after the timers its timestamp has reached."""
        ctx = self.ctx
        timers = ctx._timers        # the framework's side of Context.set_timer
        if timers and timers[0][0] <= pkt.ts:
            self.fire(pkt.ts)
        ctx.clock = ctx.packet_clock = pkt.clock
        ctx.now = pkt.ts
        ctx.index = pkt.index
        self.packets_in += 1
        try:
            res = self.nf.process(pkt, ctx)
        except Exception as exc:    # an NF bug drops the packet and is counted, never raised
            self._error(f"packet #{pkt.index}", exc)
            res = None
        if res is None:
            self.dropped += 1
            return []
        if res.__class__ is Packet:
            out = [res]
        elif res.__class__ in (list, tuple) and all(isinstance(p, Packet) for p in res):
            out = list(res)
        else:       # not what process may return: the NF's error, the packet dropped (nf-api.md)
            self._error(f"packet #{pkt.index}", wrong_return(res))
            out = []
        if not out:
            self.dropped += 1
            return []
        for p in out:
            # Every packet an NF makes of one input carries its clock, a new packet
            # returned alone too (the physical instance sets it for lists only).
            p.clock = pkt.clock
        self.packets_out += len(out)
        return out

    def fire(self, until: int | None) -> None:
        """Timers due by ``until`` (all if None), in (deadline, arming) order, each
        run with the clock and index of the packet that armed it."""
        ctx = self.ctx
        timers = ctx._timers
        saved = (ctx.clock, ctx.now, ctx.index)
        while timers and (until is None or timers[0][0] <= until):
            deadline, _, key, clock, index = heapq.heappop(timers)[:5]
            ctx.clock = ctx.packet_clock = clock
            ctx.now, ctx.index = deadline, index
            try:
                self.nf.on_timer(key, ctx)
            except Exception as exc:
                self._error("timer", exc)
        ctx.clock, ctx.now, ctx.index = saved

    def _error(self, where: str, exc: Exception) -> None:
        self.nf_errors += 1
        line = f"{self.vertex.name} {where}: {type(exc).__name__}: {exc}"
        if not self.first_error:
            self.first_error = line
        # every error counted by kind: its type and the NF's line that raised it
        kind = (type(exc).__name__, _raised_at(exc, type(self.nf)))
        seen = self.kinds.get(kind)
        if seen is None:
            self.kinds[kind] = [1, line]
        else:
            seen[0] += 1

    def state(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for name, handle in self.objects.items():
            entries = dict(handle.items())
            if entries:
                out[name] = entries
        return out


def _raised_at(exc: BaseException, nf: type) -> str:
    """Where ``exc`` was raised, as ``file.py:LINE``: the innermost frame in the NF's own
    module (not the state handle it called), else the innermost; "" when nothing raised
    it (a wrong return)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    home = getattr(sys.modules.get(nf.__module__), "__file__", None)
    mine = [f for f in frames if home is not None and os.path.abspath(f.filename) == os.path.abspath(home)]
    f = (mine or frames)[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno}"


@dataclasses.dataclass
class LogicalRun:
    """The logical chain's outputs, alerts and final state on one input."""

    outputs: list[tuple[int, bytes]]     # (clock, frame) in input order
    alerts: list[tuple[str, str, str, int]]   # sorted (vertex, kind, host, clock)
    state: dict                          # canonical: vertex -> object -> non-initial keys
    notes: list[str]
    packets_in: int = 0
    malformed: int = 0
    non_ip: int = 0
    bypassed: int = 0
    dropped: int = 0
    nf_errors: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)   # first NF error per vertex
    # every NF error by kind, most frequent first: {vertex, error, at, count, first}
    error_kinds: list[dict] = dataclasses.field(default_factory=list)
    # (vertex, object, key, clock) of non-atomic read-modify-writes of shared state
    conflicts: list[tuple[str, str, Any, int]] = dataclasses.field(default_factory=list)


class _Interpreter:
    """Carries each input packet through the logical chain before the next one."""

    def __init__(self, chain: Chain, replay: Replay | None) -> None:
        self.chain = chain
        self.vs = chain.vertices
        self.notes: list[str] = []
        self.choices = _Choices(replay.results, self.notes, replay.weights) if replay is not None else None
        self.nodes = {name: _Node(v, self.choices) for name, v in chain.vertices.items()}
        self.seq = [0] * chain.roots
        self.fed = [0] * chain.roots      # packets each root has been given
        self.resumes: dict[int, list[tuple[int, int]]] = {}
        self.drop = {"malformed": chain.policies.get("malformed", "drop") == "drop",
                     "non_ip": chain.policies.get("non_ip", "pass") == "drop"}
        self.run = LogicalRun([], [], {}, self.notes)

    def control(self, vertex: str, action: str, params: dict) -> None:
        """An operator's change to a vertex's cross-flow state, made on the logical state."""
        node = self.nodes[vertex]
        v = self.vs[vertex]
        try:
            values = v.nf.control(action, params, lambda name: node.objects[name].get(), v.config)
        except ValueError as exc:
            self.notes.append(f"{vertex}: {action} refused by the logical chain: {exc}")
            return
        for name, value in values.items():
            node.objects[name].set(value)

    # -- the root's part ------------------------------------------------------------------
    def feed(self, ts: int, data: bytes) -> None:
        run = self.run
        pkt = Packet(data, ts, run.packets_in)
        run.packets_in += 1
        root = self._root_of(pkt) if pkt.l3 and pkt.malformed is None else 0
        self._resume(root)
        if pkt.malformed is not None or not pkt.l3:
            if self._screened_out(pkt):
                return
            # Passed around the chain, unchanged, with a clock of the first root.
            pkt.clock = self._stamp(0)
            run.bypassed += 1
            run.outputs.append((pkt.clock, bytes(pkt.data)))
            return
        pkt.clock = self._stamp(root)
        self._carry(pkt)

    def _resume(self, root: int) -> None:
        """A root the physical run replaced (§5.4) went on at a higher clock from its
        ``fed``-th packet: clocks are metadata, only their order is the chain's."""
        todo = self.resumes.get(root)
        if todo and self.fed[root] >= todo[0][0]:
            self.seq[root] = todo.pop(0)[1]
        self.fed[root] += 1

    def _screened_out(self, pkt: Packet) -> bool:
        """Count a frame no NF can use; True when the policy drops it (no clock)."""
        kind = "malformed" if pkt.malformed is not None else "non_ip"
        setattr(self.run, kind, getattr(self.run, kind) + 1)
        if self.drop[kind]:
            self.run.dropped += 1
            return True
        return False

    def _root_of(self, pkt: Packet) -> int:
        # §4.1: roots take disjoint traffic; both directions of a host pair go to one.
        n = self.chain.roots
        if n == 1:
            return 0
        a, b = pkt.src, pkt.dst
        return crc32(a + b if a <= b else b + a) % n

    def _stamp(self, root: int) -> int:
        """The root's next clock: its id above CLOCK_BITS, its own sequence below."""
        seq = self.seq[root]
        self.seq[root] = seq + 1
        return (root << CLOCK_BITS) | seq

    # -- the DAG ------------------------------------------------------------------------------
    def _carry(self, pkt: Packet) -> None:
        """One admitted packet through every vertex, in topological order."""
        pending: dict[str, list[Packet]] = {}
        for name, pkts in self._classify(pkt).items():
            self._deliver(name, pkts, pending)
        for name, v in self.vs.items():
            batch = pending.pop(name, None)
            if not batch:
                continue
            node = self.nodes[name]
            produced = [out for p in batch for out in node.process(p)]
            if produced:
                self._forward(v, produced, pending)

    def _classify(self, pkt: Packet) -> dict[str, list[Packet]]:
        """Entry vertices that take the packet (``match``), ``other`` when none does;
        a packet taken by several goes to each (copies after the first)."""
        entries = self.chain.entries
        if len(entries) == 1:
            return {entries[0]: [pkt]}
        other = next(n for n in entries if self.vs[n].match == "other")
        hits = [n for n in entries if n != other and self.vs[n].accepts(pkt)]
        if not hits:
            return {other: [pkt]}
        return {n: [pkt if i == 0 else pkt.copy()] for i, n in enumerate(hits)}

    def _deliver(self, vertex: str, pkts: list[Packet], pending: dict[str, list[Packet]]) -> None:
        """Packets to an on-path vertex, and copies to its input taps (made before it
        runs, so a tap sees what enters the vertex)."""
        for tap in self.vs[vertex].taps_in:
            pending.setdefault(tap, []).extend(p.copy() for p in pkts)
        pending.setdefault(vertex, []).extend(pkts)

    def _forward(self, v: Vertex, produced: list[Packet], pending: dict[str, list[Packet]]) -> None:
        if v.offpath:
            return                  # an off-path vertex's output is consumed (its taps get nothing)
        for tap in v.taps_out:
            pending.setdefault(tap, []).extend(p.copy() for p in produced)
        succ = v.successors
        if not succ:
            self.run.outputs.extend((p.clock, bytes(p.data)) for p in produced)
            return
        for i, d in enumerate(succ):
            # A copy to each successor but the last, which takes the packets themselves.
            part = produced if i == len(succ) - 1 else [p.copy() for p in produced]
            self._deliver(d, part, pending)

    # -- end of input ----------------------------------------------------------------------------
    def finish(self) -> LogicalRun:
        run = self.run
        for node in self.nodes.values():
            node.fire(None)
        self._note_unused()
        run.alerts = sorted((a.vertex, a.kind, a.host, a.clock)
                            for node in self.nodes.values() for a in node.ctx.alerts)
        run.state = canonical({name: node.state() for name, node in self.nodes.items()})
        if self.choices is not None:
            run.conflicts = list(self.choices.conflicts)
        for node in self.nodes.values():
            run.nf_errors += node.nf_errors
            if not node.vertex.offpath:
                run.dropped += node.dropped
            if node.first_error:
                run.errors.append(node.first_error)
            run.error_kinds += [{"vertex": node.vertex.name, "error": error, "at": at, "count": n, "first": first}
                                for (error, at), (n, first) in node.kinds.items()]
        run.error_kinds.sort(key=lambda k: -k["count"])
        return run

    def _note_unused(self) -> None:
        """Order-dependent results the logical chain never asked for: ops the
        physical chain made on shared state and the logical one did not."""
        if self.choices is None:
            return
        for (vertex, obj, _, clock, code), left in self.choices.unused():
            node = self.nodes.get(vertex)
            handle = node.objects.get(obj) if node is not None else None
            if code in FOLLOWED and handle is not None and handle.follow is not None:
                self.notes.append(f"clock {clock}: {vertex}.{obj}: the store made {left} {code} "
                                  f"the logical chain did not")


Control = tuple[int, str, str, dict]      # (first input packet that sees it, vertex, action, params)


def logical_run(chain: Chain, records: Iterable[tuple[int, bytes]], replay: Replay | None = None,
                controls: Iterable[Control] = (), resumes: Iterable[tuple[int, int, int]] = ()) -> LogicalRun:
    """The logical chain of ``chain`` on ``(timestamp ns, frame)`` records: one NF
    per vertex, input order, no delays; shared order-dependent operations follow
    ``replay`` (the store's re-executed serialization) where it is legal.

    ``controls`` are operator changes (``NF.control``) with the input position the
    physical run applied them at (its event log: the order, not the values): the
    logical chain computes each change itself, by the NF's ``control`` on its own
    state, before that packet.  ``resumes`` are ``(root, packets it had been given,
    next sequence number)`` of roots the physical run failed over."""
    interp = _Interpreter(chain, replay)
    for root, fed, seq in sorted(resumes):
        interp.resumes.setdefault(root, []).append((fed, seq))
    todo = sorted(controls, key=lambda c: c[0])
    for i, (ts, data) in enumerate(records):
        while todo and todo[0][0] <= i:
            interp.control(*todo.pop(0)[1:])
        interp.feed(ts, data)
    for c in todo:
        interp.control(*c[1:])
    return interp.finish()


__all__ = ["CLOCK_BITS", "LogicalRun", "Mismatch", "RefObject", "Refused", "Replay", "StoreStep",
           "logical_run", "replay", "same"]
