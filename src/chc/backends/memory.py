"""The ``memory`` store backend: the store engine in the same process.

Every ``execute`` counts as one round trip, as a pipelined request would on a
network store; there is no network, so the cost of a round trip here is only
the call.  Notifications (callbacks, ownership changes) are routed to
per-client inboxes that clients poll after each request.

A request's ops refused for what they are (an increment of a non-number, an unknown
operation) do not stop it: the others are applied, then :class:`~chc.core.store.Refused`
names them all, as the Redis backend does.

Fault injection for tests and scenarios: ``fail_next(n)`` makes the next ``n``
requests fail before reaching the engine (the client keeps and retransmits its
non-blocking ops), ``hold_commits`` keeps commit reports back (§5.4 tests), and
``dedup = False`` makes the engine apply every copy of a retransmitted op (the
COE checker's ``--break no-dedup``; only this backend has the switch).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from typing import Any

from ..core.client import StoreUnavailable
from ..core.root import root_of
from ..core.store import CustomOp, ObjectKey, Op, OwnershipError, Refused, StoreEngine, StoreError


class MemoryStore:
    name = "memory"

    def __init__(self, engine: StoreEngine | None = None) -> None:
        # A RecoverableEngine (chc.core.recovery) when store failover is on (§5.4).
        self.engine = StoreEngine() if engine is None else engine
        self.inboxes: dict[str, list[tuple]] = defaultdict(list)
        self.round_trips = 0
        self.ops = 0
        self._fail = 0
        self.dropped_requests = 0
        self.hold_commits = False       # keep commit reports back (a slow store, §5.4)
        self.down = False               # crashed (§5.4 store failover): every request is lost
        self.held: dict[int, list[tuple[int, int]]] = {}    # root id -> its commit reports, drained for it

    @property
    def dedup(self) -> bool:
        """Whether retransmitted ops are recognised (seq mark, clock log: §4.3, §5.3)."""
        return self.engine.dedup

    @dedup.setter
    def dedup(self, on: bool) -> None:
        self.engine.dedup = on

    def execute(self, ops: list[Op]) -> list[Any]:
        self.round_trips += 1
        if self._fail or self.down:
            if self.down:
                raise StoreUnavailable("memory store: crashed")
            self._fail -= 1
            self.dropped_requests += 1
            raise StoreUnavailable("memory store: injected request loss")
        apply = self.engine.apply
        results = []
        refused = None
        for op in ops:
            try:
                results.append(apply(op))
            except OwnershipError:
                raise
            except StoreError as exc:       # refused for what it is: the others still apply
                results.append(None)
                if refused is None:
                    refused = []
                refused.append((op, exc))
        self.ops += len(ops)
        self._route()
        if refused is not None:
            raise Refused(refused, results)
        return results

    def _route(self) -> None:
        for client, msg in self.engine.drain_notifications():
            self.inboxes[client].append(msg)

    def notifications(self, client: str) -> list[tuple]:
        box = self.inboxes.get(client)
        if not box:
            return []
        out = list(box)
        box.clear()
        return out

    def declare(self, key: ObjectKey, initial: Any) -> None:
        self.engine.declare(key, initial)

    def subscribe(self, key: ObjectKey, client: str) -> Any:
        self.round_trips += 1
        return self.engine.subscribe(key, client)

    def register(self, name: str, fn: CustomOp, lua: str | None = None) -> None:
        self.engine.register(name, fn)

    def release(self, key: ObjectKey, instance: int) -> None:
        self.engine.release(key, instance)
        self._route()

    def release_instance(self, vertex: str, instance: int) -> int:
        n = self.engine.release_instance(vertex, instance)
        self._route()
        return n

    def take(self, key: ObjectKey, client: str, instance: int) -> bool:
        return self.engine.take(key, client, instance)

    def prune_below(self, clock: int) -> int:
        return self.engine.prune_below(clock)

    def commits(self, root: int | None = None) -> list[tuple[int, int]]:
        """Drain the commit reports ``(clock, xor id)``; ``root``: only that root's (each
        root of a proc run pulls its own from one store server), the others' kept for them."""
        if self.hold_commits:
            return []
        fresh = self.engine.drain_commits()
        if root is None:
            return fresh
        for c in fresh:
            self.held.setdefault(root_of(c[0]), []).append(c)
        return self.held.pop(root, [])

    def objects(self, vertex: str) -> dict[str, dict[Hashable, Any]]:
        return self.engine.objects(vertex)

    def keep_preimages(self) -> None:
        """§5.4: keep what NF failover needs (see StoreEngine.objects_at)."""
        self.engine.preimages = True

    def objects_at(self, vertex: str, replayed: set[int]) -> dict[str, dict[Hashable, Any]]:
        return self.engine.objects_at(vertex, replayed)

    def fail_next(self, n: int = 1) -> None:
        self._fail += n

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "memory"
