"""Operator controls in the ``sim`` runtime: changing an NF's cross-flow state while
traffic flows (the load balancer's backends and weights, ``set-backends``).

Theory of operation
-------------------
An NF that accepts an operator change implements :meth:`chc.nf.NF.control`: from
the action's parameters and the current values it computes new values for some
of its cross-flow objects.  Such objects are read-heavy (§4.3, Table 1): in the
cached models every instance holds a copy that the store refreshes by callback.
The runtime applies a control in three steps:

1. *Wait for a quiet chain.*  A control fires, like every scenario event, at a
   batch boundary before the packet it names.  It takes effect once no packet is
   queued at any instance or held by a handover, i.e. every packet that entered
   before it has been processed everywhere, and every later one will be: the
   change sits at one point of the input order, as in the logical chain (in an
   untimed run that is at once; with delays, at the first batch boundary that is
   quiet, or at the end of input).
2. *Write it where the state lives.*  In the externalized models one ``set`` per
   object goes to the store through the store node (so the COE checker sees it in
   the store's serialization), from the client ``operator``; the store sends a
   callback to every subscribed instance, whose client applies it to its cache
   before its next batch (:meth:`chc.core.client.StoreClient.poll`).  An instance
   that never read the object reads the new value on its first miss.  In model
   ``T`` (no store) the values are set in every instance's local object, and in
   instances added later.
3. *Log it.*  The event log gets ``{kind: <action>, vertex, packet, params}``:
   ``packet`` is the index of the first input packet that sees the change.  The
   COE reference applies the same control, by the NF's own ``control`` on its own
   state, before that packet (:func:`chc.reference.logical_run`).

A control whose parameters the NF refuses at run time (they were checked against
the configured state when the scenario was loaded, but an earlier control may
have changed what is valid) is logged as ``<action>-refused`` with the reason, and
the state stays as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..core.store import ObjectKey, Op
from ..nf import ConfigError

CONTROLS = ("set-backends",)        # scenario actions that are operator controls


@dataclasses.dataclass
class Pending:
    action: str
    vertex: str
    params: dict


def check(event: Any) -> None:
    """Scenario load: the parameters' shape (the NF checks their values at resolve)."""
    if not event.target or "[" in event.target:
        raise ValueError("needs a target: the vertex whose NF takes the control")
    if not event.params:
        raise ValueError("needs parameters (set-backends: backends, weights)")


def resolve(rt: Any, event: Any) -> str:
    """Runtime construction: the vertex exists, its NF takes the control, and the
    parameters are valid against the configured state (one-line error naming the field)."""
    vertex = event.vertex
    if vertex not in rt.chain.vertices:
        raise ValueError(f"unknown vertex {vertex!r} (vertices: {', '.join(rt.chain.vertices)})")
    v = rt.chain.vertices[vertex]
    decls = v.nf.state_objects()

    def initial(name: str) -> Any:
        return decls[name].initial(v.config)

    try:
        v.nf.control(event.action, dict(event.params), initial, v.config)
    except ConfigError as exc:
        raise ValueError(f"{vertex} ({v.nf.kind}): {exc}") from None
    return vertex


def apply(rt: Any, event: Any) -> None:
    """The scenario event: queue the control and apply it as soon as the chain is quiet."""
    pending: list[Pending] = rt.__dict__.setdefault("pending_controls", [])
    pending.append(Pending(event.action, resolve(rt, event), dict(event.params)))
    if _run_pending not in rt.step_hooks:
        rt.step_hooks.append(_run_pending)
    _run_pending(rt)


def _quiet(rt: Any) -> bool:
    return not rt.handovers and not any(i.queue for insts in rt.instances.values() for i in insts)


def _run_pending(rt: Any) -> None:
    pending: list[Pending] = rt.__dict__.get("pending_controls", [])
    while pending and _quiet(rt):
        _apply(rt, pending.pop(0))


def _apply(rt: Any, c: Pending) -> None:
    v = rt.chain.vertices[c.vertex]
    decls = v.nf.state_objects()
    insts = rt.instances[c.vertex]
    if rt.store is None:
        def current(name: str) -> Any:
            return insts[0].objects[name].get()
    else:
        def current(name: str) -> Any:
            stored = rt.node.handle([Op("get", _key(c.vertex, name), client="operator")])[0]
            return decls[name].initial(v.config) if stored is None else stored
    try:
        values = v.nf.control(c.action, c.params, current, v.config)
    except ConfigError as exc:
        rt._log(f"{c.action}-refused", c.vertex, None, params=c.params, reason=str(exc))
        return
    for name, value in values.items():
        decl = decls[name]
        if decl.scope.per_flow:
            raise ValueError(f"{v.nf.kind}.control: {name} is per-flow; a control changes cross-flow state")
        if rt.store is None:
            for inst in insts:
                inst.objects[name].set(value)
        else:
            rt.node.handle([Op("set", _key(c.vertex, name), (value,), client="operator")])
    if rt.store is None:
        # Model T: instances added later start from the configured value; give them this one.
        def hook(inst: Any, vertex: str = c.vertex, values: dict = values) -> None:
            if inst.vertex == vertex:
                for name, value in values.items():
                    inst.objects[name].set(value)
        rt.instance_hooks.append(hook)
    rt._log(c.action, c.vertex, None, params=c.params, control=True)


def _key(vertex: str, name: str) -> ObjectKey:
    return ObjectKey(vertex, name, None, False)


def applied(events_log: list[dict]) -> list[tuple[int, str, str, dict]]:
    """The controls a run applied, as (first packet that sees it, vertex, action, params)."""
    return [(e["packet"], e["vertex"], e["kind"], e["params"]) for e in events_log if e.get("control")]
