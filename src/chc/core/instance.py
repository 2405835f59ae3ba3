"""Instance runtime: one running copy of a vertex's NF.

Theory of operation
-------------------
An instance owns its NF object, the handles of its declared state objects
(bound per state model, :mod:`chc.core.state`), its input queue (owned by the
framework, §4.2: upstream splitters append, the instance drains in batches) and
the timers its NF set through ``ctx.set_timer``.

``run(batch)`` processes packets in queue order.  Before each packet, timers whose
deadline the packet's timestamp has reached fire in (deadline, arming order), so
an NF's timeouts depend on input timestamps only, never on how input is batched.
An exception in NF code is contained: the packet is dropped and counted under
``nf_errors`` (the first error is kept for the summary), and the run goes on;
except :class:`~chc.core.client.StoreLost` (the store is gone or lost the run's
state), which stops the run: every later packet would fail the same way.

In the externalized models a batch starts with one request that loads the
per-flow objects its packets will touch and ends with one pipelined flush of
the batch's non-blocking updates (§4.3).  Each packet's update ids are folded
into its XOR vector (§5.4); packets that end here are listed in ``finished``
and copies made here in ``forks`` for the root.

An update the store refuses (a value it cannot hold, an increment of a non-number)
never commits (§5.4), so the root would keep its packet logged for good: the client
library notes its commit id, and the instance reports it as a copy of the packet that
ends carrying that id (``forks`` one, ``finished`` with the id), which balances the
packet's vector as its commit would have; the packet completes.  A refusal the NF did
not see (a non-blocking update refused after its packet went on) is counted under
``nf_errors`` too.

Input: batches of packets.  Output: batches of packets for the splitter(s) after
the instance, alerts in ``ctx.alerts``.  No I/O.
"""

from __future__ import annotations

import heapq
import logging
import traceback
from collections import deque
from typing import Any

from ..nf import NF, Access, Context, wrong_return
from ..packet import Packet
from .client import MODELS, StoreClient, StoreLost
from .state import LocalObject

log = logging.getLogger("chc.instance")

_TIMER_TAGS = 1 << 20      # clock-log tags of timer updates start here (never a packet's)


def _ladder_parts(ladder: list) -> Any:
    """The partition fields of a packet at every scope of the ladder (§4.1)."""
    if len(ladder) == 1:
        only = ladder[0].partition
        return lambda p: (only(p),)
    fns = [s.partition for s in ladder]
    return lambda p: tuple(f(p) for f in fns)


class Instance:
    __slots__ = ("vertex", "instance_id", "nf", "ctx", "queue", "objects", "client",
                 "delay", "free_at", "busy", "arrival_clocks", "arrivals", "inversions", "last_clock",
                 "finished", "forks", "fired",
                 "packets_in", "packets_out", "dropped", "nf_errors", "first_error", "shared")

    def __init__(self, vertex: str, instance_id: int, nf_cls: type[NF], config: Any,
                 model: str = "T", store: Any = None, exclusive: bool = True,
                 client: Any = None) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown state model {model!r} (available: {', '.join(MODELS)})")
        self.vertex = vertex
        self.instance_id = instance_id
        self.nf = nf_cls(config)
        self.ctx = Context(vertex, instance_id)
        self.ctx.partition = _ladder_parts(nf_cls.partition_scopes())
        self.queue: deque[Packet] = deque()
        self.delay: Any = None              # sim: per-packet processing delay sampler
        self.free_at = 0                    # sim: virtual time the instance is next idle
        self.busy = 0                       # sim: virtual processing time spent (vertex manager's stats)
        # R4 switched off (tests, `--break no-clocks`): the NF sees arrival order
        # at this instance instead of the packets' logical clocks.
        self.arrival_clocks = False
        self.arrivals = 0
        self.inversions = 0                 # packets seen after a later clock (with arrival clocks)
        self.last_clock = -1
        self.finished: list[tuple[int, int]] = []   # (clock, XOR vector) of packets ended here
        self.forks: list[tuple[int, int]] = []      # (clock, extra copies) made here
        # (clock, timers re-armed, XOR vector) per timer fired here: a timer is a copy
        # of the packet that armed it (a fork when armed), and ends when it fires.
        self.fired: list[tuple[int, int, int]] = []
        # The store client of the externalized models; in model T an optional
        # stand-in with the same binding interface (the COE checker's reference).
        self.client: StoreClient | None = client
        if model != "T":
            if store is None:
                raise ValueError(f"model {model} needs a store")
            self.client = StoreClient(store, vertex, instance_id, model, exclusive)
        # R3: the cross-flow read/write-often objects other instances use too (not cached).
        self.shared: frozenset[str] = frozenset() if exclusive else frozenset(
            name for name, d in nf_cls.state_objects().items()
            if not d.scope.per_flow and d.access is Access.READ_WRITE)
        # Bind every declared object to a handle; NF code reaches them as self.<name>.
        self.objects: dict[str, LocalObject] = {}
        for name, decl in nf_cls.state_objects().items():
            if self.client is None:
                handle = LocalObject(decl, config)
            else:
                handle = self.client.bind(decl, config)
            self.objects[name] = handle
            setattr(self.nf, name, handle)
        self.packets_in = 0
        self.packets_out = 0
        self.dropped = 0
        self.nf_errors = 0
        self.first_error: str | None = None

    def drain(self, max_batch: int = 0) -> list[Packet]:
        """Take up to ``max_batch`` packets (all if 0) from the input queue, run them."""
        q = self.queue
        if not q:
            return []
        if max_batch <= 0 or len(q) <= max_batch:
            batch = list(q)
            q.clear()
        else:
            batch = [q.popleft() for _ in range(max_batch)]
        return self.run(batch)

    def run(self, batch: list[Packet]) -> list[Packet]:
        """Process ``batch`` in order; return the output packets.

        Packets this instance drops are reported in ``finished`` with their XOR
        vector (§5.4): the root must hear of every copy that ends.  With a
        ``delay``, the instance is a FIFO server in virtual time and each output
        leaves at its finishing time (``vt``).
        """
        ctx = self.ctx
        process = self.nf.process
        timers = ctx._timers
        out: list[Packet] = []
        append = out.append
        client = self.client
        delay = self.delay
        if client is not None:
            if client.callback_caches:
                client.poll()               # Table 1 callbacks: refresh read-heavy caches first
            if client.prefetchable:
                client.prefetch(batch, self.nf.reads_flow_state)
        for pkt in batch:
            if timers and timers[0][0] <= pkt.ts:
                self._fire(pkt.ts)
            ctx.packet_clock = clock = pkt.clock
            if self.arrival_clocks:
                self.arrivals += 1
                ctx.clock = self.arrivals
                if clock < self.last_clock:
                    self.inversions += 1    # arrival order differs from clock order here
                else:
                    self.last_clock = clock
            else:
                ctx.clock = clock
            if client is not None:
                client.begin_packet(clock)
            ctx.now = pkt.ts
            ctx.index = pkt.index
            ctx.packet = pkt
            if delay is not None:
                start = pkt.vt if pkt.vt > self.free_at else self.free_at
                service = delay.sample()
                self.busy += service
                self.free_at = pkt.vt = start + service
            elif pkt.vt < self.free_at:
                pkt.vt = self.free_at       # FIFO: no overtaking what is still in service
            ctx._armed = 0
            try:
                res = process(pkt, ctx)
            except StoreLost:
                raise                       # not the NF's fault, and no later packet would fare better
            except Exception as exc:        # contain NF bugs: count, keep going
                self._error(pkt, exc)
                res = None
            if ctx._armed:
                # §5.4 a pending timer is a live copy of the packet that armed it: the
                # packet stays logged until the timer has fired and its updates have
                # committed, so a failover instance can re-arm it by replay.
                self.forks.append((clock, ctx._armed))
            # §5.4: the updates this packet caused, folded into its XOR vector.
            vector = pkt.xor ^ client.packet_xor if client is not None else pkt.xor
            if res is None:
                self.dropped += 1
                self.finished.append((clock, vector))
            elif res.__class__ is Packet:
                if res is not pkt:          # a new packet, alone: its input's clock too
                    res.clock = clock
                    res.vt = pkt.vt
                res.xor = vector
                append(res)
            else:
                self._emit_many(pkt, res, vector, out)
        if client is not None:
            client.flush()                  # §4.3: one pipelined request per batch
            if client.refused or client.late:
                self._refusals()
        self.packets_in += len(batch)
        self.packets_out += len(out)
        return out

    def _emit_many(self, pkt: Packet, res: list[Packet], vector: int, out: list[Packet]) -> None:
        if res.__class__ not in (list, tuple) or not all(isinstance(p, Packet) for p in res):
            # an NF bug as an exception is: counted, the packet dropped (it ended the run)
            self._error(pkt, wrong_return(res))
            res = ()
        if not res:
            self.dropped += 1
            self.finished.append((pkt.clock, vector))
            return
        for i, p in enumerate(res):
            p.clock = pkt.clock
            p.vt = pkt.vt
            p.xor = vector if i == 0 else 0   # each update's id travels on one copy only
        if len(res) > 1:
            self.forks.append((pkt.clock, len(res) - 1))
        out.extend(res)

    def finish(self) -> None:
        """End of input: fire every remaining timer, push out every queued update."""
        self._fire(None)
        if self.client is not None:
            self.client.settle()            # every update sent and acknowledged
            self._refusals()

    def hand_over(self) -> None:
        """§5.1 step 5: this instance processed its ``last`` packet of moved flows."""
        if self.client is not None:
            self.client.hand_over()
            self._refusals()

    def set_shared(self, shared: frozenset[str]) -> int:
        """R3 (Table 1, last column): the cross-flow read/write-often objects named in
        ``shared`` now have other users and are no longer cached; the others are
        cached again.  Rebinding flushes first, so the store holds every update
        before another instance reads it.  Returns how many objects changed."""
        client = self.client
        if client is None or shared == self.shared:
            return 0
        changed = 0
        client.settle()
        self._refusals()
        for name, decl in type(self.nf).state_objects().items():
            if decl.scope.per_flow or decl.access is not Access.READ_WRITE:
                continue
            if (name in shared) == (name in self.shared):
                continue
            handle = client.bind(decl, self.nf.config, exclusive=name not in shared)
            self.objects[name] = handle
            setattr(self.nf, name, handle)
            changed += 1
        self.shared = shared
        return changed

    def tick(self, until: int) -> None:
        """Fire the timers due by ``until`` (an instance that gets no packets any more)."""
        if self.ctx._timers:
            self._fire(until)
            if self.client is not None:
                self.client.flush()
                self._refusals()

    def _fire(self, until: int | None) -> None:
        ctx = self.ctx
        timers = ctx._timers
        saved = (ctx.clock, ctx.now, ctx.index)
        ctx.packet = None                   # a timer re-armed here belongs to no flow group
        client = self.client
        while timers and (until is None or timers[0][0] <= until):
            entry = heapq.heappop(timers)
            deadline, key, clock, index, base = entry[0], entry[2], entry[3], entry[4], entry[6]
            # A timer runs with the clock of the packet that armed it.
            ctx.clock = clock
            ctx.packet_clock = entry[7]
            ctx.now, ctx.index = deadline, index
            ctx._armed = 0
            ctx._parent = base
            if client is not None:
                # Its updates are tagged apart from the packet's (tags from the timer's
                # base, so a replay re-arms and re-tags it the same) and XORed into the
                # vector this copy of the packet reports when it ends (§5.4).
                client.begin_packet(clock)
                client.n_in_packet = _TIMER_TAGS + (base << 10)
            try:
                self.nf.on_timer(key, ctx)
            except StoreLost:
                raise
            except Exception as exc:
                self._error(None, exc)
            # (reported under the packet's clock: the NF may be shown arrival order)
            self.fired.append((entry[7], ctx._armed, client.packet_xor if client is not None else 0))
        ctx._parent = 0
        ctx.clock, ctx.now, ctx.index = saved
        if self.client is not None:
            self.client.begin_packet(ctx.clock)

    def _refusals(self) -> None:
        """Report the updates the store refused (see the module doc): each commit id as a
        copy of its packet that ends with it; each refusal the NF did not see as an NF error."""
        client = self.client
        for clock, xor_id in client.refused:
            self.forks.append((clock, 1))
            self.finished.append((clock, xor_id))
        client.refused = []
        for op, err in client.late:
            self._error(None, err, f"update at clock {op.tag[0] if op.tag is not None else '-'}")
        client.late = []

    def _error(self, pkt: Packet | None, exc: Exception, where: str = "") -> None:
        """An NF error: of ``pkt`` (dropped), a timer, or (``where``) a refused update."""
        self.nf_errors += 1
        if self.first_error is None:
            self.first_error = (f"{self.vertex}[{self.instance_id}] "
                                f"{where or (f'packet #{pkt.index}' if pkt is not None else 'timer')}: "
                                f"{type(exc).__name__}: {exc}")
            if where:                       # (the store's one line says it all: no NF frame)
                log.warning("NF error (a non-blocking update the store refused): %s", self.first_error)
            else:
                log.warning("NF error (packet dropped): %s\n%s", self.first_error,
                            "".join(traceback.format_exception(exc)))

    def state(self) -> dict[str, dict]:
        """This instance's local state objects as {object: {key: value}} (non-initial
        keys); in the externalized models the store holds the state instead."""
        return {name: dict(h.items()) for name, h in self.objects.items()}

