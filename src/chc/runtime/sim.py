"""The ``sim`` runtime: the whole physical chain in one process, deterministic.

Theory of operation
-------------------
``SimRuntime`` instantiates a compiled :class:`~chc.spec.Chain`: one root, the
instances of every vertex, and a splitter per (upstream, downstream vertex) pair
(§4.1, Figure 3b).  Input moves in batches: the root stamps clocks and screens
frames, the root's splitter fills the entry vertex's per-instance input queues
(§4.2), and then every vertex, in topological order, drains its instances'
queues and hands the output to its splitters, off-path taps (copies) and, for
sinks, the chain's output.

Determinism: the run depends only on the input and the chain, never on batch
size.  Each instance sees its packets in input order whatever the batching, NF
timers fire by packet timestamps, and the chain's output of each batch is
emitted in clock order (with no delays every output of a batch has a clock from
that batch, so the whole output is in clock order).

Later issues add virtual time, per-instance delays and fault injection here.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Any

from ..backends.memory import MemoryStore
from ..core.instance import Instance
from ..core.root import Root
from ..core.splitter import Splitter
from ..packet import Packet
from ..spec import Chain
from ..summary import Summary, merge_states, state_digest

DEFAULT_BATCH = 256
_by_clock = attrgetter("clock")


class SimRuntime:
    def __init__(self, chain: Chain, model: str = "T", batch_size: int = DEFAULT_BATCH,
                 store: Any = None) -> None:
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        self.chain = chain
        self.model = model
        self.batch_size = batch_size
        if model != "T" and store is None:
            store = MemoryStore()
        self.store = store if model != "T" else None
        self.root = Root(0, chain.policies)
        self.instances: dict[str, list[Instance]] = {
            name: [Instance(name, i, v.nf, v.config, model, self.store, exclusive=v.parallelism == 1)
                   for i in range(v.parallelism)]
            for name, v in chain.vertices.items()
        }
        # One splitter per upstream (root or instance) and downstream vertex it feeds,
        # off-path taps included.
        self.root_splitters = self._splitters([chain.entry])
        self.splitters: dict[str, list[dict[str, Splitter]]] = {
            name: [self._splitters(v.successors + v.taps_out) for _ in range(v.parallelism)]
            for name, v in chain.vertices.items()
        }
        self.packets_out = 0
        self.elapsed = 0.0

    def _splitters(self, targets: list[str]) -> dict[str, Splitter]:
        """Splitters for the given downstream vertices and their input taps."""
        vs = self.chain.vertices
        names = targets + [t for d in targets for t in vs[d].taps_in]
        return {d: Splitter(vs[d].partition, vs[d].parallelism) for d in names}

    # -- data path ------------------------------------------------------------------
    def _deliver(self, vertex: str, batch: list[Packet], splitters: dict[str, Splitter]) -> None:
        """Into ``vertex``'s input queues, with copies to its input taps."""
        for tap in self.chain.vertices[vertex].taps_in:
            self._enqueue(tap, [p.copy() for p in batch], splitters[tap])
        self._enqueue(vertex, batch, splitters[vertex])

    def _enqueue(self, vertex: str, batch: list[Packet], splitter: Splitter) -> None:
        for inst, part in zip(self.instances[vertex], splitter.split(batch), strict=True):
            if part:
                inst.queue.extend(part)

    def step(self, batch: list[Packet]) -> list[Packet]:
        """Push one input batch through the chain; return its output in clock order."""
        admitted, out = self.root.ingest(batch)
        if admitted:
            self._deliver(self.chain.entry, admitted, self.root_splitters)
        for name, v in self.chain.vertices.items():
            for inst, splitters in zip(self.instances[name], self.splitters[name], strict=True):
                produced = inst.drain()
                if not produced or v.offpath:
                    continue
                for tap in v.taps_out:
                    self._enqueue(tap, [p.copy() for p in produced], splitters[tap])
                succ = v.successors
                if not succ:
                    out.extend(produced)
                for i, d in enumerate(succ):
                    part = produced if i == len(succ) - 1 else [p.copy() for p in produced]
                    self._deliver(d, part, splitters)
        out.sort(key=_by_clock)
        self.packets_out += len(out)
        if self.store is not None:
            # With no delays every packet of the batch is done in the whole chain:
            # its clock-log entries can go (§5.3).
            self.store.prune_below(self.root.next_seq)
        return out

    def finish(self) -> None:
        for insts in self.instances.values():
            for inst in insts:
                inst.finish()

    def run(self, records: Iterable[tuple[int, bytes]],
            emit: Callable[[list[Packet]], None] | None = None,
            progress: Callable[[int], None] | None = None) -> None:
        """Run the chain over ``(timestamp ns, frame)`` records."""
        started = time.perf_counter()
        size = self.batch_size
        batch: list[Packet] = []
        index = self.root.packets_in
        for ts, data in records:
            batch.append(Packet(data, ts, index))
            index += 1
            if len(batch) >= size:
                self._step_emit(batch, emit, progress)
                batch = []
        if batch:
            self._step_emit(batch, emit, progress)
        self.finish()
        self.elapsed += time.perf_counter() - started

    def _step_emit(self, batch, emit, progress) -> None:
        out = self.step(batch)
        if emit is not None and out:
            emit(out)
        if progress is not None:
            progress(len(batch))

    # -- results -----------------------------------------------------------------------
    def logical_state(self) -> dict[str, dict]:
        if self.store is None:
            return {name: merge_states([i.state() for i in insts]) for name, insts in self.instances.items()}
        return {name: self._stored_state(name) for name in self.instances}

    def _stored_state(self, vertex: str) -> dict[str, dict]:
        """A vertex's logical state read back from the store (non-initial values)."""
        handles = self.instances[vertex][0].objects
        stored = self.store.objects(vertex)
        out: dict[str, dict] = {}
        for name, handle in handles.items():
            init = handle._init                   # the declared initial value
            if isinstance(init, deque):
                init = list(init)
            entries = {k: v for k, v in stored.get(name, {}).items() if not _same(v, init)}
            if entries:
                out[name] = entries
        return out

    def store_stats(self) -> dict:
        clients = [i.client for insts in self.instances.values() for i in insts if i.client]
        return {
            "backend": self.store.describe() if self.store is not None else "local",
            "model": self.model,
            "blocking_ops": sum(c.blocking_ops for c in clients),
            "nonblocking_ops": sum(c.nonblocking_ops for c in clients),
            "cache_hits": sum(c.cache_hits for c in clients),
            "round_trips": self.store.round_trips if self.store is not None else 0,
        }

    def alerts(self) -> list[dict]:
        found = [a for insts in self.instances.values() for i in insts for a in i.ctx.alerts]
        found.sort(key=lambda a: (a.clock, a.vertex, a.kind, a.host))
        return [a.as_json() for a in found]

    def summary(self) -> Summary:
        root = self.root
        s = Summary(chain=self.chain.name, model=self.model, packets_in=root.packets_in,
                    packets_out=self.packets_out, malformed=root.malformed, non_ip=root.non_ip,
                    bypassed=root.bypassed, elapsed_s=self.elapsed)
        s.alerts = self.alerts()
        dropped = root.dropped
        for name, insts in self.instances.items():
            v = self.chain.vertices[name]
            stats = {
                "nf": v.nf.kind,
                "instances": len(insts),
                "offpath": v.offpath,
                "packets_in": sum(i.packets_in for i in insts),
                "packets_out": sum(i.packets_out for i in insts),
                "dropped": sum(i.dropped + i.nf_errors for i in insts),
                "nf_errors": sum(i.nf_errors for i in insts),
                "alerts": sum(len(i.ctx.alerts) for i in insts),
            }
            s.vertices[name] = stats
            s.nf_errors += stats["nf_errors"]
            s.errors += [i.first_error for i in insts if i.first_error]
            if not v.offpath:
                dropped += stats["dropped"]
        s.dropped = dropped
        s.state_digest = state_digest(self.logical_state())
        s.store = self.store_stats()
        return s


def _same(a: Any, b: Any) -> bool:
    """Equal as state values: tuples and lists with equal items are the same."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b
