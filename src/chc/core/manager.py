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
uneven beyond the tolerance).  The bounds ``min``/``max`` hold whatever the
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
DECISIONS = ("scale-out", "scale-in", "rebalance")


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
    instance: int | None = None     # scale-in: which one (None: the framework picks)
    reason: str = ""


class PolicyError(ValueError):
    """A scaling policy that cannot be used; the message names the field."""


@dataclasses.dataclass
class ScalingPolicy:
    """A vertex's ``scaling:`` block of the chain spec.

    Declarative rule, per interval: scale out while the mean packets/s per
    instance is above ``out_above_pps``, scale in while it is below
    ``in_below_pps``, rebalance while max/mean is above ``imbalance``.  With
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
    decide_fn: Callable[[VertexLoad], Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def interval_ns(self) -> int:
        return int(self.interval_ms * 1_000_000)

    def decide(self, load: VertexLoad) -> list[Decision]:
        if self.decide_fn is not None:
            return as_decisions(self.decide_fn(load))
        n = load.size
        mean = load.mean_pps
        if self.out_above_pps is not None and mean > self.out_above_pps and n < self.max:
            return [Decision("scale-out", reason=f"{mean:.0f} pps per instance > {self.out_above_pps:g}")]
        if self.in_below_pps is not None and mean < self.in_below_pps and n > self.min:
            return [Decision("scale-in", reason=f"{mean:.0f} pps per instance < {self.in_below_pps:g}")]
        if n > 1 and load.imbalance > self.imbalance:
            return [Decision("rebalance", reason=f"imbalance {load.imbalance:.2f} > {self.imbalance:g}")]
        return []


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
    if p.policy is not None:
        p.decide_fn = load_callable(p.policy, f"{where}.policy")
    elif p.out_above_pps is None and p.in_below_pps is None:
        raise PolicyError(f"{where}: give out_above_pps and/or in_below_pps, or policy: module:function")
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
        if not isinstance(item, Decision) or item.action not in DECISIONS:
            raise ValueError(f"a policy returns None, one of {', '.join(DECISIONS)}, a Decision "
                             f"or a list of them; got {item!r}")
        out.append(item)
    return out


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

    def tick(self, now_ns: int, counters: list[tuple[int, int, int, int]], scope: str,
             finer: bool) -> tuple[VertexLoad, list[Decision]]:
        """``counters``: (instance, packets processed, queue length, busy ns) of each
        active instance, cumulative.  Raises whatever a policy callable raises."""
        span = max(1, now_ns - self.last_ns)
        loads = []
        seen = {}
        for inst, packets, queue, busy in counters:
            p0, b0 = self._seen.get(inst, (0, 0))       # a new instance counts from zero
            n = packets - p0
            loads.append(InstanceLoad(inst, n, n * 1e9 / span, queue, (busy - b0) / n if n else 0.0))
            seen[inst] = (packets, busy)
        self._seen = seen
        self.last_ns = now_ns
        self.next_ns = now_ns + self.interval_ns
        load = VertexLoad(self.vertex, now_ns, span, tuple(loads), scope, finer)
        self.last_load = load
        if load.size > 1:
            self.peak_imbalance = max(self.peak_imbalance, load.imbalance)
        return load, self.policy.decide(load)
