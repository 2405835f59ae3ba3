"""Splitter: partitions one upstream's output over the next vertex's instances.

Theory of operation
-------------------
CHC inserts a splitter after the root and after every NF instance (§4.1,
Figure 3b).  A splitter knows the downstream vertex's partition scope and its
instance count, and maps each packet to one instance by a stable hash of the
scope's header fields, so every packet that touches the same state object of the
downstream vertex reaches the same instance (scope-aware partitioning).  The hash
is CRC-32, not Python's ``hash()``, which is salted per process: a partition must
be the same in every process and every run.

Scope refinement (§4.1).  The map also holds the vertex's partition scope:
the coarsest that keeps each state object on one instance first, a finer one
of the NF's declared scopes once the vertex manager finds the load uneven.

Flow groups (§4.1, §5.1).  Every upstream splitter of a vertex shares one
:class:`FlowMap`: until the vertex is first rescaled or rebalanced a packet goes
to ``crc32 % n``; from then on to ``table[crc32 % G]``, a table of ``G`` flow
groups (``G`` a multiple of the instance count at that moment, so the first
table keeps every flow where it was).  Moving flow groups is a table update
seen by every upstream at once; the handover that keeps a moved flow's packets
in order is the runtime's (``chc.runtime.sim``, Figure 4).

It takes a batch of packets and returns per-instance batches; it does no I/O.
Later: replication to clones (§5.3).
"""

from __future__ import annotations

from zlib import crc32

from ..nf import Scope
from ..packet import Packet

GROUPS_PER_INSTANCE = 256


class FlowMap:
    """A vertex's flow-group -> instance map and partition scope, shared by all its
    upstream splitters."""

    __slots__ = ("n", "table", "counts", "ladder", "level", "part")

    def __init__(self, n_instances: int, ladder: list[Scope] | None = None) -> None:
        if n_instances < 1:
            raise ValueError("a splitter needs at least one downstream instance")
        self.n = n_instances                # instances routed to (retired ones stay counted)
        self.table: list[int] | None = None
        # Packets per flow group since the vertex manager last looked (None: nobody
        # looks, and the splitters count nothing).
        self.counts: list[int] | None = None
        # §4.1: the scopes the vertex may be partitioned on, coarsest first, and the
        # one in use (refined while load is uneven).
        self.ladder: list[Scope] = list(ladder or [])
        self.level = 0
        self.part = self.ladder[0].partition if self.ladder else None

    @property
    def scope(self) -> Scope:
        return self.ladder[self.level]

    def set_level(self, level: int) -> None:
        """Partition on ``ladder[level]`` from now on (the runtime hands the flows over)."""
        self.level = level
        self.part = self.ladder[level].partition

    def count_groups(self) -> None:
        """Count packets per flow group from now on (a vertex manager balances by them)."""
        self._ensure_table()
        self.counts = [0] * len(self.table)

    def take_counts(self) -> list[int]:
        """Packets per flow group since the last call."""
        counts = self.counts
        self.counts = [0] * len(self.table)
        return counts

    def group(self, pkt_hash: int) -> int:
        self._ensure_table()
        return pkt_hash % len(self.table)

    def _ensure_table(self) -> None:
        if self.table is None:
            n = self.n
            self.table = [g % n for g in range(GROUPS_PER_INSTANCE * n)]

    def groups_of(self, instance: int) -> list[int]:
        self._ensure_table()
        return [g for g, i in enumerate(self.table) if i == instance]

    def add_instance(self) -> int:
        """Room for one more instance (it owns no group yet); its index."""
        self._ensure_table()
        self.n += 1
        return self.n - 1

    def move(self, groups: list[int], to: int) -> dict[int, list[int]]:
        """Reassign ``groups`` to instance ``to``; the groups each old instance lost."""
        self._ensure_table()
        lost: dict[int, list[int]] = {}
        table = self.table
        for g in groups:
            old = table[g]
            if old != to:
                lost.setdefault(old, []).append(g)
                table[g] = to
        return lost

    def even(self, active: list[int]) -> list[tuple[list[int], int]]:
        """§5.1 the moves (flow groups, to) that even the group counts over the
        ``active`` instances (a scale-out's new instance takes its share); the map
        is not changed."""
        load = self.load()
        share = len(self.table) // len(active)
        spare = [g for i in active for g in self.groups_of(i)[share:]]
        out = []
        for i in active:
            need = share - min(load.get(i, 0), share)
            if need > 0 and spare:
                out.append((spare[:need], i))
                spare = spare[need:]
        return out

    def spread(self, source: int, rest: list[int]) -> list[tuple[list[int], int]]:
        """§5.1 scale-in: the moves that deal ``source``'s flow groups out over ``rest``."""
        groups = self.groups_of(source)
        return [(groups[k::len(rest)], to) for k, to in enumerate(rest)]

    def owner(self, parts: tuple) -> int:
        """The instance a packet with partition fields ``parts`` (one per ladder rung,
        as a timer keeps them) goes to."""
        h = crc32(parts[self.level])
        return h % self.n if self.table is None else self.table[h % len(self.table)]

    def load(self) -> dict[int, int]:
        """Flow groups per instance."""
        self._ensure_table()
        out: dict[int, int] = {}
        for i in self.table:
            out[i] = out.get(i, 0) + 1
        return out


class Splitter:
    __slots__ = ("map",)

    def __init__(self, scope: Scope, flows: FlowMap | int) -> None:
        self.map = flows if isinstance(flows, FlowMap) else FlowMap(flows, [scope])
        if not self.map.ladder:
            self.map.ladder = [scope]
            self.map.set_level(0)

    @property
    def scope(self) -> Scope:
        return self.map.scope

    @property
    def n(self) -> int:
        return self.map.n

    def route(self, pkt: Packet) -> int:
        """Index of the downstream instance for ``pkt``."""
        m = self.map
        if m.table is not None:
            t = m.table
            g = crc32(m.part(pkt)) % len(t)
            if m.counts is not None:
                m.counts[g] += 1
            return t[g]
        if m.n == 1:
            return 0
        return crc32(m.part(pkt)) % m.n

    def split(self, batch: list[Packet]) -> list[list[Packet]]:
        """Per-instance sub-batches, each in the order of ``batch``."""
        m = self.map
        n = m.n
        table = m.table
        if table is None and n == 1:
            return [batch]
        out: list[list[Packet]] = [[] for _ in range(n)]
        part = m.part
        if table is None:
            for pkt in batch:
                out[crc32(part(pkt)) % n].append(pkt)
        elif m.counts is None:
            g = len(table)
            for pkt in batch:
                out[table[crc32(part(pkt)) % g]].append(pkt)
        else:
            g = len(table)
            counts = m.counts
            for pkt in batch:
                k = crc32(part(pkt)) % g
                counts[k] += 1
                out[table[k]].append(pkt)
        return out
