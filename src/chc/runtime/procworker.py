"""The worker processes of the ``proc`` runtime: roots and NF instances.

Theory of operation
-------------------
Each root and each NF instance runs :func:`main` in its own process, around
the same sans-I/O state machines the ``sim`` runtime drives
(:class:`~chc.core.root.Root`, :class:`~chc.core.splitter.Splitter`,
:class:`~chc.core.instance.Instance`, the store client library); what moves
between them are messages (:mod:`chc.runtime.wire`) on ZeroMQ sockets.

Data path.  The coordinator sends capture records in batches to the root; the
root stamps clocks, logs and screens (§5), splits to the entry vertices'
instances (§4.1) and sends each its sub-batch.  An instance runs what it
received (its input queue, §4.2: the framework's, here its mailbox), splits its
output to the next vertex's instances, copies it to off-path taps, and at a
sink counts it (and sends it to the coordinator when the run writes
``--out``).  Each data message carries the sender's *watermark*: every packet
with a clock up to it has been sent.  An instance fed by several upstreams
(the sim runtime sorts such a vertex's input by clock) processes a packet only
once every upstream's watermark has passed its clock, in clock order, so it sees
the sequence the sim runtime gives it and the run's state is the sim's.  With
several roots (:attr:`Plan.per_root`, §5) watermarks travel per root and each
root's packets wait only for that root's: a root's clocks are ordered among
themselves, not against another root's.  ZeroMQ
high-water marks on data sockets are the back-pressure: a full downstream
stops its upstream, and in the end the coordinator's reading of the capture.

Completion (§5, §5.4).  After each batch an instance sends the roots one
report of the copies it made (forks) and of the copies that ended (drops, sink
outputs, off-path ends, fired timers) with their XOR vectors; the root pulls
the store's commit reports after each input batch.  A fork must reach the root
before the end of any of its copies, which travel on other connections: every
data message carries the *through* (highest clock of the batch) of its
sender's latest report to each root, each report lists those of its own
upstreams as dependencies, and the root applies a report only after the
reports it depends on (causal delivery).

Failover (§5.4, docs/proc.md).  With ``Plan.recover`` every sender keeps what
it sent each target; a failover process (``nat.0#1``) replays what the
upstreams hand over, up to the coordinator's bound on what the failed one can
have run (an upstream that is itself a failover still replaying sends the rest
behind), and every message carries its batch's through, so receivers drop what
the failed process had already sent them.  With several roots an instance's
batches interleave the roots as their packets come: each is told to the store
server before it runs, and a failover replays exactly those (:attr:`Plan.orders`,
:meth:`InstanceWorker._replay_batches`).  A root fails over the same way from
the other side: a failover root (``@root.0#1``) stamps the input the
coordinator kept since its floor again with the same clocks and splits it the
same way (receivers drop by through), and rebuilds its packet log from it, from
the commit reports the store server pulls again and from the reports every
instance kept since the floor and sends again (:meth:`RootWorker._restore`,
:meth:`InstanceWorker.reroot`).

Scaling (§5.1, :mod:`chc.runtime.procscale`, docs/proc.md).  A vertex's change
comes with a barrier clock: the root (told in band) and every upstream split
packets past it by the new map (:meth:`_Sender.split`), and take the new map alone
once their watermark passes it (:meth:`_Sender.advance`); each process sends its
watermark on once past a barrier, so the change completes without more input.
An instance that loses flow groups runs to the barrier, hands over and sends its
moved flows' timers; one that gains them holds at the barrier until the go-ahead
(:meth:`InstanceWorker._progress`, :meth:`InstanceWorker._go`).  A scale-out's new
instance may be a warm spare (:func:`spare`): a process started ahead that runs
:func:`main` once the coordinator assigns it the plan and the change.

End of input.  End-of-input travels the data path behind the last packets (an
infinite watermark).  An instance that has it from every upstream fires its
remaining timers and settles its store client (every update acknowledged,
:meth:`~chc.core.instance.Instance.finish`), reports, passes the end on, and
sends the coordinator its counters, alerts and (model ``T``) state; its last
report to every root has through :data:`INF`, and a root, told to finish,
applies every instance's reports up to that one, pulls the last commit reports, writes its metadata
and sends its counters.

Every wait also watches the coordinator (:class:`~chc.runtime.procio.Guard`):
a worker never outlives it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import resource
import time
import traceback
from collections import deque
from collections.abc import Sequence
from typing import Any

import zmq

from ..core.client import CachedObject
from ..core.failover import private_view, prune_reads, shared_view
from ..core.instance import Instance
from ..core.recovery import attach_wal
from ..core.root import Root, clock_key, root_of
from ..core.splitter import FlowMap, Splitter
from ..core.store import Op, StoreError
from ..faults import DropOneUpdate
from ..packet import Packet
from ..spec import Chain
from ..summary import StateValueError, state_digest, unstorable_error
from . import procstore
from .pacing import Delay
from .procio import Guard, worker_guard
from .sim import _by_clock, _copy, classify, give_timers, shared_objects, split_targets, take_timers
from .storeserver import STORE
from .wire import (
    CLONE,
    GENERATION,
    SENDABLE,
    Kind,
    Mailbox,
    Marks,
    UnsendableValue,
    WireError,
    dealer,
    decode,
    encode,
    endpoint,
    fields,
    generation_name,
    is_generation,
    logical,
    pack_packets,
    tcp_endpoint,
    unpack_packets,
)

log = logging.getLogger("chc.proc")

COORDINATOR = "@coordinator"
REPORT_HWM = 64                 # load reports queued for a vertex manager (more are dropped: cumulative)
SETTLE_EVERY = 8                # input batches between a root's store round trips (at most)
INF = (1 << 63) - 1        # the watermark of an upstream that has ended (above every clock)
# A root's counters a failover root starts from (the coordinator keeps them per input batch)
ROOT_COUNTERS = ("packets_in", "malformed", "non_ip", "dropped", "bypassed", "dropped_overflow", "logged")


def root_name(r: int) -> str:
    return f"@root.{r}"


def instance_name(vertex: str, i: int) -> str:
    return f"{vertex}.{i}"


MANAGER = "@manager."            # the vertex manager processes' names begin so


def on_ring(name: str, starts: dict[str, int], ring: Sequence[str]) -> str | None:
    """The node of worker ``name`` (an instance's generation g: ``g`` places after its
    start in ``ring``), or None for one placed on the coordinator's node (not in ``starts``)."""
    base, _, gen = name.partition(GENERATION.decode())
    start = starts.get(base)
    return None if start is None else ring[(start + int(gen or 0)) % len(ring)]


def manager_name(vertex: str) -> str:
    """The vertex manager process of ``vertex`` (:mod:`chc.runtime.procmanager`)."""
    return MANAGER + vertex


def managed_vertex(name: str) -> str | None:
    """The vertex whose manager process ``name`` is, or None if it is none."""
    return name[len(MANAGER):] if name.startswith(MANAGER) else None


def input_name(root: str) -> str:
    """The input mailbox of root process ``root`` (a failover root's: ``@root.0.in#1``)."""
    base, _, gen = root.partition(GENERATION.decode())
    return f"{base}.in" + (f"{GENERATION.decode()}{gen}" if gen else "")


@dataclasses.dataclass
class Plan:
    """What every worker of a run knows (pickled to each)."""

    directory: str
    chain: Chain
    model: str
    batch_size: int
    store: tuple                    # ("memory", address) or ("redis", urls, namespace, tls options)
    log_mode: str = "local"
    log_limit: int = 0
    persist_every: int = 1000
    send_out: bool = False          # sinks send their output to the coordinator (--out)
    hwm: int = 8                    # data messages queued per link (back-pressure)
    # chc check --runtime proc (docs/coe.md): the store server records its serialization,
    # instances send the clock of each blocking read and report the updates they issued.
    record: bool = False
    breaks: tuple[str, ...] = ()    # client-level --break switches (drop-update), for the checker's tests
    break_from: int = 0             # the clock a break acts from
    # §5.4 NF failover over processes (docs/proc.md): senders keep what they sent until
    # the root is done with it, instances send their counters after every batch, the
    # store server keeps pre-images and the read log.
    recover: bool = False
    replay: bool = True             # off only for --break no-replay (a test's)
    # tcp:// instead of ipc:// (--runtime ray, docs/proc.md): mailbox ``name`` is at
    # ``host_of(name):base_port + slot(name)``, an address every worker derives from the
    # plan alone, so a failover generation's is known to its upstreams without being told.
    # ``host`` is the coordinator's node (roots, store server, managers: names with "@");
    # an NF instance's generation g runs on node ``ring[(starts[instance] + g) % len(ring)]``
    # (a failover on the next node of the ring: another machine when there is one).
    host: str = ""
    base_port: int = 0
    ring: tuple[str, ...] = ()
    starts: dict = dataclasses.field(default_factory=dict)
    heartbeat_s: float = 0.5        # a worker's heartbeats to the coordinator (procio; 0: none)
    # §5.4 store-server failover (chc.runtime.procstore): the store server's checkpoint
    # interval (0: none), every instance's write-ahead log, the roots' commit dedup.
    checkpoint_s: float = 0.0
    # §5.1 elasticity (docs/proc.md, "Scaling"): per vertex changed since the start, its
    # instances (retired ones count), flow-group table and scope level as of the latest
    # change, what a process started since starts from; and the instances retired so far
    # (they feed no process started later: they had ended before it began).
    maps: dict = dataclasses.field(default_factory=dict)
    retired: tuple[str, ...] = ()
    # §5.1 on tcp:// (--runtime ray): per vertex the most instances it can have in the run
    # (its scale-outs counted), so every mailbox's port, a scale-out's new one's too, is
    # fixed from the start: a slot does not move when a vertex grows
    room: dict = dataclasses.field(default_factory=dict)
    # §3 the vertices with a manager process (a scaling: policy; chc.runtime.procmanager):
    # their instances report their load to it, their feeders packets per flow group
    managers: tuple[str, ...] = ()
    # §5.3 the run may clone stragglers (scenario clone events, a straggler_factor): every
    # receiver takes a logical sender's packets, reports and counters per clock, since the
    # two copies of a clone pair run one clock sequence in batches of their own
    clones: bool = False

    @property
    def per_root(self) -> bool:
        """§5 several roots, each its own clock sequence: watermarks travel per root, and
        an instance fed by several upstreams orders each root's packets apart (docs/proc.md,
        "Several roots").  With recovery too (:attr:`orders`)."""
        return self.chain.roots > 1

    @property
    def orders(self) -> bool:
        """§5 with §5.4 several roots and recovery: an instance interleaves the roots'
        packets as they arrive, so its batches are not a function of its input.  Each
        instance tells the store server every batch it runs (before the batch's first op,
        answered before its output leaves), and a failover replays the same batches in
        the same order with the same *through*: what receivers drop by through
        (:class:`~chc.runtime.wire.Marks`) is what the failed one had sent them, and the
        replay sees the state the failed one saw (docs/proc.md, "Several roots")."""
        return self.chain.roots > 1 and self.recover

    def width(self, vertex: str) -> int:
        """``vertex``'s instances so far (retired ones count)."""
        m = self.maps.get(vertex)
        return m[0] if m else self.chain.vertices[vertex].parallelism

    def address(self, name: str) -> str:
        if self.base_port:
            return tcp_endpoint(self.host_of(name), self.base_port + self.slot(name))
        return endpoint(self.directory, name)

    def host_of(self, name: str) -> str:
        """The address of the node mailbox ``name`` is on (tcp://: see ``ring``)."""
        return on_ring(name, self.starts, self.ring) or self.host

    def mailboxes(self) -> list[str]:
        """Every mailbox of generation 0: coordinator, store, roots (reports and input), instances,
        vertex managers."""
        roots = [root_name(r) for r in range(self.chain.roots)]
        return [COORDINATOR, STORE, *roots, *(r + ".in" for r in roots),
                *(instance_name(v, i) for v in self.chain.vertices
                  for i in range(self.room.get(v) or self.width(v))), *map(manager_name, self.managers)]

    def slot(self, name: str) -> int:
        """``name``'s port offset: its index among :meth:`mailboxes`, one block per failover generation."""
        base, _, gen = name.partition(GENERATION.decode())
        names = self.mailboxes()
        return names.index(base) + int(gen or 0) * len(names)

    def targets(self, vertex: str | None) -> list[str]:
        """The vertices a root (None) or an instance of ``vertex`` sends to."""
        if vertex is None:
            return split_targets(self.chain, self.chain.entries)
        v = self.chain.vertices[vertex]
        return split_targets(self.chain, v.successors + v.taps_out)

    def feeders(self, vertex: str, retired: bool = False) -> list[str]:
        """The processes that send ``vertex``'s instances packets (``retired``: also the
        ones that did before they retired, which a failover's replay may need)."""
        out = [root_name(r) for r in range(self.chain.roots) if vertex in self.targets(None)]
        for name in self.chain.vertices:
            if vertex in self.targets(name):
                names = [instance_name(name, i) for i in range(self.width(name))]
                out += [n for n in names if retired or n not in self.retired]
        return out

    def instances(self) -> list[tuple[str, int]]:
        return [(name, i) for name in self.chain.vertices for i in range(self.width(name))]

    def flowmaps(self) -> dict[str, FlowMap]:
        return {name: self.flowmap(name, self.maps.get(name)) for name in self.chain.vertices}

    def flowmap(self, vertex: str, change: list | None) -> FlowMap:
        """``vertex``'s flow map as a change ``[n, table, level]`` left it (None: as at the start)."""
        v = self.chain.vertices[vertex]
        fm = FlowMap(v.parallelism, v.nf.partition_scopes())
        if change is not None:
            fm.n, table, level = change
            fm.table = list(table) if table is not None else None
            fm.set_level(level)
        return fm


def take_change(plan: Plan, change: dict) -> FlowMap:
    """§5.1 a vertex's change (docs/proc.md, "Scaling") in this process's copy of the
    plan; the vertex's new flow map."""
    vertex = change["vertex"]
    plan.maps[vertex] = [change["n"], change["table"], change["level"]]
    plan.retired += tuple(n for i in change["retire"] if (n := instance_name(vertex, i)) not in plan.retired)
    return plan.flowmaps()[vertex]


def open_backend(plan: Plan, ctx: zmq.Context, identity: str, guard: Guard) -> Any:
    """This process's own connection to the run's store."""
    if plan.store[0] == "memory":
        from .storeserver import RemoteStore
        return RemoteStore(ctx, plan.store[1], identity, guard)
    from .storeserver import redis_store
    return redis_store(*plan.store[1:], guard)


def _below_end(through: int) -> int:
    """A watermark message's *through*: below the end's (INF).  A receiver takes from a
    failover only what goes past the latest through it had from that logical sender,
    and a flood at INF (every upstream ended) made it drop the end that came next:
    the receiver waited for it for good."""
    return min(through, INF - 1)


class _Sender:
    """A worker's sockets to the instances it feeds, with their splitters (§4.1)."""

    def __init__(self, plan: Plan, ctx: zmq.Context, me: str, vertex: str | None, guard: Guard,
                 current: dict[str, str] | None = None) -> None:
        self.plan = plan
        self.ctx = ctx
        self.me = me
        self.guard = guard
        flowmaps = plan.flowmaps()
        self.splitters = {d: Splitter(flowmaps[d].scope, flowmaps[d]) for d in plan.targets(vertex)}
        # A failover process started after a target failed over feeds the target's
        # failover (``current``: logical instance -> its process now, §5.4).
        at = current or {}
        self.socks = {d: [dealer(ctx, plan.address(at.get(instance_name(d, i), instance_name(d, i))), me, plan.hwm)
                          for i in range(plan.width(d))] for d in self.splitters}
        # §5.1 a vertex whose flow groups move: from the clock after ``barrier`` on its
        # packets go by the new map (vertex -> barrier, splitter); its retired instances.
        self.switching: dict[str, tuple[int, Splitter]] = {}
        # §5.1 with §5.4: a failover sends again packets stamped before changes of the
        # vertices it feeds; each goes by the map in force at its clock (vertex -> [(barrier,
        # splitter of the clocks up to it)], oldest first), not today's: a new instance
        # would take a packet of a flow it never had (a duplicate), and the records a
        # later failover replays would hold it.  Only while the failover replays.
        self.past: dict[str, list[tuple[int, Splitter]]] = {}
        self.by_past = 0                        # packets the replay sent by a past map
        self.gone: set[tuple[str, int]] = {(d, i) for d in self.socks for i in range(len(self.socks[d]))
                                           if instance_name(d, i) in plan.retired}
        # Instances fed by several upstreams wait for every upstream's watermark.
        self.merging = {d for d in self.splitters if len(plan.feeders(d)) > 1}
        self.coordinator = dealer(ctx, plan.address(COORDINATOR), me)
        # root -> the through of the latest report sent to it (what a receiver's report waits for)
        self.rep_through: dict[int, int] = {}
        # §5 per root (Plan.per_root): how far this sender is in each root's clocks; None:
        # the watermark alone says it
        self.rmarks: list[int] | None = None
        self.out_packets = 0
        # §5.4: what was sent to each target, while its root may still need it replayed
        # (from the oldest clock the root logs, its floor), with the latest watermark and end.
        self.sent: dict[tuple[str, int], deque] | None = {} if plan.recover else None
        self.sent_mark: dict[tuple[str, int], tuple[int, bool, int]] = {}     # watermark, end, through
        self.sent_rmarks: dict[tuple[str, int], list[int]] = {}               # §5 and per root (per_root)
        # §5.1 a scale-out's new instance has nothing up to the barrier it joined at: a
        # target it has sent nothing yet has had everything from it up to there
        self.born = -1
        # §5.3 a target in a clone pair: the clone's socket; each message to the target goes to it too
        self.tees: dict[tuple[str, int], zmq.Socket] = {}
        self.floors: dict[int, int] = {}        # root id -> its floor, as last heard
        # §4.1 per vertex with a manager process: packets per flow group go to it (it
        # rebalances by them); counted by the splitters, sent after a batch now and then
        self.managers = {d: dealer(ctx, plan.address(manager_name(d)), me, REPORT_HWM) for d in self.splitters
                         if d in plan.managers}
        for d in self.managers:
            self.splitters[d].map.count_groups()
        # (sent about four times an interval of input time, as the instances' load reports)
        self.groups_every = min((plan.chain.vertices[d].scaling.interval_ns // 4 for d in self.managers), default=0)
        self.groups_at = -1

    def split(self, vertex: str, pkts: list[Packet]) -> list[list[Packet]]:
        sw = self.switching.get(vertex)
        if sw is None and not self.past:
            return self.splitters[vertex].split(pkts)
        # §5.1 up to each barrier by the map in force until it, after the last by the newest
        eras = list(self.past.get(vertex, ()))
        if sw is None:
            newest = self.splitters[vertex]
        else:
            eras.append((sw[0], self.splitters[vertex]))
            newest = sw[1]
        if not eras:
            return newest.split(pkts)
        out = newest.split([p for p in pkts if p.clock > eras[-1][0]])
        for k in range(len(eras) - 1, -1, -1):
            lo, (hi, splitter) = eras[k - 1][0] if k else -1, eras[k]
            part = [p for p in pkts if lo < p.clock <= hi]
            if part:
                self.by_past += len(part) if sw is None or k < len(eras) - 1 else 0
                for i, sub in enumerate(splitter.split(part)):
                    out[i][:0] = sub
        return out

    def replaying(self, past: dict[str, list] | None) -> int:
        """A failover's replay starts (``past``: per vertex, the maps in force before each
        change since its floor, ``[barrier, n, table, level]``) or ends (None); how many
        of those changes are of vertices it feeds."""
        self.past = {}
        eras = {d: e for d, e in (past or {}).items() if d in self.splitters and e}
        if "replay-by-today" in self.plan.breaks:   # (a test's: the checker must catch it)
            return sum(map(len, eras.values()))
        for d, changes in eras.items():
            fms = [(barrier, self.plan.flowmap(d, change)) for barrier, *change in changes]
            self.past[d] = [(barrier, Splitter(fm.scope, fm)) for barrier, fm in fms]
        return sum(map(len, eras.values()))

    def switch(self, vertex: str, flowmap: FlowMap, barrier: int) -> None:
        """§5.1 ``vertex``'s flow groups move at ``barrier``: sockets to its new instances;
        which vertices now have several feeders (each of their instances is sent every
        watermark)."""
        socks = self.socks[vertex]
        while len(socks) < flowmap.n:
            socks.append(dealer(self.ctx, self.plan.address(instance_name(vertex, len(socks))), self.me,
                                self.plan.hwm))
        if vertex in self.managers:
            flowmap.count_groups()
        self.switching[vertex] = (barrier, Splitter(flowmap.scope, flowmap))
        self.merging = {d for d in self.splitters if len(self.plan.feeders(d)) > 1}

    def watermark(self, watermark: int) -> None:
        """§5.1 a change's barrier passed: every instance fed hears how far this sender
        is (it may send none of them anything else for long)."""
        for d, socks in self.socks.items():
            for i in range(len(socks)):
                if (d, i) not in self.gone:
                    self.data(d, i, [], watermark, _below_end(watermark))

    def advance(self, watermark: int, through: int) -> None:
        """Everything up to ``watermark`` was sent: a vertex switching at a barrier below
        it takes the new map alone, and each of its instances hears the watermark (an
        instance that loses flow groups knows then that it has all it will get of them)."""
        for vertex, (barrier, new) in list(self.switching.items()):
            if watermark >= barrier:
                del self.switching[vertex]
                self.splitters[vertex] = new
                for i in range(len(self.socks[vertex])):
                    if (vertex, i) not in self.gone:
                        self.data(vertex, i, [], watermark, _below_end(through))
                # (an instance retiring here has it all now: nothing more goes to it)
                self.gone |= {(vertex, i) for i in range(len(self.socks[vertex]))
                              if instance_name(vertex, i) in self.plan.retired}

    def data(self, vertex: str, i: int, pkts: list[Packet], watermark: int, through: int, eof: bool = False,
             hold: list | None = None) -> None:
        """Send ``vertex[i]`` packets (kept first, with recovery: §5.4); ``hold``: not
        yet, the message goes there for :meth:`transmit` (a failover root's replay)."""
        rows = pack_packets(pkts)
        # §5 per root: the marks of now go with the message (a failover root's held
        # messages leave after its whole replay, each with its own)
        rm = list(self.rmarks) if self.rmarks is not None else None
        if self.sent is not None:
            kept = self.sent.get((vertex, i))
            if kept is None:
                kept = self.sent[(vertex, i)] = deque()
            kept.extend(rows)
            self.sent_mark[(vertex, i)] = (watermark, eof, through)
            if rm is not None:
                self.sent_rmarks[(vertex, i)] = rm
        if hold is None:
            self.transmit(vertex, i, rows, watermark, through, eof, rm)
        else:
            hold.append((vertex, i, rows, watermark, through, eof, rm))

    def transmit(self, vertex: str, i: int, rows: list, watermark: int, through: int, eof: bool = False,
                 rm: list[int] | None = None) -> None:
        if rm is None:
            rm = self.rmarks or []
        frame = encode(Kind.DATA, [watermark, self.rep_through, rows, eof, through, self.floors, rm])
        sock = self.socks[vertex][i]        # (both picked before a wait: a tee set meanwhile has it in its record)
        tee = self.tees.get((vertex, i))
        if tee is not None:
            # §5.3 the clone first: a send blocked on the straggler that loses gives up
            # (untee); one that waited for the clone may find the straggler's socket
            # closed since (the clone kept: it had the frame)
            self.guard.send(tee, frame)
            if sock.closed:
                return
        self.guard.send(sock, frame)

    def batch(self, parts: dict[tuple[str, int], list[Packet]], watermark: int, through: int,
              hold: list | None = None) -> None:
        """Each target instance its packets; every merging one the watermark.  Not a
        retired one: it has had all it will process (a failover root's replay by a past
        map would send it what it ran before it retired, and it reads nothing any more:
        the replay blocked once its link was full)."""
        gone = self.gone
        for (d, i), pkts in parts.items():
            if (d, i) not in gone:
                self.data(d, i, pkts, watermark, through, hold=hold)
        for d in self.merging:
            for i in range(len(self.socks[d])):
                if (d, i) not in parts and (d, i) not in self.gone:
                    self.data(d, i, [], watermark, through, hold=hold)
        if self.managers:
            ts = max((p[-1].ts for p in parts.values() if p), default=-1)
            if ts >= self.groups_at:
                self.groups_at = ts + self.groups_every
                self.groups()

    def groups(self) -> None:
        """§4.1 each managed vertex's packets per flow group since the last call, to its
        manager (a report lost to a full or missing manager is only a coarser view)."""
        for d, sock in self.managers.items():
            maps = [self.splitters[d].map] + ([self.switching[d][1].map] if d in self.switching else [])
            counts = [m.take_counts() for m in maps if m.counts is not None]
            if len(counts) == 2 and len(counts[0]) == len(counts[1]):
                counts = [[a + b for a, b in zip(*counts, strict=True)]]
            for c in counts:
                if any(c):
                    with contextlib.suppress(zmq.Again):
                        sock.send(encode(Kind.CONTROL, ["groups", c]), zmq.NOBLOCK)

    def end(self) -> None:
        if self.rmarks is not None:
            self.rmarks = [INF] * len(self.rmarks)
        for d, socks in self.socks.items():
            for i in range(len(socks)):
                if (d, i) not in self.gone:
                    self.data(d, i, [], INF, INF, True)

    def prune(self, floors: dict[int, int]) -> None:
        """Each root in ``floors`` logs none of its clocks below its floor any more: they
        are never replayed (§5.4).  Per root: a clock's root is in its high bits."""
        mine = self.floors
        changed = False
        for r, floor in floors.items():
            if floor > mine.get(r, -1):
                mine[r] = floor
                changed = True
        if not changed:
            return
        for kept in self.sent.values():
            while kept and kept[0][3] < mine.get(root_of(kept[0][3]), -1):
                kept.popleft()

    def repoint(self, vertex: str, i: int, name: str) -> list:
        """§5.4 ``vertex[i]`` failed: what goes to it goes to its failover ``name`` from
        now on; what was sent to it (the failover replays it), as ``[rows, watermark,
        ended, report throughs, through of the last message]``."""
        socks = self.socks[vertex]
        while len(socks) <= i:
            # §5.1 with §5.4 a scale-out's new instance died before this sender heard of the
            # change (--kill VERTEX[I]@change:K; its IndexError stopped the run): nothing was
            # sent to it; the change, when it comes, finds its socket there
            socks.append(dealer(self.ctx, self.plan.address(instance_name(vertex, len(socks))), self.me,
                                self.plan.hwm))
        socks[i].close(0)
        socks[i] = dealer(self.ctx, self.plan.address(name), self.me, self.plan.hwm)
        mark, eof, through = self.sent_mark.get((vertex, i), (self.born, False, self.born))
        # (§5 per root: the marks of the last message, for the failover's wait, _await_roots)
        return [list(self.sent.get((vertex, i), ())), mark, eof, dict(self.rep_through), through,
                self.sent_rmarks.get((vertex, i))]

    def tee(self, vertex: str, i: int, name: str) -> list:
        """§5.3 ``vertex[i]`` is cloned as ``name``: from now on every message to it goes to
        the clone too; what was sent to it so far (as :meth:`repoint`'s record) is the
        clone's to take from.  One control message, so nothing falls between the two."""
        self.tees[(vertex, i)] = dealer(self.ctx, self.plan.address(name), self.me, self.plan.hwm)
        mark, eof, through = self.sent_mark.get((vertex, i), (self.born, False, self.born))
        return [list(self.sent.get((vertex, i), ())), mark, eof, dict(self.rep_through), through]

    def records(self) -> list:
        """§5.3 what this process sent each target since the floors, as ``[vertex, i, rows,
        watermark, eof, through]``: a clone of it sends it again first (:meth:`resend`)."""
        return [[d, i, list(rows), *self.sent_mark[(d, i)]] for (d, i), rows in self.sent.items()
                if rows and (d, i) in self.sent_mark]

    def resend(self, records: list) -> None:
        """§5.3 a clone's first messages: what its straggler had sent each target (its
        :meth:`records`), taken as its own.  The straggler's last ones may still be on
        their way (a slow target's queue) when the clone's first batch past them comes
        on its own link, and a receiver takes a logical sender's clocks past the highest
        through of either copy: they were dropped (seed 0 of proc-clone.yaml lost 3-300
        packets).  Sent again, whichever copy's comes first has them."""
        for d, i, rows, mark, eof, through in records:
            if (d, i) in self.gone:
                continue
            self.sent.setdefault((d, i), deque()).extend(rows)
            self.sent_mark[(d, i)] = (mark, eof, through)
            self.transmit(d, i, rows, mark, through, eof)

    def untee(self, vertex: str, i: int, keep_clone: bool) -> None:
        """§5.3 the pair of ``vertex[i]`` is resolved: only the kept copy is sent to."""
        tee = self.tees.pop((vertex, i), None)
        if tee is None:
            return
        if keep_clone:
            self.socks[vertex][i].close(0)
            self.socks[vertex][i] = tee
        else:
            tee.close(0)

    def to_coordinator(self, what: str, body: Any) -> None:
        self.guard.send(self.coordinator, encode(Kind.CONTROL, [what, body]))

    def output(self, pkts: list[Packet], through: int) -> None:
        """Packets leaving the chain: counted, and to the coordinator for ``--out``."""
        self.out_packets += len(pkts)
        if self.plan.send_out and pkts:
            self.to_coordinator("out", [through, [[p.ts, p.clock, bytes(p.data)] for p in pkts]])


def main(plan: Plan, role: str, index: Any, replay: dict | None = None, join: dict | None = None) -> None:
    """A worker's entry point: ``role`` "root" (index: root id) or "instance"
    (index: (vertex, i) or, for a failover, (vertex, i, generation) with what it
    replays; ``join``: a scale-out's new instance, the change it joins in).
    Errors reach the coordinator as one line."""
    if role == "root":
        r, gen = index if isinstance(index, tuple) else (index, 0)
        me = generation_name(root_name(r), gen)
    elif len(index) > 2 and isinstance(index[2], str):
        me = index[2]                   # §5.3 a clone (nat.0~1)
    else:
        me = generation_name(instance_name(*index[:2]), (index + (0,))[2])
    guard = worker_guard(me)
    ctx = zmq.Context()
    coordinator = None
    profile = os.environ.get("CHC_PROC_PROFILE")     # a directory: each worker's cProfile there (docs/proc.md)
    if profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    try:
        worker = (RootWorker(plan, ctx, r, guard, me, replay) if role == "root"
                  else InstanceWorker(plan, ctx, index[0], index[1], guard, me, replay, join))
        coordinator = worker.out.coordinator
        control = Control(worker.out, guard, worker.boxes, getattr(worker, "reroot", None), worker.store_failed,
                          getattr(worker, "change", None), getattr(worker, "slow", None))
        if plan.heartbeat_s:
            guard.heartbeat(plan.heartbeat_s, encode(Kind.CONTROL, ["hb", None]), worker.out.coordinator)
        worker.run()
        if profile:
            prof.disable()
            prof.dump_stats(os.path.join(profile, f"{me}.pstats"))
        # Stay until the coordinator has heard from every worker: what this one sent last
        # (end of input behind its last packets) may still wait in its sockets for a busy
        # downstream, and closing them would drop it.
        while not control.bye:
            guard.poll(zmq.Poller(), 1000)
    except Exception as exc:            # the coordinator shows it and stops the run
        detail = traceback.format_exc()
        log.debug("%s failed:\n%s", me, detail)
        sock = coordinator or dealer(ctx, plan.address(COORDINATOR), me)
        guard.send(sock, encode(Kind.CONTROL, ["error", f"{me}: {type(exc).__name__}: {exc}"]))
        sock.close(1000)
    finally:
        ctx.destroy(linger=1000)


def spare(plan: Plan, vertex: str, i: int) -> None:
    """§5.1 a warm spare: the process of ``vertex``'s next instance, started ahead of the
    scale-out that needs it (a new process was most of a scale-out's pause: 24-67 ms of
    38-113 ms, fork and start-up under load).  It says so, waits, and runs :func:`main`
    with what the coordinator sends when the scale-out comes (the plan as it is then,
    and the change it joins); told ``bye`` first, it ends."""
    guard = worker_guard(f"spare {instance_name(vertex, i)}")
    ctx = zmq.Context()
    sock = dealer(ctx, plan.address(COORDINATOR), instance_name(vertex, i))
    try:
        guard.send(sock, encode(Kind.CONTROL, ["spare", None]))
        while True:
            what, body = fields(decode(guard.recv(sock))[1], 2, "control")
            if what in ("assign", "bye"):
                break
    finally:
        ctx.destroy(linger=1000)
    if what == "assign":
        main(*pickle.loads(body))


class Control:
    """What the coordinator tells a worker while it runs (§5.4): re-point a target to
    its failover, answered with what was sent to the failed one; fence a failed
    upstream (its failover's frames are taken from then on); re-point the reports
    to a root's failover (an instance: ``reroot``); the store server's failover
    (``wal``, ``truncate``, ``store``: :meth:`InstanceWorker.store_failed`); §5.1 a
    vertex's change and its go-ahead (``epoch``, ``go``: :meth:`InstanceWorker.change`);
    §4.3 an operator control's quiet barrier and, in model T, its values (``quiet``,
    ``control``: :meth:`InstanceWorker.change`);
    §5.3 a scenario's slow-down or speed-up of this process (``slow``:
    :meth:`InstanceWorker.slow`); and bye."""

    def __init__(self, out: _Sender, guard: Guard, boxes: list[Mailbox],
                 reroot: Any = None, store_failed: Any = None, change: Any = None, slow: Any = None) -> None:
        self.out = out
        self.boxes = boxes
        self.reroot = reroot
        self.store_failed = store_failed
        self.change = change
        self.slow = slow
        self.guard = guard
        self.bye = False
        guard.control = out.coordinator
        guard.on_control = self.take

    def take(self) -> None:
        sock = self.out.coordinator
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                what, body = fields(decode(frame)[1], 2, "control")
            except WireError as exc:
                log.warning("%s: a bad control message: %s", self.out.me, exc)
                continue
            if what == "bye":
                self.bye = True
            elif what == "fence":
                for box in self.boxes:
                    box.fence(body.encode())
            elif what == "repoint":
                vertex, i, name = body
                self.out.to_coordinator("record", [vertex, i, self.out.repoint(vertex, i, name)])
            elif what == "tee":
                vertex, i, name = body
                self.out.to_coordinator("teed", [vertex, i, self.out.tee(vertex, i, name)])
            elif what == "untee":
                vertex, i, _ = body
                self.out.untee(*body)
                through = self.out.sent_mark.get((vertex, i), (-1, False, -1))[2]
                self.out.to_coordinator("untee'd", [vertex, i, through])
            elif what == "reroot" and self.reroot is not None:
                self.reroot(*body)
            elif what in ("wal", "truncate", "store"):
                self.store_failed(what, body)
            elif what in ("epoch", "go", "pair", "unpair", "quiet", "control") and self.change is not None:
                self.change(what, body)
            elif what == "slow" and self.slow is not None:
                self.slow(body)


# -- roots ------------------------------------------------------------------------------------

class RootWorker:
    def __init__(self, plan: Plan, ctx: zmq.Context, r: int, guard: Guard, me: str = "",
                 replay: dict | None = None) -> None:
        self.plan = plan
        self.guard = guard
        chain = plan.chain
        self.me = me or root_name(r)        # this process (a failover's: @root.0#1)
        names = [instance_name(v, i) for v, i in plan.instances()]
        self.input = Mailbox(ctx, plan.address(input_name(self.me)), self.me, {COORDINATOR.encode()}, plan.hwm)
        self.reports = Mailbox(ctx, plan.address(self.me), self.me, {n.encode() for n in names})
        for dead in (replay or {}).get("fenced", ()):      # failed before this root started
            self.reports.fence(dead.encode())
        self.out = _Sender(plan, ctx, self.me, None, guard, (replay or {}).get("current"))
        # §5.1 with §5.4 a failover root started during a scale-in: the retiring instance
        # is fed until its watermark passes the barrier, as by the dead root (advance)
        self.out.gone -= {(v, i) for v, i in (replay or {}).get("retiring", ())}
        if plan.per_root:
            self.out.rmarks = [INF] * chain.roots       # (it sends no other root's clocks, ever)
            self.out.rmarks[r] = -1
        self.boxes = [self.reports]
        self.root = Root(r, chain.policies, log_mode=plan.log_mode, log_limit=plan.log_limit,
                         persist_every=plan.persist_every)
        self.store = open_backend(plan, ctx, self.me, guard)
        self.root.dedup_commits = bool(plan.checkpoint_s)   # §5.4 a failover store reports again
        # chc check (docs/coe.md): each deletion from the log with how many commit pulls
        # preceded it; the store server records where each pull falls in its order.
        self.pulls = 0
        self.deleted: list[int] | None = None
        if plan.record:
            self.deleted = []
            self.root.observer = lambda clock: self.deleted.extend((clock, self.pulls))
        if "no-xor" in plan.breaks and plan.model == "EO+C+NA":
            self.root.xor_check = False     # --break no-xor (only non-blocking updates can lag)
        # §5.3 its own clocks (core.store); with several roots not while a failover may
        # replay (a replay can hold another root's packets that root is done with: sim.py)
        self.prune = plan.model != "T" and (chain.roots == 1 or not plan.recover)
        self.inbox = CausalInbox(per_item=plan.clones)
        self.instances = [instance_name(v, i) for v, i in plan.instances()]
        self.watermark = -1
        self.meta_pending: list = []
        self.unsettled = 0
        self.batches = 0                    # input batches ingested (the coordinator's count, recover)
        self.replay = replay
        self.restoring = False

    def run(self) -> None:
        held = self._restore(self.replay) if self.replay is not None else []
        self.out.to_coordinator("ready", None)
        for message in held:
            self.out.transmit(*message)
        if self.replay is not None:
            self.out.to_coordinator("replayed", self.replayed)
        poller = zmq.Poller()
        poller.register(self.input.sock, zmq.POLLIN)
        poller.register(self.reports.sock, zmq.POLLIN)
        while True:
            events = self.guard.poll(poller)
            if events.get(self.reports.sock) or self.reports.released:
                self._take_reports()
            if events.get(self.input.sock):
                msg = self.input.recv(zmq.NOBLOCK)
                if msg is None:
                    continue
                try:
                    if msg[1] != Kind.INPUT:
                        raise WireError(f"a {Kind(msg[1]).name} message on the input mailbox")
                    what, body = fields(msg[2], 2, "input")
                except WireError as exc:
                    self.input.ban(msg[0], str(exc))
                    continue
                if what == "batch":
                    self._ingest(body)
                elif what == "epoch":
                    self._epoch(body)
                elif what == "quiet":
                    self._quiet(body)
                elif what == "end":
                    self.out.end()
                elif what == "finish":
                    self._finish(poller)
                    return

    def _epoch(self, change: dict) -> None:
        """§5.1 a vertex changes (docs/proc.md, "Scaling"), told behind the input sent so
        far: every clock stamped from now on is past the barrier, this root's watermark,
        and goes by the new map; the coordinator hears the barrier."""
        barrier = self.watermark
        vertex = change["vertex"]
        flowmap = take_change(self.plan, change)
        names = [instance_name(vertex, j) for j in change["new"]]
        self.instances += names
        self.reports.expected |= {n.encode() for n in names}
        if vertex in self.out.splitters:
            self.out.switch(vertex, flowmap, barrier)
            self.out.advance(barrier, barrier)
        self.out.watermark(barrier)
        self.out.to_coordinator("barrier", [change["id"], barrier])

    def _quiet(self, qid: int) -> None:
        """§4.3 an operator control waits for a quiet chain (docs/proc.md, "Operator
        controls"), told behind the input sent so far: this root's watermark is the
        barrier; every instance it feeds hears it (the instances send it on once past it,
        :meth:`InstanceWorker._progress`), and the coordinator hears the barrier."""
        barrier = self.watermark
        self.out.watermark(barrier)
        self.out.to_coordinator("quiet", [qid, barrier])

    def store_failed(self, what: str, body: Any) -> None:
        """§5.4 the store server failed over: its failover is at ``body``.  The persisted
        clock it wrote since the failover's checkpoint is written again (its last one)."""
        if what == "store":
            self.store.repoint(body)
            root = self.root
            if root.next_seq:
                last = (root.next_seq - 1) // root.persist_every * root.persist_every
                self.meta_pending.append(Op("set", clock_key(root.root_id), (root.base | last,)))

    # -- §5.4 root failover ------------------------------------------------------------------
    def _restore(self, replay: dict) -> list:
        """Take over from a failed root (docs/proc.md): its counters and next clock as of
        the input the coordinator still keeps (everything from the oldest clock it had
        logged), that input stamped again with the same clocks and split the same way,
        so every receiver drops by through what it had already; the packet log rebuilt
        from it, from the commit reports the store had handed over (pulled before any
        new ones), and from the reports every instance kept and sends again
        (``reroot``); entries below a floor someone heard are done with and dropped.
        The messages to send are returned (held until the coordinator may re-point
        this root: what it hands over is then complete)."""
        started = time.perf_counter()
        root = self.root
        self.batches = replay["first"]
        root.next_seq = replay["next"] - root.base
        for k, v in zip(ROOT_COUNTERS, replay["counters"], strict=True):
            setattr(root, k, v)
        root.deleted = root.logged      # (what was logged before the kept input is done with)
        floor, commits = self.store.recommits(root.root_id) if hasattr(self.store, "recommits") else (-1, [])
        held: list = []
        self.restoring = True
        packets = past = 0
        # No log bound while replaying: the rebuilt log still holds what the failed one
        # had deleted (reports come after), so the bound would drop what it admitted
        # (the coordinator stops the run if it had dropped any for a full log).
        limit, root.log_limit = root.log_limit, 0
        if self.plan.replay:            # --break no-replay: the kept input is lost
            past = self.out.replaying(replay.get("past"))      # §5.1 each packet by the map it went by
            for rows in replay["batches"]:
                self._ingest(rows, held)
                self.guard.tick()
                packets += len(rows)
            self.out.replaying(None)
        root.log_limit = limit
        self.restoring = False
        for clock, xor_id in commits:
            root.commit(clock, xor_id)
        forgotten = root.forget_below(max(floor, replay["floor"]))
        self._settle()
        self.replayed = {"packets": packets, "batches": len(replay["batches"]), "commits": len(commits),
                         "past_maps": past if self.plan.replay else 0, "by_past_maps": self.out.by_past,
                         "forgotten": forgotten, "logged": len(root.log), "floor": max(floor, replay["floor"]),
                         "seconds": time.perf_counter() - started}
        return held

    # -- input ----------------------------------------------------------------------------
    def _ingest(self, rows: list, hold: list | None = None) -> None:
        root = self.root
        pkts = [Packet(data, ts, index) for ts, data, index in rows]
        admitted, bypass = root.ingest(pkts)
        if bypass:
            # (through: the batch's last input index, so a failover root's replay of it is
            # recognised and dropped at the coordinator)
            self.out.output(bypass, rows[-1][2])
        parts: dict[tuple[str, int], list[Packet]] = {}
        if admitted:
            root.record(admitted)       # log first (§5): the reports that follow refer to the entries
            chain = self.plan.chain
            routed = ({chain.entries[0]: admitted} if len(chain.entries) == 1
                      else classify(chain, root.fork, admitted))
            for name, group in routed.items():
                for i, sub in enumerate(self.out.split(name, group)):
                    if sub:
                        root.place(sub, name, i)
                        parts[(name, i)] = sub
                for tap in chain.vertices[name].taps_in:
                    copies = [_copy(p) for p in group]
                    for p in group:
                        root.fork(p.clock, 1)
                    for i, sub in enumerate(self.out.split(tap, copies)):
                        if sub:
                            parts.setdefault((tap, i), []).extend(sub)
        self.watermark = root.base | (root.next_seq - 1)
        if self.out.rmarks is not None:
            self.out.rmarks[root.root_id] = self.watermark
        self.out.batch(parts, self.watermark, self.watermark, hold)
        # Store round trips (metadata writes, commit reports, pruning) once per few
        # batches while input keeps coming, at once when it pauses: each costs a wake-up
        # of the store process, which under load was the root's main wait (profiled).
        # Not while a failover root replays: the commits it pulls again come first.
        self.unsettled += 1
        if not self.restoring and (self.unsettled >= SETTLE_EVERY or not self.input.sock.poll(0)):
            self._settle()
        if self.plan.recover:
            # §5.4 what the coordinator keeps for this root's failover: from this batch on
            # the clocks start at ``next``, with these counters; below ``oldest`` all is done.
            self.out.to_coordinator("ingested", [self.batches, root.base | root.next_seq,
                                                 [getattr(root, k) for k in ROOT_COUNTERS], root.oldest])
        self.batches += 1

    def _settle(self) -> None:
        """Root writes to the store, its commit reports (§5.4), clock-log pruning (§5.3)."""
        self.unsettled = 0
        root = self.root
        ops = self.meta_pending + root.drain_outbox()
        if ops:
            self.store.execute(ops)
            self.meta_pending = []
        commits = self.store.commits(root.root_id)     # its own: several roots share the store
        self.pulls += 1             # (what they let the root delete comes after this pull)
        for clock, xor_id in commits:
            root.commit(clock, xor_id)
        if self.inbox.fired:
            self.inbox.forget_below(root.oldest)
        if self.prune:
            self.store.prune_below(root.oldest)     # its own clocks (core.store)
            if self.out.sent is not None:
                self.out.prune({root.root_id: root.oldest})     # and the instances, told with the next data

    # -- reports (causal delivery) ------------------------------------------------------------
    def _take_reports(self) -> None:
        tick = self.guard.tick          # (a failover root's backlog can take long: it still beats)
        for peer, (through, deps, items) in self.reports.messages(Kind.REPORT, 3, "report"):
            tick()
            try:
                if through.__class__ is not int or deps.__class__ is not dict or items.__class__ is not list or \
                        not all(it.__class__ is list and len(it) == 3 and it[1].__class__ is int for it in items):
                    raise WireError("malformed report")
            except WireError as exc:
                self.reports.ban(peer, str(exc))
                continue
            if items and items[0][0] == 2:     # a root failover: the sender's kept reports follow
                self.root.forget_below(items[0][1])
                ready = self.inbox.start(peer.decode(), through)
            else:
                ready = self.inbox.offer(peer.decode(), through, deps, items)
            for its in ready:
                self._apply(its)

    def _apply(self, items: list) -> None:
        root = self.root
        for item in items:
            what, clock, value = item
            if what == 0:
                root.fork(clock, value)
            elif what == TIMER:         # (a timer's firing: its re-armed copies, its end)
                if value[0]:
                    root.fork(clock, value[0])
                root.done(clock, value[1])
            else:
                root.done(clock, value)

    def _finish(self, poller: zmq.Poller) -> None:
        """Every report the instances sent applied, the last commits, then the counters."""
        while any(self.inbox.marks.get(k, -1) < INF for k in self.instances):
            if self.guard.poll(poller, 1000).get(self.reports.sock) or self.reports.released:
                self._take_reports()
        self._settle()
        root = self.root
        self.out.to_coordinator("root", {
            "root": root.root_id,
            "counters": {k: getattr(root, k) for k in ("packets_in", "malformed", "non_ip", "dropped", "bypassed")},
            "log": root.stats(), "packets_out": root.bypassed,     # (its outputs: a failover root's too)
            "round_trips": getattr(self.store, "round_trips", 0),
            "rejected": self.input.rejected + self.reports.rejected, "cpu_s": _cpu(),
            "reports_waited": self.inbox.waited, "reports_duplicate": self.inbox.duplicates,
            "commits_duplicate": root.duplicate_commits,
            "log_first": min(root.log) if root.log else None,     # a packet never completed (the checker's)
            "xor_skipped": root.xor_skipped, "process": self.me,
            **({"deleted": self.deleted} if self.deleted is not None else {}),
        })
        self.store.close()


class CausalInbox:
    """Reports applied in causal order (sans-I/O).  Each sender's reports arrive in the
    order it sent them, each with its *through* (the highest clock of the batch it
    is about, :data:`INF` for the last); a report names, per upstream, the through of
    that upstream's latest report sent before the packets it concerns, and is applied
    only after it: a fork is never applied after the end of one of its copies.

    §5.4: a failover process (``nat.0#1``) reports under its logical sender's name;
    what its replay reports again (a through the root already has) is a duplicate,
    dropped."""

    def __init__(self, per_item: bool = False) -> None:
        self.marks: dict[str, int] = {}             # logical sender -> through of its latest report
        self.parked: dict[str, deque] = {}          # logical sender -> its reports waiting, in order
        self.waited = 0                             # reports that had to wait for another's
        self.duplicates = 0                         # a failover's reports the root already had
        # §5.3 with clones: items are taken one by one (the two copies of a pair report
        # the same items in batches of their own): an item of a clock above the logical
        # sender's mark, a timer's k-th firing of a clock if fewer were taken
        self.per_item = per_item
        self.fired: dict[tuple[str, int], int] = {}     # (logical sender, clock) -> firings taken
        self.duplicate_items = 0

    def offer(self, sender: str, through: int, deps: dict[str, int], items: list) -> list[list]:
        """A report from ``sender``; the reports (item lists) that may be applied now, in order."""
        name = logical(sender.encode()).decode()
        queue = self.parked.setdefault(name, deque())
        queue.append((name != sender, through, deps, items))
        out = self._release()
        if queue:
            self.waited += 1
        return out

    def start(self, sender: str, through: int) -> list[list]:
        """Root failover: ``sender`` kept its reports from the one after ``through`` on
        (what it sent before is done with), and sends them again; the reports that may
        be applied now."""
        name = logical(sender.encode()).decode()
        if through > self.marks.get(name, -1):
            self.marks[name] = through
        return self._release()

    def _release(self) -> list[list]:
        out: list[list] = []
        marks = self.marks
        progress = True
        while progress:
            progress = False
            for who, q in self.parked.items():
                while q and all(marks.get(k, -1) >= v for k, v in q[0][2].items()):
                    failover, t, _, its = q.popleft()
                    seen = marks.get(who, -1)
                    if self.per_item:
                        its = self._fresh_items(who, seen, its)
                        out.append(its)
                        if t > seen:
                            marks[who] = t
                    elif failover and t <= seen:
                        self.duplicates += 1
                    else:
                        out.append(its)
                        if t > seen:
                            marks[who] = t
                    progress = True
        return out


    def _fresh_items(self, who: str, seen: int, items: list) -> list:
        """§5.3 what of a report is new: the items of clocks past ``seen`` (the copies run
        one clock sequence, and a report's items are of clocks past its sender's last
        through), and each timer firing that is its clock's k-th and fewer were taken
        (a firing carries its arming clock, which another copy may have passed)."""
        out = []
        fired = self.fired
        for item in items:
            if item[0] == TIMER:
                slot = (who, item[1])
                if item[2][2] <= fired.get(slot, 0):
                    self.duplicate_items += 1
                    continue
                fired[slot] = item[2][2]
            elif item[1] <= seen:
                self.duplicate_items += 1
                continue
            out.append(item)
        return out

    def forget_below(self, clock: int) -> None:
        """Timer firings of clocks done with (below the root's oldest logged) are forgotten:
        a replay's firing of one ends a packet the root no longer has (ignored)."""
        for slot in [s for s in self.fired if s[1] < clock]:
            del self.fired[slot]


TIMER = 3       # a report item of a timer's firing: [TIMER, clock, [re-armed, vector, k-th firing]]


# -- NF instances ------------------------------------------------------------------------------

class InstanceWorker:
    def __init__(self, plan: Plan, ctx: zmq.Context, vertex: str, i: int, guard: Guard, me: str = "",
                 replay: dict | None = None, join: dict | None = None) -> None:
        self.plan = plan
        self.guard = guard
        chain = plan.chain
        v = self.v = chain.vertices[vertex]
        self.name = instance_name(vertex, i)            # the logical instance
        self.me = me or self.name                       # this process (a failover's: nat.0#1)
        # (a failover's: the coordinator's list, with retired upstreams whose records it replays)
        self.feeders = [f.encode() for f in (replay or {}).get("feeders", None) or plan.feeders(vertex)]
        self.box = Mailbox(ctx, plan.address(self.me), self.me, set(self.feeders), plan.hwm)
        # A failover, or a scale-out's new instance, starts after others failed over: it
        # fences the dead and talks to their failovers (§5.4).
        started = replay or join or {}
        for dead in started.get("fenced", ()):
            self.box.fence(dead.encode())
        self.out = _Sender(plan, ctx, self.me, vertex, guard, started.get("current"))
        for d, j, clone in started.get("tees", ()):     # (§5.3 a clone beside a pair downstream)
            self.out.tee(d, j, clone)
        self.boxes = [self.box]
        at = started.get("current", {})
        self.roots = [dealer(ctx, plan.address(at.get(root_name(r), root_name(r))), self.me)
                      for r in range(chain.roots)]
        # §5.4 root failover: per root, the reports sent to it from its floor on, and the
        # through of the last one dropped (a failover root is sent them again: reroot)
        self.kept: dict[int, deque] | None = {} if plan.recover else None
        self.kept_from: dict[int, int] = {}
        self.store = open_backend(plan, ctx, self.me, guard) if plan.model != "T" else None
        width = plan.width(vertex)
        self.inst = Instance(vertex, i, v.nf, v.config, plan.model, self.store, exclusive=width == 1 and not join)
        if replay is not None and "shared" in replay:   # R3 as the vertex shares now (a failover)
            self.inst.set_shared(frozenset(replay["shared"]))
        elif width > 1:                 # R3: objects every instance of the vertex reaches
            self.inst.set_shared(shared_objects(chain, plan.flowmaps()[vertex], vertex))
        self.acted: dict[str, str] = {}     # what a --break did here (the checker's)
        self.no_dedup = "no-dup-suppression" in plan.breaks     # (§5.3 a test's: a clone's duplicates pass)
        self.dup_taken = 0
        self.paired: set[bytes] = set()     # (with it: the logical senders a clone has sent from)
        client = self.inst.client
        if client is not None and self.me != self.name:
            client.client_id = procstore.client_id(self.me)     # its own exactly-once sequence
        if (plan.record or plan.recover) and client is not None and hasattr(self.store, "clock_of"):
            self.store.clock_of = lambda: client.clock      # the clock a read is for (read log, checker)
        self.wal = None
        if plan.checkpoint_s and client is not None:
            # §5.4 store failover: its write-ahead log, with its copy of its part of the read log
            self.wal = attach_wal(client)
            self.wal.shared_reads = {}
            self.wal.read_clock = lambda: client.clock
        if "no-callback" in plan.breaks and client is not None:
            client.callbacks = False    # --break no-callback (a test's): read-heavy caches go stale (§4.3)
        if plan.record and client is not None:
            client.issued = []
            if "drop-update" in plan.breaks:
                client.faults = DropOneUpdate(self, plan.break_from)
        self.ordered = len(self.feeders) > 1
        self.queues: dict[Any, deque[Packet]] = {f: deque() for f in self.feeders}
        self.marks: dict[bytes, int] = dict.fromkeys(self.feeders, -1)
        # §5 several roots (Plan.per_root): every upstream's watermark per root; fed by
        # several, a queue per upstream and root, and each root's packets wait only for
        # that root's watermarks (one order of all clocks held root 1's back until root
        # 0's input ended: a root's id is in its clocks' high bits)
        self.rmarks: dict[bytes, list[int]] | None = None
        # §5 with §5.4 (Plan.orders): the batches this logical instance ran, ``[k, through,
        # highest clock of each root so far]`` each, as the store server has them; a
        # failover starts from the store's and replays them (_replay_batches)
        self.orders: list[list[int]] | None = None
        self.hi: list[int] = []
        self.replaying_batches = False
        if plan.per_root:
            roots = plan.chain.roots
            self.rmarks = {f: [-1] * roots for f in self.feeders}
            self.out.rmarks = [-1] * roots
            # (a queue per upstream and root even from one upstream: a batch runs in clock
            # order, so that the batches told (orders) say the order too)
            self.queues = {(f, r): deque() for f in self.feeders for r in range(roots)}
            if plan.orders and self.store is not None:
                self.orders = []
                self.hi = [-1] * roots
                if self.wal is not None:        # (its copy: a failover store rebuilds from it)
                    self.wal.orders = (self.name, self.orders)
        self.through = -1                   # (per root: the through of its latest batch)
        self.deps: dict[bytes, dict] = {f: {} for f in self.feeders}   # upstream -> its report throughs per root
        self.ended: set[bytes] = set()
        self.seen = Marks()                 # §5.4 a failed upstream's replay: what came already
        self.counted = [0, 0, 0, 0]         # counters sent to the coordinator so far (recover)
        self.alerts_sent = 0
        self.issued_sent = 0                # updates issued sent to the coordinator so far (record)
        self.replay = replay
        # §5.1 a change of this vertex or another (docs/proc.md, "Scaling"): the control
        # messages not yet taken, the clock this instance runs no further than until its
        # go-ahead, its part in the change under way; retired (its flow groups all moved).
        self.changes: deque = deque()
        self.hold = INF
        self.changing: dict | None = None
        self.flood: int | None = None       # a barrier to send on once this instance passes it
        self.quiet: list | None = None      # §4.3 an operator control's [id, barrier] not yet passed
        self.retired = False
        self.finished = False
        self.epochs: set[int] = set()       # the changes this process knows of
        # §3 its vertex manager's load reports: about four an interval of input time
        self.manager = (dealer(ctx, plan.address(manager_name(vertex)), self.me, REPORT_HWM)
                        if vertex in plan.managers else None)
        self.busy_ns = 0
        self.report_at = -1
        self.report_every = v.scaling.interval_ns // 4 if self.manager is not None else 0
        # (a failover's: nat.0#1; the coordinator counts every process of the instance, clones too)
        self.generation = (started.get("generation") if "generation" in started else
                           int(self.me.rpartition(GENERATION.decode())[2]) if is_generation(self.me.encode()) else 0)
        # §5.3 a clone pair (docs/stragglers.md): the private view this copy reads while
        # it runs (what shared_view restores), the highest clock processed, per clock the
        # timer firings so far (each firing's k is reported), and this process a clone
        self.view: dict | None = None
        self.processed = -1
        self.firings: dict[int, int] | None = {} if plan.clones else None
        self.cloned = (replay or {}).get("clone")
        self.unpair_at: dict[bytes, int] | None = None      # kept: unpaired once past these
        # §5.3 a straggler made by a scenario's slow event: this process really takes the
        # delay model's time per packet (slow), until a speed-up; the time slept so far.
        # A slow-down is this process's (its host's), not the logical instance's: a
        # clone, a failover or a scale-out's new process starts at full speed, as the
        # sim's new instances do (docs/proc.md, "Slow-downs")
        self.slowdown: Delay | None = None
        self.slept_ns = 0
        if join is not None:            # a scale-out's new instance: it has nothing up to the barrier
            for f in self.feeders:
                self.marks[f] = join["barrier"]
            self.out.born = join["barrier"]
            self.epochs.add(join["id"])
            self._join(join)
        if replay is not None:
            self.out.born = replay.get("born", -1)      # (a failover of a scale-out's new instance)
            if "change" in replay:
                self._resume_change(replay["change"])

    def run(self) -> None:
        self.out.to_coordinator("ready", None)
        if self.cloned is not None:
            self._start_clone(self.replay)
        elif self.replay is not None:
            c = self.replay.get("change")
            if c is not None and "resume-as-done" in self.plan.breaks and c["vertex"] == self.inst.vertex \
                    and self.inst.instance_id in c["passers"] and not c["passed"]:
                self.out.to_coordinator("passed", [c["id"], []])    # (no hand-over, nothing held)
            self._replay(self.replay)
        poller = zmq.Poller()
        poller.register(self.box.sock, zmq.POLLIN)
        while not self.retired and (len(self.ended) < len(self.feeders) or any(self.queues.values())):
            if self.changes:
                self._take_changes()
            got = self._receive()
            batch = self._ready(self.hold)      # (a replay's wait may have taken everything already)
            if batch:
                self._process(batch, self._watermark(batch))
            if self.changing is not None or self.out.switching or self.flood is not None:
                self._progress()
            if self.unpair_at is not None:
                self._unpair_when_done()
            if not batch and not got:
                self.guard.poll(poller)
        self._finish()
        self.finished = True
        for what, body in self.changes:     # (told while it finished)
            if what == "epoch":
                self.out.to_coordinator("epoch", body["id"])
            elif what in ("quiet", "control"):
                self.out.to_coordinator(what, body[0])     # (§4.3 ended: nothing more runs here)
            elif what == "pair":
                self.out.to_coordinator("paired", None)     # (§5.3 retired: nothing to clone)

    # -- §5.1 elasticity (docs/proc.md, "Scaling") --------------------------------------------------
    def change(self, what: str, body: Any) -> None:
        """The coordinator's ``epoch`` (a vertex changes) or ``go`` (this instance may run
        past the barrier): taken between batches (:meth:`_take_changes`)."""
        if self.finished or (what == "epoch" and body["id"] in self.epochs):
            # (retired: nothing of it changes any more; a failover knew it from its replay)
            if what == "epoch":
                self.out.to_coordinator("epoch", body["id"])
            elif what in ("quiet", "control"):
                self.out.to_coordinator(what, body[0])     # (§4.3 ended: nothing more runs here)
            elif what == "pair":
                self.out.to_coordinator("paired", None)     # (§5.3 done: nothing to clone)
            return
        self.changes.append((what, body))

    def _take_changes(self) -> None:
        while self.changes:
            what, body = self.changes.popleft()
            if what == "epoch":
                self._epoch(body)
            elif what == "pair":
                self._pair()
            elif what == "unpair":
                self._unpair(body)
            elif what == "quiet":
                # §4.3 an operator control: once past the barrier (everything fed before
                # the control has run here), say so, and send the barrier on
                self.quiet = body
                self.flood = body[1] if self.flood is None else max(self.flood, body[1])
            elif what == "control":
                self._control(*body)
            else:
                self._go(*body)

    # -- §5.3 clones (docs/stragglers.md, docs/proc.md "Clones") ----------------------------------
    def _pair(self) -> None:
        """This instance is cloned (between two batches): every update acknowledged, its
        state as the store holds it now read back, and from here on read from that
        private view (the clone, which runs at its own speed, updates the same logical
        state: a copy reading the store would see the other's later packets); its reads
        of shared objects a copy made first are answered from the read log.  What the
        clone starts from goes to the coordinator: the state, the pending timers, the
        highest clock processed (the clone runs the packets past it)."""
        inst = self.inst
        if inst.client is None:         # (model T: refused before; nothing to share)
            self.out.to_coordinator("paired", None)
            return
        inst.client.settle()
        snap = self.store.objects(inst.vertex)
        cursor = self.store.pairing(True, [inst.vertex, inst.instance_id])
        self.view = {}
        private_view(self.view, inst, snap)
        reports = [[r, *report] for r, q in (self.kept or {}).items() for report in q]
        self.out.to_coordinator("paired", {"through": self.processed, "objects": snap,
                                           "timers": list(inst.ctx._timers), "firings": self.firings,
                                           "cursor": cursor, "shared": sorted(inst.shared),
                                           "sent": self.out.records() if self.out.sent is not None else [],
                                           "reports": reports})

    def _start_clone(self, replay: dict) -> None:
        """§5.3 a clone starts where its straggler was when cloned: its state (a private
        view), its timers and their firings so far; of what the upstreams had sent the
        straggler (their records), the packets past the straggler's highest processed
        clock are its input, ahead of what the upstreams copy to it from now on."""
        snap = self.cloned
        inst = self.inst
        through = self.processed = snap["through"]
        for feeder, pkts in self._take_records(replay["feeds"]).items():
            self.queues[feeder].extend(p for p in pkts if p.clock > through)
        give_timers(inst.ctx, [tuple(t) for t in snap["timers"]])
        self.firings = {int(c): k for c, k in snap["firings"].items()}
        if inst.client is not None:
            self.store.pairing(True, [inst.vertex, inst.instance_id], snap["cursor"])
            self.view = {}
            private_view(self.view, inst, snap["objects"])
        # What the straggler had sent its targets and roots, again (whichever copy's comes
        # first has it; each receiver takes each clock once): its last messages may be
        # overtaken by this clone's first (_Sender.resend)
        for r, through, deps, items in snap.get("reports", ()):
            if self.kept is not None:
                self.kept.setdefault(r, deque()).append((through, deps, items))
            self.out.rep_through[r] = max(through, self.out.rep_through.get(r, -1))
            self.guard.send(self.roots[r], encode(Kind.REPORT, [through, deps, items]))
        self.out.resend(snap.get("sent", ()))
        self.out.to_coordinator("cloned", {"handed_over": sum(map(len, self.queues.values()))})

    def _unpair(self, sent: dict | None) -> None:
        """§5.3 this copy is kept: back to the store (updates settled, private view dropped)
        once it has run everything its upstreams had sent the pair (``sent``: per
        upstream, the through of its last message then): the stopped copy may have
        updated the store for clocks up to there, which read back now would count twice."""
        self.cloned = None
        self.unpair_at = {f.encode(): t for f, t in (sent or {}).items()}
        if self.view is not None:
            self.store.pairing(False, [self.inst.vertex, self.inst.instance_id])
        self._unpair_when_done()

    def _unpair_when_done(self) -> None:
        if self.unpair_at is None:
            return
        last = max(self.unpair_at.values(), default=-1)
        if any(self.seen.mark.get(f, -1) < t for f, t in self.unpair_at.items() if f in self.queues) or \
                any(p.clock <= last for q in self.queues.values() for p in q):
            return
        self.unpair_at = None
        inst = self.inst
        if self.view is not None:
            shared_view(self.view, inst)
            self.view = None
        self.out.to_coordinator("unpaired", None)

    def _epoch(self, change: dict) -> None:
        """Vertex ``change["vertex"]`` changes at ``change["barrier"]``: as its upstream,
        split by the new map past the barrier; as its successor, take its new instances'
        packets (nothing up to the barrier comes from them); as one of its instances,
        take part (:meth:`_join`).  Acknowledged: the coordinator feeds no clock past
        the barrier before every process knows."""
        vertex, barrier = change["vertex"], change["barrier"]
        self.epochs.add(change["id"])
        flowmap = take_change(self.plan, change)
        self.flood = barrier
        if vertex in self.out.splitters:
            self.out.switch(vertex, flowmap, barrier)
        if self.inst.vertex in self.plan.targets(vertex):
            for j in change["new"]:
                f = instance_name(vertex, j).encode()
                self.feeders.append(f)
                self.box.expected.add(f)
                self.queues[f] = deque()
                self.marks[f] = barrier
                self.deps[f] = {}
            self.ordered = len(self.feeders) > 1
        if vertex == self.inst.vertex:
            self._join(change)
        self.out.to_coordinator("epoch", change["id"])

    def _resume_change(self, change: dict) -> None:
        """§5.1 with §5.4 the instance this failover replaces died during ``change``
        (docs/proc.md, "A death during a change"); the plan it started from has the
        change made.  As an upstream of the changing vertex: up to the barrier the map
        of then (retiring instances hear the watermarks), past it the new one; as one of
        its instances: its part (:meth:`_join`), less a hand-over the coordinator had."""
        vertex, barrier = change["vertex"], change["barrier"]
        self.epochs.add(change["id"])
        self.flood = barrier
        if vertex in self.out.splitters:
            old = self.plan.flowmap(vertex, change["old"])
            self.out.splitters[vertex] = Splitter(old.scope, old)
            self.out.switch(vertex, self.plan.flowmaps()[vertex], barrier)
            self.out.gone -= {(vertex, j) for j in change["retire"]}
        # (--break resume-as-done, a test's: as an instance of the vertex, as if started
        # after the change: no hand-over, no wait at the barrier)
        if vertex == self.inst.vertex and "resume-as-done" not in self.plan.breaks:
            i = self.inst.instance_id
            self._join({**change, "passers": [p for p in change["passers"] if p != i or not change["passed"]]})

    def _join(self, change: dict) -> None:
        """This instance's part in a change of its vertex: one that loses flow groups (or
        all, when what is shared changes, R3) runs up to the barrier and then hands over
        (:meth:`_progress`); one that gains them (a new one, or all) waits at the
        barrier for the go-ahead, which comes once every one of those has."""
        i = self.inst.instance_id
        passes, waits = i in change["passers"], i in change["waiters"]
        if passes or waits:
            self.hold = change["barrier"]
            self.changing = {**change, "passed": not passes, "waits": waits}

    def _progress(self) -> None:
        """After a batch: everything up to ``mark`` has run.  Past a switching vertex's
        barrier, the new map alone (its instances told); at this vertex's barrier, the
        hand-over: every update acknowledged and per-flow ownership given up, the moved
        flows' timers to the coordinator, which sends them on with the go-ahead."""
        mark = min(min(self.marks.values(), default=INF), self.hold)
        if self.out.switching:
            self.out.advance(mark, mark)
        if self.flood is not None and mark >= self.flood:
            self.flood = None
            self.out.watermark(mark)
        if self.quiet is not None and mark >= self.quiet[1]:
            # §4.3 everything up to the control's barrier ran here, its output and the
            # watermark past it sent on (each link in order): the coordinator's quiet wait
            self.out.to_coordinator("quiet", self.quiet[0])
            self.quiet = None
        c = self.changing
        if c is None or c["passed"] or mark < c["barrier"]:
            return
        inst = self.inst
        i = inst.instance_id
        if i in c["losers"]:
            inst.hand_over()
        elif inst.client is not None:
            inst.client.settle()
        owner = self.plan.flowmaps()[inst.vertex].owner
        moving = [[owner(t[5]), t] for t in take_timers(inst.ctx, lambda parts: owner(parts) != i)]
        self.out.to_coordinator("passed", [c["id"], moving])
        c["passed"] = True
        if i in c["retire"]:
            self.retired = True         # (the loop ends: its end goes to every successor)
        elif not c["waits"]:
            self.hold = INF
            self.changing = None

    def _control(self, qid: int, values: dict) -> None:
        """§4.3 an operator control in model T (no store): the new values of this
        instance's local cross-flow objects, set with the chain quiet; acknowledged."""
        for name, value in values.items():
            self.inst.objects[name].set(value)
        self.out.to_coordinator("control", qid)

    def _go(self, change_id: int, timers: list) -> None:
        """Every instance that hands over has: the moved flows' timers here, R3's
        sharing as the change makes it, and on past the barrier."""
        c = self.changing
        inst = self.inst
        give_timers(inst.ctx, timers)
        if inst.client is not None and c is not None:
            inst.set_shared(frozenset(c["shared"]))
        self.hold = INF
        self.changing = None

    # -- §5.4 store failover (chc.runtime.procstore) ----------------------------------------------
    def store_failed(self, what: str, body: Any) -> None:
        """The coordinator's part: hand in the write-ahead log (``wal``), forget what a
        durable checkpoint holds (``truncate``), talk to the failover store (``store``)."""
        if self.wal is None:
            if what == "wal":       # (model T: nothing in the store)
                self.out.to_coordinator("wal", None)
            return
        if what == "wal":
            self.store.detach()             # (its log is final: nothing more from the dead server)
            try:
                procstore.dump_wal(procstore.wal_path(self.plan.directory, self.me), self.inst.client)
            except OSError as exc:          # (not the NF's error: the run's)
                self.out.to_coordinator("error", f"{self.me}: its write-ahead log could not be handed in: {exc}")
                return
            self.out.to_coordinator("wal", None)
        elif what == "truncate":
            self.wal.truncate(procstore.truncation(body))
        else:
            self.store.repoint(body)

    # -- §5.4 failover: the replay ---------------------------------------------------------------
    def _replay(self, replay: dict) -> None:
        """Re-process, from the store's state before them, what the upstreams sent the failed
        instance from the oldest clock its root still logs (``floors``) and it may have run,
        in the order it ran them, then go on with what comes.  Updates the store already
        has are answered from its clock log, reads from its read log; each step (one
        clock) carries that clock as its through, so receivers drop what they already
        had from the failed instance.

        What it may have run is what the merge rule releases (:meth:`_ready`): with
        several upstreams, only the packets every upstream's handed-over watermark has
        passed.  The rest wait in the queues for the watermarks to come, as they would
        have in the failed instance: replayed now, they would run before a lagging
        upstream's packets of lower clocks, which then run out of clock order (not the
        sim's state) and go out with a through the replay has already passed, so every
        receiver drops them as duplicates (packets lost; docs/proc.md)."""
        if self.orders is not None:
            self._replay_batches(replay)        # §5 several roots
            return
        started = time.perf_counter()
        floors = replay["floors"]
        handed = 0
        for feeder, pkts in self._take_records(replay["feeds"]).items():
            kept = [p for p in pkts if p.clock >= floors.get(root_of(p.clock), -1)]
            handed += len(kept)
            if self.plan.replay:        # --break no-replay: what was handed over is lost
                self.queues[feeder].extend(kept)
        bound = replay["bound"]
        if self.changing is not None:
            # §5.1 died during a change, holding at its barrier: it ran nothing past it
            bound = min(bound, self.hold)
        if self.plan.replay:
            self._await(bound)
        pkts = self._ready(bound)
        inst = self.inst
        if pkts and self.store is not None:
            self.store.replaying(True)
            if self.wal is not None:
                # §5.4 its copy of the read log: what the failed instance read, which the
                # store answers this replay from (a failover store rebuilds it from copies)
                self.wal.shared_reads.update(self.store.read_part(inst.vertex, inst.instance_id))
                self.wal.replaying = True
        # §5.1 cut at the barriers of its vertex's changes: the timers moves brought the
        # failed instance are given where they came, and each part runs sharing what
        # the vertex shared then (R3: a packet run while a counter was shared, replayed
        # from a private copy after a scale-in made it exclusive, picks another backend)
        past = self.out.replaying(replay.get("past"))      # what it sends on, by the map in force then
        gifts = sorted(replay.get("gifts", ()), key=lambda g: g[0])
        sharing = replay.get("sharing") or [(-1, sorted(inst.shared))]
        now = inst.shared
        steps = given = other = start = 0
        for cut in sorted({b for b, _ in gifts} | {b for b, _ in sharing[1:]}) + [INF]:
            end = start
            while end < len(pkts) and pkts[end].clock <= cut:
                end += 1
            if end > start:
                shared = frozenset(next(s for b, s in reversed(sharing) if b < pkts[start].clock))
                other += (end - start) * (shared != now)
                if inst.client is not None and "replay-as-now" not in self.plan.breaks:
                    inst.set_shared(shared)
                steps += self._replay_run(pkts[start:end])
                start = end
            given += self._give(gifts, cut + 1)
        if inst.client is not None:
            inst.set_shared(now)
        self.out.replaying(None)
        # §5.1 the packets of flows that moved away since are replayed too (what the failed
        # one sent on may have died with it in its sockets: the replay sends it again),
        # but their timers are their new owner's: re-armed here they would fire twice.
        # (Unless its hand-over is still to come: that sends them to their new owner.)
        owner = self.plan.flowmaps()[inst.vertex].owner
        handing = self.changing is not None and not self.changing["passed"]
        dropped = 0 if handing else len(take_timers(inst.ctx, lambda parts: owner(parts) != inst.instance_id))
        if pkts and self.store is not None:
            self.store.replaying(False)
            if self.wal is not None:
                self.wal.replaying = False
        if other and "replay-as-now" in self.plan.breaks:
            self.acted["replay-as-now"] = f"{other} packets replayed sharing what the vertex shares now"
        self.out.to_coordinator("replayed", {"packets": len(pkts), "steps": steps, "moved_timers": given,
                                             "sharing_otherwise": other, "timers_moved_away": dropped,
                                             "past_maps": past, "by_past_maps": self.out.by_past,
                                             "skipped": 0 if self.plan.replay else handed,
                                             "seconds": time.perf_counter() - started})

    def _replay_batches(self, replay: dict) -> None:
        """§5 with §5.4 several roots (:attr:`Plan.orders`): the failed instance ran the
        roots' packets interleaved as they came, so no rule on its input says what it ran
        or in which order.  The store server has every batch it ran, in order, each told
        before its first op and answered before its output left: replayed as they were
        (each root's packets up to the batch's highest clock of that root, in clock
        order, with the batch's through), the replay sees what the failed one saw (the
        exclusive objects start from their pre-images and change in the same order) and
        sends each receiver what it sent under the same throughs, which the receivers,
        the roots and the coordinator drop (:class:`~chc.runtime.wire.Marks`).  A batch
        it did not tell was never begun: what follows runs as new input.

        First every packet of those batches must be here: per root, every upstream's
        watermark past the last batch's highest clock (an upstream that is itself a
        failover still replaying has handed over only part)."""
        started = time.perf_counter()
        handed = 0
        for feeder, pkts in self._take_records(replay["feeds"]).items():
            handed += len(pkts)
            if self.plan.replay:        # --break no-replay: what was handed over is lost
                for p in pkts:
                    self.queues[(feeder, root_of(p.clock))].append(p)
        orders = self.store.orders(self.name) if self.plan.replay else []
        self.orders[:] = orders         # (new batches are told from the next k on)
        if "replay-by-clock" in self.plan.breaks:       # (a test's: the batches not kept)
            orders = []
            self.acted["replay-by-clock"] = "a failover replayed by clock, not by the batches told"
        elif orders:
            if "no-root-bound" not in self.plan.breaks:     # (a test's: no wait for the rest)
                self._await_roots(orders[-1][2:])
            else:
                self.acted["no-root-bound"] = "a failover replayed without waiting for its batches' packets"
        batches = []
        for _, _, *hi in orders:
            batch = []
            for (_, r), q in self.queues.items():
                while q and q[0].clock <= hi[r]:
                    batch.append(q.popleft())
            batch.sort(key=_by_clock)
            batches.append(batch)
        pkts = [p for b in batches for p in b]
        inst = self.inst
        if pkts:
            self.store.replaying(True)
            if self.wal is not None:    # (its copy of the read log, as _replay's)
                self.wal.shared_reads.update(self.store.read_part(inst.vertex, inst.instance_id))
                self.wal.replaying = True
            saved: dict = {}
            private_view(saved, inst, self.store.objects_at(inst.vertex, {p.clock for p in pkts}))
            if self.wal is not None:
                self._check_preimages(pkts)
            self.replaying_batches = True
            for (_, through, *hi), batch in zip(orders, batches, strict=True):
                if not batch:
                    continue
                self.hi = list(hi)
                self.out.rmarks = list(hi)      # (what of each root has run: all up to hi)
                self.through = through - 1      # (its through: the failed one's)
                self._process(batch, min(hi))
            self.replaying_batches = False
            shared_view(saved, inst)
            self.store.replaying(False)
            if self.wal is not None:
                self.wal.replaying = False
        if orders:
            self.hi = list(orders[-1][2:])
            self.through = max(self.through, orders[-1][1])
        self.out.to_coordinator("replayed", {"packets": len(pkts), "steps": len(batches), "moved_timers": 0,
                                             "sharing_otherwise": 0, "timers_moved_away": 0,
                                             "past_maps": 0, "by_past_maps": 0, "batches": len(batches),
                                             "skipped": 0 if self.plan.replay else handed,
                                             "seconds": time.perf_counter() - started})

    def _await_roots(self, hi: list[int]) -> None:
        """§5 per root: take what comes until every upstream's watermark of each root has
        passed ``hi`` of that root (or it ended)."""
        poller = zmq.Poller()
        poller.register(self.box.sock, zmq.POLLIN)
        while len(self.ended) < len(self.feeders) and any(f < h for f, h in zip(self._floors(), hi, strict=True)):
            if not self._receive():
                self.guard.poll(poller)

    def _take_records(self, feeds: dict) -> dict[bytes, list[Packet]]:
        """What each upstream handed over (its record of what it sent the instance this
        process takes over or copies): its watermark, end, report throughs and the through
        of its last message, taken as if received; per upstream, the packets."""
        out = {}
        for feeder in self.feeders:
            record = feeds[feeder.decode()]
            rows, mark, eof, throughs, through = record[:5]
            # What came from that upstream: if it is itself a failover by now, its replay
            # re-sends it (two failures in a row), and only what goes past is new.
            self.seen.mark[feeder] = through
            self.marks[feeder] = mark
            if self.rmarks is not None and len(record) > 5 and record[5] is not None:
                self.rmarks[feeder] = list(record[5])       # §5 per root
            self.deps[feeder] = throughs
            if eof:
                self.ended.add(feeder)
            out[feeder] = unpack_packets(rows)
        return out

    def _replay_run(self, pkts: list[Packet]) -> int:
        """One part of a replay, from a private view of the store before it; its steps
        (one a clock, carrying that clock as its through)."""
        inst = self.inst
        saved: dict = {}
        if self.store is not None:
            private_view(saved, inst, self.store.objects_at(inst.vertex, {p.clock for p in pkts}))
            if self.wal is not None:
                self._check_preimages(pkts)
        steps = start = 0
        while start < len(pkts):
            end = start + 1
            while end < len(pkts) and pkts[end].clock == pkts[start].clock:
                end += 1
            self._process(pkts[start:end], pkts[start].clock)
            steps += 1
            start = end
        if self.store is not None:
            shared_view(saved, inst)
        return steps

    def _give(self, gifts: list, clock: int) -> int:
        """§5.1 with §5.4: before the replay runs ``clock``, the timers that moves gave
        the failed instance at barriers below it (as its go-ahead gave them); how many."""
        given = 0
        while gifts and gifts[0][0] < clock:
            timers = [tuple(t) for t in gifts.pop(0)[1]]
            if "no-moved-timers" in self.plan.breaks:
                self.acted["no-moved-timers"] = "moved timers left out of a failover's replay"
                continue
            give_timers(self.inst.ctx, timers)
            given += len(timers)
        return given

    def _check_preimages(self, pkts: list[Packet]) -> None:
        """§5.4 after a store failover: the objects this replay starts from their pre-images
        (its private view) must have one for every clock replayed; a failover store lacks
        some (left out of its checkpoint, or a Case 2 covered update).  Refused in one line
        rather than replayed from the wrong state (docs/proc.md)."""
        clocks = {p.clock for p in pkts}
        for obj, key, unknown in self.store.unknown_of(self.inst.vertex):
            h = self.inst.objects.get(obj)
            reached = clocks.intersection(unknown)
            if type(h) is CachedObject and h.private and reached:
                raise StoreError(f"{self.me} replays packet clock {min(reached)}, whose pre-image of {obj}[{key!r}] "
                                 "the failover store server has not (docs/proc.md, store-server failover); "
                                 "not recovered")

    # -- the data path -------------------------------------------------------------------------
    def _receive(self) -> bool:
        """Take what has arrived (without waiting); False when nothing had."""
        got = False
        rmarks = self.rmarks
        for peer, (mark, seqs, rows, eof, through, floors, rm) in self.box.messages(Kind.DATA, 7, "data",
                                                                                     4 * len(self.feeders)):
            try:
                if mark.__class__ is not int or seqs.__class__ is not dict or through.__class__ is not int \
                        or floors.__class__ is not dict \
                        or not all(r.__class__ is int and f.__class__ is int for r, f in floors.items()) \
                        or rm.__class__ is not list or not all(m.__class__ is int for m in rm) \
                        or (rmarks is not None and len(rm) != self.plan.chain.roots):
                    raise WireError("malformed data header")
                pkts = unpack_packets(rows)
            except WireError as exc:
                self.box.ban(peer, str(exc))
                continue
            got = True
            if self.firings is not None:
                # §5.3 per packet: a clone pair's copies send one clock sequence in batches
                # of their own (a failover's replay is one of them: the rule holds for it)
                name = logical(peer)
                seen = self.seen.mark.get(name, -1)
                if self.no_dedup and CLONE in peer:
                    self.paired.add(name)
                if pkts and pkts[0].clock <= seen:
                    if name in self.paired:     # (--break no-dup-suppression: either copy's, once cloned)
                        self.dup_taken += sum(p.clock <= seen for p in pkts)
                        self.acted["no-dup-suppression"] = f"{self.dup_taken} duplicate packets of a clone taken"
                    else:
                        pkts = [p for p in pkts if p.clock > seen]
                if through > seen:
                    self.seen.mark[name] = through
                deps = self.deps[name]
                seqs = {r: max(t, deps.get(r, -1)) for r, t in seqs.items()} | \
                    {r: t for r, t in deps.items() if r not in seqs}
            elif not self.seen.fresh(peer, through):
                continue                    # a failover upstream's replay of what came already
            peer = logical(peer)
            if rmarks is None:
                self.queues[peer].extend(pkts)
            else:
                # (the higher of each: a failover upstream's replay may say less than the
                # failed one had, and a watermark once heard holds for the logical sender)
                rmarks[peer] = [a if a > b else b for a, b in zip(rmarks[peer], rm, strict=True)]
                queues = self.queues
                for p in pkts:
                    queues[(peer, root_of(p.clock))].append(p)
            if mark > self.marks[peer]:
                self.marks[peer] = mark
            self.deps[peer] = seqs
            if eof:
                self.ended.add(peer)
            if floors and self.out.sent is not None:
                self.out.prune(floors)
                self._prune_reports()
                if self.firings:            # (a timer keeps its packet logged: these have fired for good)
                    done = self.out.floors
                    for c in [c for c in self.firings if c < done.get(root_of(c), -1)]:
                        del self.firings[c]
                if self.wal is not None:        # (the store's read log forgets these too)
                    prune_reads(self.wal.shared_reads, lambda c, f=self.out.floors: c < f.get(root_of(c), -1))
        return got

    # -- §5.4 root failover ----------------------------------------------------------------------
    def _prune_reports(self) -> None:
        """Drop the kept reports whose every clock is below its root's floor (done with)."""
        floors = self.out.floors
        for r, q in self.kept.items():
            floor = floors.get(r, -1)
            while q and all(item[1] < floor for item in q[0][2]):
                self.kept_from[r] = q.popleft()[0]

    def reroot(self, r: int, name: str) -> None:
        """Root ``r`` failed: reports go to its failover ``name`` from now on, first the
        floor this instance last heard (below it the failover drops what it logged again),
        then every report kept."""
        self.roots[r].close(0)
        sock = self.roots[r] = dealer(self.out.ctx, self.plan.address(name), self.me)
        if self.kept is None:
            return
        self.guard.send(sock, encode(Kind.REPORT, [self.kept_from.get(r, -1), {},
                                                   [[2, self.out.floors.get(r, -1), 0]]]))
        for through, deps, items in self.kept.get(r, ()):
            self.guard.send(sock, encode(Kind.REPORT, [through, deps, items]))

    def _await(self, bound: int) -> None:
        """Take what comes until every upstream's watermark has passed ``bound`` (or it
        ended): an upstream that is itself a failover still replaying hands over only
        what it has re-sent so far, and the rest of what the failed instance may have
        run comes behind (two failures in a row)."""
        poller = zmq.Poller()
        poller.register(self.box.sock, zmq.POLLIN)
        while min(self.marks.values()) < bound and len(self.ended) < len(self.feeders):
            if not self._receive():
                self.guard.poll(poller)

    def _ready(self, limit: int = INF) -> list[Packet]:
        """What may run now (up to clock ``limit``): everything from a sole upstream; else,
        in clock order, the packets every upstream's watermark has passed (the sim
        runtime's order)."""
        if self.rmarks is not None:
            # §5 per root: each root's packets that every upstream's watermark of that root
            # has passed (from one upstream: all), each batch in clock order
            floors = [min(f, limit) for f in self._floors()] if self.ordered else [limit] * self.plan.chain.roots
            batch = []
            for (_, r), q in self.queues.items():
                floor = floors[r]
                while q and q[0].clock <= floor:
                    batch.append(q.popleft())
            batch.sort(key=_by_clock)
            return batch
        if not self.ordered:
            if limit == INF:            # the data path: all of it, at C speed
                batch = [p for q in self.queues.values() for p in q]
                for q in self.queues.values():
                    q.clear()
                return batch
            batch = []
            for q in self.queues.values():
                while q and q[0].clock <= limit:
                    batch.append(q.popleft())
            return batch
        batch = []
        floor = min(min(self.marks.values()), limit)
        for q in self.queues.values():
            while q and q[0].clock <= floor:
                batch.append(q.popleft())
        batch.sort(key=_by_clock)
        return batch

    def _floors(self) -> list[int]:
        """§5 per root, the clock every upstream has sent all of (Plan.per_root)."""
        return [min(col) for col in zip(*self.rmarks.values(), strict=True)]

    def _process(self, batch: list[Packet], watermark: int) -> None:
        inst = self.inst
        through = max(p.clock for p in batch)
        if self.rmarks is not None:
            # §5 a root's packets may run before a lower clock of another's: the through
            # of a report must still grow from batch to batch (a downstream's report that
            # depends on this one's would be applied before it: causal delivery)
            through = self.through = max(through, self.through + 1)
        told = None
        if self.orders is not None and not self.replaying_batches:
            # §5 with §5.4 this batch, told to the store server before its first op (so a
            # batch any of whose updates the store has is one it knows of) and answered
            # before its output leaves (so a batch anyone downstream saw is one too)
            hi = self.hi
            for p in batch:
                r = root_of(p.clock)
                if p.clock > hi[r]:
                    hi[r] = p.clock
            record = [len(self.orders), through, *hi]
            self.orders.append(record)
            told = self.store.order(record)
        errors = inst.nf_errors
        if self.manager is None or self.cloned is not None:    # (§5.3 a clone is no load until kept)
            produced = inst.run(batch)
            if self.slowdown is not None:
                self._straggle(len(batch))
        else:
            started = time.perf_counter_ns()
            produced = inst.run(batch)
            if self.slowdown is not None:
                self._straggle(len(batch))      # (busy time: what a manager's straggler_factor sees)
            self._load(batch[-1].ts, time.perf_counter_ns() - started)
        if told is not None:
            self.store.answered(told)
        if through > self.processed:
            self.processed = through
        clocks = self._per_clock(batch, produced, through, inst.nf_errors - errors) \
            if self.firings is not None else None
        items: list[list] = []
        self._report(items)
        parts = self._forward(produced, items)
        self._send_reports(items, through)
        self.out.batch(parts, watermark, through)
        if self.plan.recover:
            self._stats(through, clocks)

    def slow(self, body: list) -> None:
        """§5.3 the coordinator's ``slow``: ``[spec, seed, name]`` (a delay model such as
        ``uniform:200:2000`` in µs, drawn from the run's seed and the logical instance's
        name ``nat[0]``, as the sim's :class:`~chc.runtime.pacing.Delay`), or a spec of
        None: full speed again (a speed-up).  Taken at once, also mid-batch: the next
        batch sleeps by it."""
        spec, seed, name = body
        self.slowdown = None if spec is None else Delay(str(spec), int(seed), str(name))

    def _straggle(self, n: int) -> None:
        """§5.3 a straggler really is slow: a batch of ``n`` packets takes the sum of
        ``n`` per-packet draws of the delay model, slept once after the NF has run them
        and before their output goes on (the sim's: state changes as a packet enters
        service, its output leaves when service ends).  Batch-wise, not per packet: one
        sleep of the sum (the per-packet draws are the sim's sequence, so a seed repeats
        them, whatever the batches).  The sleep is a guard wait, in slices: heartbeats
        go on (a batch of 1,000 packets at 2 ms each is 2 s, and 10 missed beats read as
        hung) and so do control messages (a tee, a fence, a speed-up)."""
        delay = self.slowdown
        total = 0
        for _ in range(n):
            total += delay.sample()
        self.slept_ns += total
        deadline = time.monotonic() + total / 1e9
        poller = zmq.Poller()
        while (left := deadline - time.monotonic()) > 0:
            self.guard.poll(poller, max(left * 1000, 1))     # (ms; a float below 1 would spin)

    def _per_clock(self, batch: list[Packet], produced: list[Packet], through: int, errors: int) -> list[list]:
        """§5.3 this batch's counters per clock (``[clock, in, out, dropped, errors, sink
        outputs]``): the coordinator counts a clone pair's clocks once, whichever copy's
        batch has them (an NF error is counted at the batch's last clock)."""
        per: dict[int, list[int]] = {}
        for p in batch:
            row = per.get(p.clock)
            if row is None:
                row = per[p.clock] = [p.clock, 0, 0, 0, 0, 0]
            row[1] += 1
        sink = not self.v.offpath and not self.v.successors
        for p in produced:
            row = per.setdefault(p.clock, [p.clock, 0, 0, 0, 0, 0])
            row[2] += 1
            row[5] += sink
        for c, _ in self.inst.finished:
            per.setdefault(c, [c, 0, 0, 0, 0, 0])[3] += 1
        if errors:
            per.setdefault(through, [through, 0, 0, 0, 0, 0])[4] += errors
        return list(per.values())

    def _load(self, ts: int, busy_ns: int) -> None:
        """§3 this instance's counters to its vertex manager, if due by input time."""
        self.busy_ns += busy_ns
        if ts < self.report_at:
            return
        self.report_at = ts + self.report_every
        queued = sum(map(len, self.queues.values()))
        with contextlib.suppress(zmq.Again):     # (a full or missing manager: it sees the next one)
            self.manager.send(encode(Kind.CONTROL, ["load", [self.inst.instance_id, self.inst.packets_in, queued,
                                                             self.busy_ns, ts, self.generation]]), zmq.NOBLOCK)

    def _watermark(self, batch: list[Packet]) -> int:
        if self.rmarks is not None:
            self.out.rmarks = self._floors()
        return min(min(self.marks.values()), self.hold)

    def _stats(self, through: int, clocks: list | None = None) -> None:
        """§5.4 this batch's counters and alerts, to the coordinator: a failed instance's
        would be lost with it (its failover's replay counts only what is new); with
        clones, also per clock (§5.3)."""
        inst = self.inst
        now = [inst.packets_in, inst.packets_out, inst.dropped, inst.nf_errors]
        alerts = inst.ctx.alerts[self.alerts_sent:]
        self.alerts_sent = len(inst.ctx.alerts)
        self.out.to_coordinator("stats", [through, [a - b for a, b in zip(now, self.counted, strict=True)],
                                          [_alert_row(a) for a in alerts], self.out.out_packets,
                                          inst.first_error, self._issued(), self._unstorable(), clocks])
        self.counted = now
        self.out.out_packets = 0

    _refused_value: str | None = None

    def _unstorable(self) -> str | None:
        """The summary's ``state_error`` for the first value this instance's store refused to
        hold (the sim's: :func:`~chc.summary.unstorable_error`), or None."""
        client = self.inst.client
        if self._refused_value is None and client is not None and client.unstorable is not None:
            op, err = client.unstorable
            self._refused_value = unstorable_error(op.key, err, "redis", f"the proc runtime cannot send to its "
                                                   f"store: it sends {SENDABLE}"
                                                   if isinstance(err, UnsendableValue) else "")
        return self._refused_value

    def _issued(self) -> list:
        """The checker's: the updates issued since the last call (the store client's
        ``issued``; empty unless the run records).  With recovery they go with every
        batch's stats: a killed process's list dies with it."""
        client = self.inst.client
        if client is None or client.issued is None:
            return []
        new = client.issued[self.issued_sent:]
        self.issued_sent = len(client.issued)
        return new

    def _report(self, items: list[list]) -> None:
        """Forks, fired timers and ends of this instance's last run (as the sim reports them)."""
        inst = self.inst
        for clock, k in inst.forks:
            items.append([0, clock, k])
        firings = self.firings
        for clock, rearmed, vector in inst.fired:
            if firings is not None:
                # §5.3 the k-th firing of this clock's timers: the root takes it once of a pair
                k = firings[clock] = firings.get(clock, 0) + 1
                items.append([TIMER, clock, [rearmed, vector, k]])
                continue
            if rearmed:
                items.append([0, clock, rearmed])
            items.append([1, clock, vector])
        for clock, vector in inst.finished:
            items.append([1, clock, vector])
        inst.forks.clear()
        inst.fired.clear()
        inst.finished.clear()

    def _forward(self, produced: list[Packet], items: list[list]) -> dict[tuple[str, int], list[Packet]]:
        """Output to off-path taps, successors or the chain's output (the sim's _forward)."""
        parts: dict[tuple[str, int], list[Packet]] = {}
        if not produced:
            return parts
        v = self.v
        if v.offpath:
            items += [[1, p.clock, p.xor] for p in produced]
            return parts
        for tap in v.taps_out:
            self._copy_to(tap, produced, items, parts)
        succ = v.successors
        if not succ:
            items += [[1, p.clock, p.xor] for p in produced]    # §5.4: delete before output
            self._sink = produced
            return parts
        for k, d in enumerate(succ):
            if k < len(succ) - 1:
                part = [_copy(p) for p in produced]
                items += [[0, p.clock, 1] for p in produced]
            else:
                part = produced
            for tap in self.plan.chain.vertices[d].taps_in:
                self._copy_to(tap, part, items, parts)
            self._split_into(d, part, parts)
        return parts

    def _copy_to(self, tap: str, pkts: list[Packet], items: list[list],
                 parts: dict[tuple[str, int], list[Packet]]) -> None:
        items += [[0, p.clock, 1] for p in pkts]
        self._split_into(tap, [_copy(p) for p in pkts], parts)

    def _split_into(self, d: str, pkts: list[Packet], parts: dict[tuple[str, int], list[Packet]]) -> None:
        for i, sub in enumerate(self.out.split(d, pkts)):
            if sub:
                parts.setdefault((d, i), []).extend(sub)

    _sink: list[Packet] | None = None

    def _send_reports(self, items: list[list], through: int, every: bool = False) -> None:
        """One report per root (before the packets they concern go on; ``every``: to each
        root, even empty), then the sink's output."""
        if items or every:
            per: dict[int, list] = {r: [] for r in range(len(self.roots))} if every else {}
            for item in items:
                per.setdefault(root_of(item[1]), []).append(item)
            sent = self.out.rep_through
            kept = self.kept
            for r, mine in per.items():
                sent[r] = through
                deps = {f.decode(): d[r] for f, d in self.deps.items() if r in d}
                if kept is not None:
                    kept.setdefault(r, deque()).append((through, deps, mine))
                self.guard.send(self.roots[r], encode(Kind.REPORT, [through, deps, mine]))
        if self._sink is not None:
            self.out.output(self._sink, through)
            self._sink = None

    def _finish(self) -> None:
        """End of input: remaining timers fired, every update acknowledged, then the counters."""
        inst = self.inst
        if self.unpair_at is not None:      # (§5.3 kept: all of it has run)
            self.unpair_at = {}
            self._unpair_when_done()
        inst.finish()
        items: list[list] = []
        self._report(items)
        self._send_reports(items, INF, every=True)      # the last report (through INF) to every root
        if self.plan.recover:
            errors = inst.nf_errors - self.counted[3]
            self._stats(INF, [[INF, 0, 0, 0, errors, 0]] if self.firings is not None else None)
        self.out.end()
        client = inst.client
        if "no-callback" in self.plan.breaks and client is not None and client.callback_caches:
            self.acted["no-callback"] = f"{len(client.callback_caches)} cached copies never refreshed"
        report = {
            "vertex": inst.vertex, "instance": inst.instance_id,
            "counters": {k: getattr(inst, k) for k in ("packets_in", "packets_out", "dropped", "nf_errors")},
            "first_error": inst.first_error,
            "alerts": [_alert_row(a) for a in inst.ctx.alerts],
            "client": {k: getattr(client, k) for k in ("blocking_ops", "nonblocking_ops", "cache_hits")}
            if client is not None else None,
            "round_trips": getattr(self.store, "round_trips", 0),
            "state": inst.state() if self.store is None else None,
            "state_error": self._unstorable(),
            "packets_out": self.out.out_packets, "rejected": self.box.rejected, "cpu_s": _cpu(),
            "slept_s": round(self.slept_ns / 1e9, 6),
            **({"issued": self._issued(), "acted": self.acted} if self.plan.record and client is not None else {}),
        }
        try:
            self.out.to_coordinator("instance", report)
        except (TypeError, ValueError, OverflowError):
            if report["state"] is None:
                raise
            # Model T: its own state holds a value the wire cannot carry (an object of
            # the NF's class): the coordinator has no digest, and says why (as the sim).
            report["state_error"] = _state_error(inst.vertex, report["state"])
            report["state"] = {}
            self.out.to_coordinator("instance", report)
        if self.store is not None:
            self.store.close()


def _state_error(vertex: str, state: dict) -> str:
    """Why ``vertex``'s own state (model T) cannot reach the coordinator: named as the
    sim's digest names what it cannot digest, or as what the wire cannot carry."""
    try:
        state_digest({vertex: state})
    except StateValueError as exc:
        return str(exc)
    return (f"{vertex}'s state holds a value the proc runtime cannot send: it sends {SENDABLE} "
            "(docs/nf-api.md)")


def _alert_row(a: Any) -> list:
    return [a.vertex, a.instance, a.kind, a.host, a.packet_index, a.clock, a.detail]


def _cpu() -> float:
    """CPU seconds this process has used (user + system)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
