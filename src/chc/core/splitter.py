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
    """A vertex's flow-group -> instance map, shared by all its upstream splitters."""

    __slots__ = ("n", "table")

    def __init__(self, n_instances: int) -> None:
        if n_instances < 1:
            raise ValueError("a splitter needs at least one downstream instance")
        self.n = n_instances                # instances routed to (retired ones stay counted)
        self.table: list[int] | None = None

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

    def load(self) -> dict[int, int]:
        """Flow groups per instance."""
        self._ensure_table()
        out: dict[int, int] = {}
        for i in self.table:
            out[i] = out.get(i, 0) + 1
        return out


class Splitter:
    __slots__ = ("scope", "map", "_partition")

    def __init__(self, scope: Scope, flows: FlowMap | int) -> None:
        self.scope = scope
        self.map = flows if isinstance(flows, FlowMap) else FlowMap(flows)
        self._partition = scope.partition

    @property
    def n(self) -> int:
        return self.map.n

    def route(self, pkt: Packet) -> int:
        """Index of the downstream instance for ``pkt``."""
        m = self.map
        if m.table is not None:
            t = m.table
            return t[crc32(self._partition(pkt)) % len(t)]
        if m.n == 1:
            return 0
        return crc32(self._partition(pkt)) % m.n

    def split(self, batch: list[Packet]) -> list[list[Packet]]:
        """Per-instance sub-batches, each in the order of ``batch``."""
        m = self.map
        n = m.n
        table = m.table
        if table is None and n == 1:
            return [batch]
        out: list[list[Packet]] = [[] for _ in range(n)]
        part = self._partition
        if table is None:
            for pkt in batch:
                out[crc32(part(pkt)) % n].append(pkt)
        else:
            g = len(table)
            for pkt in batch:
                out[table[crc32(part(pkt)) % g]].append(pkt)
        return out
