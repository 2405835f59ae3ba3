"""COE checker: the physical chain against the logical chain (§1, §2.1).

Theory of operation
-------------------
Chain output equivalence: whatever happens inside the physical chain (many
instances, shared state, slow instances; later reallocation, clones, crashes),
its outputs, alerts and final state equal those of the *logical chain*: one
instance per vertex, no delays, no faults, every packet in input order.

Where the logical chain itself leaves a choice, the store decides (§4.3): which
free port a NAT instance pops from the shared pool, which backend wins when two
load-balancer instances race for the least-loaded one.  The physical run is
correct iff it equals the logical chain *under the serialization the store
chose*.  The checker therefore works like a history checker (Jepsen-style):

1. The physical run records, per packet clock, the result of every
   order-dependent operation on shared state (``pop``, ``cas``, ``incr_least``)
   its instances performed (``LocalObject.recorder``).
2. The reference run executes the logical chain in input order with model ``T``,
   except that each order-dependent operation takes the physical result for the
   same packet and object, and applies it to its own state *only if that result
   is legal there* (a popped port must be in the reference's pool).  Every
   other operation, every read, every per-flow object and every NF decision is
   computed by the reference itself.
3. Outputs (per flow in clock order; across flows as a multiset keyed by clock),
   alerts (vertex, kind, host, clock) and every NF's final logical state (read
   from the store and caches across instances) must then be equal.  The report
   names the first divergence: the output or alert at the smallest clock, or
   the state object and key, with reference and physical values.

An NF thus declares its equivalence through its state declarations: cross-flow
objects it updates with order-dependent operations are "any serialization"
(NAT ``ports``: which port; LB ``active``: which backend); everything else is
exact.  A lost update, a duplicate, an alert computed from a wrong order, a
packet lost, duplicated or altered on the wire all remain divergences; the
checker's power is shown by ``--break no-clocks`` and ``--break drop-update``.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from collections.abc import Hashable
from typing import Any

from .core.state import LocalObject
from .nf import VALUE_OPS, StateObject
from .packet import Packet, describe_flow, ip_str
from .runtime.sim import SimRuntime
from .spec import Chain
from .summary import canonical

Oracle = dict[tuple[str, str, Hashable, int], deque]


class Recorder:
    """Collects the physical run's order-dependent results by (vertex, object, key, clock)."""

    def __init__(self) -> None:
        self.results: Oracle = {}

    def attach(self, runtime: SimRuntime) -> None:
        for insts in runtime.instances.values():
            for inst in insts:
                hook = self._hook(inst.vertex, inst.ctx)
                for handle in inst.objects.values():
                    if not handle.decl.scope.per_flow:
                        handle.recorder = hook

    def _hook(self, vertex: str, ctx: Any):
        results = self.results

        def record(obj: str, key: Hashable, code: str, result: Any) -> None:
            results.setdefault((vertex, obj, key, ctx.packet_clock), deque()).append((code, result))
        return record


class ReferenceClient:
    """Stand-in store client of the reference run: binds every shared object to an
    :class:`OracleObject` that follows the physical serialization."""

    def __init__(self, vertex: str, oracle: Oracle, notes: list[str]) -> None:
        self.vertex = vertex
        self.oracle = oracle
        self.notes = notes
        self.clock = 0
        self.packet_xor = 0
        self.n_in_packet = 0
        self.prefetchable: list = []        # nothing to prefetch: the state is local

    def begin_packet(self, clock: int, in_timer: bool = False) -> None:
        self.clock = clock

    def flush(self) -> None:
        pass

    def bind(self, decl: StateObject, config: Any) -> LocalObject:
        if decl.scope.per_flow:
            return LocalObject(decl, config)
        return OracleObject(decl, config, self)


class OracleObject(LocalObject):
    """Model T state whose order-dependent ops take the store's choice, if legal."""

    __slots__ = ("client",)

    def __init__(self, decl: StateObject, config: Any, client: ReferenceClient) -> None:
        super().__init__(decl, config)
        self.client = client

    def _physical(self, key: Hashable, code: str) -> tuple[bool, Any]:
        c = self.client
        q = c.oracle.get((c.vertex, self.decl.name, key, c.clock))
        if not q or q[0][0] != code:
            return False, None
        return True, q.popleft()[1]

    def _note(self, what: str) -> None:
        self.client.notes.append(f"clock {self.client.clock}: {self.client.vertex}.{self.decl.name}: {what}")

    def pop(self, key: Hashable = None) -> Any:
        found, value = self._physical(key, "pop")
        if not found:
            return super().pop(key)
        lst = self._slot(key)
        if value is None:
            if lst:
                self._note(f"the store found the list empty, the reference holds {len(lst)} items")
            return None
        try:
            lst.remove(value)
        except ValueError:
            self._note(f"the store popped {value!r}, which the reference does not hold")
            return super().pop(key)
        return value

    def cas(self, expected: Any, new: Any, key: Hashable = None) -> bool:
        found, ok = self._physical(key, "cas")
        if not found:
            return super().cas(expected, new, key)
        if ok:
            self.values[key] = new
        return bool(ok)

    def apply(self, op: str, *args: Any, key: Hashable = None) -> Any:
        found, outcome = self._physical(key, "apply")
        if not found:
            return super().apply(op, *args, key=key)
        # The NF sees the store's result; the reference's own value advances by the
        # same operation in input order.  For commutative steps (TRW's
        # multiplications, counters) both orders end in the same value; a
        # serialization that makes a step decide differently shows as a state
        # divergence: the checker errs on the side of reporting.
        self.values[key] = VALUE_OPS[op].fn(self.get(key), *args)[0]
        return outcome[1]

    def incr_least(self, keys: list) -> int:
        found, best = self._physical(None, "incr_least")
        keys = list(keys)
        if not found or not isinstance(best, int) or not 0 <= best < len(keys):
            return super().incr_least(keys)
        self.incr(1, keys[best])
        return best


# -- runs ------------------------------------------------------------------------------

@dataclasses.dataclass
class RunResult:
    outputs: list[tuple[int, bytes]]     # (clock, frame) in emission order
    alerts: list[tuple]
    state: dict
    summary: Any


def _collect(rt: SimRuntime, records: list[tuple[int, bytes]]) -> RunResult:
    out: list[tuple[int, bytes]] = []
    rt.run(records, emit=lambda pkts: out.extend((p.clock, bytes(p.data)) for p in pkts))
    s = rt.summary()
    alerts = sorted((a["vertex"], a["kind"], a["host"], a["clock"]) for a in s.alerts)
    return RunResult(out, alerts, canonical(rt.logical_state()), s)


def reference_run(chain: Chain, records: list[tuple[int, bytes]], oracle: Oracle | None = None,
                  notes: list[str] | None = None) -> RunResult:
    """The logical chain: one instance per vertex, model T, no delays, input order."""
    logical = chain.with_parallelism(1)
    oracle = oracle if oracle is not None else {}
    notes = notes if notes is not None else []
    rt = SimRuntime(logical, model="T", clients=lambda v, i: ReferenceClient(v, oracle, notes))
    return _collect(rt, records)


# -- comparison ----------------------------------------------------------------------------

@dataclasses.dataclass
class Divergence:
    what: str           # "output", "alert", "state"
    where: str          # object / output / alert description
    clock: int | None
    reference: Any
    physical: Any

    def __str__(self) -> str:
        at = f" at clock {self.clock}" if self.clock is not None else ""
        return f"{self.what} {self.where}{at}: reference {self.reference!s} vs physical {self.physical!s}"


def _describe(frame: bytes | None) -> str:
    if frame is None:
        return "(none)"
    p = Packet(frame)
    if not p.l3:
        return f"non-IP frame of {len(frame)} B"
    return f"{ip_str(p.src)}:{p.sport} -> {ip_str(p.dst)}:{p.dport} proto {p.proto} ({len(frame)} B)"


def compare(ref: RunResult, phys: RunResult, chain: Chain | None = None) -> list[Divergence]:
    """Every divergence, the earliest first within each kind: outputs, alerts, state."""
    found: list[Divergence] = []
    found += _compare_outputs(ref.outputs, phys.outputs)
    found += _compare_alerts(ref.alerts, phys.alerts)
    unordered = set()
    if chain is not None:
        unordered = {(v.name, name) for v in chain.vertices.values()
                     for name, d in v.nf.state_objects().items() if d.equivalence == "multiset"}
    found += _compare_state(ref.state, phys.state, unordered)
    return found


def _compare_outputs(ref: list[tuple[int, bytes]], phys: list[tuple[int, bytes]]) -> list[Divergence]:
    out: list[Divergence] = []
    by_clock_ref: dict[int, list[bytes]] = {}
    by_clock_phys: dict[int, list[bytes]] = {}
    for c, f in ref:
        by_clock_ref.setdefault(c, []).append(f)
    for c, f in phys:
        by_clock_phys.setdefault(c, []).append(f)
    for c in sorted(set(by_clock_ref) | set(by_clock_phys)):
        a, b = sorted(by_clock_ref.get(c, [])), sorted(by_clock_phys.get(c, []))
        if a != b:
            out.append(Divergence("output", f"packet #{c & ((1 << 48) - 1)}", c,
                                  "; ".join(_describe(f) for f in a) or "(dropped)",
                                  "; ".join(_describe(f) for f in b) or "(dropped)"))
            break
    # Per flow (one direction of a connection), the physical chain must keep the
    # logical (clock) order.
    last: dict[Hashable, int] = {}
    for c, f in phys:
        p = Packet(f)
        key = _flow(p)
        if key in last and c < last[key]:
            out.append(Divergence("output", f"order of flow {_describe(f)}", c,
                                  f"after clock {last[key]}", f"clock {c} emitted after clock {last[key]}"))
            break
        last[key] = c
    return out


def _flow(p: Packet) -> Hashable:
    # A flow is one direction of a connection: the two directions may be
    # partitioned apart (e.g. by initiator scope) and interleave differently.
    return (p.src, p.sport, p.dst, p.dport, p.proto)


def _compare_alerts(ref: list[tuple], phys: list[tuple]) -> list[Divergence]:
    missing = sorted(set(ref) - set(phys), key=lambda a: a[3])
    extra = sorted(set(phys) - set(ref), key=lambda a: a[3])
    if not missing and not extra and len(ref) == len(phys):
        return []
    cands = [(a[3], "missing", a) for a in missing] + [(a[3], "spurious", a) for a in extra]
    if not cands:
        return [Divergence("alert", "count", None, len(ref), len(phys))]
    clock, kind, a = min(cands)
    desc = f"{a[1]} on {a[2]} by {a[0]}"
    if kind == "missing":
        return [Divergence("alert", desc, clock, "raised", "not raised")]
    return [Divergence("alert", desc, clock, "not raised", "raised")]


def _compare_state(ref: dict, phys: dict, unordered: set[tuple[str, str]]) -> list[Divergence]:
    for vertex in sorted(set(ref) | set(phys)):
        rv, pv = ref.get(vertex, {}), phys.get(vertex, {})
        for obj in sorted(set(rv) | set(pv)):
            ro, po = rv.get(obj, []), pv.get(obj, [])
            if ro == po:
                continue
            rk = {_hashable(k): v for k, v in ro}
            pk = {_hashable(k): v for k, v in po}
            if (vertex, obj) in unordered:      # declared: order carries no meaning
                rk = {k: sorted(v, key=repr) for k, v in rk.items()}
                pk = {k: sorted(v, key=repr) for k, v in pk.items()}
            for k in sorted(set(rk) | set(pk), key=repr):
                if rk.get(k) != pk.get(k):
                    return [Divergence("state", f"{vertex}.{obj}[{_show(k)}]", None,
                                       _show(rk.get(k, "(initial)")), _show(pk.get(k, "(initial)")))]
    return []


def _hashable(v: Any) -> Hashable:
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


def _show(v: Any, limit: int = 120) -> str:
    text = describe_flow(v) if isinstance(v, bytes) else repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


# -- one check ---------------------------------------------------------------------------------

@dataclasses.dataclass
class CheckResult:
    ok: bool
    divergences: list[Divergence]
    notes: list[str]
    physical: RunResult
    reference: RunResult

    @property
    def first(self) -> Divergence | None:
        return self.divergences[0] if self.divergences else None


def check(chain: Chain, records: list[tuple[int, bytes]], **runtime_kw: Any) -> CheckResult:
    """Run the physical chain (``runtime_kw`` for :class:`SimRuntime`) and the
    logical chain under the store's serialization; compare."""
    return check_runtime(chain, SimRuntime(chain, **runtime_kw), records)


def check_runtime(chain: Chain, rt: SimRuntime, records: list[tuple[int, bytes]]) -> CheckResult:
    """Run ``rt`` (the physical chain of ``chain``) recording the store's
    serialization, then the logical chain following it; compare the two."""
    rec = Recorder()
    rec.attach(rt)
    phys = _collect(rt, records)
    notes: list[str] = []
    ref = reference_run(chain, records, rec.results, notes)
    divs = compare(ref, phys, chain)
    return CheckResult(not divs, divs, notes, phys, ref)


# -- scenarios, seeds and mechanism switches -------------------------------------------------

BREAKS = ("no-clocks", "drop-update")


class DropOneUpdate:
    """``--break drop-update``: the first non-blocking update issued for a packet
    at or after ``from_clock`` is lost: never sent, never retransmitted."""

    def __init__(self, from_clock: int) -> None:
        self.from_clock = from_clock
        self.dropped: Any = None

    def swallow(self, op: Any) -> bool:
        if self.dropped is None and op.tag is not None and op.tag[0] >= self.from_clock:
            self.dropped = op
            return True
        return False

    def describe(self) -> str:
        op = self.dropped
        if op is None:
            return "no update was dropped"
        return f"dropped {op.code} on {op.key.vertex}.{op.key.obj}[{_show(op.key.key, 60)}] at clock {op.tag[0]}"


@dataclasses.dataclass
class Variant:
    """One seeded configuration of a scenario: what a seed decides."""

    seed: int
    parallelism: dict[str, int]
    model: str
    store: str
    batch_size: int

    def describe(self) -> str:
        par = ",".join(f"{k}={v}" for k, v in self.parallelism.items())
        return f"model {self.model}, store {self.store}, batch {self.batch_size}, parallelism {par}"


def variant(chain: Chain, scenario: Any, seed: int, stores: list[str]) -> Variant:
    """What seed ``seed`` runs: the scenario's settings where it fixes them,
    seeded random choices elsewhere (parallelism 1-4, model, batch size, store)."""
    rng = random.Random(seed)
    fixed = scenario.parallelism
    par = {}
    for name in chain.vertices:
        if isinstance(fixed, int):
            par[name] = fixed
        elif isinstance(fixed, dict) and name in fixed:
            par[name] = fixed[name]
        else:
            par[name] = rng.randint(1, 4)
    model = scenario.model or rng.choice(["EO", "EO+C", "EO+C+NA"])
    store = scenario.store or rng.choice(stores)
    batch = scenario.batch_size or rng.choice([1, 7, 32, 64, 256])
    return Variant(seed, par, model, store, batch)


def check_variant(chain: Chain, scenario: Any, records: list[tuple[int, bytes]], v: Variant,
                  breaks: tuple[str, ...] = (), open_store: Any = None) -> tuple[CheckResult, str]:
    """Run one seeded variant; returns the result and a note on injected faults."""
    physical = chain.with_parallelism(v.parallelism)
    store = open_store(v.store) if (open_store is not None and v.model != "T") else None
    kw: dict[str, Any] = dict(model=v.model, batch_size=v.batch_size, store=store,
                              pacer=scenario.pacer(),
                              delays=scenario.expand_delays(list(chain.vertices)),
                              seed=v.seed, events=scenario.events, clocks="no-clocks" not in breaks)
    faults = None
    if "drop-update" in breaks:
        if v.model == "T":
            raise ValueError("--break drop-update needs an externalized model (EO, EO+C, EO+C+NA)")
        faults = DropOneUpdate(from_clock=len(records) // 2)
    rt = SimRuntime(physical, **kw)
    if faults is not None:
        for insts in rt.instances.values():
            for inst in insts:
                inst.client.faults = faults
    try:
        result = check_runtime(chain, rt, records)
    finally:
        if store is not None:
            store.close()
    return result, (faults.describe() if faults else "")
