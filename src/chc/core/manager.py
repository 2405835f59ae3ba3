"""Vertex managers: load statistics in, scaling decisions out (§3, §4.1).

Theory of operation
-------------------
CHC runs one *vertex manager* per vertex (§3).  Every ``interval`` of virtual
time the runtime hands it the counters of the vertex's active instances
(packets processed so far, input queue length, virtual processing time spent);
the manager turns them into a :class:`VertexLoad` for the interval (packets/s,
queue, mean service time per instance, the imbalance max/mean) and asks the
operator's logic what to do.  The logic is either the declarative
:class:`ScalingPolicy` of the chain spec (``scaling: {out_above_pps: ...}``) or
a Python callable named ``module:function`` that takes a :class:`VertexLoad`
and returns ``None``, an action name, a :class:`Decision` or a list of them.

The manager returns :class:`Decision` s; the framework manager (the runtime)
carries them out with the handover of Figure 4: ``scale-out`` adds an instance,
``scale-in`` retires one, ``rebalance`` evens the load across instances by
moving flow groups, or, when one flow group alone is too hot for that, refines
the partition scope (§4.1: coarsest scope first, finer only while load is
uneven beyond the tolerance), and ``clone`` starts a clone of a straggler
instance (§5.3): with ``straggler_factor`` the declarative policy clones an
instance whose mean service time over the interval is above that factor times
the median of the vertex's instances.  The bounds ``min``/``max`` hold whatever the
logic says: a decision that would cross them is refused and reported.

A callable that raises or returns something that is not a decision is
reported (``policy-error``) and the vertex keeps its size.  No I/O, no wall
clock: the same statistics give the same decisions in every run.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

#: What a vertex manager may ask the framework manager to do.
DECISIONS = ("scale-out", "scale-in", "rebalance", "clone")


@dataclasses.dataclass(frozen=True)
class InstanceLoad:
    """One instance over one interval."""

    instance: int
    packets: int            # processed during the interval
    pps: float
    queue: int              # waiting in its input queue at the end of the interval
    service_ns: float       # mean virtual processing time per packet (0 without a delay model)


@dataclasses.dataclass(frozen=True)
class VertexLoad:
    """A vertex's active instances over one interval, as its manager sees them."""

    vertex: str
    now_ns: int
    interval_ns: int
    instances: tuple[InstanceLoad, ...]
    scope: str              # the partition scope in use
    finer: bool             # whether a finer scope is left to refine to
    cloning: frozenset[int] = frozenset()   # instances in a clone pair now (§5.3)

    @property
    def size(self) -> int:
        return len(self.instances)

    @property
    def total_pps(self) -> float:
        return sum(i.pps for i in self.instances)

    @property
    def mean_pps(self) -> float:
        return self.total_pps / len(self.instances) if self.instances else 0.0

    @property
    def imbalance(self) -> float:
        """max/mean packets/s over the instances (1.0: perfectly even, or idle)."""
        mean = self.mean_pps
        return max(i.pps for i in self.instances) / mean if mean > 0 else 1.0


@dataclasses.dataclass(frozen=True)
class Decision:
    action: str                     # one of DECISIONS
    instance: int | None = None     # scale-in, clone: which one (None: the framework picks)
    reason: str = ""


class PolicyError(ValueError):
    """A scaling policy that cannot be used; the message names the field."""


@dataclasses.dataclass
class ScalingPolicy:
    """A vertex's ``scaling:`` block of the chain spec.

    Declarative rule, per interval: scale out while the mean packets/s per
    instance is above ``out_above_pps``, scale in while it is below
    ``in_below_pps``, rebalance while max/mean is above ``imbalance``, and clone
    a straggler (see :meth:`straggler`) when ``straggler_factor`` is set.  With
    ``policy: module:function`` that callable decides instead (``min``/``max``
    and the interval still apply).
    """

    out_above_pps: float | None = None
    in_below_pps: float | None = None
    min: int = 1
    max: int = 4
    interval_ms: float = 10.0
    imbalance: float = 1.2
    policy: str | None = None
    straggler_factor: float | None = None
    decide_fn: Callable[[VertexLoad], Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def interval_ns(self) -> int:
        return int(self.interval_ms * 1_000_000)

    def __getstate__(self) -> dict:
        # (to another process by its reference, ``policy``: the callable itself may not
        # pickle, a lambda say; :meth:`loaded` imports it there; one set in code without
        # a reference goes as it is)
        return {**self.__dict__, "decide_fn": None} if self.policy is not None else dict(self.__dict__)

    def loaded(self) -> ScalingPolicy:
        """With its callable imported (in a process the policy was sent to);
        :class:`PolicyError` if it cannot be."""
        if self.policy is not None and self.decide_fn is None:
            self.decide_fn = load_callable(self.policy, "scaling.policy")
        return self

    def decide(self, load: VertexLoad) -> list[Decision]:
        if self.decide_fn is not None:
            return as_decisions(self.decide_fn(load))
        n = load.size
        mean = load.mean_pps
        slow = self.straggler(load)
        if slow is not None:
            # §5.3 first: a straggler holds up its flows whatever the rate, and
            # moving flows away from it would wait behind its backlog anyway.
            return [slow]
        if self.out_above_pps is not None and mean > self.out_above_pps and n < self.max:
            return [Decision("scale-out", reason=f"{mean:.0f} pps per instance > {self.out_above_pps:g}")]
        if self.in_below_pps is not None and mean < self.in_below_pps and n > self.min:
            return [Decision("scale-in", reason=f"{mean:.0f} pps per instance < {self.in_below_pps:g}")]
        if self.out_above_pps is None and self.in_below_pps is None:
            return []           # straggler_factor alone: detection only, the size and spread stay
        if n > 1 and load.imbalance > self.imbalance:
            return [Decision("rebalance", reason=f"imbalance {load.imbalance:.2f} > {self.imbalance:g}")]
        return []

    def straggler(self, load: VertexLoad) -> Decision | None:
        """§5.3 straggler detection: the instance whose mean service time over the
        interval is above ``straggler_factor`` x the median of the vertex's other
        instances (at least 2 instances, none already in a clone pair: one clone of
        a vertex at a time, as the runtime does one change of a vertex at a time).
        The median, not the mean: one other slow instance does not hide a straggler."""
        if self.straggler_factor is None or load.size < 2 or load.cloning:
            return None
        busy = [i for i in load.instances if i.packets]
        if len(busy) < 2:
            return None
        worst = max(busy, key=lambda i: (i.service_ns, -i.instance))
        # The median of the *other* instances: with two, a median including the
        # straggler is the mean of both and no factor >= 2 could ever be exceeded.
        times = sorted(i.service_ns for i in busy if i is not worst)
        mid = len(times) // 2
        median = times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2
        if median <= 0:
            return None
        if worst.service_ns <= self.straggler_factor * median:
            return None
        return Decision("clone", worst.instance,
                        f"service {worst.service_ns / 1000:.1f} us > {self.straggler_factor:g} x median "
                        f"{median / 1000:.1f} us")


_FIELDS = {f.name for f in dataclasses.fields(ScalingPolicy)} - {"decide_fn"}


def parse_policy(raw: Any, where: str, max_parallelism: int) -> ScalingPolicy:
    """A :class:`ScalingPolicy` from spec data; :class:`PolicyError` naming the field."""
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: a mapping such as {{out_above_pps: 5000, in_below_pps: 1000, max: 4}}")
    for key in raw:
        if key not in _FIELDS:
            raise PolicyError(f"{where}.{key}: unknown field (known: {', '.join(sorted(_FIELDS))})")
    p = ScalingPolicy(**raw)
    for name in ("out_above_pps", "in_below_pps"):
        v = getattr(p, name)
        if v is not None and (not _number(v) or v < 0):
            raise PolicyError(f"{where}.{name}: a number of packets/s >= 0, got {v!r}")
    for name in ("min", "max"):
        v = getattr(p, name)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= max_parallelism:
            raise PolicyError(f"{where}.{name}: an integer from 1 to {max_parallelism}, got {v!r}")
    if p.min > p.max:
        raise PolicyError(f"{where}.min: {p.min} is more than max ({p.max})")
    if not _number(p.interval_ms) or p.interval_ms <= 0:
        raise PolicyError(f"{where}.interval_ms: a positive number of milliseconds, got {p.interval_ms!r}")
    if not _number(p.imbalance) or p.imbalance < 1:
        raise PolicyError(f"{where}.imbalance: max/mean tolerance, a number >= 1, got {p.imbalance!r}")
    if (p.out_above_pps is not None and p.in_below_pps is not None
            and p.in_below_pps >= p.out_above_pps):
        raise PolicyError(f"{where}.in_below_pps: must be below out_above_pps "
                          f"({p.in_below_pps:g} >= {p.out_above_pps:g}), or the vertex never settles")
    if p.straggler_factor is not None and (not _number(p.straggler_factor) or p.straggler_factor <= 1):
        raise PolicyError(f"{where}.straggler_factor: service time x the median that makes a straggler, "
                          f"a number > 1, got {p.straggler_factor!r}")
    if p.policy is not None:
        unused = [k for k in ("out_above_pps", "in_below_pps", "straggler_factor", "imbalance") if k in raw]
        if unused:
            # (they were ignored, silently: the callable decides alone)
            raise PolicyError(f"{where}.{unused[0]}: a policy callable decides alone (its thresholds are its "
                              "own); give the callable or the declarative fields, not both")
        p.decide_fn = load_callable(p.policy, f"{where}.policy")
    elif p.out_above_pps is None and p.in_below_pps is None and p.straggler_factor is None:
        raise PolicyError(f"{where}: give out_above_pps and/or in_below_pps, straggler_factor, "
                          "or policy: module:function")
    return p


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_callable(ref: Any, where: str) -> Callable[[VertexLoad], Any]:
    """``module:function`` imported, or :class:`PolicyError` saying why not."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise PolicyError(f"{where}: expected 'module:function', got {ref!r}")
    mod_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except Exception as exc:    # an operator's module may fail in any way on import
        raise PolicyError(f"{where}: cannot import {mod_name!r} ({type(exc).__name__}: {exc})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise PolicyError(f"{where}: module {mod_name!r} has no {attr!r}")
    if not callable(fn):
        raise PolicyError(f"{where}: {ref} is not callable")
    return fn


def as_decisions(result: Any) -> list[Decision]:
    """What a policy callable returned, as decisions; ValueError if it is not one."""
    if result is None:
        return []
    items = result if isinstance(result, (list, tuple)) else [result]
    out = []
    for item in items:
        if isinstance(item, str):
            item = Decision(item)
        if isinstance(item, Decision) and item.action not in DECISIONS:
            raise ValueError(f"a policy's action is one of {', '.join(DECISIONS)}; got {item.action!r}")
        if not isinstance(item, Decision):
            inside = " in its list" if items is result else ""
            raise ValueError(f"a policy returns None, one of {', '.join(DECISIONS)}, a Decision or a list of "
                             f"decisions (no None in it); got {item!r}{inside}")
        if item.instance is not None and (not isinstance(item.instance, int) or isinstance(item.instance, bool)):
            raise ValueError(f"a Decision's instance is an instance number or None; got {item.instance!r}")
        out.append(item)
    return out


def balance(table: list[int], counts: list[int], active: list[int], tolerance: float,
            finer: bool) -> tuple[str, list[int], int] | None:
    """§4.1 how to even a vertex's measured load (sans-I/O; the sim's and the proc
    runtime's framework manager both carry it out): ``("move", flow groups, to)``
    from the hottest instance to the coolest, ``("refine", [], -1)`` when one group
    alone is too hot for that and a finer scope is left, or None.  ``counts``: the
    packets per flow group (index into ``table``, group -> instance) over the interval."""
    if len(active) < 2:
        return None
    load = dict.fromkeys(active, 0)
    for g, c in enumerate(counts[:len(table)]):
        if table[g] in load:
            load[table[g]] += c
    mean = sum(load.values()) / len(active)
    hot = max(active, key=lambda i: (load[i], -i))
    cold = min(active, key=lambda i: (load[i], i))
    if mean == 0 or load[hot] <= tolerance * mean:
        return None
    mine = sorted((g for g in range(min(len(table), len(counts))) if table[g] == hot and counts[g]),
                  key=lambda g: (-counts[g], g))
    if counts[mine[0]] > tolerance * mean and finer:
        return ("refine", [], -1)
    gap, moved, take = load[hot] - load[cold], 0, []
    for g in mine:
        if 2 * (moved + counts[g]) <= gap:      # never past even: no ping-pong
            take.append(g)
            moved += counts[g]
    return ("move", take, cold) if take else None


class VertexManager:
    """One vertex's manager: interval statistics -> the policy's decisions (§3)."""

    def __init__(self, vertex: str, policy: ScalingPolicy) -> None:
        self.vertex = vertex
        self.policy = policy
        self.interval_ns = policy.interval_ns
        self.next_ns: int | None = None
        self.last_ns = 0
        self._seen: dict[int, tuple[int, int]] = {}     # instance -> (packets, busy ns) at last tick
        self.last_load: VertexLoad | None = None
        self.peak_imbalance = 1.0

    def due(self, now_ns: int) -> bool:
        if self.next_ns is None:            # the first packet starts the clock
            self.last_ns = now_ns
            self.next_ns = now_ns + self.interval_ns
            return False
        return now_ns >= self.next_ns

    def restart(self, now_ns: int, counted: dict[int, tuple[int, int]]) -> None:
        """The next interval starts at ``now_ns`` from ``counted`` (instance -> packets,
        busy ns, cumulative), not from the last tick (a vertex that changed, or a
        manager started again mid-run, measures from here)."""
        self._seen = dict(counted)
        self.last_ns, self.next_ns = now_ns, now_ns + self.interval_ns

    def count_from(self, instance: int, packets: int, busy_ns: int) -> None:
        """``instance``'s next interval counts from these cumulative counters."""
        self._seen[instance] = (packets, busy_ns)

    def tick(self, now_ns: int, counters: list[tuple[int, int, int, int]], scope: str,
             finer: bool, cloning: frozenset[int] = frozenset(),
             spans: dict[int, int] | None = None) -> tuple[VertexLoad, list[Decision]]:
        """``counters``: (instance, packets processed, queue length, busy ns) of each
        active instance, cumulative; ``cloning``: those in a clone pair; ``spans``: an
        instance's own stretch of input time since the last tick, where its counters
        are not all as of ``now_ns`` (reported ones).  Raises whatever a policy
        callable raises."""
        span = max(1, now_ns - self.last_ns)
        loads = []
        seen = {}
        for inst, packets, queue, busy in counters:
            p0, b0 = self._seen.get(inst, (0, 0))       # a new instance counts from zero
            n = packets - p0
            own = (spans or {}).get(inst, 0)
            loads.append(InstanceLoad(inst, n, n * 1e9 / (own if own > 0 else span), queue,
                                      (busy - b0) / n if n else 0.0))
            seen[inst] = (packets, busy)
        self._seen = seen
        self.last_ns = now_ns
        self.next_ns = now_ns + self.interval_ns
        load = VertexLoad(self.vertex, now_ns, span, tuple(loads), scope, finer, frozenset(cloning))
        self.last_load = load
        if load.size > 1:
            self.peak_imbalance = max(self.peak_imbalance, load.imbalance)
        return load, self.policy.decide(load)


# Intervals of input time one instance's reports may be ahead of another's, one that
# had packets queued at its last report, before the manager takes it for idle (it counts
# nothing for it): instances lag one another by what waits in their queues, up to a
# high-water mark of batches (8 of 256 packets a link: about 1 s of input time at 2,000
# packets/s).  With one interval, a lagging instance read as idle halved the vertex's
# rate (on proc, autoscale.yaml scaled the port-scan detector in at 1,421 packets/s per
# instance where the input carried about 6,000).
QUIET_INTERVALS = 5


class ReportingManager:
    """A vertex manager fed by reports rather than by looking (the ``proc`` runtime's,
    where it is a process of its own, :mod:`chc.runtime.procmanager`).  Each instance
    reports its cumulative counters and the input time it has reached
    (:meth:`load`); every process that splits packets to the vertex reports packets
    per flow group (:meth:`groups`).  An interval ends when the instances' reports
    reach past it in input time, as the sim's managers go by input time at top speed
    (:meth:`due`): each instance reports after a batch, so one may lag behind another,
    and its counters are taken once every active instance has passed the interval's
    end, or :data:`QUIET_INTERVALS` more have gone by (an instance may have gone idle).
    One decision at a time: once it has decided, it waits to be told the vertex's
    shape after the framework manager carried the decision out (:meth:`shape`)."""

    def __init__(self, vertex: str, policy: ScalingPolicy, active: list[int], scope: str, finer: bool,
                 restarted: bool = False) -> None:
        self.manager = VertexManager(vertex, policy)
        # a manager started again mid-run: an instance's first report is where it counts from
        # (its counters since the start of the run are no interval's)
        self.restarted = restarted
        self.active, self.scope, self.finer = list(active), scope, finer
        self.latest: dict[int, list[int]] = {}      # instance -> [packets, queue, busy ns], cumulative
        self.base: dict[int, list[int]] = {}        # what a failed instance had counted (§5.4)
        self.counts: list[int] = []                 # packets per flow group this interval
        self.reached: dict[int, int] = {}           # instance -> the input time it reported last
        self.waiting = False                        # decided; the new shape not told yet
        self.ticked: dict[int, int] = {}            # instance -> the input time it had reached at the last tick
        self.generations: dict[int, int] = {}       # instance -> the generation of its latest report

    def load(self, instance: int, packets: int, queue: int, busy_ns: int, ts: int, generation: int = 0) -> None:
        """An instance's report; ``generation``: which of its processes (0, then each
        failover's, §5.4) sent it."""
        seen = self.generations.get(instance, 0)
        if generation < seen:
            return                      # (a failed process's report read after its failover's)
        last = self.latest.get(instance)
        if last is None and self.restarted:
            self.manager.count_from(instance, packets, busy_ns)
            self.ticked[instance] = ts
        elif last is not None and generation > seen:
            # a failover counts from zero, its replay too: it goes on from where the
            # failed process's counts were (the replay is no new load)
            base = self.base.get(instance, [0, 0])
            self.base[instance] = [base[0] + last[0] - packets, base[1] + last[2] - busy_ns]
        self.generations[instance] = generation
        self.latest[instance] = [packets, queue, busy_ns]
        self.reached[instance] = max(ts, self.reached.get(instance, ts))

    def groups(self, counts: list[int]) -> None:
        if len(counts) != len(self.counts):
            self.counts = [0] * len(counts)
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]

    def shape(self, active: list[int], scope: str, finer: bool, answered: bool = True) -> None:
        """The vertex as it is now (after a change, or when this manager starts);
        ``answered``: after this manager's own decision, which it may follow with another.
        An interval starts afresh here: one that ran on across the change would mix the
        load before it with the instances after it (3 instances at 900 packets/s scaled
        in read 966 each where 2 carry 1,350, and scaled in again)."""
        self.active, self.scope, self.finer = list(active), scope, finer
        if answered:
            self.waiting = False
        m = self.manager
        if m.next_ns is None or not self.reached:
            return
        m.restart(max(self.reached.values()), self._counted())
        self.ticked = dict(self.reached)
        self.counts = [0] * len(self.counts)

    def _patience(self, instance: int) -> int:
        """Intervals of input time the others may be ahead of ``instance`` before it counts
        as idle: :data:`QUIET_INTERVALS` while its last report had packets queued (it lags
        behind them), one when it had none or has not reported (waiting longer for an idle
        one, which reports nothing, made every decision five intervals late)."""
        last = self.latest.get(instance)
        return QUIET_INTERVALS if last is not None and last[1] > 0 else 1

    def _counted(self) -> dict[int, tuple[int, int]]:
        """Each instance's cumulative packets and busy ns, a failed one's included (§5.4)."""
        return {i: (p + self.base.get(i, (0, 0))[0], b + self.base.get(i, (0, 0))[1])
                for i, (p, _, b) in self.latest.items()}

    def due(self) -> tuple[VertexLoad, list[Decision], list[int]] | None:
        """An interval's load, the policy's decisions and the flow-group counts, if an
        interval has ended (and no decision is being carried out); else None.  Raises
        whatever a policy callable raises."""
        if self.waiting or not self.reached:
            return None
        m = self.manager
        latest = max(self.reached.values())
        if m.next_ns is None:
            # The first report starts the clock, from the counters it brings: a manager that
            # read its first reports late (its process was slow to start) counted every
            # packet before them into one interval (30,056 packets/s where 3,590 came).
            m.restart(latest, self._counted())
            self.ticked = dict(self.reached)
            return None
        # (an instance not heard from since the interval began, a new one, is behind too)
        behind = [t for t in (self.reached.get(i, m.last_ns) for i in self.active) if t < latest]
        laggards = [self._patience(i) for i in self.active if self.reached.get(i, m.last_ns) < m.next_ns]
        if any(m.next_ns > latest - patience * m.interval_ns for patience in laggards):
            return None                 # (a laggard has not reported this interval's end yet)
        # (past their patience they have gone quiet: the others' intervals go on)
        now = latest if laggards else min(behind, default=latest)
        if not m.due(now):
            return None
        counters = []
        for i in self.active:
            packets, queue, busy = self.latest.get(i, (0, 0, 0))
            base = self.base.get(i, (0, 0))
            counters.append((i, packets + base[0], queue, busy + base[1]))
        counts, self.counts = self.counts, [0] * len(self.counts)
        # each instance's rate over its own stretch of input time: reports come after
        # batches, and one instance may be an interval ahead of another
        since = m.last_ns
        spans = {i: t - self.ticked.get(i, since) for i, t in self.reached.items() if i in self.active}
        self.ticked = dict(self.reached)
        load, decisions = m.tick(now, counters, self.scope, self.finer, spans=spans)
        self.waiting = bool(decisions)
        return load, decisions, counts
