"""COE checker: the physical chain against the logical chain (§1, §2.1).

Theory of operation
-------------------
Chain output equivalence: whatever happens inside the physical chain (many
instances, shared state, slow instances, a network that loses, duplicates,
delays and reorders store messages; later reallocation, clones, crashes), its
outputs, alerts and final state equal those of the *logical chain*: one
instance per vertex, no delays, no faults, every packet in input order.

Where the logical chain leaves a choice, the store decides (§4.3): which free
port a NAT instance pops from the shared pool, which backend wins when two
load-balancer instances race for the least-loaded one.  The physical run is
correct iff it equals the logical chain *under the serialization the store
chose*.  The checker works like a history checker (Jepsen-style):

1. The physical run (:class:`~chc.runtime.sim.SimRuntime`) records, at the
   store server's side of the simulated network, every operation the store
   received and what it answered, in the order it applied them
   (:class:`Serialization`, :class:`chc.reference.StoreStep`); the clients
   record every update they issued; the roots record every packet they
   deleted from the log and when (as a position in that serialization).
   On the ``proc`` runtime (:func:`_check_proc`) the store server process
   records the same serialization and ships it back at the end; the instances
   report their issued updates (log deletions are not positioned there).
2. :func:`chc.reference.replay` re-executes the serialization with its own
   implementation of Table 2 and the clock log: every answer the store gave
   must be what its own serialization yields, and the store must end holding
   what it yields (``store`` divergences).  Every issued update must have been
   applied (exactly once: duplicates are emulated), and no packet may leave a
   root's log before all its updates were applied (§5.4; ``log``).
3. :func:`chc.reference.logical_run` interprets the logical chain on its own
   (it shares the NF code and nothing else), taking for order-dependent
   operations on shared state the *re-executed* results of the store's order,
   never the physical answers.
4. Outputs (per clock, and per flow in clock order), alerts with their clocks,
   and every NF's final state must be equal.  The report names the first
   divergence of each kind.

Mechanism switches (``--break``, :data:`BREAKS`) switch one mechanism off, or
corrupt one compared thing, in the physical run only, to show each comparison
catches what it is for.  A break that had nothing to act on in a seed (no alert
to shift, no duplicate to apply twice) is reported as *not exercised*, never as
a pass; one that acted and was not caught is *uncaught*, a hole in the checker.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import random
from collections import deque
from collections.abc import Callable, Collection, Hashable, Sequence
from typing import Any

from .backends.redis import redact
from .core.root import clock_text
from .core.store import ObjectKey, Op, StoreError
from .faults import DropOneUpdate
from .faults import show as _show
from .packet import Packet, flow_key, ip_str
from .reference import LogicalRun, Replay, StoreStep, logical_run, replay, same
from .runtime import control
from .runtime.sim import SimRuntime, Unrecoverable
from .runtime.storefailover import UNSEEN, recoverable_url
from .spec import Chain
from .summary import StateValueError, canonical

# -- the physical run's records ---------------------------------------------------------------


class Serialization:
    """What the store received and answered, in its order (attached to the sim's
    :class:`~chc.runtime.simnet.StoreNode`)."""

    def __init__(self) -> None:
        self.steps: list[StoreStep] = []
        # The places of the steps of updates the store refused: never applied, so the
        # deletion of their packet (once its instance heard of the refusal) need not
        # follow them (§5.4 log safety, :func:`_premature`).
        self.refused: set[int] = set()

    def declare(self, key: ObjectKey, initial: Any) -> None:
        self.steps.append(StoreStep(key.vertex, key.obj, key.key, key.per_flow, "declare",
                                    (list(initial),), None, None, None, False))

    def request(self, ops: list[Op], results: list[Any], read_clock: int | None = None,
                refused: Collection[int] = ()) -> None:
        """One request, answered; ``read_clock``: the clock the requesting instance was
        processing (a blocking request's reads are made for it); ``refused``: the places
        of the ops the store refused for what they are, the others applied (recorded
        unobserved: the checker's re-execution decides again that they are refused, and
        a store that applied one shows in the state)."""
        for i, (op, result) in enumerate(zip(ops, results, strict=True)):
            if i in refused:
                at = len(self.steps)
                self._add(op, None, False)
                self.refused.update(range(at, len(self.steps)))
            else:
                self._add(op, result, True, read_clock if op.code == "get" else None)

    def _add(self, op: Op, result: Any, observed: bool, read_clock: int | None = None) -> None:
        add = self.steps.append
        k = op.key
        code, args = op.code, op.args
        if code == "incr_many":
            inc = args[0]
            for clock, n, by in zip(inc.clocks, inc.ns, inc.amounts, strict=True):
                add(StoreStep(k.vertex, k.obj, k.key, k.per_flow, "incr", (by,), (clock, n),
                              op.default, None, False, op.client))
            return
        if code == "custom":
            if args[0] != "argmin_incr":
                raise ValueError(f"the COE checker cannot re-execute custom operation {args[0]!r}")
            code, args = "argmin_incr", ([x.key for x in args[1]], *args[2:])
        if isinstance(result, (deque, list)):
            result = list(result)       # a snapshot: the store's list lives on
        add(StoreStep(k.vertex, k.obj, k.key, k.per_flow, code, tuple(args), op.tag,
                      op.default, result, observed, op.client, read_clock))

    def recover(self, since: int, redo: list[tuple[Op, Any, bool]]) -> None:
        """§5.4 a failover store took over: its history is this one's up to position
        ``since`` (its checkpoint), then the updates it re-executed (shared and
        per-flow), each with the result an instance observed (or ``UNSEEN``) and
        whether it is *in place*: the failover store applied it in the failed
        store's own order (its object had one writer since the checkpoint), so an
        applied one stays where it was and its copy here is a duplicate (a lost
        one is applied here).  The others are taken out from ``since`` on and
        applied again in ``redo``'s order."""
        removed = set()
        for op, _, in_place in redo:
            if in_place:
                continue
            k = op.key
            tags = op.args[0].tags if op.code == "incr_many" else [op.tag]
            removed.update((k.vertex, k.obj, k.key, t) for t in tags)
        self.steps.append(StoreStep("", "", None, False, "recover", (since, frozenset(removed)), None, None,
                                    None, False))
        for op, result, _ in redo:
            seen = result is not UNSEEN
            self._add(op, result if seen else None, seen)

    @property
    def position(self) -> int:
        return len(self.steps)


@dataclasses.dataclass
class RunResult:
    outputs: list[tuple[int, bytes]]     # (clock, frame) in emission order
    alerts: list[tuple]
    state: dict
    summary: Any
    store: dict = dataclasses.field(default_factory=dict)     # (vertex, obj, key) -> value


def _collect(rt: SimRuntime, records: list[tuple[int, bytes]]) -> RunResult:
    out: list[tuple[int, bytes]] = []
    rt.run(records, emit=lambda pkts: out.extend((p.clock, bytes(p.data)) for p in pkts))
    s = rt.summary()
    if s.state_error is not None:
        raise StateValueError(s.state_error)        # (the NF's values, not a divergence)
    alerts = sorted((a["vertex"], a["kind"], a["host"], a["clock"]) for a in s.alerts)
    stored: dict = {}
    if rt.store is not None:
        for vertex in rt.chain.vertices:
            for obj, entries in rt.store.objects(vertex).items():
                for key, value in entries.items():
                    stored[(vertex, obj, key)] = value
    return RunResult(out, alerts, canonical(rt.logical_state()), s, stored)


def reference_run(chain: Chain, records: list[tuple[int, bytes]], serial: Replay | None = None,
                  controls: list | tuple = (), events: list[dict] = ()) -> LogicalRun:
    """The logical chain (one instance per vertex, input order, no delays), following
    the store's re-executed serialization for order-dependent shared operations, with
    the operator controls the physical run applied, at the input positions it applied
    them, and the clocks its failed-over roots resumed at."""
    resumes = [(e["instance"], e["root_packets"], e["clock_resumed"]) for e in events
               if e["kind"] == "root-failover"]
    return logical_run(chain, records, serial, controls, resumes)


# -- comparison ----------------------------------------------------------------------------

@dataclasses.dataclass
class Divergence:
    what: str           # output, order, alert, state, store, log
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


def compare(ref: Any, phys: RunResult, chain: Chain | None = None) -> list[Divergence]:
    """Divergences of outputs, per-flow order, alerts and state, the earliest first
    within each kind."""
    found: list[Divergence] = []
    found += _compare_outputs(ref.outputs, phys.outputs)
    found += _compare_order(phys.outputs)
    found += _compare_alerts(ref.alerts, phys.alerts)
    unordered = set()
    if chain is not None:
        unordered = {(v.name, name) for v in chain.vertices.values()
                     for name, d in v.nf.state_objects().items() if d.equivalence == "multiset"}
    # A read of shared state in the store's order is a valid serialization only while
    # what the packet writes does not rest on it: a non-atomic read-modify-write loses
    # the other instance's update (the state may even agree, both having lost it).
    # Said before the state values it explains: their "reference" side followed the
    # physical run's reads, so it is not the logical chain's value (a new user read
    # "reference 4 vs physical 6" as the physical run over-counting).
    found += [Divergence("state", f"{v}.{obj}[{_show(key, 60)}]", clock,
                         "one packet's read-modify-write of a shared object",
                         "read in another instance's order, then overwritten (not atomic, §4.3)")
              for v, obj, key, clock in getattr(ref, "conflicts", ())]
    found += _compare_state(ref.state, phys.state, unordered)
    return found


def _compare_outputs(ref: list[tuple[int, bytes]], phys: list[tuple[int, bytes]]) -> list[Divergence]:
    by_clock_ref: dict[int, list[bytes]] = {}
    by_clock_phys: dict[int, list[bytes]] = {}
    for c, f in ref:
        by_clock_ref.setdefault(c, []).append(f)
    for c, f in phys:
        by_clock_phys.setdefault(c, []).append(f)
    for c in sorted(set(by_clock_ref) | set(by_clock_phys)):
        a, b = sorted(by_clock_ref.get(c, [])), sorted(by_clock_phys.get(c, []))
        if a != b:
            return [Divergence("output", f"packet #{c & ((1 << 48) - 1)}", c,
                               "; ".join(_describe(f) for f in a) or "(dropped)",
                               "; ".join(_describe(f) for f in b) or "(dropped)")]
    return []


def _compare_order(phys: list[tuple[int, bytes]]) -> list[Divergence]:
    """Per flow (one direction of a connection), the physical chain must keep the
    logical (clock) order: the two directions may be partitioned apart.  A packet's
    further copies (two traffic classes, two sinks) leave by other paths: the first
    copy of each clock is held to the order, a later copy of one already out is not
    (a chain of two overlapping match classes 'diverged' with no break)."""
    last: dict[Hashable, int] = {}
    out: dict[Hashable, set[int]] = {}
    for c, f in phys:
        p = Packet(f)
        key = (p.src, p.sport, p.dst, p.dport, p.proto)
        seen = out.setdefault(key, set())
        top = last.get(key, c)
        if c < top and c not in seen:
            return [Divergence("order", f"of flow {_describe(f)}", c,
                               f"before clock {top}", f"emitted after clock {top}")]
        seen.add(c)
        last[key] = max(c, top)
    return []


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
    # (the same alert at another clock is the likelier story: say so)
    other = next((b[3] for b in (extra if kind == "missing" else missing) if b[:3] == a[:3]), None)
    elsewhere = "" if other is None else f" (raised at clock {other} instead)"
    if kind == "missing":
        return [Divergence("alert", desc, clock, "raised", "not raised" + elsewhere)]
    return [Divergence("alert", desc, clock, "not raised" + elsewhere, "raised")]


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


def _compare_store(serial: Serialization, rep: Replay, phys: RunResult, issued: set,
                   deleted: list[tuple[int, int]]) -> list[Divergence]:
    """The store against its own serialization; exactly-once; the log's safety (§5.4)."""
    found: list[Divergence] = []
    if rep.mismatches:
        m = rep.mismatches[0]
        s = m.step
        found.append(Divergence("store", f"answer to {s.code} on {s.vertex}.{s.obj}[{_show(s.key, 60)}]",
                                s.tag[0] if s.tag else None, _show(m.expected), _show(s.result)))
    for addr in sorted(set(rep.final) | set(phys.store), key=repr):
        if addr[0] == "root":
            continue
        want, got = rep.final.get(addr), phys.store.get(addr)
        if not same(want, got) and not (want is None and got is None):
            found.append(Divergence("store", f"value of {addr[0]}.{addr[1]}[{_show(addr[2], 60)}]", None,
                                    f"{_show(want)} (its serialization)", _show(got)))
            break
    lost = sorted(issued - rep.applied, key=lambda u: u[3])
    if lost:
        v, o, k, tag = lost[0]
        found.append(Divergence("store", f"update of {v}.{o}[{_show(k, 60)}] (tag {tag})", tag[0],
                                "applied once", f"never applied ({len(lost)} updates lost)"))
    found += _log_safety(serial, deleted)
    return found


def _log_safety(serial: Serialization, deleted: list[tuple[int, int]]) -> list[Divergence]:
    """§5.4: a root deletes a logged packet only once every update of it was applied."""
    for clock, at in _premature(serial, deleted)[:1]:
        return [Divergence("log", f"packet #{clock & ((1 << 48) - 1)}", clock,
                           "deleted after its updates were applied",
                           f"deleted from the root's log before its update at store step {at} (§5.4)")]
    return []


def _premature(serial: Serialization, deleted: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The deletions ``(clock, position)`` made before an update of their packet was applied
    (at a store step at or after ``position``), as ``(clock, that step)``."""
    if not deleted:
        return []
    last_applied: dict[int, int] = {}
    seen: set = set()
    for i, s in enumerate(serial.steps):
        if s.tag is None or s.code in ("get", "declare", "recover") or i in serial.refused:
            continue
        ident = (s.vertex, s.obj, s.key, s.tag)
        if ident not in seen:
            seen.add(ident)
            last_applied[s.tag[0]] = i
    out = []
    for clock, position in deleted:
        at = last_applied.get(clock)
        if at is not None and at >= position:
            out.append((clock, at))
    return out


def _hashable(v: Any) -> Hashable:
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


# -- one check ---------------------------------------------------------------------------------

@dataclasses.dataclass
class CheckResult:
    divergences: list[Divergence]
    notes: list[str]
    physical: RunResult | None
    reference: LogicalRun | None
    unrecoverable: str | None = None
    network: dict = dataclasses.field(default_factory=dict)
    steps: int = 0                       # store operations recorded
    events: dict = dataclasses.field(default_factory=dict)     # what the run did: kind -> how often
    # what it did not do of what it was asked (refused, ignored, skipped), each with why
    not_done: list[dict] = dataclasses.field(default_factory=list)
    # --kill (and proc's scenario crashes): each planned kill that tested no recovery
    # ({process, reason}; None: not known), and how many were planned
    kills_not_made: list[dict] | None = None
    kills_planned: int = 0
    cause: str | None = None             # what likely explains the divergences (split_cause)

    @property
    def ok(self) -> bool:
        return not self.divergences and self.unrecoverable is None

    @property
    def first(self) -> Divergence | None:
        return self.divergences[0] if self.divergences else None


class Observers:
    """The physical run's records: the serialization, issued updates, log deletions."""

    def __init__(self) -> None:
        self.serial = Serialization()
        self.issued: list = []
        self.deleted: list[tuple[int, int]] = []
        # §5.4 a packet's copies by the runtime's own account (1, plus its forks, minus
        # the copies that ended), counted apart from the root's; and the deletions made
        # while copies were still in the chain: (clock, how many)
        self.live: dict[int, int] = {}
        self.early: list[tuple[int, int]] = []

    def attach(self, rt: SimRuntime) -> None:
        for inst in (i for insts in rt.instances.values() for i in insts):
            self._hook(inst)
        rt.instance_hooks.append(self._hook)
        serial, deleted, live, early = self.serial, self.deleted, self.live, self.early

        def deleting(clock: int) -> None:
            deleted.append((clock, serial.position))
            n = live.pop(clock, 1)
            if n > 0:
                early.append((clock, n))
        for root in rt.roots:
            root.observer = deleting
        fork, done = rt._fork, rt._done

        def forked(clock: int, k: int) -> None:
            live[clock] = live.get(clock, 1) + k
            fork(clock, k)

        def ended(clock: int, vector: int) -> None:
            live[clock] = live.get(clock, 1) - 1
            done(clock, vector)
        rt._fork, rt._done = forked, ended

    def _hook(self, inst: Any) -> None:
        if inst.client is not None and hasattr(inst.client, "issued"):
            inst.client.issued = self.issued

    def watch_splits(self, rt: SimRuntime, chain: Chain) -> None:
        """docs/nf-api.md's third pitfall, watched where the chain has it (``split_feeders``):
        which instances of each connection-splitting upstream vertex ran, and each packet a
        vertex that needs a connection's packets in order got after a later one of its
        connection (clock order, both directions)."""
        pairs = split_feeders(chain)
        if not pairs:
            return
        self.splits = pairs
        ran = self.ran = {u: set() for us in pairs.values() for u in us}
        latest: dict[str, dict[bytes, int]] = {v: {} for v in pairs}
        late = self.late = {v: [0, None] for v in pairs}     # vertex -> [how many, first (clock, later clock)]
        run = rt._run

        def observed(name: str, inst: Any, batch: list[Packet]) -> list[Packet]:
            if name in ran:
                ran[name].add(inst.instance_id)
            seen = latest.get(name)
            if seen is not None:
                for p in batch:
                    k = flow_key(p)
                    top = seen.get(k, -1)
                    if p.clock < top:
                        said = late[name]
                        said[0] += 1
                        if said[1] is None:
                            said[1] = (p.clock, top)
                    else:
                        seen[k] = p.clock
            return run(name, inst, batch)
        rt._run = observed

    def split_cause(self) -> str | None:
        """The likely cause of a run's divergences when the pitfall is what happened: an
        upstream vertex that ran several instances and partitions by a scope that splits
        connections, and a vertex after it that got packets of a connection out of order."""
        for v, us in getattr(self, "splits", {}).items():
            n, first = self.late[v]
            split = [u for u in us if len(self.ran[u]) > 1]
            if not n or not split:
                continue
            u = split[0]
            scope = _scope_name(self.splits[v][u])
            early, later = (c & ((1 << 48) - 1) for c in first)
            return (f"{u} is partitioned by {scope}, which sends the two directions of a connection to different "
                    f"{u} instances ({len(self.ran[u])} ran), so {v}, which needs each connection's packets in "
                    f"order, got {n} packet{'s' if n != 1 else ''} after a later one of {'their' if n != 1 else 'its'}"
                    f" connection (first: packet #{early} after #{later}); partition {u} by connection (FLOW, or "
                    "override its NF's partition_scope(): docs/nf-api.md, 'A partition scope that splits a "
                    "connection')")
        return None

    def issued_updates(self) -> set:
        return {(k.vertex, k.obj, k.key, tag) for k, tag in self.issued}


def split_feeders(chain: Chain) -> dict[str, dict[str, Any]]:
    """Each vertex whose NF keeps per-flow state on a partition that joins a connection's two
    directions (it needs them in order: the NAT's reply after its mapping), with the vertices
    upstream of it (on-path, or copied from by a tap) whose partition scope does not (by host:
    their instances may reorder a connection's two directions): ``{vertex: {upstream: scope}}``."""
    vs = chain.vertices
    feeds: dict[str, set[str]] = {n: set() for n in vs}      # vertex -> the vertices its input comes from
    for n, v in vs.items():
        for d in v.successors + v.taps_out:
            feeds[d].add(n)
    for n, v in vs.items():
        for t in v.taps_in:
            feeds[t] |= feeds[n]
    out: dict[str, dict[str, Any]] = {}
    for n, v in vs.items():
        own = v.nf.partition_scope()
        if not own.joins_flows or not any(o.scope.per_flow for o in v.nf.state_objects().values()):
            continue
        up: set[str] = set()
        todo = list(feeds[n])
        while todo:
            u = todo.pop()
            if u not in up:
                up.add(u)
                todo += feeds[u]
        splitting = {u: vs[u].nf.partition_scope() for u in sorted(up)}
        splitting = {u: sc for u, sc in splitting.items() if not sc.joins_flows}
        if splitting:
            out[n] = splitting
    return out


def _scope_name(scope: Any) -> str:
    """A scope as an NF declares it (``SRC_IP``), or by its name if it is an NF's own."""
    from . import nf
    known = {id(getattr(nf, c)): c for c in ("FLOW", "SRC_IP", "DST_IP", "INITIATOR", "GLOBAL")}
    return known.get(id(scope), f"its own scope {scope.name!r}")


def check(chain: Chain, records: list[tuple[int, bytes]], **runtime_kw: Any) -> CheckResult:
    """Run the physical chain (``runtime_kw`` for :class:`SimRuntime`) and the
    logical chain under the store's serialization; compare."""
    obs = Observers()
    rt = SimRuntime(chain, recorder=obs.serial, **runtime_kw)
    return check_runtime(chain, rt, records, obs)


def check_runtime(chain: Chain, rt: SimRuntime, records: list[tuple[int, bytes]],
                  obs: Observers | None = None, tamper: Callable[[SimRuntime, RunResult], None] | None = None
                  ) -> CheckResult:
    """Run ``rt`` (the physical chain of ``chain``, built with ``obs.serial`` as its
    store recorder) and the logical chain following the store's order; compare."""
    obs = obs or Observers()
    obs.attach(rt)
    obs.watch_splits(rt, chain)
    try:
        phys = _collect(rt, records)
    except Unrecoverable as exc:
        return CheckResult([], [], None, None, unrecoverable=str(exc), network=rt.net.describe(),
                           events=_event_counts(rt.events_log), not_done=_not_done(rt.events_log))
    except StoreError as exc:
        # The store refused the physical run (e.g. two instances updating one flow's
        # state): a divergence in itself, reported rather than raised.
        div = Divergence("store", "refused an operation and stopped the physical run", None,
                         "every operation accepted", f"{type(exc).__name__}: {exc}")
        return CheckResult([div], [], None, None, network=rt.net.describe(), events=_event_counts(rt.events_log),
                           not_done=_not_done(rt.events_log))
    if tamper is not None:
        tamper(rt, phys)
    rep = replay(obs.serial.steps)
    ref = reference_run(chain, records, rep, control.applied(rt.events_log), rt.events_log)
    divs = _compare_store(obs.serial, rep, phys, obs.issued_updates(), obs.deleted) if rt.store is not None else []
    divs = compare(ref, phys, chain) + divs + _live_at_deletion(obs) + _log_liveness(rt)
    return CheckResult(divs, ref.notes, phys, ref, network=rt.net.describe(), steps=len(obs.serial.steps),
                       events=_event_counts(rt.events_log), not_done=_not_done(rt.events_log),
                       cause=obs.split_cause() if divs else None)


def _live_at_deletion(obs: Observers) -> list[Divergence]:
    """§5.4: a root deletes a logged packet only once no copy of it is live: a copy still
    in the chain when its packet left the log cannot be replayed if its instance fails."""
    for clock, n in obs.early[:1]:
        return [Divergence("log", f"packet #{clock & ((1 << 48) - 1)}", clock, "deleted once no copy of it is live",
                           f"deleted with {n} {'copy' if n == 1 else 'copies'} still in the chain "
                           f"({len(obs.early)} packets so; §5.4)")]
    return []


def _log_liveness(rt: SimRuntime) -> list[Divergence]:
    """Every packet admitted is done by the end of input: one still logged never
    completed (a copy was lost in the chain, or an update never committed)."""
    left = sorted(c for r in rt.roots for c in r.log)
    if not left:
        return []
    return [Divergence("log", f"packet #{left[0] & ((1 << 48) - 1)}", left[0], "completed and deleted",
                       f"still logged at the end of input ({len(left)} packet{'s' if len(left) > 1 else ''} never "
                       "completed)")]


# -- mechanism switches ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Break:
    """One ``--break``: what it switches off or corrupts, and what should catch it."""

    name: str
    what: str
    caught_as: str               # the divergence kind that names it
    needs_store: bool = False    # only meaningful in an externalized model
    memory_only: bool = False
    proc_only: bool = False      # a mechanism of the proc runtime's (the sim's moves differ)


BREAKS: dict[str, Break] = {b.name: b for b in (
    Break("no-clocks", "NFs see arrival order at each instance instead of logical clocks (R4)", "alert|state"),
    Break("drop-update", "one non-blocking update is lost: never sent, never retransmitted", "store", True),
    Break("wrong-value-op", "the store applies one value operation twice and answers the second result",
          "store", True),
    Break("reorder-flow", "two output packets of one flow leave in swapped order", "order"),
    Break("alert-clock", "one alert is reported with the next packet's clock", "alert"),
    Break("lose-output", "one output packet is lost after the chain processed it", "output"),
    Break("state-drift", "one stored counter is off by one after the last update", "state", True, True),
    Break("no-xor", "roots delete logged packets ignoring the XOR vector (§5.4)", "log", True),
    Break("no-live-count", "roots delete a logged packet once its updates committed, with copies of it still "
          "in the chain (§5.4)", "log", True),
    Break("no-dedup", "the store applies retransmitted duplicates again (§4.3, §5.3)", "store", True, True),
    Break("no-retransmit", "clients never resend un-ACKed non-blocking updates (§4.3)", "store", True),
    Break("naive-move", "flow groups move without last/first marks, buffering or handover (§5.1)",
          "store|output|order|state", True),
    Break("no-flush", "an instance keeps caching a cross-flow object after a split made it shared (R3)",
          "output", True),
    Break("no-callback", "clients drop the store's callbacks: cached read-heavy objects go stale (Table 1)",
          "output|state", True),
    Break("no-dup-suppression", "a straggler and its clone both deliver their outputs and alerts, and the store "
          "applies both copies' updates (§5.3)", "output|alert|store|state", True, True),
    Break("no-replay", "a failover instance starts from the store as it is, without replaying the failed "
          "instance's packets (§5.4); with --runtime proc a failover root also starts without the input kept "
          "for it", "output|state|log|store|alert", True),
    Break("delete-after-output", "the last NF sends its delete request after its output, so a crash in "
          "between makes the failover instance output the packets again (§5.4)", "output", True),
    Break("replay-as-now", "a failover replays every packet sharing what its vertex shares now, not what it "
          "shared when the packet ran before a scale-in or -out (R3 with §5.4)", "state|store|output|log", True),
    Break("no-moved-timers", "a failover's replay leaves out the timers that moved flows brought the failed "
          "instance (§5.1 with §5.4)", "log|alert|state|store", True),
    Break("replay-by-today", "a failover sends what it replays by today's flow maps, not by the map each "
          "packet went by before a scale-in, -out or move (§5.1 with §5.4; --runtime proc)",
          "output|log|state|store|alert", True, proc_only=True),
    Break("resume-as-done", "the failover of an instance that died during a scale-in, -out or move of its "
          "vertex starts as if the change were done: no hand-over, no wait at the barrier (§5.1 with §5.4; "
          "--runtime proc)", "output|log|state|store|alert", True, proc_only=True),
    Break("replay-by-clock", "the failover of an instance fed by several roots runs what was handed over as new "
          "input, not the batches the failed one told the store it ran, in their order and with their throughs "
          "(§5 with §5.4; --runtime proc)", "output|log|state|store|alert", True, proc_only=True),
    Break("no-root-bound", "the failover of an instance fed by several roots replays the batches the failed one "
          "ran without first waiting, per root, for all of their packets (§5 with §5.4; --runtime proc)",
          "output|log|state|store|alert", True, proc_only=True),
    Break("no-wal", "a failover store is restored from its checkpoint and the instances' caches only, without "
          "rolling the write-ahead logs forward (§5.4, Figure 7)", "store|state|output", True),
)}


class BreakState:
    """The breaks of one seed, and whether each found something to act on."""

    def __init__(self, names: tuple[str, ...], from_clock: int) -> None:
        self.names = names
        self.from_clock = from_clock
        self.acted: dict[str, str] = {}      # break -> what it did
        self.idle: dict[str, str] = {}       # break -> why it found nothing to act on, when known

    def install(self, rt: SimRuntime) -> None:
        insts = [i for insts in rt.instances.values() for i in insts]
        if "no-clocks" in self.names:
            for inst in insts:
                inst.arrival_clocks = True
        self._drop = DropOneUpdate(self, self.from_clock) if "drop-update" in self.names else None
        for inst in insts:
            self._instance(inst)
        rt.instance_hooks.append(self._instance)
        rt.naive_moves = "naive-move" in self.names
        rt.share_on_split = "no-flush" not in self.names
        if "no-xor" in self.names and rt.model == "EO+C+NA":
            # Only non-blocking updates can still be in flight when a packet is done.
            for root in rt.roots:
                root.xor_check = False
        if "no-live-count" in self.names:
            for root in rt.roots:
                root.live_check = False
        if "no-dedup" in self.names:
            engine = getattr(rt.store, "engine", None)
            if engine is None:
                raise ValueError("--break no-dedup needs the memory store")
            engine.dedup = False
        if "wrong-value-op" in self.names:
            rt.node.backend = DoubleValueOp(rt.node.backend, self)
        if "no-dup-suppression" in self.names:
            engine = getattr(rt.store, "engine", None)
            if engine is None:
                raise ValueError("--break no-dup-suppression needs the memory store")
            rt.dup_suppression = False
            engine.emulate = False
        rt.replay_on_failover = "no-replay" not in self.names
        rt.replay_moved_timers = "no-moved-timers" not in self.names
        rt.replay_as_processed = "replay-as-now" not in self.names
        rt.delete_before_output = "delete-after-output" not in self.names
        if "no-wal" in self.names and rt.store_failover is not None:
            rt.store_failover.no_wal = True

    def _instance(self, inst: Any) -> None:
        """The per-instance switches, also for instances a scale-out adds later."""
        if self._drop is not None:
            inst.client.faults = self._drop
        if "no-retransmit" in self.names:
            inst.client.retransmit = False
        if "no-callback" in self.names:
            inst.client.callbacks = False

    def xor_skipped(self, skipped: int, obs: Observers, model: str) -> None:
        """--break no-xor acted when a deletion came before an update of its packet (in the
        store's order); one that skipped the XOR check after the updates were applied
        anyway (no store latency) did no harm to catch."""
        early = len(_premature(obs.serial, obs.deleted))
        if early:
            self.acted["no-xor"] = (f"{skipped} packets deleted with updates not yet committed, {early} of them "
                                    "before an update was applied")
        elif model != "EO+C+NA":
            self.idle["no-xor"] = f"it acts in EO+C+NA, this seed's model is {model}"
        elif skipped:
            self.idle["no-xor"] = (f"{skipped} packets deleted before their commit reports, each after its updates "
                                   "were applied (nothing was early in the store's order)")

    def said(self) -> dict[str, str]:
        """Per break, what it did, or why it found nothing to act on (when known)."""
        return {b: self.acted.get(b) or (f"not exercised: {self.idle[b]}" if b in self.idle else "")
                for b in self.names}

    def observe(self, rt: SimRuntime, obs: Observers) -> None:
        """After the run: what the switched-off mechanisms would have had to do."""
        insts = [i for insts in rt.instances.values() for i in insts]
        if "no-clocks" in self.names:
            inversions = sum(i.inversions for i in insts)
            alerts = sum(len(i.ctx.alerts) for i in insts)
            if inversions or alerts:
                self.acted["no-clocks"] = f"{inversions} packets seen out of clock order, {alerts} alerts"
        if "no-retransmit" in self.names:
            lost = rt.net.stats["store.dropped"] + rt.net.stats["store.partitioned"]
            abandoned = sum(i.client.abandoned for i in insts)
            if lost and abandoned:
                self.acted["no-retransmit"] = f"{lost} store messages lost, {abandoned} ops never resent"
        if "no-xor" in self.names:
            self.xor_skipped(sum(r.xor_skipped for r in rt.roots), obs, rt.model)
        if "no-live-count" in self.names and obs.early:
            self.acted["no-live-count"] = f"{len(obs.early)} packets deleted with copies still in the chain"
        if "naive-move" in self.names and rt.naive_raced:
            n = rt.naive_skipped
            self.acted["naive-move"] = (f"{n} move{'s' if n != 1 else ''} made while the old instance had packets "
                                        f"queued; {rt.naive_raced} moved packets overtook their flow's last one")
        if "no-callback" in self.names:
            stale = sum(len(i.client.callback_caches) for i in insts if i.client is not None)
            total = sum(r.packets_in for r in rt.roots)
            changed = sum(c[0] < total for c in control.applied(rt.events_log))
            if stale and changed:
                self.acted["no-callback"] = f"{changed} operator changes, {stale} cached copies never refreshed"
        if "no-flush" in self.names and rt.unshared_skipped:
            self.acted["no-flush"] = f"{rt.unshared_skipped} splits kept an exclusive cache"
        if "no-dup-suppression" in self.names:
            # What the clone pairs let through: real duplicates, not just clones made.
            done = [e["duplicates_delivered"] for e in rt.events_log if e["kind"] == "clone-resolved"]
            outputs = sum(d["outputs"] + d["drops"] + d["alerts"] for d in done)
            updates = getattr(rt.store, "engine", None)
            updates = updates.reapplied if updates is not None else 0
            if outputs or updates:
                self.acted["no-dup-suppression"] = (f"{len(done)} clones: {outputs} duplicate outputs, drops and "
                                                    f"alerts delivered, {updates} duplicate updates applied")
        failovers = [e for e in rt.events_log if e["kind"] == "failover"]
        lost = {k: sum(e[k] or 0 for e in failovers)
                for k in ("lost_in_queue", "updates_lost_in_flight", "timers_pending")}
        if "no-replay" in self.names and any(lost.values()):
            self.acted["no-replay"] = (f"{len(failovers)} failovers without replay: {lost['lost_in_queue']} queued "
                                       f"packets, {lost['updates_lost_in_flight']} updates in flight and "
                                       f"{lost['timers_pending']} pending timers lost")
        other = sum(e.get("replayed_sharing_otherwise", 0) for e in failovers)
        if "replay-as-now" in self.names and other:
            self.acted["replay-as-now"] = f"{other} packets replayed sharing what their vertex shares now"
        if "no-moved-timers" in self.names and rt.gifts_dropped:
            self.acted["no-moved-timers"] = f"{rt.gifts_dropped} moved timers left out of failover replays"
        repeated = sum(e.get("output_before_delete", 0) for e in failovers)
        if "delete-after-output" in self.names and repeated:
            self.acted["delete-after-output"] = (f"{repeated} packets the last NF output before a crash, "
                                                 "replayed as never processed")
        if "no-wal" in self.names:
            skipped = sum(e["wal_updates"] for e in rt.events_log if e["kind"] == "store-recovered")
            if skipped:
                self.acted["no-wal"] = f"{skipped} logged shared-state updates since the checkpoint not rolled forward"
        if "no-dedup" in self.names:
            seen: set = set()
            dups = 0
            for s in obs.serial.steps:
                if s.tag is not None and s.code not in ("get", "declare"):
                    ident = (s.vertex, s.obj, s.key, s.tag)
                    dups += ident in seen
                    seen.add(ident)
            if dups:
                self.acted["no-dedup"] = f"{dups} duplicate updates reached the store"

    def tamper(self, rt: SimRuntime, phys: RunResult) -> None:
        """The breaks that corrupt what the physical run reports."""
        if "reorder-flow" in self.names:
            self._reorder(phys)
        if "alert-clock" in self.names and phys.alerts:
            i = len(phys.alerts) // 2
            a = phys.alerts[i]
            phys.alerts[i] = (*a[:3], a[3] + 1)
            self.acted["alert-clock"] = f"alert {a[1]} on {a[2]} moved from clock {a[3]} to {a[3] + 1}"
        if "lose-output" in self.names:
            later = [i for i, (c, _) in enumerate(phys.outputs) if c & ((1 << 48) - 1) >= self.from_clock]
            if later:
                c, _ = phys.outputs.pop(later[0])
                self.acted["lose-output"] = f"output of packet #{c & ((1 << 48) - 1)} lost"
        if "state-drift" in self.names:
            self._drift(rt, phys)

    def _reorder(self, phys: RunResult) -> None:
        first: dict[Hashable, int] = {}
        for i, (_, f) in enumerate(phys.outputs):
            p = Packet(f)
            if not p.l3:
                continue
            key = (p.src, p.sport, p.dst, p.dport, p.proto)
            if key in first:
                j = first[key]
                out = phys.outputs
                out[i], out[j] = out[j], out[i]
                self.acted["reorder-flow"] = f"outputs of clocks {out[j][0]} and {out[i][0]} swapped"
                return
            first[key] = i

    def _drift(self, rt: SimRuntime, phys: RunResult) -> None:
        for addr in sorted(phys.store, key=repr):
            value = phys.store[addr]
            if isinstance(value, int) and not isinstance(value, bool) and addr[0] != "root":
                key = ObjectKey(addr[0], addr[1], addr[2], False)
                data = rt.store.engine.data
                if key not in data:
                    key = key._replace(per_flow=True)
                data[key] = value + 1
                phys.store[addr] = value + 1
                phys.state = canonical(rt.logical_state())
                self.acted["state-drift"] = f"{addr[0]}.{addr[1]}[{_show(addr[2], 60)}] {value} -> {value + 1}"
                return


class DoubleValueOp:
    """``--break wrong-value-op``: a store that applies the first value operation
    at or after the break's clock twice and answers the second result."""

    def __init__(self, backend: Any, state: BreakState) -> None:
        self._backend = backend
        self._state = state

    def execute(self, ops: list[Op]) -> list[Any]:
        results = self._backend.execute(ops)
        st = self._state
        if "wrong-value-op" in st.acted:
            return results
        for i, op in enumerate(ops):
            if op.code == "apply" and op.tag is not None and op.tag[0] >= st.from_clock:
                again = op.replace(tag=None, seq=0, xor_id=0)
                results[i] = self._backend.execute([again])[0]
                st.acted["wrong-value-op"] = (f"{op.args[0]} on {op.key.vertex}.{op.key.obj}"
                                              f"[{_show(op.key.key, 60)}] applied twice at clock {op.tag[0]}")
                break
        return results

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


# -- seeds -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Variant:
    """One seeded configuration of a scenario: what a seed decides."""

    seed: int
    parallelism: dict[str, int]
    model: str
    store: str
    batch_size: int
    kill: str = ""                  # --runtime proc --kill: the SIGKILL this seed makes (VERTEX[I]@N)

    def describe(self) -> str:
        par = ",".join(f"{k}={v}" for k, v in self.parallelism.items())
        text = f"model {self.model}, store {redact(self.store)}, batch {self.batch_size}, parallelism {par}"
        return text + (f", kill {self.kill}" if self.kill else "")

    def as_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["store"] = redact(self.store)       # (a password is never printed or written)
        if not self.kill:
            del out["kill"]
        return out


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
            pol = chain.vertices[name].scaling       # (a managed vertex starts within its min..max)
            lo, hi = (1, 4) if pol is None else (max(1, pol.min), max(pol.min, min(4, pol.max)))
            par[name] = rng.randint(lo, hi)
    model = scenario.model or rng.choice(["EO", "EO+C", "EO+C+NA"])
    store = scenario.store or rng.choice(stores)
    batch = scenario.batch_size or rng.choice([1, 7, 32, 64, 256])
    return Variant(seed, par, model, store, batch)


def kill_count(spec: str) -> int:
    """How many kills ``random`` or ``random:K`` draws; 0 for explicit kills."""
    if spec == "random":
        return 1
    if not spec.startswith("random:"):
        return 0
    k = spec[len("random:"):]
    if not k.isdigit() or int(k) < 1:
        raise ValueError(f"--kill {spec!r}: random:K needs K, the kills per seed, at least 1")
    return int(k)


DURING = "during"           # --kill during: a process killed during one of the seed's changes


def draw_kill(v: Variant, n_packets: int, spec: str, roots: int = 1, changes: Sequence[str] = ()) -> str:
    """``chc check --runtime proc --kill SPEC`` (docs/proc.md): the kills seed ``v`` makes,
    comma-separated.  ``random`` (``random:K``: K of them, of different processes): an
    NF instance, a root (one of ``roots``) or the store server (not in model T) of the
    seed's chain and an input packet,
    drawn from the seed (apart from what :func:`variant` draws, so a seed's variant is
    the same with and without a kill), the packet in the middle 80% of the input; else
    ``SPEC`` itself (``VERTEX[I]@N`` or ``root[R]@N``, comma-separated).  ``during``: a
    process killed during the K-th of the seed's scaling changes (``changes``: the
    vertex each scaling event changes), both drawn: half the time an instance of the
    changing vertex (a scale-out's new one included), else any vertex's instance, a
    root or the store server (§5.1 with §5.4)."""
    if spec == DURING:
        if not changes:
            return ""
        rng = random.Random(f"during:{v.seed}")
        k = rng.randrange(len(changes))
        store = ["store"] if v.model != "T" and recoverable_url(v.store) else []
        vertex = changes[k] if rng.random() < 0.5 else rng.choice([*sorted(v.parallelism), "root", *store])
        if vertex == "store":
            return f"store@change:{k + 1}"
        i = rng.randrange(roots) if vertex == "root" else rng.randrange(v.parallelism[vertex] + 1)
        return f"{vertex}[{i}]@change:{k + 1}"
    k = kill_count(spec)
    if not k:
        return spec
    rng = random.Random(f"kill:{v.seed}")
    instances = [(name, i) for name, n in v.parallelism.items() for i in range(n)]
    instances += [("root", r) for r in range(roots)]
    if v.model != "T" and recoverable_url(v.store):
        # the store server (§5.4 store failover; on Redis, in front of one server)
        instances.append(("store", 0))
    kills = []
    for _ in range(min(k, len(instances))):
        vertex, i = rng.choice(instances)       # (the first draw is random:1's: seeds keep their kill)
        instances.remove((vertex, i))
        at = rng.randint(max(1, n_packets // 10), max(1, n_packets - n_packets // 10))
        kills.append(f"{vertex}@{at}" if vertex == "store" else f"{vertex}[{i}]@{at}")
    return ",".join(kills)


@dataclasses.dataclass
class SeedResult:
    """One seed's verdict: pass, diverged, unrecoverable, not-exercised or uncaught."""

    variant: Variant
    result: CheckResult
    verdict: str
    breaks: dict[str, str]            # break -> what it did ("" when it found nothing)

    def as_json(self) -> dict:
        r = self.result
        return {"seed": self.variant.seed, "verdict": self.verdict, "ok": self.verdict == "pass",
                "variant": self.variant.as_json(), "drawn": self.variant.describe(),
                "faults": r.network, "events": r.events, "not_done": r.not_done, "breaks": self.breaks,
                "store_steps": r.steps,
                "unrecoverable": r.unrecoverable,
                "first_divergence": str(r.first) if r.first else None,
                "likely_cause": r.cause,
                "divergences": [str(d) for d in r.divergences],
                "divergence_kinds": [d.what for d in r.divergences],     # output, order, alert, state, store, log
                "notes": r.notes[:5],
                **({"nf_errors": errors} if (errors := _nf_errors(r)) else {}),
                # (with --kill or a scenario's crashes on proc: the kills that were not made, so
                # recovery was not tested by them, of how many)
                **({"kills_not_made": r.kills_not_made, "kills_planned": r.kills_planned}
                   if r.kills_planned else {})}


def _nf_errors(r: CheckResult) -> dict | None:
    """The NF's own errors (exceptions, wrong returns, refused updates) in the seed's two
    runs: how many in each, every kind the logical chain met (its type, the NF's line that
    raised it, how many, the first), and the physical instances' first ones; None if none."""
    ref, phys = r.reference, r.physical
    summary = phys.summary if phys is not None else None
    physical = summary.nf_errors if summary is not None else 0
    logical = ref.nf_errors if ref is not None else 0
    if not physical and not logical:
        return None
    return {"physical": physical, "logical": logical, "kinds": ref.error_kinds if ref is not None else [],
            "physical_first": list(summary.errors[:5]) if summary is not None else []}


def physical_runtime(chain: Chain, scenario: Any, v: Variant, n_packets: int, obs: Observers,
                     store: Any = None) -> SimRuntime:
    """The physical chain of one seeded variant of ``scenario``, as the checker runs it
    (``obs.serial`` records the store's serialization)."""
    return SimRuntime(chain.with_parallelism(v.parallelism), model=v.model, batch_size=v.batch_size, store=store,
                      pacer=scenario.pacer(), delays=scenario.expand_delays(list(chain.vertices)),
                      seed=v.seed, events=scenario.events_for(v.seed, list(chain.vertices), n_packets),
                      network=scenario.network, recorder=obs.serial,
                      log_mode=getattr(scenario, "packet_log", "local"))


def check_variant(chain: Chain, scenario: Any, records: list[tuple[int, bytes]], v: Variant,
                  breaks: tuple[str, ...] = (), open_store: Any = None, runtime: str = "sim",
                  ray_address: str = "auto", checkpoint_ms: float | None = None,
                  namespace: str = "chc") -> SeedResult:
    """Run one seeded variant of ``scenario`` (with ``breaks`` switched on) on ``runtime``
    (``sim``, ``proc``, or ``ray``: the proc runtime's workers in actors of the Ray
    cluster at ``ray_address``) and judge it.  ``open_store(url)`` opens a Redis store
    (fresh, in the Redis key ``namespace``, which the proc runtime's processes join)."""
    for name in breaks:
        b = BREAKS.get(name)
        if b is None:
            raise ValueError(f"unknown break {name!r} (known: {', '.join(BREAKS)})")
        if b.needs_store and v.model == "T":
            raise ValueError(f"--break {name} needs an externalized model (EO, EO+C, EO+C+NA)")
        if b.memory_only and v.store != "memory":
            raise ValueError(f"--break {name} needs the memory store")
        if b.proc_only and runtime == "sim":
            raise ValueError(f"--break {name} is for --runtime proc (a mechanism of its failovers)")
    if runtime in ("proc", "ray"):
        return _check_proc(chain, scenario, records, v, breaks, ray_address if runtime == "ray" else None,
                           checkpoint_ms, open_store, namespace)
    store = open_store(v.store) if (open_store is not None and v.model != "T") else None
    obs = Observers()
    state = BreakState(tuple(breaks), from_clock=len(records) // 2)
    try:
        rt = physical_runtime(chain, scenario, v, len(records), obs, store)
        state.install(rt)
        result = check_runtime(chain, rt, records, obs, tamper=state.tamper)
        if result.unrecoverable is None:
            state.observe(rt, obs)
    finally:
        if store is not None:
            store.close()
    return SeedResult(v, result, _verdict(result, breaks, state.acted), state.said())


# -- the proc runtime -----------------------------------------------------------------------

# The breaks a proc run can have: in an instance's store client, on what the run reports,
# or (with --kill) in the failover.
PROC_BREAKS = ("drop-update", "lose-output", "alert-clock", "reorder-flow", "no-xor", "no-replay", "no-wal",
               "naive-move", "no-moved-timers", "replay-as-now", "replay-by-today", "resume-as-done",
               "no-dup-suppression", "replay-by-clock", "no-root-bound", "no-callback")


def proc_refusal(scenario: Any, seeds: list[int], vertices: list[str], n_packets: int, stores: list[str],
                 breaks: tuple[str, ...], kill: str | None = None, managed: bool = False) -> str | None:
    """Why ``chc check --runtime proc`` cannot check this (one line), or None (``managed``:
    a vertex has a scaling policy, whose manager makes changes)."""
    from .runtime import procscale
    events = [e for seed in seeds for e in scenario.events_for(seed, vertices, n_packets)]
    crashes = [e.target for e in events if e.action == "crash"]
    if "no-replay" in breaks and not kill and not crashes:
        return ("--break no-replay with --runtime proc needs a --kill or a scenario's crash (it switches off "
                "the failover's replay)")
    if "no-wal" in breaks and not (kill and (kill.startswith("random") or "store@" in kill)) \
            and "store" not in crashes:
        return ("--break no-wal with --runtime proc needs a --kill of the store server (store@N, or random "
                "draws) or a scenario's crash of the store (it switches off the failover store's roll forward)")
    if "no-dup-suppression" in breaks and not any(e.action == "clone" for e in events) and not managed:
        return ("--break no-dup-suppression needs a scenario with clone events or a chain with a "
                "straggler_factor (it lets a clone pair's duplicates through)")
    if "no-callback" in breaks and not any(e.action in control.CONTROLS for e in events):
        return ("--break no-callback needs a scenario with operator controls (set-backends): it drops the "
                "callbacks those changes send to cached copies")
    if "naive-move" in breaks and not events and not managed:
        return ("--break naive-move needs a scenario with scaling events (scale-out, scale-in, move, refine) "
                "or a chain with a scaling: policy")
    # each event proc cannot run, named with its file (every reason at once: a user fixing
    # one met the next)
    refused = procscale.scenario_refusal(scenario, getattr(scenario, "source", "") or "the scenario")
    if refused:
        return refused
    other = [b for b in breaks if b not in PROC_BREAKS]
    if other:
        return f"--break {other[0]} is for --runtime sim (with --runtime proc: {', '.join(PROC_BREAKS)})"
    return None


def _check_proc(chain: Chain, scenario: Any, records: list[tuple[int, bytes]], v: Variant,
                breaks: tuple[str, ...], ray_address: str | None = None,
                checkpoint_ms: float | None = None, open_store: Any = None, namespace: str = "chc") -> SeedResult:
    """One seed on the proc runtime (docs/coe.md), or with ``ray_address`` on the ray
    runtime (the same workers in Ray actors): the store server records the
    serialization, the instances the updates they issued; the same reference and
    comparisons as for the sim follow.  Delays and pacing are the sim's virtual time:
    the proc run's own timing (real processes on real cores) is what varies here."""
    from .runtime.errors import ProcFailure
    from .runtime.proc import ProcRuntime, parse_kill

    refused = proc_refusal(scenario, [v.seed], list(chain.vertices), len(records), [v.store], breaks, v.kill,
                           any(x.scaling is not None for x in chain.vertices.values()))
    if refused:
        raise ValueError(refused)
    state = BreakState(tuple(breaks), from_clock=len(records) // 2)
    physical = chain.with_parallelism(v.parallelism)
    events = scenario.events_for(v.seed, list(chain.vertices), len(records))
    # (with scaling, an instance a scale-out adds may be named: one not there at its kill is skipped)
    named = physical.with_room() if events else physical
    kills = [parse_kill(k, named) for k in v.kill.split(",")] if v.kill else []
    cls: Any = ProcRuntime
    extra: dict[str, Any] = {}
    if ray_address is not None:
        from .runtime.procray import RayRuntime
        cls, extra = RayRuntime, {"address": ray_address}
    # On Redis the store server records in front of it (docs/proc.md); the namespace made fresh here
    if open_store is None:
        from .backends import open_store as plain
        open_store = functools.partial(plain, namespace=namespace)
    store = open_store(v.store) if v.store != "memory" else None
    out: list[tuple[int, bytes]] = []
    try:
        rt = cls(physical, model=v.model, batch_size=v.batch_size, store=store, store_url=v.store, namespace=namespace,
                 log_mode=getattr(scenario, "packet_log", "local"), write_out=True, record=True,
                 breaks=breaks, break_from=state.from_clock, kills=kills, checkpoint_ms=checkpoint_ms,
                 events=events, pacer=scenario.pacer(), seed=v.seed, **extra)
        rt.run(records, emit=lambda pkts: out.extend((p.clock, bytes(p.data)) for p in pkts))
    except ProcFailure as exc:
        return SeedResult(v, CheckResult([], [], None, None, unrecoverable=str(exc)), "unrecoverable",
                          {b: "" for b in breaks})
    finally:
        if store is not None:
            store.close()
    s = rt.summary()
    if s.state_error is not None:
        raise StateValueError(s.state_error)        # (the NF's values, not a divergence)
    alerts = sorted((a["vertex"], a["kind"], a["host"], a["clock"]) for a in s.alerts)
    stored = {(vertex, obj, key): value for vertex, objs in rt.final_state.items()
              for obj, entries in objs.items() for key, value in entries.items()}
    phys = RunResult(out, alerts, canonical(rt.logical_state()), s, stored)
    obs = Observers()
    obs.deleted = rt.recorded(obs.serial)
    obs.issued += rt.issued_updates()
    did: dict[str, list[str]] = {}
    for name, rep in sorted(rt.reported.items()):
        for b, what in rep.get("acted", {}).items():       # each instance process breaks its own client
            did.setdefault(b, []).append(f"{name}: {what}")
    state.acted.update({b: "; ".join(lines) for b, lines in did.items()})
    failovers = [e for e in s.events if e["kind"] in ("failover", "root-failover", "store-failover")]
    skipped = [f"{e['failover_process']} replayed none of the {e['not_replayed']} packets handed over to it"
               for e in failovers if e.get("not_replayed")]
    if "no-xor" in breaks:
        state.xor_skipped(sum(rep.get("xor_skipped", 0) for name, rep in rt.reported.items()
                              if name.startswith("@root")), obs, v.model)
    if "no-replay" in breaks and skipped:
        state.acted["no-replay"] = "; ".join(skipped)
    unrolled = [f"{e['failover_process']} rolled none of the {e['wal_updates']} logged updates since checkpoint "
                f"{e['checkpoint']} forward" for e in failovers if e["kind"] == "store-failover" and not e["wal"]
                and e["wal_updates"]]
    if "no-wal" in breaks and unrolled:
        state.acted["no-wal"] = "; ".join(unrolled)
    naive = [f"{e['kind']} of {e['vertex']} at input packet {e['packet']} moved {e['groups']} flow groups "
             "with no hand-over" for e in s.events if e.get("naive")]
    if "naive-move" in breaks and naive:
        state.acted["naive-move"] = "; ".join(naive)
    today = [f"{e.get('failover_process', e['kind'])} replayed by today's maps across {e['past_maps']} changes"
             for e in failovers if e.get("past_maps")]
    if "replay-by-today" in breaks and today:
        state.acted["replay-by-today"] = "; ".join(today)
    dups = [e["duplicates_delivered"] for e in s.events if "duplicates_delivered" in e]
    delivered = sum(d["outputs"] + d["alerts"] for d in dups)
    if "no-dup-suppression" in breaks and delivered:     # (and the instances' own, in their acted)
        said = state.acted.get("no-dup-suppression")
        state.acted["no-dup-suppression"] = "; ".join(
            ([said] if said else []) + [f"{len(dups)} clones: {delivered} duplicate outputs and alerts delivered"])
    resumed = [f"{e['failover_process']} started as if change {e['during_change']} were done"
               for e in failovers if {"hands over", "waits"} & set(e.get("change_part", ()))]
    if "resume-as-done" in breaks and resumed:
        state.acted["resume-as-done"] = "; ".join(resumed)
    controls = control.applied(s.events)
    if "no-callback" in state.acted:        # (§4.3 the instances' stale caches: with a change only)
        if controls:
            state.acted["no-callback"] = f"{len(controls)} operator changes; {state.acted['no-callback']}"
        else:
            del state.acted["no-callback"]
    state.tamper(None, phys)
    rep = replay(obs.serial.steps)
    ref = reference_run(chain, records, rep, controls)     # (a proc root failover stamps the same clocks)
    divs = _compare_store(obs.serial, rep, phys, obs.issued_updates(), obs.deleted) if v.model != "T" else []
    left = [r["log_first"] for r in rt.reported.values() if r.get("log_first") is not None]
    if left:
        divs.append(Divergence("log", f"packet #{min(left) & ((1 << 48) - 1)}", min(left), "completed and deleted",
                               f"still logged at the end of input ({s.log['remaining']} packet"
                               f"{'s' if s.log['remaining'] > 1 else ''} never completed)"))
    divs = compare(ref, phys, chain) + divs
    # (a scenario's crashes are kills on proc: planned as --kill's are)
    planned = len(v.kill.split(",")) if v.kill else 0
    planned += sum(e.action == "crash" for e in events)
    # (§5.3 a copy of a clone pair killed: the pair went on as the other copy, its recovery)
    recovered = failovers + [e for e in s.events if e["kind"] == "clone-resolved" and e.get("by") == "death"]
    result = CheckResult(divs, ref.notes, phys, ref, network=_kill_faults(planned, v.kill, recovered, s.events),
                         steps=len(obs.serial.steps), events=_event_counts(s.events), not_done=_not_done(s.events),
                         kills_not_made=_kills_not_made(planned, v.kill, recovered, s.events),
                         kills_planned=planned)
    return SeedResult(v, result, _verdict(result, breaks, state.acted), state.said())


def _event_counts(events: list[dict]) -> dict[str, int]:
    """How often the run did each kind of thing (scale-out, move, crash, failover, a
    refusal, ...), so a seed's report shows what its scenario exercised."""
    return dict(sorted(collections.Counter(e["kind"] for e in events).items()))


_NOT_DONE = ("-refused", "-ignored", "-skipped")


def _not_done(events: list[dict]) -> list[dict]:
    """Each thing the run was asked to do and did not (a kind ending in -refused,
    -ignored or -skipped), with what it named, when and why.  The counts alone read
    as done: "clone-refused 1" beside a PASS, with no reason in the output or in
    --json, was taken for a checked clone."""
    out = []
    for e in events:
        if not e["kind"].endswith(_NOT_DONE):
            continue
        inst = e.get("instance")
        named = e.get("target") or e.get("process") or \
            (f"{e['vertex']}[{inst}]" if inst is not None else e.get("vertex"))
        out.append({"kind": e["kind"], "target": named, "packet": e.get("packet"), "reason": e.get("reason"),
                    **({"by": e["by"]} if "by" in e else {})})
    return out


def _kills_not_made(planned: int, kill: str, failovers: list[dict], events: list[dict]) -> list[dict]:
    """The seed's ``planned`` kills (``--kill``'s and a scenario's crashes) that tested no
    recovery, each with why: those the run skipped (past the input, an instance retired
    or never added, a change never made), and kills that found nothing to recover.  A
    seed that passes with one of these passed without (part of) what its kills were to
    test, and is counted apart."""
    if not planned:
        return []
    out = [{"process": e["process"], "reason": e["reason"]} for e in events if e["kind"] == "kill-skipped"]
    if not out and not failovers and not any(e["kind"] == "manager-restarted" for e in events):
        out.append({"process": kill or "the scenario crashes",
                    "reason": "it came after the instances had finished (nothing to recover)"})
    return out


def _as_kill_target(process: str) -> str:
    """``process`` as ``--kill`` and a scenario name it, with the process's own name after
    it: ``nat[0] (nat.0#1)``, ``root[0] (@root.0)``, ``store (@store)``.  The process name
    alone (``@root.0``) was not what the user had written (a new user's trial)."""
    from .runtime.wire import logical  # (proc runs only: the wire module needs zmq)

    base = logical(process.encode()).decode()
    if base == "@store":
        return f"store ({process})"
    if base.startswith("@root."):
        return f"root[{base.removeprefix('@root.')}] ({process})"
    vertex, _, i = base.rpartition(".")
    return f"{vertex}[{i}] ({process})" if vertex and i.isdigit() and not vertex.startswith("@") else process


def _kill_faults(planned: int, kill: str, failovers: list[dict], events: list[dict]) -> dict:
    """What a seed's kills (``--kill``'s, a scenario's crashes) did, for its report's
    faults (the sim's are its network's), in the order they were made."""
    if not planned:
        return {}
    failovers = sorted(failovers, key=lambda e: e.get("killed_at_packet") or 0)
    skipped = "; ".join(f"{e['process']} ({e['reason']})" for e in events if e["kind"] == "kill-skipped")
    restarted = "; ".join(f"manager:{e['vertex']} at input packet {e.get('killed_at_packet')}, started again"
                          for e in events if e["kind"] == "manager-restarted")
    if not failovers:
        return {"not_killed": skipped} if skipped else {"killed": restarted} if restarted else \
            {"killed": f"{kill or 'the scenario crashes'}, after the instances had finished (nothing to recover)"}
    return {"killed": "; ".join(f"{_as_kill_target(e.get('died') or e['process'])} at input packet "
                                f"{e.get('killed_at_packet')}"
                                + (f" (asked at {e['kill_asked_at']}: kills land between input batches)"
                                   if e.get("kill_asked_at") is not None else "")
                                + (f" during change {e['during_change']}" if e.get("during_change") else "")
                                for e in failovers),
            "failover": "; ".join(
                e["interrupted"] if "interrupted" in e else
                f"{e['kept_process']} went on alone (the other copy of its clone pair)"
                if e["kind"] == "clone-resolved" else
                f"{e['failover_process']} replayed {e['replayed']} input packets kept since its floor "
                f"{clock_text(e['logged_floor'])} (recovery {e['recovery_s']:.2f} s)"
                if e["kind"] == "root-failover" else
                f"{e['failover_process']} restored checkpoint {e['checkpoint']} and re-executed {e['re_executed']} "
                f"logged updates (recovery {e['recovery_s']:.2f} s)" if e["kind"] == "store-failover" else
                f"{e['failover_process']} replayed {e['replayed']} packets ({e['handed_over']} handed over) "
                f"in {e['replay_s']:.2f} s (logged floor {', '.join(map(clock_text, e['logged_floor']))}, "
                f"recovery {e['recovery_s']:.2f} s"
                # (a pass that replayed nothing checked the takeover, not the replay: said so, inside
                # the parentheses: "; " separates the failovers, which the wrapping counts)
                + (", nothing to replay: only the takeover was checked)" if not e["replayed"] else ")")
                for e in failovers),
            **({"not_killed": skipped} if skipped else {})}     # (random:K: one skipped, others made)


def _verdict(result: CheckResult, breaks: tuple[str, ...], acted: dict[str, str]) -> str:
    if result.unrecoverable is not None:
        return "unrecoverable"
    if result.divergences:
        return "diverged"
    if not breaks:
        return "pass"
    return "uncaught" if any(b in acted for b in breaks) else "not-exercised"
