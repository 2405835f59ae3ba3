"""NF failover pieces both runtimes share (§5.4, with §5.3's emulation): private views, the read log.

Theory of operation
-------------------
A failover instance (§5.4) re-processes, under the failed instance's logical
identity, the packets the failed one may not have finished.  Two things make
that replay recompute what the failed instance computed:

* **Private view** (:func:`private_view`, :func:`shared_view`): during the
  replay its cached per-flow and exclusive objects start from the store's
  state *before* the first replayed packet (``objects_at``, the store's
  pre-images), not from what the store holds now, and nothing is prefetched;
  afterwards its updates are settled and the private caches dropped.  The same
  pair of steps gives a §5.3 clone and its straggler one private view each.
* **Read log** (:func:`log_reads`): the store logs its answers to each logical
  instance's reads of shared objects, by the clock they were read for; a
  replay is answered from there, so it decides as the failed instance did (a
  shared object other instances kept updating has moved on since).  Each
  instance keeps a copy of its own part (in its write-ahead log) from which a
  failover store rebuilds the log (:func:`merge_reads`).

Updates the store already applied are answered from its clock log (§5.3
duplicate emulation), in the store engine itself.  Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .client import CachedObject
from .instance import Instance


def private_view(saved: dict, inst: Instance, snap: dict) -> None:
    """§5.3 one private view per copy: cached per-flow and exclusive objects, filled
    from ``snap`` (the store when the copy started); a miss is an object absent
    then.  In model EO the copy caches for the view's lifetime.  ``saved`` keeps
    what :func:`shared_view` restores."""
    c = inst.client
    if c is None:
        return                          # model T: the state is local already
    saved[inst.instance_id] = (c.prefetchable, c.caching)
    if not c.caching:
        rebind(inst, True)
    c.prefetchable = []                 # no prefetching from the store either
    for name, h in inst.objects.items():
        if type(h) is CachedObject:
            h.private = True
            values = h.values
            for k, val in snap.get(name, {}).items():
                if k not in values:
                    values[k] = h._cached(val)


def shared_view(saved: dict, inst: Instance) -> None:
    """Back to the store: updates sent, private caches dropped (they held other
    instances' flows too), the model's own handles again."""
    c = inst.client
    if c is None:
        return
    c.settle()
    prefetchable, caching = saved.pop(inst.instance_id)
    for h in inst.objects.values():
        if type(h) is CachedObject and h.private:
            h.private = False
            h.values.clear()
    c.prefetchable = prefetchable
    if not caching:
        rebind(inst, False)
        c.prefetchable = prefetchable


def rebind(inst: Instance, caching: bool) -> None:
    """Bind every declared object again, caching or not."""
    c = inst.client
    c.caching = caching
    for name, decl in type(inst.nf).state_objects().items():
        h = c.bind(decl, inst.nf.config, exclusive=name not in inst.shared)
        inst.objects[name] = h
        setattr(inst.nf, name, h)


ReadLog = dict[tuple[str, Any, int], list[Any]]     # (vertex, instance, clock) -> answers


def log_reads(log: ReadLog, ops: list, results: list[Any], clock: int, cursor: dict | None,
              pair: bool = False) -> bool:
    """§5.4 the read log: the answers to reads of shared objects, per (vertex,
    logical instance, clock read for), are logged; or, for a replay (``cursor``:
    the replay's read positions), answered from the log in the order they were
    made.  (The vertex is in the slot: instance numbers repeat across vertices, and
    a packet's reads at two vertices must not answer each other.)  §5.3 a copy of a
    clone pair (``pair``): past the log's end its reads are logged (for the other
    copy).  Whether any read was answered from the log."""
    from_log = False
    for k, op in enumerate(ops):
        if op.code != "get" or op.key.per_flow:
            continue
        slot = (op.key.vertex, op.instance, clock)
        if cursor is None:
            log.setdefault(slot, []).append(results[k])
            continue
        logged = log.get(slot)
        i = cursor.get(slot, 0)
        if logged is not None and i < len(logged):
            cursor[slot] = i + 1
            results[k] = logged[i]
            from_log = True
        elif pair:
            log.setdefault(slot, []).append(results[k])
            cursor[slot] = i + 1
    return from_log


def prune_reads(log: ReadLog | None, done: Callable[[int], bool]) -> None:
    """Forget reads for the clocks ``done`` says are no longer logged (never replayed)."""
    if log:
        for slot in [s for s in log if done(s[2])]:
            del log[slot]


def merge_reads(copies: Iterable[ReadLog]) -> ReadLog:
    """§5.4 a failover store's read log, from the instances' copies of their parts
    (the failed store's died with it).  Copies of one slot are of one logical
    instance: a §5.3 clone pair, or a failover instance that took the log over;
    the longest is the most complete."""
    log: ReadLog = {}
    for copy in copies:
        for slot, answers in copy.items():
            if len(answers) > len(log.get(slot, ())):
                log[slot] = list(answers)
    return log
