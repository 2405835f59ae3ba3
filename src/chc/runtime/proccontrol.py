"""Operator controls (``set-backends``) on the ``proc`` runtime: the coordinator's part.

Theory of operation
-------------------
The same three steps as the sim's (:mod:`chc.runtime.control`), with processes
(docs/proc.md, "Operator controls"); a control is a scenario event at input packet
K, run by :meth:`procscale.Scaler.run_due` before packet K is fed:

1. *Wait for a quiet chain* (§4.3: the change sits at one point of the input
   order, as in the logical chain).  The feed stops after packet K-1 (what was
   pending went to the root first).  The coordinator tells the root in band,
   behind that input (``quiet``): the root's watermark is the barrier, which it
   sends to every instance it feeds; every instance, once its watermark has passed
   the barrier (everything fed before K has run there, its output sent on ahead of
   the watermark, each link in order), sends the barrier on to every instance it
   feeds and tells the coordinator (``quiet``).  When every instance has, no packet
   that entered before K is queued or running anywhere.  The wait needs no more
   input (the barrier reaches every process as a scaling change's does,
   :mod:`procscale`), so stopping the feed cannot deadlock it.  A process that dies
   in the wait is failed over (§5.4) and told again: the root's ``quiet`` waits in
   what a root failover is told (``ProcRuntime.told``) until its barrier comes; an
   instance whose failover has not said it is past the barrier gets it again.
2. *Write it where the state lives.*  The NF's ``control`` computes the new values
   from the store's current ones, read (``get``) and written (one ``set`` per
   cross-flow object) as client ``operator`` through the coordinator's store
   connection (with ``chc check``, the store server's: the writes are in the
   serialization the checker replays).  The store sends a callback to every
   instance caching the object (Table 1, read-heavy: EO+C, EO+C+NA), whose client
   applies it before its next batch (``StoreClient.poll``); an instance that never
   read it reads the new value on its first miss.  In model ``T`` (no store) every
   instance process is told the values (``control``), sets its local objects and
   acknowledges before the feed resumes.
3. *Log it*: ``{kind: <action>, vertex, packet: K, params, control: True}`` (and how
   long the feed was stopped, ``quiet_s``); the COE reference applies the same control
   before packet K (:func:`chc.reference.logical_run`).  Refused at run time by the
   NF: ``<action>-refused`` with the reason.

Not built: several roots (one barrier per root), and controls with clone pairs
(:func:`procscale.refusal` says so).
"""

from __future__ import annotations

import time
from typing import Any

from ..core.recovery import Stamped
from ..core.store import ObjectKey, Op
from ..nf import ConfigError
from . import control
from .procworker import instance_name
from .storeserver import OPERATOR
from .wire import Kind, encode, logical


def run(rt: Any, event: Any, index: int) -> None:
    """The operator control ``event`` before input packet ``index`` (module doc)."""
    vertex = control.resolve(rt, event)
    while rt.scaler.open is not None or rt.recovering:     # (one change at a time)
        rt._service(100)
    started = time.perf_counter()
    rt.controls += 1
    qid = rt.controls
    # 1. §4.3 the quiet barrier: the root's watermark behind everything fed so far (kept
    # with what a root failover is told again: a root that died before it sent the barrier
    # left the wait without end)
    quiet = ["quiet", qid]
    rt._send(0, encode(Kind.INPUT, quiet))
    rt.told[0].append(quiet)
    while qid not in rt.quiet_barriers:
        rt._service(100)
    rt.told[0].remove(quiet)
    barrier = rt.quiet_barriers.pop(qid)
    _await_quiet(rt, qid, barrier, [instance_name(v, i) for v, i in rt.plan.instances()])
    quiet_s = time.perf_counter() - started
    # 2. the NF's values from the current ones, written where the state lives
    v = rt.chain.vertices[vertex]
    decls = v.nf.state_objects()
    store = rt.remote if rt.remote is not None else rt.store
    values: dict[str, Any] | None = None
    if rt.model == "T":
        # (every instance holds the same values of an object no packet changes: the last
        # ones set, else the configured ones)
        known: dict[str, Any] = rt.__dict__.setdefault("control_values", {}).setdefault(vertex, {})

        def current(name: str) -> Any:
            return known[name] if name in known else decls[name].initial(v.config)
    else:
        def current(name: str) -> Any:
            stored = store.execute([Op("get", _key(vertex, name), client=OPERATOR)])[0]
            if stored.__class__ is Stamped:     # (§5.4 with recovery on, the store stamps its reads)
                stored = stored.result
            return decls[name].initial(v.config) if stored is None else stored
    try:
        values = v.nf.control(event.action, dict(event.params), current, v.config)
    except ConfigError as exc:
        rt.events.append({"kind": f"{event.action}-refused", "vertex": vertex, "instance": None, "packet": index,
                          "params": dict(event.params), "reason": str(exc), "by": "scenario"})
        return
    for name in values:
        if decls[name].scope.per_flow:
            raise ValueError(f"{v.nf.kind}.control: {name} is per-flow; a control changes cross-flow state")
    if rt.model == "T":
        known.update(values)
        mine = [instance_name(vertex, i) for w, i in rt.plan.instances() if w == vertex]
        done: set[str] = rt.quiet_acks.setdefault(-qid, set())
        frame = encode(Kind.CONTROL, ["control", [qid, values]])
        for name in mine:
            rt._tell(name, frame)
        while not done.issuperset(mine):
            rt._service(100)
        del rt.quiet_acks[-qid]
    else:
        store.execute([Op("set", _key(vertex, name), (value,), client=OPERATOR) for name, value in values.items()])
    del rt.quiet_acks[qid]
    # 3. the event the COE reference applies before packet ``index``
    rt.events.append({"kind": event.action, "vertex": vertex, "instance": None, "packet": index,
                      "params": dict(event.params), "control": True, "by": "scenario",
                      "barrier_clock": barrier, "quiet_s": round(quiet_s, 6),
                      "pause_s": round(time.perf_counter() - started, 6)})


def _await_quiet(rt: Any, qid: int, barrier: int, told: list[str]) -> None:
    """Tell every instance the barrier and wait until each is past it.  An instance that
    fails over before it said so is told again (its failover replays and goes on past the
    barrier; what went to the dead process was lost, and the wait had no end)."""
    acks: set[str] = rt.quiet_acks.setdefault(qid, set())
    frame = encode(Kind.CONTROL, ["quiet", [qid, barrier]])
    sent: dict[str, str] = {}
    for name in told:
        rt._tell(name, frame)
        sent[name] = rt.current[name]
    while not acks.issuperset(told):
        rt._service(100)
        for name in told:
            if name not in acks and rt.current[name] != sent[name] and name not in rt.recovering:
                rt._tell(name, frame)
                sent[name] = rt.current[name]


def take(rt: Any, name: str, what: str, data: Any) -> None:
    """A worker's message about a control: the root's barrier, an instance's ``quiet``
    (past it) or ``control`` (model T: its objects set)."""
    if name.startswith("@root"):
        rt.quiet_barriers[int(data[0])] = int(data[1])
    else:
        logical_name = logical(name.encode()).decode()
        rt.quiet_acks.setdefault(int(data) if what == "quiet" else -int(data), set()).add(logical_name)


def _key(vertex: str, name: str) -> ObjectKey:
    return ObjectKey(vertex, name, None, False)
