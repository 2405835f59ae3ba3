"""§5.1 elasticity on the ``proc`` runtime: the coordinator's part.

Theory of operation
-------------------
A scenario's ``scale-out``, ``scale-in``, ``move`` and ``refine`` events (each at an
input packet), and the decisions of the vertex managers (:mod:`procmanager`, carried
out as those events at the next input packet: :meth:`Scaler.decide`), change a
vertex's flow map: which instance each flow group goes to, on which partition scope
(§4.1).  The processes that split packets to the vertex
cannot all switch maps at one instant, so a change is tied to a clock, the
*barrier*, instead (docs/proc.md, "Scaling"):

1. The coordinator stops feeding, plans the change (:func:`plan_change`, the
   sim's rules: :meth:`~chc.core.splitter.FlowMap.even`, ``spread``) and tells
   the root in band, behind the input sent so far (``epoch``): the root's
   watermark is the barrier, and every clock it stamps from then on is past it.
2. A scale-out's new instance starts from the plan as changed; it gets nothing
   up to the barrier.
3. Every instance process is told (``epoch``) and acknowledges; only then does
   input resume.  Every upstream of the vertex splits packets past the barrier by
   the new map; once its watermark passes the barrier it keeps the new map alone
   and sends each instance of the vertex that watermark.
4. Handover (§5.1, Figure 4): each instance that loses flow groups (every one, when
   the change alters which objects several instances share: R3) runs up to the
   barrier, then flushes its updates and gives up per-flow ownership
   (``hand_over``) and sends the moved flows' timers (``passed``); each one that
   gains flow groups waits at the barrier.
5. When every instance that hands over has, each waiting one gets the go-ahead
   (``go``) with its timers and its new R3 sharing, and runs on.  A retiring
   instance ends once it has handed over, as at the end of input (its successors
   see it end).

Deviation from the paper: the paper's old instance marks each moved flow's last
packet and its new instance buffers the moved flows only; here the barrier is
that mark for every flow, and an instance that gains flow groups holds all its
packets past the barrier until the go-ahead (nothing per flow to track across
processes; the cost is that pause, measured in the events' ``handover_s``).
The barrier reaches every process without more input: the root sends every
instance it feeds its watermark with the change, and every instance, once its
watermark has passed the barrier, sends it on to every instance it feeds (one
message a link).  One change at a time: an event due while one is under way
waits for its go.

With failures (§5.4, docs/proc.md "Scaling and real failures together"): a kill
at a packet waits for the change under way and a change for the failover under
way.  A process that dies between a barrier and its go-ahead is failed over into
the change (docs/proc.md, "A death during a change"): an instance's failover
takes its part (:meth:`Scaler.for_failover` gives it the change), a root's is
past it, the store server's gives up again the hand-overs' ownership
(:meth:`Scaler.store_failed_over`) and the go-ahead waits for it; a death before
the barrier is known stops the run.  What a failover needs from the changes
before it, this keeps: per instance the timers each go-ahead gave it, per vertex
what its instances shared since each change (:meth:`Scaler.for_failover`).  A
retired instance's process stays until the end of the run with what it sent and
the reports it kept.

Warm spares: for each vertex that may scale out (a scenario's scale-out, or a
vertex manager), the process of its next instance is started ahead and waits
(:func:`procworker.spare`); the scale-out hands it the plan and the change
(:meth:`Scaler.take_spare`), and the next one is started after the change.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from ..core.manager import balance
from ..core.root import root_of
from ..core.splitter import FlowMap
from ..scenario import Event
from ..spec import MAX_PARALLELISM, Chain
from . import proccontrol, procworker
from .control import CONTROLS
from .procworker import instance_name
from .sim import shared_objects
from .storeserver import STORE
from .wire import Kind, encode, logical

#: The scenario actions the proc runtime carries out (§5.3 clones: ProcRuntime.clone;
#: slow-downs: ProcRuntime.slow); besides, a crash is a kill (proc.crash_kill).
ACTIONS = ("scale-out", "scale-in", "move", "refine", "clone", "slow", "speed-up", "set-backends")
#: Of them, those that change no flow map and need no store (a process sleeps per packet).
SLOWDOWNS = ("slow", "speed-up")


SPARE_UP_S = 10.0       # how long a scale-out, or the end of a run, waits for a spare still starting


def part_in(change: dict, vertex: str, i: int, targets: list[str]) -> list[str]:
    """What instance ``vertex[i]`` does in ``change`` (a failover's event says it)."""
    part = []
    if vertex == change["vertex"]:
        if i in change["passers"]:
            part.append("handed over" if change.get("passed") else "hands over")
        if i in change["waiters"]:
            part.append("waits")
    if change["vertex"] in targets:
        part.append("feeds it")
    return part


def refusal(events: list, chain: Chain, model: str, managed: tuple[str, ...] = ()) -> str | None:
    """Why the proc runtime cannot run these scenario events, or the scaling policies of
    the vertices ``managed`` (one line), or None."""
    if not events and not managed:
        return None
    other = sorted({e.action for e in events} - set(ACTIONS))
    if other:
        return (f"the proc runtime runs the scenario actions {', '.join(ACTIONS)}; not yet {other[0]} "
                "(docs/proc.md); use --runtime sim")
    timed = next((e for e in events if e.action == "clone" and e.params.get("for_us")), None)
    if timed is not None:
        return (f"clone of {timed.target}: for_us (virtual time) is the sim's; the proc runtime runs a pair "
                "for_packets input packets (docs/proc.md, \"Clones\"); use --runtime sim")
    controls = [e for e in events if e.action in CONTROLS]
    if controls and chain.roots > 1:
        return (f"{controls[0].action} of {controls[0].target}: operator controls with several roots "
                f"({chain.roots}) are not built on the proc runtime (the quiet barrier is one root's; "
                "docs/proc.md, \"Operator controls\"); use one root, or --runtime sim")
    if controls and any(e.action == "clone" for e in events):
        return (f"{controls[0].action} of {controls[0].target}: operator controls with clone events are not "
                "built on the proc runtime (docs/proc.md, \"Operator controls\"); use --runtime sim")
    # (§5.3 a sleep, §4.3 a control: any model)
    events = [e for e in events if e.action not in SLOWDOWNS and e.action not in CONTROLS]
    if not events and not managed:
        return None
    what = "scaling" if events else f"{managed[0]}'s scaling policy"
    if model == "T":
        return (f"{what}: scaling moves flows between instances through the store: model T has none "
                "(use EO, EO+C, EO+C+NA, or --no-scaling)")
    clone = next((e for e in events if e.action == "clone"), None)
    if clone is not None and chain.roots > 1:
        # §5.3 a pair's copies run one clock sequence in batches of their own, and receivers
        # drop per clock past the highest through either copy sent: with several roots a
        # through is no clock of every root (Plan.orders replays one process's batches)
        return (f"clone of {clone.target}: clones with several roots ({chain.roots}) are not built on the proc "
                "runtime (a pair's duplicates are dropped per clock, which needs one clock order; "
                "docs/proc.md); use one root, or --runtime sim")
    if chain.roots > 1:
        return f"{what}: the proc runtime scales with one root (a barrier per root is not built yet; docs/proc.md)"
    return None


#: What each scenario action proc does not run is (one line's words).
_FAULT = "a store-link fault: the sim's simulated links"
_SIM_ONLY = {"drop": _FAULT, "duplicate": _FAULT, "delay": _FAULT, "partition": _FAULT}


def scenario_refusal(scenario: Any, where: str) -> str | None:
    """Why the proc runtime cannot run ``scenario`` (one line, exit 2 for the CLI), or None:
    each event it cannot run named as ``FILE: events[i]: ...`` (``where``: the file; every
    reason at once, as a user fixing one met the next), and ``network:`` faults.  (What a
    ``random:`` block draws, proc runs: scaling, clones, crashes at input packets.)"""
    why = []
    for i, e in enumerate(scenario.events):
        label = f"events[{i}]"
        if e.action in _SIM_ONLY:
            why.append(f"{label}: {e.action} of {e.target or '*'} ({_SIM_ONLY[e.action]})")
        elif e.action not in ACTIONS and e.action != "crash":
            why.append(f"{label}: {e.action} (not yet on proc)")
        elif e.at_packet is None and e.action == "crash":
            why.append(f"{label}: crash of {e.target} at {{time_us: {e.at_time_ns / 1000:g}}} (a kill is at an "
                       "input packet: at {packets: N})")
        elif e.action == "clone" and e.params.get("for_us"):
            why.append(f"{label}: clone of {e.target} for_us (virtual time: a pair runs for_packets)")
    if getattr(scenario, "network", None):
        why.append("network: faults (the sim's simulated links)")
    if not why:
        return None
    return (f"{where}: {'; '.join(why)}: the proc runtime runs {', '.join(ACTIONS)} and crash events (a crash is "
            "a real SIGKILL, a slow a real sleep per packet; docs/proc.md); use --runtime sim")


def room(chain: Chain, events: list) -> dict[str, int]:
    """Per vertex, the most instances it can have in a run of ``events`` (a scale-out adds
    one; retired ones keep their names; a vertex manager may add up to the limit): the
    mailboxes a tcp:// run sets ports aside for."""
    out = {v: MAX_PARALLELISM if x.scaling is not None else x.parallelism for v, x in chain.vertices.items()}
    for e in events:
        if e.action == "scale-out":
            out[_target(e, chain)[0]] += 1
    return out


def _by(event: Any, reason: str = "reason") -> dict:
    """Who asked for a change: the scenario, or a vertex manager (with its reason)."""
    p = event.params
    return {"by": p.get("by", "scenario"), **({reason: p["reason"]} if p.get("reason") else {})}


def _target(event: Any, chain: Chain) -> tuple[str, int | None]:
    name, bracket, rest = (event.target or "").partition("[")
    if name not in chain.vertices:
        raise ValueError(f"unknown vertex {name!r} in {event.target!r} (vertices: {', '.join(chain.vertices)})")
    return name, int(rest.rstrip("]")) if bracket else None


def plan_change(chain: Chain, flowmap: FlowMap, active: list[int], event: Any) -> dict:
    """What ``event`` does to a vertex whose map is ``flowmap`` and whose active
    instances are ``active`` (sans-I/O; the sim's rules): the new map and who hands
    over to whom, or ``refused`` with the reason."""
    vertex, index = _target(event, chain)
    fm = copy.deepcopy(flowmap)
    fm._ensure_table()
    new: list[int] = []
    retire: list[int] = []
    after = list(active)
    moves: list[tuple[list[int], int]] = []
    action = event.action
    if action == "scale-out":
        if fm.n >= MAX_PARALLELISM:
            return {"refused": f"{vertex} has had {MAX_PARALLELISM} instances (MAX_PARALLELISM; retired ones count)"}
        new = [fm.add_instance()]
        after.append(new[0])
        moves = fm.even(after)
    elif action == "scale-in":
        victim = active[-1] if index is None else index
        if len(active) < 2 or victim not in active:
            return {"refused": "the last active instance stays" if len(active) < 2 else "not an active instance"}
        retire = [victim]
        after.remove(victim)
        moves = fm.spread(victim, after)
    elif action == "move" and "groups" in event.params:
        # a vertex manager's rebalance (§4.1): these flow groups to one instance
        if event.params["to"] not in active:
            return {"refused": "not an active instance"}
        moves = [(list(event.params["groups"]), event.params["to"])]
    elif action == "move":
        if "pick" in event.params:      # seed-drawn: two of the instances active now
            if len(active) < 2:
                return {"refused": "one active instance"}
            k = event.params["pick"]
            source = active[k % len(active)]
            to = active[(k % len(active) + 1 + (k // len(active)) % (len(active) - 1)) % len(active)]
        else:
            source, to = event.params["from"], event.params["to"]
        if source not in active or to not in active:
            return {"refused": "not an active instance"}
        groups = fm.groups_of(source)
        moves = [(groups[:int(len(groups) * float(event.params.get("fraction", 0.5)))], to)]
    else:                               # refine (§4.1)
        if fm.level + 1 >= len(fm.ladder):
            return {"refused": f"{fm.scope.name} is the finest scope"}
        fm.set_level(fm.level + 1)
    losers: set[int] = set()
    gainers: set[int] = set(new)
    for groups, to in moves:
        lost = fm.move(groups, to)
        losers |= set(lost)
        if lost:
            gainers.add(to)
    if action == "refine":              # any flow may change instance
        losers, gainers = set(active), set(active)
    if len(after) == 1:
        fm.set_level(0)                 # one instance: back to the coarsest scope, nothing moves
    was = shared_objects(chain, flowmap, vertex) if len(active) > 1 else frozenset()
    shared = shared_objects(chain, fm, vertex) if len(after) > 1 else frozenset()
    passers, waiters = set(losers), gainers
    if was != shared:                   # R3: every instance flushes and rebinds at the barrier
        passers |= set(active)
        waiters |= set(after)
    return {"flowmap": fm, "new": new, "retire": retire, "after": after, "shared": sorted(shared),
            "passers": sorted(passers), "waiters": sorted(waiters), "losers": sorted(losers),
            "moves": [[len(g), to] for g, to in moves if g]}


class Scaler:
    """The coordinator's side of the changes (module doc): the events still to come,
    every vertex's map and active instances, the change under way."""

    def __init__(self, rt: Any, events: list) -> None:
        self.rt = rt
        self.events = sorted((e for e in events if e.at_packet is not None), key=lambda e: e.at_packet)
        # events at a time: at the first input packet whose arrival (the scenario's
        # pacing; by default its capture time since the first packet) reaches it
        self.timed = sorted((e for e in events if e.at_packet is None), key=lambda e: e.at_time_ns)
        self.flowmaps = rt.plan.flowmaps()
        chain = rt.chain
        self.active = {v: list(range(chain.vertices[v].parallelism)) for v in chain.vertices}
        self.sizes = {v: [len(a)] for v, a in self.active.items()}
        self.retired = dict.fromkeys(chain.vertices, 0)
        self.open: dict | None = None           # the change under way, until its go
        self.ids = 0
        self.barriers: dict[int, int] = {}
        self.acks: set[str] = set()
        # §5.4 for failovers: per logical instance, the timers each go-ahead gave it (with
        # its barrier); per vertex, what its instances share now (R3)
        self.gifts: dict[str, list[tuple[int, list]]] = {}
        # per vertex, the map in force up to each change's barrier ([barrier, n, table,
        # level], oldest first): a failover sends what it replays by them (§5.1 with §5.4)
        self.eras: dict[str, list[list]] = {}
        # a scale-out's new instance: the barrier it joined at (it has nothing up to it)
        self.born: dict[str, int] = {}
        # --kill VERTEX[I]@change:K: change K -> the kills during it
        self.kills: dict[int, list] = {}
        for k in rt.kills:
            if k.during:
                self.kills.setdefault(k.during, []).append(k)
        self.sharing: dict[str, list[tuple[int, list[str]]]] = {
            v: [(-1, sorted(shared_objects(chain, self.flowmaps[v], v)) if chain.vertices[v].parallelism > 1
                 else [])] for v in chain.vertices}
        # §5.1 warm spares (procworker.spare): per vertex that may scale out, the process of
        # its next instance, started ahead; those that said they are up; those told to go
        grow = {_target(e, chain)[0] for e in [*self.events, *self.timed] if e.action == "scale-out"}
        self.may_grow = sorted(grow | set(rt.plan.managers)) if rt.spares else []
        self.spares: dict[str, str] = {}
        self.spares_up: set[str] = set()
        self.spare_started: dict[str, float] = {}
        self.dismissed: set[str] = set()

    def due(self, index: int, vt: int | None = None) -> bool:
        """Whether an event is due at input packet ``index``, which arrives at ``vt``."""
        return self._next(index, vt, pop=False) is not None

    def _next(self, index: int, vt: int | None, pop: bool = True) -> Any:
        for queue, due in ((self.events, lambda e: e.at_packet <= index),
                           (self.timed, lambda e: vt is not None and e.at_time_ns <= vt)):
            if queue and due(queue[0]):
                return queue.pop(0) if pop else queue[0]
        return None

    def expire(self) -> None:
        """End of input: events past its end are not run (logged why)."""
        for event in self.events + self.timed:
            at = {"packet": event.at_packet} if event.at_packet is not None else {
                "packet": None, "at_us": event.at_time_ns / 1000}
            self.rt.events.append({"kind": f"{event.action}-refused", "vertex": _target(event, self.rt.chain)[0],
                                   "instance": None, **at, "by": "scenario",
                                   "reason": "the input ended before it"})
        self.events, self.timed = [], []
        for k in (k for kills in self.kills.values() for k in kills):
            self.rt.events.append({"kind": "kill-skipped", "process": k.process, "packet": self.rt.fed,
                                   "reason": f"no change {k.during}: the run made {self.ids}"})
        self.kills = {}

    def for_failover(self, name: str, floors: dict[int, int]) -> dict:
        """What a failover of logical instance ``name`` needs besides its records: the
        timers moves gave it (those whose packet is below its root's floor have ended:
        an armed timer keeps its packet logged), and what its vertex shared since each
        change (R3: the replay runs each packet sharing what it ran sharing)."""
        gifts = []
        for barrier, timers in self.gifts.get(name, ()):
            live = [t for t in timers if t[7] >= floors.get(root_of(t[7]), -1)]
            if live:
                gifts.append((barrier, live))
        self.gifts[name] = gifts
        vertex, i = name.rsplit(".", 1)
        # (a failover starts from the plan as changed: it knows every change made so far,
        # also one whose epoch its instance died before acknowledging, maybe after the go)
        self.acks.add(name)
        sharing = self.sharing[vertex]
        out = {"gifts": gifts, "sharing": sharing, "shared": sharing[-1][1], "past": self.past(floors),
               "born": self.born.get(name, -1)}
        o = self.open
        if o is not None:
            # §5.1 with §5.4 it died during a change: its failover takes its part in it
            # (docs/proc.md, "A death during a change"), from the map in force until the
            # barrier; a hand-over the coordinator has had is not done again
            c = o["change"]
            o.setdefault("failed_over", []).append(name)
            out["change"] = {**c, "old": self.eras[c["vertex"]][-1][1:],
                             "passed": vertex == c["vertex"] and int(i) in o["passed"]}
        return out

    def past(self, floors: dict[int, int]) -> dict[str, list[list]]:
        """Per vertex, the maps in force before each change whose barrier a replay from
        ``floors`` can reach (below a floor nothing is replayed)."""
        return {v: kept for v, eras in self.eras.items()
                if (kept := [e for e in eras if e[0] >= floors.get(root_of(e[0]), -1)])}

    def run_due(self, index: int, vt: int | None = None) -> None:
        while (event := self._next(index, vt)) is not None:
            if self._change(event, index) is False:
                (self.events if event.at_packet is not None else self.timed).insert(0, event)
                return              # (it and those after it, at the next input packet)

    def decide(self, vertex: str, decisions: list, counts: list[int], index: int) -> None:
        """§3 a vertex manager's decisions (``[action, instance, reason]``, with the
        interval's flow-group counts), carried out at input packet ``index`` as
        the scenario events of the same action; the policy's bounds hold (§4.1 a rebalance
        moves the hottest groups, or refines: :func:`~chc.core.manager.balance`)."""
        policy = self.rt.chain.vertices[vertex].scaling
        for action, instance, reason in decisions:
            why = {"by": "manager", "reason": reason}
            refused = self.why_refused(vertex, action)
            if refused:
                self.rt.events.append({"kind": f"{action}-refused", "vertex": vertex, "instance": instance,
                                       "packet": index, "reason": refused, "by": "manager", "asked": reason})
                continue
            if action == "rebalance":
                fm = self.flowmaps[vertex]
                fm._ensure_table()
                step = balance(fm.table, counts, self.active[vertex], policy.imbalance,
                               fm.level + 1 < len(fm.ladder))
                if step is None:
                    continue
                event = (Event("refine", vertex, why) if step[0] == "refine" else
                         Event("move", vertex, {**why, "groups": step[1], "to": step[2]}))
            else:
                target = vertex if instance is None else f"{vertex}[{instance}]"
                event = Event(action, target, why)
            if self._change(event, index) is False:     # (the manager decides again)
                self.rt.events.append({"kind": f"{action}-refused", "vertex": vertex, "instance": instance,
                                       "packet": index, "by": "manager", "asked": reason,
                                       "reason": "the kept copy of a clone pair of "
                                                 f"{', '.join(sorted(self.rt.unpairing))} is not back on the store"})

    def why_refused(self, vertex: str, action: str) -> str | None:
        """Why a vertex manager's ``action`` on ``vertex`` is refused now (the policy's
        bounds, or a clone), or None."""
        policy = self.rt.chain.vertices[vertex].scaling
        n = len(self.active[vertex])
        return (f"at max ({policy.max})" if action == "scale-out" and n >= policy.max else
                f"at min ({policy.min})" if action == "scale-in" and n <= policy.min else
                f"a clone pair of {vertex} runs" if action == "clone" and
                any(p["vertex"] == vertex for p in self.rt.pairs.values()) else
                "the run was not started for clones (no clone event, straggler_factor or policy callable; "
                "docs/proc.md, \"Clones\")" if action == "clone" and not self.rt.plan.clones else None)

    # -- §5.1 warm spares -----------------------------------------------------------------------
    def start_spares(self) -> None:
        """A spare for each vertex that may scale out and has none (at the start and after
        each change: the next instance's number is the width of the vertex's map)."""
        rt = self.rt
        for v in self.may_grow:
            n = self.flowmaps[v].n
            if v not in self.spares and n < MAX_PARALLELISM:
                name = self.spares[v] = instance_name(v, n)
                rt.box.expected.add(name.encode())
                self.spare_started[name] = time.monotonic()
                rt._launch(rt.mp, name, procworker.spare, (rt.plan, v, n))

    def _spare_starting(self, event: Any) -> bool:
        """Whether a scale-out of ``event``'s vertex has a spare still starting to wait for
        (at most SPARE_UP_S from its start: one never up by then is killed, and the
        scale-out starts a process of its own)."""
        if event.action != "scale-out":
            return False
        name = self.spares.get(_target(event, self.rt.chain)[0])
        if name is None or name in self.spares_up:
            return False
        if self.rt.procs[name].is_alive() and time.monotonic() - self.spare_started[name] < SPARE_UP_S:
            return True
        self._drop_spare(name)
        return False

    def take_spare(self, name: str) -> bool:
        """Whether the scale-out's new instance ``name`` has a spare process up (waited for
        before the change began: ``_spare_starting``), now its own."""
        vertex = name.rsplit(".", 1)[0]
        if self.spares.get(vertex) != name:
            return False
        if name not in self.spares_up or not self.rt.procs[name].is_alive():
            self._drop_spare(name)      # (not up, or dead with its end not seen yet)
        return self.spares.pop(vertex, None) == name

    def _drop_spare(self, name: str) -> None:
        """Kill spare ``name`` (if it still runs) and handle its end now: spare_gone forgets it."""
        p = self.rt.procs[name]
        p.kill()
        p.join(5)
        self.rt._reap(name)

    def spare_gone(self, name: str) -> bool:
        """Whether the process that ended was a spare nobody took (or one told to go)."""
        vertex = name.rsplit(".", 1)[0]
        if self.spares.get(vertex) == name:
            del self.spares[vertex]
            self.spares_up.discard(name)
            return True
        return name in self.dismissed

    def end_spares(self) -> None:
        """The run is over: the spares nobody took go (one still starting, once it is up:
        else it would be killed, one started after the last change of a short run)."""
        rt = self.rt
        deadline = time.monotonic() + SPARE_UP_S
        while any(n not in self.spares_up for n in self.spares.values()) and time.monotonic() < deadline:
            rt._service(100)
        bye = encode(Kind.CONTROL, ["bye", None])
        for name in self.spares.values():
            if name in self.spares_up:
                rt.box.reply(name.encode(), bye)
                self.dismissed.add(name)
        self.spares.clear()

    def take(self, name: str, what: str, data: Any) -> bool:
        """A worker's message about a change; False if it is none."""
        if what == "spare":
            self.spares_up.add(name)
        elif what == "barrier":
            self.barriers[data[0]] = data[1]
        elif what == "epoch":
            self.acks.add(logical(name.encode()).decode())      # (a failover acknowledges for its instance)
        elif what == "passed":
            self._passed(name, data)
        else:
            return False
        return True

    # -- one change ----------------------------------------------------------------------------
    def _change(self, event: Any, index: int) -> bool | None:
        """Carry out ``event``; False: not now (a kept copy not yet back on the store)."""
        rt = self.rt
        if event.action in CONTROLS:        # §4.3 an operator control, with the chain quiet
            proccontrol.run(rt, event, index)
            return
        if event.action in SLOWDOWNS:       # §5.3 a straggler made (or undone): no change to wait for
            vertex, i = _target(event, rt.chain)
            spec = event.params.get("delay")
            rt.slow(vertex, i, None if spec is None else str(spec), _by(event), event.action)
            return
        if event.action == "clone":
            vertex, i = _target(event, rt.chain)
            while self.open is not None or rt.recovering:     # (one change at a time)
                rt._service(100)
            rt.clone(vertex, i, _by(event), int(event.params.get("for_packets", 0)))
            return
        # §5.3 one change at a time: a clone pair ends first (the scaling change's hand-overs
        # and the new instances' feeders would not know the pair)
        rt.resolve_due(final=True)
        if rt.unpairing:
            # §5.3 a kept copy back on the store first; not waited for here, with the feed
            # stopped: it may need watermarks that only more input brings (ProcRuntime.clone)
            return False
        while self.open is not None or rt.recovering or self._spare_starting(event):
            # one change at a time (the barriers' watermarks flow without input), and none
            # while a failover is under way (its process started from the plan before it);
            # a scale-out's spare, if starting, is waited for here, before the plan has the
            # new instance: a failover while _join waited for it told the instance, which
            # a spare never answers until assigned (the run hung)
            rt._service(100)
        vertex, _ = _target(event, rt.chain)
        plan = plan_change(rt.chain, self.flowmaps[vertex], self.active[vertex], event)
        if "refused" in plan:
            rt.events.append({"kind": f"{event.action}-refused", "vertex": vertex, "instance": None,
                              "packet": index, "reason": plan["refused"], **_by(event, "asked")})
            return
        if not plan["passers"] and not plan["new"]:
            rt.events.append({"kind": event.action, "vertex": vertex, "instance": None, "packet": index,
                              "groups": 0, **_by(event)})
            return
        started = time.perf_counter()
        fm = plan["flowmap"]
        # --break naive-move (a test's: the checker must catch it): the instances that
        # gain flow groups do not wait for the hand-over (what they read may be stale)
        naive = "naive-move" in rt.plan.breaks
        if naive:
            plan["waiters"] = []
        self.ids += 1
        was = self.flowmaps[vertex]
        change = {"id": self.ids, "vertex": vertex, "n": fm.n, "table": fm.table, "level": fm.level,
                  "new": plan["new"], "retire": plan["retire"], "shared": plan["shared"],
                  "passers": plan["passers"], "waiters": plan["waiters"], "losers": plan["losers"]}
        self.flowmaps[vertex] = fm
        self.active[vertex] = plan["after"]
        if len(plan["after"]) != self.sizes[vertex][-1]:
            self.sizes[vertex].append(len(plan["after"]))
        procworker.take_change(rt.plan, change)
        # (open from here: a death before the barrier is known stops the run, after it
        # the failover takes the dead one's part; an instance may hand over before the
        # last acknowledges)
        self.open = o = {"change": change, "passed": set(), "timers": {}, "started": started, "packet": index,
                         "action": event.action, "moves": plan["moves"], "naive": naive, "fed_s": 0.0,
                         "by": _by(event)}
        self.acks = set()
        # 1. the barrier: the root's watermark behind everything fed so far
        rt._send(0, encode(Kind.INPUT, ["epoch", change]))
        while change["id"] not in self.barriers:
            rt._service(100)
        self.eras.setdefault(vertex, []).append(
            [self.barriers[change["id"]], was.n, list(was.table) if was.table is not None else None, was.level])
        change["barrier"] = self.barriers.pop(change["id"])
        # 2. a new instance, from the plan as changed
        for j in plan["new"]:       # (after failovers: it talks to them, not the dead)
            self.born[instance_name(vertex, j)] = change["barrier"]
            joins = {**change, "current": dict(rt.current), "fenced": list(rt.fenced)}
            joined = time.perf_counter()
            o["spare"] = rt._join(instance_name(vertex, j), (rt.plan, "instance", (vertex, j), None, joins))
            o["start_s"] = round(time.perf_counter() - joined, 6)
        # 3. every instance process knows before any clock past the barrier is fed (a
        # failover started since is told by its replay, and acknowledges for its instance)
        told = [instance_name(v, i) for v, i in rt.plan.instances() if not (v == vertex and i in plan["new"])]
        for kill in self.kills.pop(change["id"], ()):
            rt._kill(kill)              # --kill VERTEX[I]@change:K: a death mid-change, before it is told
        frame = encode(Kind.CONTROL, ["epoch", change])
        for name in told:
            rt._tell(name, frame)
        while not self.acks.issuperset(told):
            rt._service(100)
        o["fed_s"] = time.perf_counter() - started
        if "event" in o:                # (the go-ahead came first: every hand-over was quick)
            o["event"]["pause_s"] = round(o["fed_s"], 6)
        if not change["passers"] and self.open is o:
            self._go()

    def _passed(self, name: str, data: list) -> None:
        o = self.open
        if o is None or data[0] != o["change"]["id"]:
            return
        o["passed"].add(int(logical(name.encode()).decode().rsplit(".", 1)[1]))   # (a failover: nat.0#1)
        for to, timer in data[1]:
            o["timers"].setdefault(to, []).append(timer)
        if o["passed"].issuperset(o["change"]["passers"]):
            if self.rt._failing is not None and logical(self.rt._failing.encode()).decode() == STORE:
                o["go_owed"] = True     # (its checkpoint needs the failover store: after it)
                return
            self._go()

    def store_failed_over(self) -> dict:
        """§5.1 with §5.4 the store server died during a change: the failover store starts
        from a checkpoint that may predate hand-overs the coordinator has had, so it has
        their per-flow ownership back; each is given up again (the instances that keep
        flows take theirs back with their next update, as after a hand-over)."""
        o = self.open
        if o is None:
            return {}
        c = o["change"]
        o.setdefault("failed_over", []).append(STORE)
        released = 0
        for i in sorted(o["passed"] & set(c["losers"])):
            released += self.rt.remote.release_instance(c["vertex"], i)
        return {"during_change": c["id"], "owners_released_again": released}

    def go_if_owed(self) -> None:
        if self.open is not None and self.open.pop("go_owed", False):
            self.open["go_after_store_failover"] = True
            self._go()

    def _go(self) -> None:
        o, self.open = self.open, None
        c = o["change"]
        vertex = c["vertex"]
        rt = self.rt
        for i in c["waiters"]:
            timers = o["timers"].get(i, [])
            rt._tell(instance_name(vertex, i), encode(Kind.CONTROL, ["go", [c["id"], timers]]))
            if timers and rt.plan.recover:      # §5.4 its failover's replay gets them there too
                self.gifts.setdefault(instance_name(vertex, i), []).append((c["barrier"], timers))
        if sorted(c["shared"]) != self.sharing[vertex][-1][1]:
            self.sharing[vertex].append((c["barrier"], sorted(c["shared"])))
        if rt.plan.checkpoint_s:
            rt.remote.checkpoint()      # §5.4 per-flow owners changed: one writer each since a checkpoint
        self.retired[vertex] += len(c["retire"])
        instance = (c["new"] or c["retire"] or [None])[0]
        o["event"] = {"kind": o["action"], "vertex": vertex, "instance": instance, "packet": o["packet"],
                      "barrier_clock": c["barrier"], "groups": sum(n for n, _ in o["moves"]),
                      "moves": o["moves"], "handed_over": len(c["passers"]), "waited": len(c["waiters"]),
                      "timers_moved": sum(len(t) for t in o["timers"].values()),
                      "instances": len(self.active[vertex]), "scope": self.flowmaps[vertex].scope.name,
                      "pause_s": round(o["fed_s"], 6), **({"failed_over": o["failed_over"]}
                                                           if "failed_over" in o else {}),
                      **({"go_after_store_failover": True} if o.get("go_after_store_failover") else {}),
                      **({"spare": o["spare"], "start_s": o["start_s"]} if "spare" in o else {}),
                      "handover_s": round(time.perf_counter() - o["started"], 6), **o["by"],
                      **({"naive": True} if o["naive"] else {})}
        rt.events.append(o["event"])
        rt._shape(vertex, answered=False)       # §3 its manager measures the vertex as it is now
        self.start_spares()

