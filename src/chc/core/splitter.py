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

It takes a batch of packets and returns per-instance batches; it does no I/O.
Later: reallocation marks (``last``/``first``, §5.1) and replication to clones (§5.3).
"""

from __future__ import annotations

from zlib import crc32

from ..nf import Scope
from ..packet import Packet


class Splitter:
    __slots__ = ("scope", "n", "_partition")

    def __init__(self, scope: Scope, n_instances: int) -> None:
        if n_instances < 1:
            raise ValueError("a splitter needs at least one downstream instance")
        self.scope = scope
        self.n = n_instances
        self._partition = scope.partition

    def route(self, pkt: Packet) -> int:
        """Index of the downstream instance for ``pkt``."""
        if self.n == 1:
            return 0
        return crc32(self._partition(pkt)) % self.n

    def split(self, batch: list[Packet]) -> list[list[Packet]]:
        """Per-instance sub-batches, each in the order of ``batch``."""
        if self.n == 1:
            return [batch]
        out: list[list[Packet]] = [[] for _ in range(self.n)]
        part = self._partition
        n = self.n
        for pkt in batch:
            out[crc32(part(pkt)) % n].append(pkt)
        return out
