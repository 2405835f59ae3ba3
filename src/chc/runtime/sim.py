"""The ``sim`` runtime: the whole physical chain in one process, deterministic.

Theory of operation
-------------------
``SimRuntime`` instantiates a compiled :class:`~chc.spec.Chain`: ``roots`` roots,
the instances of every vertex, and a splitter per (upstream, downstream vertex)
pair (§4.1, Figure 3b).  Input moves in batches: the pacer gives each packet a
virtual arrival time (tcpreplay's conventions), a root stamps clocks, logs and
screens, the root's splitters fill the entry vertices' per-instance input queues
(§4.2), and then every vertex, in topological order, drains its instances' queues
and hands the output to its splitters, off-path taps (copies) and, for sinks, the
chain's output.

Virtual time.  An instance without a delay model processes a packet the moment
it arrives; one with a delay model is a FIFO server whose packets leave at their
finishing times, so a slowed instance reorders what a downstream vertex fed by
several upstreams sees (§2.1 R4, §7.3).  Each step has a *horizon*, the arrival
time of its last input packet: an instance processes exactly the queued packets
that arrived by the horizon, in (arrival time, clock) order.  Every packet that
can arrive by the horizon has been delivered by then (upstreams run first and
delays only add time), so each instance sees the same sequence whatever the
batch size: results never depend on batching.

Completion (§5, §5.4).  Every copy of a packet that ends (output by a sink,
dropped, consumed off-path) is reported to its root with the packet's XOR
vector; every copy made (taps, several successors or entries) is reported as a
fork; every update the store commits is reported as a commit.  The root deletes
the logged packet when no copy is live and the vector XOR the commits is zero.
A sink's report is made before its output is emitted (§5.4).

Messages (:mod:`chc.runtime.simnet`).  Store requests and replies and commit
reports are messages on a simulated network with per-link latencies and the
faults a scenario draws (drop, duplicate, reorder on store links; delays on
every link).  Each instance's client reaches the store through its own
:class:`~chc.runtime.simnet.StoreLink`, so in EO+C+NA a batch's updates are
really in flight while the instance goes on; the network delivers messages
whenever someone waits (a blocking op, the end of a step, the end of input).
Data links (packets between root and instances) are FIFO: a latency only adds
to a packet's virtual arrival time.  Without latencies or faults every message
is delivered the moment it is sent.

Stragglers (§5.3, docs/stragglers.md).  ``clone`` starts a copy of a straggler
under its logical identity, from its flushed state; each copy of the pair keeps a
private view (its cache, the store as it was at the start) so both compute the
same updates with the same clock-log tags; the straggler's in-transit packets are
replayed to the clone and its traffic replicated with the same arrival times.
Per clock the copy that finishes first is delivered and the other's outputs,
drops and alerts are suppressed (:meth:`SimRuntime._merge_pair`); the store
emulates the second copy's updates from its clock log, which is kept from the
clone's start while the pair runs.  The faster copy is kept.

Crashes (§5.4, docs/recovery.md).  A scenario may crash an instance, a root or
the store.  A crashed NF instance is noticed after missed heartbeats (virtual
time) and failed over: a new instance under its logical identity replays what
it processed since the oldest logged packet, from the store's state before
those packets (the store's pre-images), then what was lost in its queue
(:meth:`SimRuntime._failover`).  A crashed root is replaced by one that resumes
its clock from the store and takes over a store-held log; its input and the
reports sent to it wait (:meth:`SimRuntime._root_failover`).  The memory store
is failed over from a checkpoint and the instances' write-ahead logs and caches
(:mod:`chc.runtime.storefailover`, Figure 7).  What Table 3 says cannot be
recovered stops the run with :class:`Unrecoverable`; the COE checker reports it
as such.

Logical instances.  A failover instance, and a clone that is kept, is a new
instance here with an index of its own (the vertex's next one), serving under the
logical identity of the one it replaces.  A scenario's ``vertex[i]`` names logical
instance ``i``, as on the proc runtime (where the failover process keeps its name):
one the chain started with or a scale-out added, whichever instance serves it now
(:attr:`SimRuntime.serving`, :meth:`SimRuntime.resolve`).  A crash, slow, clone or
move of ``nat[0]`` after ``nat[0]`` failed over reaches its failover instance (it
reached the retired one: ignored, or refused with no reason shown), and so does a
``delays:`` entry for ``nat[0]``.  A seed's ``pick`` and a scale-in of the vertex alone
take the active instances in logical order (:meth:`SimRuntime.in_logical_order`), as
proc does.  An event whose logical instance cannot take it (retired by a scale-in,
crashed and not failed over yet) is logged ``<action>-refused`` or ``-ignored`` with
the reason.

Determinism: seeded delays, stable hashes, sorted merges; no wall clock inside.
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any
from zlib import crc32

from ..backends.memory import MemoryStore
from ..core.client import CachedObject, StoreClient, StoreUnavailable
from ..core.failover import private_view, prune_reads, shared_view
from ..core.instance import Instance
from ..core.manager import Decision, VertexManager, balance
from ..core.root import CLOCK_BITS, Root, clock_key, root_of
from ..core.splitter import FlowMap, Splitter
from ..core.store import Op
from ..nf import Access
from ..packet import Packet, flow_key
from ..spec import MAX_PARALLELISM, Chain
from ..summary import Summary, merge_states, unstorable_error
from . import control
from .errors import Unrecoverable
from .pacing import Delay, Pacer
from .simnet import LinkModel, Network, StoreLink, StoreNode
from .storefailover import StoreFailover

DEFAULT_BATCH = 256
_INF = float("inf")


PartAt = Callable[[int], bytes]     # a packet's (or timer's) partition fields at a ladder level


@dataclasses.dataclass
class Handover:
    """One move of flows from an old to a new instance, until the old one has
    processed its ``last`` packet of them (§5.1, Figure 4).  ``covers`` says
    whether a flow, given its partition fields per ladder level, is moved."""

    vertex: str
    old: int
    new: int
    covers: Callable[[PartAt], bool]
    groups: int                     # flow groups moved (for the event)
    last: Packet | None
    buffer: list[Packet]
    started: float
    until: float = 0                # after completion: moved flows start no earlier
    why: dict = dataclasses.field(default_factory=dict)

    def moves(self, p: Packet, ladder: list) -> bool:
        return self.covers(lambda level: ladder[level].partition(p))


# §5.3 replay marks: a replayed packet carries REPLAY and, above the mark bits, the
# id of the clone it is replayed to; the last one also LAST_REPLAYED.
MARK_REPLAY = 1 << 2
MARK_LAST_REPLAYED = 1 << 3
_MARK_TARGET_SHIFT = 8


@dataclasses.dataclass
class Clone:
    """A straggler and its clone, one logical instance, until one is kept (§5.3)."""

    vertex: str
    straggler: int
    clone: int
    started_packet: int
    started_vt: float
    for_packets: int                # 0: keep the clone as soon as it has caught up
    for_ns: int = 0                 # and at least this much virtual time side by side
    replayed: int = 0               # logged packets of the straggler's flows replayed
    already_processed: int = 0      # of those, processed by the straggler before the clone started
    decided: dict = dataclasses.field(default_factory=dict)    # clock -> instance whose result left
    last_vt: float = 0              # latest output time of the logical instance
    backlog_vt: float = 0           # when the straggler's work at the start would be done
    in_transit: int = 0             # replayed packets the clone processes
    floors: dict = dataclasses.field(default_factory=dict)    # root -> the clock log is kept from here meanwhile
    replay_done_vt: float | None = None     # when the clone finished its LAST_REPLAYED packet
    alert_keys: set = dataclasses.field(default_factory=set)
    dup_outputs: int = 0            # duplicate output packets suppressed (a)
    dup_drops: int = 0              # duplicate drop reports (NF dropped the packet) suppressed
    dup_alerts: int = 0
    emulated_at_start: int | None = None    # the store's emulation count then (b)
    why: dict = dataclasses.field(default_factory=dict)
    saved: dict = dataclasses.field(default_factory=dict)      # instance -> its prefetch list
    timers_seen: dict = dataclasses.field(default_factory=dict)     # (side, clock) -> timers fired
    timers_reported: dict = dataclasses.field(default_factory=dict)  # clock -> firings reported

    def members(self) -> tuple[int, int]:
        return (self.straggler, self.clone)


@dataclasses.dataclass
class Failure:
    """An NF instance that crashed, until its failure is detected (§5.4)."""

    vertex: str
    instance: int
    crashed_vt: float
    detect_vt: float
    crashed_packet: int
    why: dict


def _direction(p: Packet) -> tuple:
    """One direction of a connection: what COE keeps in order (§2.1 R2)."""
    return (p.src, p.sport, p.dst, p.dport, p.proto)


def _in_groups(groups: set[int], level: int, size: int) -> Callable[[PartAt], bool]:
    return lambda part_at: crc32(part_at(level)) % size in groups


def _rerouted(table: list[int], a: int, b: int, old: int, new: int) -> Callable[[PartAt], bool]:
    """Flows routed to ``old`` at ladder level ``a`` and to ``new`` at level ``b``."""
    size = len(table)
    return lambda part_at: table[crc32(part_at(a)) % size] == old and table[crc32(part_at(b)) % size] == new


def _everything(part_at: PartAt) -> bool:
    return True


def _by_clock(p: Packet) -> int:
    return p.clock


def _by_time(p: Packet) -> tuple[int, int]:
    return (p.vt, p.clock)


class SimRuntime:
    def __init__(self, chain: Chain, model: str = "T", batch_size: int = DEFAULT_BATCH,
                 store: Any = None, *, pacer: Pacer | None = None,
                 delays: dict[str, str] | None = None, seed: int = 0, clocks: bool = True,
                 log_mode: str = "local", log_limit: int = 0, persist_every: int = 1000,
                 events: list | None = None, clients: Callable[[str, int], Any] | None = None,
                 network: dict[str, LinkModel] | None = None, recorder: Any = None) -> None:
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        self.chain = chain
        self.model = model
        self.batch_size = batch_size
        if model != "T" and store is None:
            store = MemoryStore()
        self.store = store if model != "T" else None
        # Root metadata (persisted clocks, a store-held packet log) needs a store
        # even when NF state is local.
        self.meta_store = store if store is not None else MemoryStore()
        self.pacer = pacer or Pacer("topspeed")
        self.net = Network(network, seed)
        self.node = StoreNode(self.net, self.store) if self.store is not None else None
        if self.node is not None:
            self.node.record = recorder
        self.links: dict[tuple[str, int], StoreLink] = {}
        self.roots = [Root(r, chain.policies, log_mode=log_mode, log_limit=log_limit,
                           persist_every=persist_every) for r in range(chain.roots)]
        # ``clients`` supplies a stand-in client per instance (the COE checker's reference).
        self.instances: dict[str, list[Instance]] = {
            name: [Instance(name, i, v.nf, v.config, model, self._link(name, i), exclusive=v.parallelism == 1,
                            client=clients(name, i) if clients else None)
                   for i in range(v.parallelism)]
            for name, v in chain.vertices.items()
        }
        for inst in self._all_instances():
            self._clock_reads(inst)
        # Per vertex, logical instance -> the instance serving it now: a failover
        # instance, or a kept clone, takes its slot; a scale-out adds one.  What a
        # scenario's ``vertex[i]`` names (see the module's theory of operation).
        self.serving: dict[str, list[int]] = {name: list(range(v.parallelism))
                                              for name, v in chain.vertices.items()}
        self.retired_why: dict[tuple[str, int], str] = {}     # (vertex, instance) -> how it was retired
        self.seed = seed
        self.delay_specs = dict(delays or {})
        self._delays(self.delay_specs, seed)
        # §5.1 elasticity: one flow-group map per vertex, shared by its upstream splitters.
        self.flowmaps = {name: FlowMap(v.parallelism, v.nf.partition_scopes())
                         for name, v in chain.vertices.items()}
        # §3: a vertex manager per vertex with a scaling policy; they balance by the
        # splitters' per-flow-group counts.
        self.managers = [VertexManager(name, v.scaling) for name, v in chain.vertices.items()
                         if v.scaling is not None]
        for m in self.managers:
            self.flowmaps[m.vertex].count_groups()
        self.retired: set[tuple[str, int]] = set()
        self.retiring: set[tuple[str, int]] = set()
        self.handovers: list[Handover] = []
        self.holds: list[Handover] = []
        self.deferred: list[tuple[str, Callable[[], None], bool]] = []
        self.events_log: list[dict] = []
        self.instance_hooks: list[Callable[[Instance], None]] = []   # (the COE checker's)
        self.step_hooks: list[Callable[[SimRuntime], None]] = []     # at batch boundaries (controls)
        # (vertex, instance id, packets, wall seconds) of each batch an instance runs
        # (the live metrics' processing-time histograms); None: nothing is timed.
        self.on_instance_batch: Callable[[str, int, int, float], None] | None = None
        self.clocks = clocks
        self.share_on_split = True          # off only for --break no-flush
        self.naive_moves = False            # on only for --break naive-move
        self.naive_skipped = 0              # moves that would have needed a handover
        self._naive_watch: list[tuple[Handover, dict[tuple, Packet], list[tuple[tuple, Packet]]]] = []
        self.unshared_skipped = 0           # splits that kept an exclusive cache
        # §5.3 stragglers: active clone pairs, and (when a clone can happen) the clocks
        # each instance processed that its root still logs, to count what replay repeats.
        self.clones: list[Clone] = []
        self.dup_suppression = True         # off only for --break no-dup-suppression
        self.processed: dict[tuple[str, int], dict[int, None]] = {}
        # §5.4 NF failover: instances that crashed and await detection, the dead ones,
        # and, per instance, what it processed (as it got it, in order) from the oldest
        # packet its root still logs: what a failover instance replays.
        self.failures: list[Failure] = []
        self.dead: set[tuple[str, int]] = set()
        self.inputs: dict[tuple[str, int], deque[Packet]] = {}
        # R3 with §5.4: per (vertex, clock) recorded, the objects its instance shared
        # then; a replay runs each packet as it ran (a scale-in or -out in between
        # changed what the instance caches, and what its store reads log).
        self.record_shared: dict[tuple[str, int], frozenset[str]] = {}
        # §5.1 with §5.4: per instance, the timers moved flows brought it, after which
        # clock of its record (-1: before all), while any of their packets is logged;
        # and, in their order, its hand-overs (the moved flows' ``covers``: where its
        # replay gives their timers up, _move_records).
        self.gifts: dict[tuple[str, int], list[tuple[int, list[tuple] | Callable[[PartAt], bool]]]] = {}
        self.replay_on_failover = True      # off only for --break no-replay
        self.replay_moved_timers = True     # off only for --break no-moved-timers
        self.replay_as_processed = True     # off only for --break replay-as-now (R3)
        self.gifts_dropped = 0              # (what that break left out)
        self.delete_before_output = True    # off only for --break delete-after-output
        self._last_out: dict[tuple[str, int], set[int]] = {}   # --break delete-after-output
        # §5.4 root failover: crashed roots awaiting detection, the input and the
        # reports (forks, completions, commits) held for them meanwhile, and whether
        # a root lost a local packet log (then packets logged before are forgotten).
        self.root_failures: dict[int, Failure] = {}
        self.root_input: dict[int, list[Packet]] = {}
        self.root_inbox: dict[int, list[tuple]] = {}
        self.root_up_at: dict[int, float] = {}
        self._root_events: dict[int, dict] = {}
        self.root_crashes_waiting: list[tuple[int, float, int, dict]] = []    # while the store is down
        self.log_lost = False
        self.events = sorted(events or [], key=lambda e: (e.at_packet is None, e.at_packet or 0,
                                                          e.at_time_ns or 0))
        growing = {e.vertex for e in self.events if e.action == "scale-out"}
        growing |= {m.vertex for m in self.managers}
        for ev in self.events:
            try:
                ACTIONS[ev.action].resolve(self, ev)     # fail early on a bad target
            except NoSuchInstance:
                # An instance a scale-out may add before the event: judged when it fires
                # (a seed that drew fewer starting instances stopped the whole check).
                if ev.vertex not in growing:
                    raise
        self._pending_events = list(self.events)     # those not applied yet (run, feed)
        self.track_processed = (any(ev.action == "clone" for ev in self.events)
                                or any(m.policy.straggler_factor is not None or m.policy.decide_fn is not None
                                       for m in self.managers))     # a manager may clone (§5.3)
        self.recording = any(ev.action == "crash" and _nf_target(ev.target) for ev in self.events)
        if self.recording and self.store is not None:
            self.store.keep_preimages()
            if self.node is not None:
                self.node.read_log = {}
        if not clocks:
            for inst in self._all_instances():
                inst.arrival_clocks = True
        # One splitter per upstream (a root or an instance) and downstream vertex it
        # feeds, off-path taps included.
        self.root_splitters = [self._splitters(chain.entries) for _ in self.roots]
        self.splitters: dict[str, list[dict[str, Splitter]]] = {
            name: [self._splitters(v.successors + v.taps_out) for _ in range(v.parallelism)]
            for name, v in chain.vertices.items()
        }
        self._order = self._ordering()
        for name in self.instances:
            self._share(name)
        self.timed = (any(i.delay is not None for i in self._all_instances())
                      or self.net.data_latency is not None)
        self.horizon: float = 0
        self.input_end_vt: float = 0    # the horizon the input ended at (drain makes it infinite)
        self._meta_pending: list[Op] = []
        self.packets_out = 0
        self.elapsed = 0.0
        # §5.4 store failover: checkpoints and write-ahead logs, only if the store can crash.
        self.store_failover = StoreFailover.install(self)

    def _link(self, vertex: str, i: int) -> StoreLink | None:
        """The store link of instance ``vertex[i]`` (None in model T)."""
        if self.node is None:
            return None
        link = self.links[(vertex, i)] = StoreLink(self.net, self.node, f"{vertex}[{i}]")
        return link

    def _clock_reads(self, inst: Instance) -> None:
        """The store learns which packet's clock each blocking read is for: the COE
        checker follows reads of shared state by it (they are serialized like updates),
        and the store's read log answers a failover instance's replay by it (§5.4)."""
        link = inst.client.backend if isinstance(inst.client, StoreClient) else None
        if isinstance(link, StoreLink):
            client = inst.client
            link.clock_of = lambda: client.clock

    def _all_instances(self) -> list[Instance]:
        return [i for insts in self.instances.values() for i in insts]

    def targets(self, target: str | None) -> list[Instance]:
        """Instances named by ``vertex`` (all of them) or ``vertex[i]`` (the one serving
        logical instance ``i`` now, :meth:`resolve`)."""
        if not target:
            raise ValueError("an instance target (vertex or vertex[i]) is required")
        name, _, rest = target.partition("[")
        if name not in self.instances:
            raise ValueError(f"unknown vertex {name!r} in {target!r} (vertices: {', '.join(self.instances)})")
        insts = self.instances[name]
        if rest:
            idx = rest.rstrip("]")
            if not idx.isdigit():
                raise ValueError(f"{target!r}: expected {name}[N] with a number N")
            insts = [insts[self.resolve(name, int(idx))]]
        return insts

    def resolve(self, vertex: str, logical: int) -> int:
        """The instance serving logical instance ``vertex[logical]`` now (after failovers
        and kept clones); :class:`NoSuchInstance` if the vertex has not had it."""
        slots = self.serving[vertex]
        if not 0 <= logical < len(slots):
            raise NoSuchInstance(f"'{vertex}[{logical}]': {vertex} has instances 0-{len(slots) - 1}")
        return slots[logical]

    def _serve(self, vertex: str, old: int, new: int) -> None:
        """Instance ``new`` takes over the logical instance ``old`` served (§5.3, §5.4)."""
        slots = self.serving[vertex]
        if old in slots:
            slots[slots.index(old)] = new

    def unavailable(self, vertex: str, logical: int) -> str | None:
        """Why logical instance ``vertex[logical]`` cannot take an event now (retired by a
        scale-in, crashed and not failed over yet); None if it can."""
        i = self.resolve(vertex, logical)
        name = f"{vertex}[{logical}]"
        if (vertex, i) in self.dead:
            f = next((f for f in self.failures if f.vertex == vertex and f.instance == i), None)
            return f"{name} crashed{f' at packet {f.crashed_packet}' if f else ''} and is not failed over yet"
        if (vertex, i) in self.retired:
            return f"{name} was {self.retired_why.get((vertex, i), 'retired')}"
        if (vertex, i) in self.retiring:
            return f"{name} is being retired by a scale-in"
        return None

    def _named(self, vertex: str, i: int) -> dict:
        """For a log entry about instance ``i``: the logical instance it serves, when its
        index is not that one's (a failover instance, a kept clone), so the entry says
        which ``vertex[i]`` of the scenario it is."""
        slots = self.serving.get(vertex, [])
        return {"logical": slots.index(i)} if i in slots and slots.index(i) != i else {}

    def set_delay(self, target: str, spec: str | None) -> None:
        for inst in self.targets(target):
            inst.delay = None if spec is None else Delay(spec, self.seed, f"{inst.vertex}[{inst.instance_id}]")
        if spec is not None:
            self.timed = True

    def _delays(self, delays: dict[str, str], seed: int) -> None:
        """``{"vertex": spec}`` for every instance of a vertex, ``{"vertex[i]": spec}`` for one."""
        for target, spec in delays.items():
            for inst in self.targets(target):
                inst.delay = Delay(spec, seed, f"{inst.vertex}[{inst.instance_id}]")

    def _ordering(self) -> dict[str, bool]:
        """Vertices whose queues need sorting: fed by more than one upstream instance."""
        feeders: dict[str, int] = {n: 0 for n in self.chain.vertices}
        for n in self.chain.entries:
            feeders[n] += len(self.roots)
        for v in self.chain.vertices.values():
            k = len(self.instances[v.name])
            for d in v.successors + v.taps_out:
                feeders[d] += k
                for t in self.chain.vertices[d].taps_in:
                    feeders[t] += k
        for n in self.chain.entries:
            for t in self.chain.vertices[n].taps_in:
                feeders[t] += len(self.roots)
        return {n: k > 1 for n, k in feeders.items()}

    def _splitters(self, targets: list[str]) -> dict[str, Splitter]:
        """Splitters for the given downstream vertices and their input taps."""
        return {d: Splitter(self.flowmaps[d].scope, self.flowmaps[d]) for d in split_targets(self.chain, targets)}

    # -- data path ------------------------------------------------------------------
    def _root_of_packet(self, pkt: Packet) -> int:
        return root_index(pkt, len(self.roots))

    def _enter(self, batch: list[Packet], bypass_out: list[Packet]) -> None:
        if len(self.roots) == 1:
            parts = [batch]
        else:
            parts = [[] for _ in self.roots]
            for p in batch:
                parts[self._root_of_packet(p) if p.l3 and p.malformed is None else 0].append(p)
        entries = self.chain.entries
        vs = self.chain.vertices
        for root, splitters, part in zip(self.roots, self.root_splitters, parts, strict=True):
            if self.root_failures or self.root_input or self.root_up_at:
                part = self._root_input(root.root_id, part)
            admitted, bypass = root.ingest(part)
            bypass_out.extend(bypass)
            if not admitted:
                continue
            # Log first (§5): the forks and completions that follow refer to the entries.
            root.record(admitted)
            routed = {entries[0]: admitted} if len(entries) == 1 else self._classify(root, admitted)
            for name, pkts in routed.items():
                src = ("root", root.root_id)
                for inst, sub in zip(self.instances[name], splitters[name].split(pkts), strict=True):
                    if sub:
                        root.place(sub, name, inst.instance_id)
                        self._deliver(src, inst, sub)
                for tap in vs[name].taps_in:
                    self._copy_to(src, tap, pkts, splitters[tap])

    def _classify(self, root: Root, admitted: list[Packet]) -> dict[str, list[Packet]]:
        return classify(self.chain, self._fork, admitted)

    def _copy_to(self, src: tuple, vertex: str, pkts: list[Packet], splitter: Splitter) -> None:
        copies = [_copy(p) for p in pkts]
        for p in pkts:
            self._fork(p.clock, 1)
        self._enqueue(src, vertex, copies, splitter)

    def _fork(self, clock: int, k: int) -> None:
        r = root_of(clock)
        if r in self.root_failures:
            self.root_inbox[r].append(("fork", clock, k))
        else:
            self.roots[r].fork(clock, k)

    def _done(self, clock: int, vector: int) -> None:
        r = root_of(clock)
        if r in self.root_failures:
            self.root_inbox[r].append(("done", clock, vector))
        else:
            self.roots[r].done(clock, vector)

    def _enqueue(self, src: tuple, vertex: str, batch: list[Packet], splitter: Splitter) -> None:
        for inst, part in zip(self.instances[vertex], splitter.split(batch), strict=True):
            if part:
                self._deliver(src, inst, part)

    def _deliver(self, src: tuple, inst: Instance, pkts: list[Packet]) -> None:
        """Packets onto the FIFO data link from ``src`` to ``inst`` (its input queue);
        a moved flow's packets wait in the handover's buffer (§5.1 step 4)."""
        net = self.net
        if net.data_latency is not None:
            link = (src, inst.vertex, inst.instance_id)
            for p in pkts:
                p.vt = net.data_arrival(link, p.vt)
        if self.handovers or self.holds:
            pkts = self._hold_moved(inst, pkts)
        if self._naive_watch:
            self._count_races(inst, pkts)
        inst.queue.extend(pkts)
        if self.clones:
            pair = self._pair(inst.vertex, inst.instance_id)
            if pair is not None and pair.straggler == inst.instance_id:
                # §5.3: the splitter replicates the straggler's traffic to its clone,
                # with the same arrival times, so both see one sequence.
                self.instances[inst.vertex][pair.clone].queue.extend([p.copy() for p in pkts])

    def _ready(self, inst: Instance, ordered: bool) -> list[Packet]:
        """The queued packets that arrived by the horizon, in (time, clock) order."""
        q = inst.queue
        if not q:
            return []
        if not self.timed:
            batch = list(q)
            q.clear()
            if ordered:
                batch.sort(key=_by_clock)
            return batch
        horizon = self.horizon
        batch = [p for p in q if p.vt <= horizon]
        if len(batch) != len(q):
            keep = [p for p in q if p.vt > horizon]
            q.clear()
            q.extend(keep)
        else:
            q.clear()
        batch.sort(key=_by_time)
        return batch

    def _pass(self, out: list[Packet]) -> None:
        """Run every vertex once, in topological order, on what is ready."""
        for name, v in self.chain.vertices.items():
            ordered = self._order[name]
            latest = 0
            pairs = [c for c in self.clones if c.vertex == name] if self.clones else ()
            paired = {i for c in pairs for i in c.members()}
            held: dict[int, tuple] = {}
            for inst, splitters in zip(self.instances[name], self.splitters[name], strict=True):
                if self.dead and (name, inst.instance_id) in self.dead:
                    continue                # crashed: what reaches it is lost (replayed later)
                batch = self._ready(inst, ordered)
                if not batch:
                    continue
                if self.recording:
                    self._record(name, inst, batch)
                if batch[-1].ts > latest:
                    latest = batch[-1].ts
                if self.links:
                    link = self.links[(name, inst.instance_id)]
                    if batch[0].vt > link.t:
                        link.t = batch[0].vt    # the client sends at its batch's time
                if inst.instance_id in paired:
                    # §5.3: straggler and clone are one logical instance; what leaves
                    # it is decided once both have run (_merge_pair).
                    if self.track_processed:
                        self.processed.setdefault((name, inst.instance_id), {}).update(dict.fromkeys(
                            p.clock for p in batch))
                    alerts_from = len(inst.ctx.alerts)
                    produced = self._run(name, inst, batch)
                    held[inst.instance_id] = (batch, produced, inst.finished, inst.forks, alerts_from, inst.fired)
                    inst.finished, inst.forks, inst.fired = [], [], []
                    continue
                if self.track_processed:
                    self.processed.setdefault((name, inst.instance_id), {}).update(dict.fromkeys(
                        p.clock for p in batch))
                produced = self._run(name, inst, batch)
                if not self.delete_before_output:
                    self._last_out[(name, inst.instance_id)] = {p.clock for p in produced}
                if self.handovers:
                    self._handed_over(inst, batch)
                self._report(inst)
                if produced:
                    self._forward(v, (name, inst.instance_id), splitters, produced, out)
            for pair in pairs:
                self._merge_pair(pair, v, held, out)
            if self.retired and latest:
                # A retired instance still owns the timers its flows armed: they fire
                # by the timestamps its vertex sees.
                for inst in self.instances[name]:
                    if (name, inst.instance_id) in self.retired and (name, inst.instance_id) not in self.dead:
                        inst.tick(latest)
                        self._report(inst)

    def _run(self, name: str, inst: Instance, batch: list[Packet]) -> list[Packet]:
        timed = self.on_instance_batch
        if timed is None:
            return inst.run(batch)
        tick = time.perf_counter()
        produced = inst.run(batch)
        timed(name, inst.instance_id, len(batch), time.perf_counter() - tick)
        return produced

    def _forward(self, v: Any, src: tuple, splitters: dict[str, Splitter], produced: list[Packet],
                 out: list[Packet]) -> None:
        """An instance's output to off-path taps, successors or the chain's output."""
        if v.offpath:
            for p in produced:
                self._done(p.clock, p.xor)
            return
        for tap in v.taps_out:
            self._copy_to(src, tap, produced, splitters[tap])
        succ = v.successors
        if not succ:
            for p in produced:           # §5.4: delete before the output is emitted
                self._done(p.clock, p.xor)
            out.extend(produced)
            return
        for i, d in enumerate(succ):
            if i < len(succ) - 1:
                part = [_copy(p) for p in produced]
                for p in produced:
                    self._fork(p.clock, 1)
            else:
                part = produced
            for tap in self.chain.vertices[d].taps_in:
                self._copy_to(src, tap, part, splitters[tap])
            self._enqueue(src, d, part, splitters[d])

    def _report(self, inst: Instance) -> None:
        if inst.forks:
            for clock, k in inst.forks:
                self._fork(clock, k)
            inst.forks.clear()
        if inst.fired:
            self._timers_fired(inst.fired)
            inst.fired.clear()
        if inst.finished:
            for clock, vector in inst.finished:
                self._done(clock, vector)
            inst.finished.clear()

    def _timers_fired(self, fired: list[tuple[int, int, int]]) -> None:
        """§5.4 a timer is a copy of the packet that armed it: re-armed ones are new
        copies, and the fired one ends with the XOR vector of its updates."""
        for clock, rearmed, vector in fired:
            if rearmed:
                self._fork(clock, rearmed)
            self._done(clock, vector)

    def _settle(self) -> None:
        """Messages due by the horizon; commit reports to the roots (§5.4); root
        writes to the store; clock-log pruning."""
        net = self.net
        if self.node is not None:
            net.run_until(self.horizon)
            self._send_commits(self.node.commits())
        ops = self._meta_pending + [op for r in self.roots if r.root_id not in self.root_failures
                                    for op in r.drain_outbox()]
        if ops:
            try:
                self.meta_store.execute(ops)
                self._meta_pending = []
            except StoreUnavailable:
                self._meta_pending = ops        # retransmitted with the next batch
        if self.inputs and not self.root_failures:     # (no root to ask meanwhile)
            roots = self.roots
            modes = self.record_shared
            gifts = self.gifts
            for key, rec in self.inputs.items():
                # Replay starts at the oldest packet still logged: what came before it
                # is done in the whole chain and in the store (§5.4).
                gone = []
                while rec and roots[root_of(rec[0].clock)].log.get(rec[0].clock) is None:
                    gone.append(rec.popleft().clock)
                    modes.pop((key[0], gone[-1]), None)
                if gone and key in gifts:
                    # A hand-over after a packet no longer replayed: before all (-1).
                    gone = set(gone)
                    gifts[key] = [(-1 if callable(what) and after in gone else after, what)
                                  for after, what in gifts[key]]
            if self.gifts:
                self._prune_gifts()
            read_log = self.node.read_log if self.node is not None else None
            if read_log and len(read_log) > 2 * max(64, sum(len(r.log) for r in roots)):
                # A replay starts at its root's oldest logged packet: reads before it are done.
                floors = {r.root_id: r.oldest for r in roots}

                def done(clock: int) -> bool:
                    return clock < floors.get(root_of(clock), 0)
                prune_reads(read_log, done)
                if self.store_failover is not None:
                    self.store_failover.prune_reads(done)
        if self.processed:
            logged = sum(len(r.log) for r in self.roots)
            for key, seen in self.processed.items():
                if len(seen) > 2 * max(64, logged):
                    self.processed[key] = {c: None for c in seen if self.roots[root_of(c)].log.get(c)}
        # §5.3 each root prunes its own clocks (core.store).  A failover's replay takes
        # what an instance processed from its oldest packet still logged, and with several
        # roots that can hold a packet of another root which that root is done with: its
        # clock-log entries must stay, so while a crash is possible several roots prune
        # nothing (with nf-crash.yaml on two roots pruning re-applied replayed updates).
        if self.store is not None and not self.root_failures and (len(self.roots) == 1 or not self.recording):
            for root in self.roots:
                oldest = root.oldest
                if self.log_lost:
                    # The log forgot the packets from before the root failed: what the chain
                    # still holds of them is found in the chain itself.
                    oldest = self._oldest_in_chain(root.root_id, oldest)
                for pair in self.clones:
                    # §5.3: the slower copy of a pair may still send updates of packets the
                    # chain is done with; their clock-log entries must answer it.
                    oldest = min(oldest, pair.floors.get(root.root_id, oldest))
                self.store.prune_below(oldest)     # §5.3: clocks done in the whole chain

    def _send_commits(self, commits: list[tuple[int, int]]) -> None:
        """The store's commit reports, on the FIFO commits link to the roots."""
        if not commits:
            return
        if self.store_failover is not None:
            self.store_failover.reports(commits)
        net = self.net
        if net.commits_instant:
            self._commits(commits)
        else:
            net.send("commits", "root", max(self.horizon, net.now), lambda: self._commits(commits))

    def _commits(self, commits: list[tuple[int, int]]) -> None:
        roots = self.roots
        failed = self.root_failures
        for clock, xor_id in commits:
            r = root_of(clock)
            if failed and r in failed:
                self.root_inbox[r].append(("commit", clock, xor_id))
            else:
                roots[r].commit(clock, xor_id)

    def step(self, batch: list[Packet]) -> list[Packet]:
        """Push one input batch through the chain; return the output it releases."""
        out: list[Packet] = []
        if self.root_crashes_waiting:
            self._waiting_root_crashes()
        for hook in self.step_hooks:
            hook(self)
        if batch:
            self.horizon = max(self.horizon, batch[-1].vt)
            if self.holds:
                # A hold ends when no packet can reach its instance before `until`: new
                # input arrives at or after batch[0].vt, and what is inside the chain is
                # queued somewhere with its current time (which only grows).  (Input time
                # alone dropped a hold while an older packet was still upstream: scale.yaml
                # seed 152 reordered a flow after an LB move.)
                floor = min((p.vt for insts in self.instances.values() for i in insts for p in i.queue),
                            default=batch[0].vt)
                floor = min(floor, batch[0].vt, *(p.vt for h in self.handovers for p in h.buffer))
                self.holds = [h for h in self.holds if h.until > floor]
        if self.failures or self.root_failures:
            waited = len(self.failures)
            self._detect()
            if len(self.failures) < waited:
                self._retry_deferred()      # what waited for a failover (_busy)
        self._enter(batch, out)
        self._pass(out)
        if self.clones:
            self._resolve_clones()
        self._settle()
        return self._release(out)

    def _release(self, out: list[Packet]) -> list[Packet]:
        out.sort(key=_by_time if self.timed else _by_clock)
        self.packets_out += len(out)
        return out

    def drain(self) -> list[Packet]:
        """End of input: let everything still queued (delayed packets) finish."""
        self.input_end_vt = self.horizon
        self.horizon = _INF
        out: list[Packet] = []
        for event in self._pending_events:     # (they did nothing, silently: as proc, logged)
            self._log(f"{event.action}-refused", event.vertex or None, None,
                      reason="the input ended before it", by="scenario")
        self._pending_events = []
        if self.root_crashes_waiting:
            self._waiting_root_crashes()
        if self.failures or self.root_failures:
            self._detect()
            if self.root_input:
                self._enter([], out)        # input held for a root that failed at the end
        while any(i.queue for i in self._all_instances()):
            self._pass(out)
            if self.failures:
                # a crash deferred until a hand-over it waited for ended in this drain:
                # failed over now (a dead instance's queue would never empty), then
                # what waited for the failover
                self._detect()
                self._retry_deferred()
        for hook in self.step_hooks:
            hook(self)                      # e.g. a control still waiting for a quiet chain
        if self.clones:
            self._resolve_clones(final=True)
        for vertex, i in list(self.retiring):
            self._retire_if_done(vertex, i)
        for inst in self._all_instances():
            if (inst.vertex, inst.instance_id) in self.dead:
                continue                    # its failover instance holds its timers
            inst.finish()
            self._report(inst)              # the timers that fired at the end
        self._settle()
        while self.net.run_next():          # the last commit reports
            self._settle()
        self._settle()
        return self._release(out)

    def run(self, records: Iterable[tuple[int, bytes]],
            emit: Callable[[list[Packet]], None] | None = None,
            progress: Callable[[int], None] | None = None) -> None:
        """Run the chain over ``(timestamp ns, frame)`` records."""
        started = time.perf_counter()
        size = self.batch_size
        pace = self.pacer.arrival
        batch: list[Packet] = []
        index = sum(r.packets_in for r in self.roots)
        events = self._pending_events
        managers = self.managers
        for ts, data in records:
            pkt = Packet(data, ts, index)
            pkt.vt = pace(ts, len(data))
            if managers or events:
                batch = self._before(pkt, batch, emit)
            batch.append(pkt)
            index += 1
            if len(batch) >= size:
                self._emit(self.step(batch), emit)
                if progress is not None:
                    progress(len(batch))
                batch = []
        if batch:
            self._emit(self.step(batch), emit)
            if progress is not None:
                progress(len(batch))
        self._emit(self.drain(), emit)
        self.elapsed += time.perf_counter() - started

    def feed(self, pkts: list[Packet], emit: Callable[[list[Packet]], None]) -> None:
        """Push packets stamped by the caller (``index``, ``ts``, ``vt``), in input
        order, as one batch, with managers and scenario events acting between the
        packets they are due at, as in :meth:`run` (the real-time loop of
        :mod:`chc.serve`, which paces input itself)."""
        batch: list[Packet] = []
        if self.managers or self._pending_events:
            for pkt in pkts:
                batch = self._before(pkt, batch, emit)
                batch.append(pkt)
        else:
            batch = pkts
        self._emit(self.step(batch), emit)

    def _before(self, pkt: Packet, batch: list[Packet], emit: Callable[[list[Packet]], None] | None) -> list[Packet]:
        """Managers and scenario events due before ``pkt`` act at a batch boundary:
        ``batch`` (the packets before it) is pushed first; returns the batch to go on with."""
        managers = self.managers
        if managers:
            # No virtual time (top speed): managers go by input time.
            now = pkt.ts if self.pacer.mode == "topspeed" else pkt.vt
            due = [m for m in managers if m.due(now)]
            if due:
                # A manager acts at an interval boundary, before the packet past it.
                if batch:
                    self._emit(self.step(batch), emit)
                    batch = []
                self._manage(due, now)
        events = self._pending_events
        if events and _due(events[0], pkt):
            # An event fires before the packet it names, at a batch boundary.
            if batch:
                self._emit(self.step(batch), emit)
                batch = []
            while events and _due(events[0], pkt):
                self.apply(events.pop(0))
        return batch

    def apply(self, event: Any) -> None:
        try:
            ACTIONS[event.action].apply(self, event)
        except NoSuchInstance as exc:        # (not added by then: logged, as proc logs a kill-skipped)
            self._log(f"{event.action}-refused", event.vertex, None,
                      reason=f"no such instance when it fired: {exc}", by="scenario")

    @staticmethod
    def _emit(out: list[Packet], emit: Callable[[list[Packet]], None] | None) -> None:
        if emit is not None and out:
            emit(out)

    # -- elasticity (§5.1, Figure 4) -------------------------------------------------------
    def active(self, vertex: str) -> list[Instance]:
        """The instances of ``vertex`` that take traffic (neither retired nor retiring,
        nor crashed and awaiting failover)."""
        return [i for i in self.instances[vertex]
                if (vertex, i.instance_id) not in self.retired and (vertex, i.instance_id) not in self.retiring
                and (vertex, i.instance_id) not in self.dead]

    def in_logical_order(self, vertex: str) -> list[Instance]:
        """The active instances by the logical instance each serves (a scenario's
        ``vertex[i]``): the order a seed's pick and a scale-in of the vertex take them in,
        as proc's do.  After a failover or a kept clone the physical order differs, and
        the same scenario acted on another instance on each runtime."""
        slots = self.serving[vertex]
        return sorted(self.active(vertex), key=lambda a: slots.index(a.instance_id) if a.instance_id in slots
                      else len(slots) + a.instance_id)

    def now(self) -> float:
        """Virtual time now: the horizon, or the network's clock past it (at the end
        of input, where the horizon is infinite, only the network's clock)."""
        return self.net.now if self.horizon == _INF else max(self.horizon, self.net.now)

    def _busy(self, vertex: str, failover: bool = True) -> bool:
        return (any(h.vertex == vertex for h in self.handovers) or any(c.vertex == vertex for c in self.clones)
                or (self.store_failover is not None and self.store_failover.busy())
                # §5.1 with §5.4: a crashed instance not yet failed over keeps its vertex
                # busy, so what waited with its crash waits for the failover: a move out of
                # the dead instance waited for a last packet it would never process, and its
                # flows' packets stayed buffered for good (at the end of input, the crash is
                # failed over in the drain, _failure_vt; mid-run too, when a deferred crash
                # and the move after it ran at one hand-over's end: scale-crash.yaml at
                # pps 3000, seed 2, 572 packets never output).  A crash waits for it only
                # at the end of input: mid-run a second one finds no active instance.
                or ((failover or self.horizon == _INF) and any(f.vertex == vertex for f in self.failures)))

    def _when_idle(self, vertex: str, action: Callable[[], None], failover: bool = True) -> None:
        """Run ``action`` now, or once the vertex's handovers are done (one move at a time)
        and, with ``failover``, its crashed instances failed over."""
        if self._busy(vertex, failover):
            self.deferred.append((vertex, action, failover))
        else:
            action()

    def scale_out(self, vertex: str, **why: Any) -> None:
        """Add an instance and give it an even share of the flow groups (§3, §5.1)."""
        self._when_idle(vertex, lambda: self._scale_out(vertex, why))

    def _scale_out(self, vertex: str, why: dict) -> None:
        v = self.chain.vertices[vertex]
        if len(self.instances[vertex]) >= MAX_PARALLELISM:
            self._refuse("scale-out-refused", vertex, None, f"{vertex} has had {MAX_PARALLELISM} instances "
                         "(MAX_PARALLELISM; retired ones count)", why)
            return
        i = self.flowmaps[vertex].add_instance()
        inst = Instance(vertex, i, v.nf, v.config, self.model, self._link(vertex, i), exclusive=False)
        self._install(vertex, inst, len(self.serving[vertex]))
        self.serving[vertex].append(i)      # a new logical instance: vertex[len - 1] names it
        for hook in self.instance_hooks:
            hook(inst)
        self._share(vertex)                 # R3: objects the split makes shared
        self._log("scale-out", vertex, i, **self._named(vertex, i), **why)
        self._rebalance(vertex)

    def _install(self, vertex: str, inst: Instance, logical: int | None) -> None:
        """A new instance of ``vertex`` (index ``inst.instance_id``) joins the physical
        chain: its delay model, its splitters, the vertices' input ordering.  Its delay is
        the scenario's for the logical instance it serves (``delays: {nat[0]: ...}`` names
        logical instance 0, its failover instance too, as every ``vertex[i]`` does; by its
        own index a failover took another instance's delay); a clone (``logical`` None),
        §5.3's fast copy, takes the vertex's."""
        i = inst.instance_id
        v = self.chain.vertices[vertex]
        inst.arrival_clocks = not self.clocks
        spec = (logical is not None and self.delay_specs.get(f"{vertex}[{logical}]")) or self.delay_specs.get(vertex)
        if spec is not None:
            inst.delay = Delay(spec, self.seed, f"{vertex}[{i}]")
        self.instances[vertex].append(inst)
        self._clock_reads(inst)
        self.splitters[vertex].append(self._splitters(v.successors + v.taps_out))
        self._order = self._ordering()

    def scale_in(self, vertex: str, instance: int | None = None, *, logical: bool = False, **why: Any) -> None:
        """Retire an instance: its flow groups move to the others first (§5.1).  With
        ``logical``, ``instance`` names a logical instance (a scenario's ``vertex[i]``),
        resolved when the scale-in runs (:meth:`resolve`)."""
        def go() -> None:
            i = instance if instance is None or not logical else \
                self._serving_now("scale-in-refused", vertex, instance, why)
            if i is not None or instance is None:
                self._scale_in(vertex, i, why)
        self._when_idle(vertex, go)

    def _serving_now(self, refused: str, vertex: str, logical: int, why: dict) -> int | None:
        """The instance serving ``vertex[logical]`` when an event on it runs (it may have
        failed over since it fired, or while it waited for a hand-over); None, and the
        event logged as ``refused`` with the reason, if that logical instance cannot take
        it (retired by a scale-in, crashed and not failed over yet)."""
        reason = self.unavailable(vertex, logical)
        if reason is not None:
            self._refuse(refused, vertex, self.resolve(vertex, logical), reason,
                         {**why, "target": f"{vertex}[{logical}]"})
            return None
        return self.resolve(vertex, logical)

    def _scale_in(self, vertex: str, instance: int | None, why: dict) -> None:
        active = self.in_logical_order(vertex)      # (the vertex's last logical instance goes, as on proc)
        if len(active) < 2:
            self._refuse("scale-in-refused", vertex, instance, "the last active instance stays", why)
            return
        victim = active[-1] if instance is None else next((a for a in active if a.instance_id == instance), None)
        if victim is None:
            self._refuse("scale-in-refused", vertex, instance, "not an active instance", why)
            return
        self.retiring.add((vertex, victim.instance_id))
        rest = [a.instance_id for a in active if a is not victim]
        self._log("scale-in", vertex, victim.instance_id, **why)
        for groups, to in self.flowmaps[vertex].spread(victim.instance_id, rest):
            self._move(vertex, groups, to)
        self._retire_if_done(vertex, victim.instance_id)

    def move(self, vertex: str, source: int, to: int, fraction: float, *, logical: bool = False,
             **why: Any) -> None:
        """Move ``fraction`` of ``source``'s flow groups to instance ``to``.  With
        ``logical``, both name logical instances (a scenario's ``from`` and ``to``),
        resolved when the move runs: after a failover, the failover instance."""
        def go() -> None:
            src, dst = source, to
            if logical:
                src = self._serving_now("move-refused", vertex, source, {**why, "source": source, "to": to})
                dst = None if src is None else \
                    self._serving_now("move-refused", vertex, to, {**why, "source": source, "to": to})
                if src is None or dst is None:
                    return
            if dst not in {a.instance_id for a in self.active(vertex)}:
                self._log("move-refused", vertex, dst, source=src, reason="not an active instance", **why)
                return
            groups = self.flowmaps[vertex].groups_of(src)
            self._move(vertex, groups[:int(len(groups) * fraction)], dst, why)
        self._when_idle(vertex, go)

    def refine(self, vertex: str, **why: Any) -> None:
        """Partition ``vertex`` on the next finer scope of its ladder (§4.1)."""
        self._when_idle(vertex, lambda: self._refine(vertex, why))

    def _rebalance(self, vertex: str) -> None:
        """Even flow-group counts over the active instances."""
        for groups, to in self.flowmaps[vertex].even([a.instance_id for a in self.active(vertex)]):
            self._move(vertex, groups, to)

    # -- vertex managers (§3) and scope refinement (§4.1) ------------------------------------
    def _manage(self, due: list[VertexManager], now: int) -> None:
        """Interval statistics to each due manager; its decisions carried out."""
        for m in due:
            vertex = m.vertex
            fm = self.flowmaps[vertex]
            counters = [(i.instance_id, i.packets_in, len(i.queue), i.busy) for i in self.active(vertex)]
            counts = fm.take_counts()
            cloning = frozenset(i for c in self.clones if c.vertex == vertex for i in c.members())
            try:
                load, decisions = m.tick(now, counters, fm.scope.name, fm.level + 1 < len(fm.ladder), cloning)
            except Exception as exc:        # operator code: report it, keep the vertex as it is
                self._log("policy-error", vertex, None, error=f"{type(exc).__name__}: {exc}")
                continue
            for d in decisions:
                self._decide(m, d, counts)

    def _decide(self, m: VertexManager, d: Decision, counts: list[int]) -> None:
        vertex, policy = m.vertex, m.policy
        n = len(self.active(vertex))
        why = {"by": "manager", "reason": d.reason} if d.reason else {"by": "manager"}
        if d.action == "scale-out":
            if n >= policy.max:
                self._log("scale-out-refused", vertex, None, reason=f"at max ({policy.max})", by="manager")
            else:
                self.scale_out(vertex, **why)
        elif d.action == "scale-in":
            if n <= policy.min:
                self._log("scale-in-refused", vertex, d.instance, reason=f"at min ({policy.min})", by="manager")
            else:
                self.scale_in(vertex, d.instance, **why)
        elif d.action == "clone":
            # §5.3: a straggler the manager found (or a policy callable named).  One
            # clone pair of a vertex at a time: a second one while a pair runs is
            # refused, not queued (the next interval measures afresh).
            if any(c.vertex == vertex for c in self.clones):
                self._log("clone-refused", vertex, d.instance, reason="a clone pair of this vertex is running",
                          by="manager")
            else:
                self.clone(vertex, d.instance, **why)
        else:
            self._when_idle(vertex, lambda: self._balance(vertex, counts, policy.imbalance, why))

    def _balance(self, vertex: str, counts: list[int], tolerance: float, why: dict) -> None:
        """Even the measured load: move the hottest instance's flow groups to the
        coolest, or, when one group alone is too hot for that, refine the scope."""
        fm = self.flowmaps[vertex]
        if fm.table is None:
            return
        step = balance(fm.table, counts, [a.instance_id for a in self.active(vertex)], tolerance,
                       fm.level + 1 < len(fm.ladder))
        if step is None:
            return
        if step[0] == "refine":
            self._refine(vertex, why)
        else:
            self._move(vertex, step[1], step[2], why)

    def _refine(self, vertex: str, why: dict) -> None:
        """§4.1: the next finer scope of the ladder.  Every flow whose instance
        changes is handed over (Figure 4); objects of the coarser scope become
        shared (R3)."""
        fm = self.flowmaps[vertex]
        a = fm.level
        if a + 1 >= len(fm.ladder):
            self._refuse("refine-refused", vertex, None, f"{fm.scope.name} is the finest scope", why)
            return
        fm._ensure_table()
        table = list(fm.table)
        fm.set_level(a + 1)
        self._share(vertex)
        self._log("refine", vertex, None, scope=fm.scope.name, coarser=fm.ladder[a].name, **why)
        active = [i.instance_id for i in self.active(vertex)]
        why = {**why, "scope": fm.scope.name}
        for old in active:
            for new in active:
                if old != new:
                    self._hand_over(vertex, old, new, _rerouted(table, a, a + 1, old, new), len(table), why)

    def _share(self, vertex: str) -> None:
        """R3 (Table 1, last column): which cross-flow read/write-often objects of
        ``vertex`` have several users; every instance caches exactly the others."""
        clones = {c.clone for c in self.clones if c.vertex == vertex}     # one user with their straggler
        users = [i for i in self.instances[vertex]
                 if (vertex, i.instance_id) not in self.retired and i.instance_id not in clones
                 and (vertex, i.instance_id) not in self.dead]
        shared = self._shared_objects(vertex) if len(users) > 1 else frozenset()
        for inst in users:
            if self.share_on_split:
                inst.set_shared(shared)
            elif shared - inst.shared and inst.client is not None and inst.client.caching:
                self.unshared_skipped += 1

    def _shared_objects(self, vertex: str) -> frozenset[str]:
        return shared_objects(self.chain, self.flowmaps[vertex], vertex)

    # -- handover (§5.1, Figure 4) ------------------------------------------------------
    def _move(self, vertex: str, groups: list[int], to: int, why: dict | None = None) -> None:
        """Reassign flow groups; each old instance hands over (Figure 4)."""
        if not groups:
            return
        fm = self.flowmaps[vertex]
        lost = fm.move(groups, to)
        for old_id, moved in lost.items():
            self._hand_over(vertex, old_id, to, _in_groups(set(moved), fm.level, len(fm.table)), len(moved),
                            why or {})

    def _hand_over(self, vertex: str, old_id: int, to: int, covers: Callable[[PartAt], bool], groups: int,
                   why: dict) -> None:
        old = self.instances[vertex][old_id]
        new = self.instances[vertex][to]
        ladder = self.flowmaps[vertex].ladder
        # (started at the virtual time now: at the end of input the horizon is infinite,
        # and a scale-in deferred until then made chc serve's drain crash on it)
        h = Handover(vertex, old_id, to, covers, groups, None, [], self.now(), why=why)
        # Step 1 (§5.1): the last packet of the moved flows the old instance will
        # process.  In virtual time it takes its queue by arrival (_ready: (vt, clock)),
        # not in the order packets were queued: several upstream instances, one far
        # behind another, queue packets whose arrivals are out of that order.  The
        # last one queued could then be processed before an earlier-queued moved packet,
        # which the old instance would process after its hand-over, taking its flow's
        # state back from the new owner (OwnershipError at the new instance).
        moved = [p for p in old.queue if h.moves(p, ladder)]
        if moved:
            h.last = max(moved, key=_by_time) if self.timed else moved[-1]
        if self.naive_moves:
            if h.last is not None:
                self.naive_skipped += 1
                # To count the races it allows: each moved flow's last packet queued at old.
                lasts = {_direction(p): p for p in old.queue if h.moves(p, ladder)}
                self._naive_watch.append((h, lasts, []))
            h.last = None
        if h.last is None:
            self._complete(h, old, new)
        else:
            self.handovers.append(h)

    def _hold_moved(self, inst: Instance, pkts: list[Packet]) -> list[Packet]:
        """Step 4: the new instance's packets of flows still being handed over wait;
        step 8: those of flows the old instance may still have in service start no
        earlier than it finishes them."""
        key = (inst.vertex, inst.instance_id)
        mine = [h for h in self.handovers if (h.vertex, h.new) == key]
        holds = [h for h in self.holds if (h.vertex, h.new) == key]
        if not mine and not holds:
            return pkts
        ladder = self.flowmaps[inst.vertex].ladder
        keep = []
        for p in pkts:
            for h in holds:
                if p.vt < h.until and h.moves(p, ladder):
                    p.vt = h.until
            for h in mine:
                if h.moves(p, ladder):
                    h.buffer.append(p)
                    break
            else:
                keep.append(p)
        return keep

    def _count_races(self, inst: Instance, pkts: list[Packet]) -> None:
        """``--break naive-move``: the moved packets of directions whose last packet
        the old instance still had queued (what a handover holds back)."""
        for h, lasts, sent in self._naive_watch:
            if (h.vertex, h.new) == (inst.vertex, inst.instance_id):
                sent += [(d, p) for p in pkts if (d := _direction(p)) in lasts]

    @property
    def naive_raced(self) -> int:
        """After the run: moved packets that left the chain before their direction's
        last packet at the old instance (each packet's ``vt`` is then its exit time)."""
        return sum(p.vt < lasts[d].vt for _, lasts, sent in self._naive_watch for d, p in sent)

    def _handed_over(self, inst: Instance, batch: list[Packet]) -> None:
        """After a run of ``inst``: handovers whose ``last`` packet it processed complete."""
        mine = [h for h in self.handovers if h.vertex == inst.vertex and h.old == inst.instance_id]
        if not mine:
            return
        ids = {id(p) for p in batch}
        for h in mine:
            if id(h.last) in ids:
                self.handovers.remove(h)
                self._complete(h, inst, self.instances[h.vertex][h.new])
        self._retry_deferred()

    def _complete(self, h: Handover, old: Instance, new: Instance) -> None:
        """Steps 5-8: the old instance flushes and gives up its per-flow state; the
        new one takes the buffered packets, after the old one's last packet."""
        if not self.naive_moves:
            old.hand_over()
            self._move_timers(h, old, new)
            self._move_records(h, old, new)
        # Step 8: the old instance finishes what it has in service (its `last` packet
        # and anything before it) at `done`; nothing of the moved flows starts earlier.
        done = max(h.last.vt if h.last is not None else 0, old.free_at)
        for p in h.buffer:
            if p.vt < done:
                p.vt = done
        new.queue.extend(h.buffer)
        if done > self.horizon and not self.naive_moves:
            h.until = done
            self.holds.append(h)
        self._log("move", h.vertex, h.new, source=h.old, groups=h.groups, buffered=len(h.buffer),
                  flows_buffered=len({flow_key(p) for p in h.buffer}),
                  clock=h.last.clock if h.last is not None else None,
                  started_vt=h.started, handover_ns=max(0, int(done - h.started)), **h.why)
        if self.store_failover is not None:
            self.store_failover.owners_changed("a handover")
        self._retire_if_done(h.vertex, h.old)

    def _move_timers(self, h: Handover, old: Instance, new: Instance) -> None:
        """The moved flows' timers go with them: they fire by the new instance's
        packets, after the answers it processes in order.  §5.4 with recording on,
        the gift is recorded where it came in the new instance's input (after its
        latest packet), for its failover's replay to receive it there."""
        timers = take_timers(old.ctx, lambda parts: h.covers(parts.__getitem__))
        give_timers(new.ctx, timers)
        if timers and self.recording:
            rec = self.inputs.get((h.vertex, new.instance_id))
            self.gifts.setdefault((h.vertex, new.instance_id), []).append((rec[-1].clock if rec else -1, timers))

    def _move_records(self, h: Handover, old: Instance, new: Instance) -> None:
        """§5.4 with §5.1 the hand-over is recorded where it came in the old instance's
        record (after its latest packet): its failover's replay gives the moved flows'
        timers up there, as the old instance did (the new instance has them: kept, they
        would fire twice).  The moved flows' packets stay in its record: its replay
        recomputes the cross-flow state it cached while it was their vertex's only
        instance from every packet it processed then (left out, the LB's replayed
        counters missed their connections and picked other backends: its failover
        re-applied their updates, ``lb.active`` went negative).  They do not join the
        new instance's: its replay is what it processed itself, in its order
        (interleaving another instance's packets fires its timers by their times,
        before it had them), with the moved flows' state from the store and their
        timers as it got them (:meth:`_move_timers`)."""
        if self.recording:
            rec = self.inputs.get((h.vertex, old.instance_id))
            self.gifts.setdefault((h.vertex, old.instance_id), []).append((rec[-1].clock if rec else -1, h.covers))

    def _retire_if_done(self, vertex: str, i: int) -> None:
        if (vertex, i) not in self.retiring or any(h.vertex == vertex and h.old == i for h in self.handovers):
            return
        inst = self.instances[vertex][i]
        if inst.queue or self.flowmaps[vertex].groups_of(i):
            return                          # still has packets or flow groups of its own
        self.retiring.discard((vertex, i))
        self.retired.add((vertex, i))
        self.retired_why[(vertex, i)] = f"retired by scale-in at packet {sum(r.packets_in for r in self.roots)}"
        if inst.client is not None:
            inst.client.settle()
        fm = self.flowmaps[vertex]
        if len(self.active(vertex)) == 1 and fm.level and not self._busy(vertex):
            fm.set_level(0)                 # one instance: back to the coarsest scope, nothing moves
            self._log("coarsen", vertex, None, scope=fm.scope.name)
        self._share(vertex)                 # R3: a sole user again caches again
        self._log("retired", vertex, i)

    # -- straggler mitigation (§5.3, Figure 5) --------------------------------------------
    def clone(self, vertex: str, instance: int | None = None, for_packets: int = 0, for_us: float = 0,
              *, logical: bool = False, **why: Any) -> None:
        """Start a clone of a straggler of ``vertex`` (``instance``, or the active one
        furthest behind); the pair runs side by side until one is kept (§5.3): at
        least ``for_packets`` more input packets and ``for_us`` of virtual time.  With
        ``logical``, ``instance`` names a logical instance, resolved when the clone starts."""
        def go() -> None:
            i = instance if instance is None or not logical else \
                self._serving_now("clone-refused", vertex, instance, why)
            if i is not None or instance is None:
                self._clone(vertex, i, for_packets, int(for_us * 1000), why)
        self._when_idle(vertex, go)

    def _pair(self, vertex: str, i: int) -> Clone | None:
        for c in self.clones:
            if c.vertex == vertex and i in (c.straggler, c.clone):
                return c
        return None

    def _emulated(self) -> int | None:
        """Updates the store answered from its clock log so far (memory store only)."""
        engine = getattr(self.store, "engine", None)
        return engine.emulated if engine is not None else None

    def _clone(self, vertex: str, instance: int | None, for_packets: int, for_ns: int, why: dict) -> None:
        active = self.active(vertex)
        if instance is None:
            # The straggler: the instance whose queue is furthest behind in virtual time.
            straggler = max(active, key=lambda a: (a.free_at, -a.instance_id))
        else:
            straggler = next((a for a in active if a.instance_id == instance), None)
            if straggler is None:
                self._refuse("clone-refused", vertex, instance, "not an active instance", why)
                return
        s = straggler.instance_id
        if len(self.instances[vertex]) >= MAX_PARALLELISM:
            self._refuse("clone-refused", vertex, s, f"{vertex} has had {MAX_PARALLELISM} instances "
                         "(MAX_PARALLELISM; retired ones count)", why)
            return
        v = self.chain.vertices[vertex]
        # 1. The straggler flushes its cache, as before a handover (§5.1 step 5): the
        #    store then holds every update of every packet it has processed.
        if straggler.client is not None:
            straggler.client.settle()
        i = self.flowmaps[vertex].add_instance()
        # 2. The clone is built under the straggler's identity: per-flow ownership and
        #    §5.4 XOR ids are those of the one logical instance; only its client id (the
        #    §4.3 exactly-once sequence space) is its own.
        excl = straggler.client.exclusive if isinstance(straggler.client, StoreClient) else v.parallelism == 1
        # (A kept clone keeps its straggler's logical id: a clone of it gets that one.)
        logical = straggler.client.instance if isinstance(straggler.client, StoreClient) else s
        clone = Instance(vertex, logical, v.nf, v.config, self.model, self._link(vertex, i), exclusive=excl)
        clone.set_shared(straggler.shared)
        clone.instance_id = i
        self._install(vertex, clone, None)
        pair = Clone(vertex, s, i, sum(r.packets_in for r in self.roots), self.horizon, for_packets, for_ns,
                     why=why)
        # What the straggler has processed leaves it by its free_at; the pair's later
        # output must not overtake that (the sim runs a packet's state changes when it
        # enters service, so those packets are in the state the clone starts from).
        pair.last_vt = pair.backlog_vt = straggler.free_at
        pair.floors = {r.root_id: r.oldest for r in self.roots}
        # 3. The clone starts from the straggler's latest state: both get one private
        #    view (the straggler's cache, and the store's objects as they are now), so
        #    neither reads what the other has already done (core.failover.private_view).
        snap = self.store.objects(vertex) if self.store is not None else {}
        private_view(pair.saved, straggler, snap)
        private_view(pair.saved, clone, {})
        if self.recording:
            self.inputs[(vertex, i)] = deque(self.inputs.get((vertex, s), ()))
            if (vertex, s) in self.gifts:
                self.gifts[(vertex, i)] = list(self.gifts[(vertex, s)])
        for name, h in straggler.objects.items():
            ch = clone.objects[name]
            ch.values = copy.deepcopy(h.values)
            if hasattr(h, "_xor_base"):
                ch._xor_base = h._xor_base  # §5.4 the same update ids as the straggler's
        clone.ctx._timers = list(straggler.ctx._timers)     # timers are state too (same order)
        clone.ctx._timer_seq = straggler.ctx._timer_seq
        if clone.client is not None:
            clone.client.client_id = f"{vertex}/{logical}+clone{i}"
        for hook in self.instance_hooks:
            hook(clone)
        # 4. Replay (§5.3): every logged packet of the straggler's flows.  Those it has
        #    processed are in the state the clone starts from: emulated, not re-run.
        #    Those it has been sent and not processed (in transit) go to the clone,
        #    marked with its id, the last one LAST_REPLAYED.
        if self.track_processed:
            pair.already_processed = sum(1 for c in self.processed.get((vertex, s), ())
                                         if self.roots[root_of(c)].log.get(c) is not None)
        mark = MARK_REPLAY | (i << _MARK_TARGET_SHIFT)
        replay = [p.copy() for p in straggler.queue]
        for p in replay:
            p.marks |= mark
        if replay:
            replay[-1].marks |= MARK_LAST_REPLAYED
        pair.in_transit = len(replay)
        pair.replayed = pair.already_processed + len(replay)
        pair.emulated_at_start = self._emulated()
        clone.queue.extend(replay)
        self.clones.append(pair)
        self._log("clone", vertex, s, clone=i, **self._named(vertex, s),
                  replayed=pair.replayed, already_processed=pair.already_processed,
                  in_transit=len(replay), **why)

    def _merge_pair(self, pair: Clone, v: Any, held: dict[int, tuple], out: list[Packet]) -> None:
        """§5.3 (a): what leaves the logical instance.  Per clock, the copy that finished
        it first (virtual time) is delivered; the other's outputs, drop reports, forks
        and alerts are duplicates and are suppressed."""
        if not any(i in held for i in pair.members()):
            return
        results: dict[int, list] = {}
        for order, side in enumerate(pair.members()):
            if side not in held:
                continue
            batch, produced, finished, forks, _, _ = held[side]
            outs: dict[int, list[Packet]] = {}
            for p in produced:
                outs.setdefault(p.clock, []).append(p)
            fins: dict[int, list] = {}
            for c, vec in finished:
                fins.setdefault(c, []).append((c, vec))
            frk: dict[int, list] = {}
            for c, k in forks:
                frk.setdefault(c, []).append((c, k))
            for p in batch:
                if side == pair.clone and p.marks & MARK_LAST_REPLAYED:
                    pair.replay_done_vt = p.vt
                if p.clock not in results or all(r[2] != side for r in results[p.clock]):
                    results.setdefault(p.clock, []).append(
                        (p.vt, order, side, outs.get(p.clock, []), fins.get(p.clock, []), frk.get(p.clock, [])))
        emitted: list[Packet] = []
        suppress = self.dup_suppression
        for clock, cands in results.items():
            winner = pair.decided.get(clock)
            if winner is None:
                winner = pair.decided[clock] = min(cands, key=lambda r: (r[0], r[1]))[2]
                first = True
            else:
                first = False
            for r in cands:
                if (first and r[2] == winner) or not suppress:
                    emitted += r[3]
                    for fk in r[5]:
                        self._fork(*fk)     # (before the copy's end: the entry stays live)
                    for fin in r[4]:
                        self._done(*fin)
                if not first or r[2] != winner:
                    pair.dup_outputs += len(r[3])
                    pair.dup_drops += len(r[4])
        # A timer is a copy of the packet that armed it (§5.4): its firing is reported
        # after the winner's forks, which count that copy, or the root could delete
        # the packet (live copies 0) before its updates have committed.
        for side in pair.members():
            if side in held:
                self._pair_timers(pair, side, held[side][5])
        insts = self.instances[pair.vertex]
        for side in pair.members():
            if side not in held:
                continue
            ctx = insts[side].ctx
            start = held[side][4]
            keep, seen = [], set()
            for a in ctx.alerts[start:]:
                key = (a.kind, a.host, a.clock)
                if key in pair.alert_keys:
                    pair.dup_alerts += 1
                    if suppress:
                        continue
                keep.append(a)
                seen.add(key)
            pair.alert_keys |= seen
            ctx.alerts[start:] = keep
        if not emitted:
            return
        emitted.sort(key=_by_time if self.timed else _by_clock)
        clear = ~(MARK_REPLAY | MARK_LAST_REPLAYED | (-1 << _MARK_TARGET_SHIFT))
        for p in emitted:
            p.marks &= clear                # the clone's id is cleared once it processed it
            if p.vt < pair.last_vt:
                p.vt = pair.last_vt         # the logical instance's output stays in order
            else:
                pair.last_vt = p.vt
        s = pair.straggler
        self._forward(v, (pair.vertex, s), self.splitters[pair.vertex][s], emitted, out)

    def _pair_timers(self, pair: Clone, side: int, fired: list[tuple[int, int, int]]) -> None:
        """Both copies fire the same timers in the same order (one input sequence): the
        k-th firing of a clock's timer is reported once, by the copy that gets there
        first, the other's is a duplicate (unless suppression is off)."""
        for entry in fired:
            clock = entry[0]
            seen = pair.timers_seen[(side, clock)] = pair.timers_seen.get((side, clock), 0) + 1
            if seen > pair.timers_reported.get(clock, 0) or not self.dup_suppression:
                pair.timers_reported[clock] = max(seen, pair.timers_reported.get(clock, 0))
                self._timers_fired([entry])

    def _resolve_clones(self, final: bool = False) -> None:
        """Keep one copy of each pair once the clone has caught up (it processed its
        replay), ``for_packets`` more input packets have come and ``for_ns`` of virtual
        time has passed; at the end of input in any case.  The copy that finishes its
        work first is kept."""
        now = sum(r.packets_in for r in self.roots)
        for pair in list(self.clones):
            caught = pair.in_transit == 0 or pair.replay_done_vt is not None
            if final or (caught and now - pair.started_packet >= pair.for_packets
                         and self.horizon - pair.started_vt >= pair.for_ns):
                insts = self.instances[pair.vertex]
                self._keep(pair, insts[pair.clone].free_at <= insts[pair.straggler].free_at)

    def _keep(self, pair: Clone, keep_clone: bool) -> None:
        vertex = pair.vertex
        insts = self.instances[vertex]
        s, c = insts[pair.straggler], insts[pair.clone]
        kept, gone = (c, s) if keep_clone else (s, c)
        self.clones.remove(pair)
        # The slower copy stops: its queue and timers are duplicates of the kept one's.
        gone.queue.clear()
        gone.ctx._timers = []
        shared_view(pair.saved, gone)
        self.inputs.pop((vertex, gone.instance_id), None)
        self.gifts.pop((vertex, gone.instance_id), None)
        if gone.client is None:
            for h in gone.objects.values():
                h.values.clear()           # model T: the kept copy holds the same state
        if keep_clone:
            # Its flow groups belong to the clone now, as after a handover (§5.1): the
            # per-flow state is already owned by the one logical instance.  What the
            # pair (or the straggler before it) has in service leaves by last_vt; the
            # clone's next packets must not overtake it (one FIFO logical instance, as
            # §5.1 step 8 keeps a moved flow in order).
            if c.free_at < pair.last_vt:
                c.free_at = pair.last_vt
            fm = self.flowmaps[vertex]
            fm.move(fm.groups_of(s.instance_id), c.instance_id)
            self._serve(vertex, s.instance_id, c.instance_id)
            self._move_processed(vertex, s.instance_id, c.instance_id)
            # The clone's queue holds copies that came over the straggler's data links.
            self._take_links(vertex, s.instance_id, c.instance_id)
        self.retired.add((vertex, gone.instance_id))
        self.retired_why[(vertex, gone.instance_id)] = "retired as the slower copy of a clone pair"
        shared_view(pair.saved, kept)
        self._share(vertex)
        emulated = self._emulated()
        updates = None if emulated is None or pair.emulated_at_start is None else emulated - pair.emulated_at_start
        engine = getattr(self.store, "engine", None)
        catch_up = None if pair.replay_done_vt is None else max(0, int(pair.replay_done_vt - pair.started_vt))
        dups = {"outputs": pair.dup_outputs, "drops": pair.dup_drops, "alerts": pair.dup_alerts,
                "updates": updates}
        self._log("clone-resolved", vertex, pair.straggler, clone=pair.clone,
                  kept="clone" if keep_clone else "straggler", kept_instance=kept.instance_id,
                  retired=gone.instance_id, started_packet=pair.started_packet, started_vt=pair.started_vt,
                  replayed=pair.replayed, already_processed=pair.already_processed, in_transit=pair.in_transit,
                  catch_up_ns=catch_up, backlog_ns=max(0, int(pair.backlog_vt - pair.started_vt)),
                  side_by_side_ns=max(0, int(self.now() - pair.started_vt)),
                  **({"duplicates_suppressed": dups} if self.dup_suppression else
                     {"duplicates_delivered": dups,
                      "updates_reapplied": engine.reapplied if engine is not None else None}),
                  **pair.why)
        if self.store_failover is not None:
            self.store_failover.owners_changed("a clone pair's end")
        self._retry_deferred()

    def _move_processed(self, vertex: str, a: int, b: int) -> None:
        seen = self.processed.pop((vertex, a), None)
        if seen:
            self.processed.setdefault((vertex, b), {}).update(seen)

    def _retry_deferred(self) -> None:
        waiting, self.deferred = self.deferred, []
        for vertex, action, failover in waiting:
            self._when_idle(vertex, action, failover)

    def _refuse(self, kind: str, vertex: str, instance: int | None, reason: str, why: dict) -> None:
        """An action refused or ignored, logged with why; the reason it was asked for (a
        vertex manager's decision has one) stays beside it as ``asked``."""
        more = {k: v for k, v in why.items() if k != "reason"}
        if "reason" in why:
            more["asked"] = why["reason"]
        self._log(kind, vertex, instance, reason=reason, **more)

    def _log(self, kind: str, vertex: str, instance: int | None, **more: Any) -> None:
        self.events_log.append({"kind": kind, "vertex": vertex, "instance": instance,
                                "packet": sum(r.packets_in for r in self.roots), "vt": self.now(), **more})

    # -- NF failover (§5.4) ------------------------------------------------------------
    def _record(self, vertex: str, inst: Instance, batch: list[Packet]) -> None:
        """What ``inst`` of ``vertex`` is about to process, as it got it, and what it
        shares meanwhile (R3).  In a deployment this is known outside the instance:
        its upstream keeps what it sent until the root deletes the clock, and its
        successors (or the root, for drops) receive its results in processing order."""
        rec = self.inputs.get((vertex, inst.instance_id))
        if rec is None:
            rec = self.inputs[(vertex, inst.instance_id)] = deque()
        rec.extend([p.copy() for p in batch])
        shared = inst.shared
        modes = self.record_shared
        for p in batch:
            modes[(vertex, p.clock)] = shared

    def crash(self, vertex: str, instance: int, heartbeat_us: float = 20, misses: int = 3, *,
              logical: bool = False, **why: Any) -> None:
        """``vertex[instance]`` stops (fail-stop): its queue, cache, timers and unsent
        updates are gone.  The framework notices ``misses`` heartbeats later and fails
        it over (:meth:`_failover`).  With ``logical``, ``instance`` names a logical
        instance: after a failover, its failover instance crashes."""
        def go() -> None:
            i = self._serving_now("crash-ignored", vertex, instance, why) if logical else instance
            if i is not None:
                self._crash(vertex, i, heartbeat_us, misses, why)
        self._when_idle(vertex, go, failover=False)

    def _crash(self, vertex: str, instance: int, heartbeat_us: float, misses: int, why: dict) -> None:
        if self.store is None:
            raise Unrecoverable(f"{vertex}[{instance}] crashed: in model T its state lived inside it "
                                "(R1 needs an externalized model: EO, EO+C or EO+C+NA)")
        if self.roots[0].log_mode == "off":
            raise Unrecoverable(f"{vertex}[{instance}] crashed with the packet log off: nothing to replay")
        if self.log_lost:
            raise Unrecoverable(f"{vertex}[{instance}] crashed after a root lost its local packet log: the "
                                "packets it would replay are forgotten (Table 3: root and NF failures need "
                                "the store-backed log, packet_log: store)")
        if not any(a.instance_id == instance for a in self.active(vertex)) or (vertex, instance) in self.dead:
            self._refuse("crash-ignored", vertex, instance, "not an active instance", why)
            return
        f = Failure(vertex, instance, *self._failure_vt(heartbeat_us, misses), sum(r.packets_in for r in self.roots),
                    why)
        self.dead.add((vertex, instance))
        self.failures.append(f)
        self._log("crash", vertex, instance, detect_vt=f.detect_vt, **self._named(vertex, instance), **why)

    def _failure_vt(self, heartbeat_us: float, misses: int) -> tuple[float, int]:
        """A crash now: when it happens and when it is noticed.  The last heartbeat came at
        the latest multiple of the period; the failure is noticed when ``misses`` periods
        have passed without one.  At the end of input (the horizon infinite: a crash that
        waited for a hand-over, or a root's for the store's failover, made chc serve's
        drain raise OverflowError) it happens when the input ended, or later on the
        network's clock, and is failed over in the drain."""
        now = self.horizon if self.horizon != _INF else max(self.input_end_vt, self.net.now)
        period = int(heartbeat_us * 1000)
        last = int(now) // period * period if period else int(now)
        return now, last + misses * period

    def _detect(self) -> None:
        """Failures whose heartbeats are overdue by now are failed over (at top speed
        no virtual time passes: at the next batch)."""
        now = self.horizon
        topspeed = self.pacer.mode == "topspeed"
        for r, f in list(self.root_failures.items()):
            if topspeed or f.detect_vt <= now:
                self._root_failover(r, f)
        due = [f for f in self.failures if topspeed or f.detect_vt <= now]
        for f in due:
            self.failures.remove(f)
            self._failover(f)

    def _failover(self, f: Failure) -> None:
        """§5.4 a failover instance takes over the failed one's processing: under its
        logical identity (per-flow ownership and XOR ids are the logical instance's),
        from the store's state before the oldest packet it still has to account for,
        it re-processes what the failed one processed since (its results are already
        downstream: state only), then what was lost in its queue."""
        vertex, x = f.vertex, f.instance
        failed = self.instances[vertex][x]
        if len(self.instances[vertex]) >= MAX_PARALLELISM:
            raise Unrecoverable(f"{vertex}[{x}] crashed and {vertex} has had {MAX_PARALLELISM} instances "
                                "(MAX_PARALLELISM; retired ones count): no room for a failover instance")
        # What the dead instance sent and is still on its way is refused from now on:
        # the clock log would emulate it while its clock is logged, but a copy arriving
        # after the replay re-executed it and the clock was pruned would apply again.
        self.node.fenced.add(f"{vertex}[{x}]")
        unapplied = self._unapplied(failed)
        timers = len(failed.ctx._timers)
        processed = list(self.inputs.pop((vertex, x), ()))
        gifts = self.gifts.pop((vertex, x), [])
        lost = list(failed.queue)
        failed.queue.clear()
        undeleted = 0
        sink = not self.chain.vertices[vertex].successors and not self.chain.vertices[vertex].offpath
        if not self.delete_before_output and sink:
            # --break delete-after-output: the last NF's latest outputs left before their
            # delete requests; a crash in between leaves them logged as never processed.
            out = self._last_out.get((vertex, x), set())
            cut = len(processed)
            while cut and processed[cut - 1].clock in out:
                cut -= 1
            undeleted = len(processed) - cut
            lost = processed[cut:] + lost
            processed = processed[:cut]
        v = self.chain.vertices[vertex]
        i = self.flowmaps[vertex].add_instance()
        logical = failed.client.instance
        new = Instance(vertex, logical, v.nf, v.config, self.model, self._link(vertex, i),
                       exclusive=failed.client.exclusive)
        new.set_shared(failed.shared)
        new.instance_id = i
        self._install(vertex, new, self.serving[vertex].index(x) if x in self.serving[vertex] else None)
        new.client.client_id = f"{vertex}/{logical}+failover{i}"     # its own exactly-once sequence
        for hook in self.instance_hooks:
            hook(new)
        fm = self.flowmaps[vertex]
        fm.move(fm.groups_of(x), i)
        self._serve(vertex, x, i)
        self._move_processed(vertex, x, i)
        self._take_links(vertex, x, i)
        self.retired.add((vertex, x))
        self.retired_why[(vertex, x)] = f"failed over to instance {i}"
        start = f.detect_vt
        new.free_at = start
        self.links[(vertex, i)].t = start
        engine = getattr(self.store, "engine", None)
        emulated0 = engine.emulated if engine is not None else 0
        applied0 = engine.ops_applied if engine is not None else 0
        other = given = taken = 0
        if self.replay_on_failover:
            if self.store_failover is not None:
                self.store_failover.check_replay(f"{vertex}[{x}]", processed,
                                                 {n for n, h in new.objects.items() if type(h) is CachedObject})
            other, given, taken = self._catch_up(new, processed, gifts)
            for p in lost:
                if p.vt < start:
                    p.vt = start
            new.queue.extend(lost)
        caught_up = new.free_at
        if failed.free_at > new.free_at:
            # Packets the failed instance took into service before the crash left it at
            # their finishing times (on the wire); the failover instance's outputs
            # come after them, or a flow's next packet would overtake its last one.
            new.free_at = failed.free_at
        # What reaches the failover instance from now on starts no earlier than what
        # it replays (each flow stays in order, as §5.1 step 8 keeps a moved one).
        # (Held even when `until` is before the horizon: a failover detected at a batch's
        # start routes that batch's packets here, and those that reached the dead
        # instance's vertex before `until` must not overtake a lost packet of their
        # flow, whose time was moved up to the detection.  The next step drops the
        # hold once nothing can arrive before it.)
        until = max([new.free_at] + [p.vt for p in lost])
        self.holds.append(Handover(vertex, x, i, _everything, 0, None, [], self.horizon, until))
        if self.recording:
            self.inputs[(vertex, i)] = deque(processed)
            if gifts:
                self.gifts[(vertex, i)] = gifts
        self._share(vertex)
        self._log("failover", vertex, x, failover_instance=i, **self._named(vertex, i),
                  crashed_vt=f.crashed_vt, detected_vt=f.detect_vt,
                  detect_ns=int(f.detect_vt - f.crashed_vt), crashed_packet=f.crashed_packet,
                  replayed=len(processed) if self.replay_on_failover else 0,
                  replayed_sharing_otherwise=other, moved_timers_replayed=given,
                  timers_moved_away=taken,
                  lost_in_queue=len(lost), updates_lost_in_flight=unapplied, timers_pending=timers,
                  caught_up_vt=caught_up,
                  recovery_ns=int(caught_up - f.crashed_vt),
                  updates_emulated=(engine.emulated - emulated0) if engine is not None else None,
                  ops_applied_during_replay=(engine.ops_applied - applied0) if engine is not None else None,
                  replay=self.replay_on_failover,
                  **({} if self.delete_before_output else {"output_before_delete": undeleted}), **f.why)
        if self.store_failover is not None:
            self.store_failover.owners_changed("an NF failover")

    def _unapplied(self, failed: Instance) -> int | None:
        """Updates the failed instance had sent or queued that the store never applied
        (lost with it: the replay re-executes them); None when the store cannot tell."""
        engine = getattr(self.store, "engine", None)
        if engine is None:
            return None
        n = 0
        for op in failed.client.unacked + failed.client.pending:
            log = engine.clock_log.get(op.key, {})
            tags = op.args[0].tags if op.code == "incr_many" else [op.tag] if op.tag is not None else []
            n += sum(t not in log for t in tags)
        return n

    def _prune_gifts(self) -> None:
        """A moved timer whose packet is no longer logged has ended (its packet stays
        logged while it is armed): never replayed again.  A hand-over before every
        replayed packet (-1) gives up only moved timers given before it: with none,
        it has nothing to take."""
        roots = self.roots
        for key, gifts in list(self.gifts.items()):
            kept: list = []
            for after, timers in gifts:
                if callable(timers):
                    if after != -1 or kept:
                        kept.append((after, timers))
                    continue
                timers = [t for t in timers if roots[root_of(t[7])].log.get(t[7]) is not None]
                if timers:
                    kept.append((after, timers))
            if kept:
                self.gifts[key] = kept
            else:
                del self.gifts[key]

    def _catch_up(self, new: Instance, processed: list[Packet],
                  gifts: list[tuple[int, Any]]) -> tuple[int, int, int]:
        """Re-process, from the store's state before them, the packets the failed instance
        processed since the oldest one still logged, in its order.  Its updates the store
        has are emulated from the clock log; the ones lost with it are applied now.
        Outputs, drops, forks, timers' ends and alerts were all reported by the failed
        instance: only the state is rebuilt.

        R3: each run of packets sharing what it was processed sharing: a packet run
        while a counter was shared, replayed after a scale-in made it exclusive, would
        recompute from a private copy without the other instance's changes (the LB
        picked another backend: ``scale-crash.yaml`` seeds 302, 331, 360).  §5.1 the
        timers moved flows brought it (``gifts``) are given where they came, between
        its packets, and its hand-overs take the moved flows' timers where they came
        (:meth:`_move_records`).  Returns how many packets it replayed sharing other
        objects than the vertex does now, how many moved timers it gave and how many
        it gave up."""
        final = new.shared
        modes = self.record_shared
        n = len(processed)
        # §5.1 a gift came after the packet its instance had processed last (by clock):
        # it is given right after that packet in the replay, which is in processing
        # order, not clock order.  (Before the first later clock, it came too early when
        # upstream instances far apart in time fed this one out of clock order: the
        # replay's later packets fired the timer, as one the failed instance had fired,
        # and its packet was never done: scale-crash.yaml at pps 3000, seed 23.)  A
        # packet no longer in the record (done and pruned): the old rule.  A hand-over
        # after such a packet came before every replayed one.  (A stable sort: what
        # came at one place is given in its order.)
        at = {p.clock: i for i, p in enumerate(processed)}
        gifts = sorted(((at[a] + 1 if a in at else 0 if callable(timers)
                         else next((i for i, p in enumerate(processed) if p.clock > a), n),
                         timers) for a, timers in gifts), key=lambda g: g[0])
        g = start = other = given = taken = 0
        while True:
            while g < len(gifts) and gifts[g][0] <= start:
                covers = gifts[g][1]
                if callable(covers):
                    taken += len(take_timers(new.ctx, lambda parts, covers=covers: covers(parts.__getitem__)))
                elif self.replay_moved_timers:
                    give_timers(new.ctx, gifts[g][1])
                    given += len(gifts[g][1])
                else:
                    self.gifts_dropped += len(gifts[g][1])
                g += 1
            if start == n:
                break
            shared = modes.get((new.vertex, processed[start].clock), final)
            until = gifts[g][0] if g < len(gifts) else n
            end = start + 1
            while end < min(n, until) \
                    and modes.get((new.vertex, processed[end].clock), final) == shared:
                end += 1
            if shared != final:
                other += end - start
            new.set_shared(shared if self.replay_as_processed else final)
            self._replay_run(new, processed[start:end])
            start = end
        new.set_shared(final)
        return other, given, taken

    def _replay_run(self, new: Instance, processed: list[Packet]) -> None:
        saved: dict = {}
        snap = self.store.objects_at(new.vertex, {p.clock for p in processed})
        private_view(saved, new, snap)
        alerts_from = len(new.ctx.alerts)
        # The failed instance counted these packets (and their drops and NF errors).
        counts = (new.packets_in, new.packets_out, new.dropped, new.nf_errors)
        # Its reads of shared objects get what the failed instance read (the store's read log).
        link = self.links.get((new.vertex, new.instance_id))
        if link is not None:
            self.node.replaying[link.name] = {}
        if self.store_failover is not None:
            self.store_failover.replaying(new, True)
        try:
            new.run([p.copy() for p in processed])
        finally:
            if link is not None:
                self.node.replaying.pop(link.name, None)
            if self.store_failover is not None:
                self.store_failover.replaying(new, False)
        new.finished.clear()
        new.forks.clear()
        new.fired.clear()
        del new.ctx.alerts[alerts_from:]
        new.packets_in, new.packets_out, new.dropped, new.nf_errors = counts
        shared_view(saved, new)

    def _take_links(self, vertex: str, a: int, b: int) -> None:
        """Instance ``b`` takes over the data links into and out of ``a``: what comes next
        over them does not overtake what came before (FIFO, as §5.1 step 8 keeps a moved
        flow in order).  Out of: a clone pair's output left over the straggler's links;
        a kept clone's next output of the same flows must not arrive before it."""
        last = self.net._data_last
        for (src, vname, i), t in list(last.items()):
            if vname == vertex and i == a:
                key = (src, vertex, b)
            elif src == (vertex, a):
                key = ((vertex, b), vname, i)
            else:
                continue
            last[key] = max(last.get(key, 0), t)

    # -- root failover (§5.4; clocks: §7.2 footnote 5) ------------------------------------
    def restart_root(self, root_id: int = 0) -> Root:
        """Replace a root by a fresh one: its clock resumes from the store (last
        persisted + n); its packet log is the store's (``store`` log) or lost
        (``local``).  The flow allocation lives in the vertices' flow maps (the
        downstream instances'), which its splitters use as the old ones did."""
        old = self.roots[root_id]
        persisted = self.meta_store.execute([_get(clock_key(root_id))])[0]
        new = Root(root_id, self.chain.policies, persist_every=old.persist_every,
                   resume_from=persisted, log_mode=old.log_mode, log_limit=old.log_limit)
        if new.log_mode == "store":
            new.restore(self.meta_store.objects("root"))
        elif old.log:
            self.log_lost = True
        new.observer, new.xor_check, new.live_check = old.observer, old.xor_check, old.live_check
        for counter in ("packets_in", "malformed", "non_ip", "dropped", "bypassed", "logged", "deleted",
                        "dropped_overflow", "xor_skipped"):
            setattr(new, counter, getattr(old, counter))    # the run's statistics, not the root's state
        self.roots[root_id] = new
        return new

    def crash_root(self, root_id: int, heartbeat_us: float = 20, misses: int = 3, **why: Any) -> None:
        """Root ``root_id`` stops: its clock counter and, with a ``local`` log, its
        packet log are gone.  Input for it and reports to it are held until a new
        root takes over (§5.4: the framework buffers input during root recovery).
        While the store is down the crash waits until it is back, as an NF
        instance's does (a sequential failure; the other order is Table 3's
        unrecoverable case)."""
        if self.store_failover is not None and self.store_failover.busy():
            # (at the next batch boundary, as scenario crashes are: a root stopped
            # inside the store's recovery would lose what it had not yet written)
            self.root_crashes_waiting.append((root_id, heartbeat_us, misses, why))
            return
        self._crash_root(root_id, heartbeat_us, misses, why)

    def _waiting_root_crashes(self) -> None:
        if self.store_failover is None or not self.store_failover.busy():
            waiting, self.root_crashes_waiting = self.root_crashes_waiting, []
            for args in waiting:
                self._crash_root(*args)

    def _crash_root(self, root_id: int, heartbeat_us: float, misses: int, why: dict) -> None:
        if root_id in self.root_failures:
            self._refuse("crash-ignored", "root", root_id, "already failed", why)
            return
        f = self.root_failures[root_id] = Failure("root", root_id, *self._failure_vt(heartbeat_us, misses),
                                                  sum(r.packets_in for r in self.roots), why)
        self.root_input.setdefault(root_id, [])
        self.root_inbox.setdefault(root_id, [])
        self._log("crash", "root", root_id, detect_vt=f.detect_vt, log=self.roots[root_id].log_mode, **why)

    def _root_input(self, root_id: int, part: list[Packet]) -> list[Packet]:
        """A failed root's input is held; once a new root is up it comes first."""
        if root_id in self.root_failures:
            self.root_input[root_id].extend(part)
            return []
        part = self.root_input.pop(root_id, []) + part
        up = self.root_up_at.pop(root_id, None)
        if up is not None:
            held = [p for p in part if p.vt < up]
            for p in held:
                p.vt = up                   # arrived while no root was up: held until now
            self._root_events.pop(root_id)["input_buffered"] = len(held)
        return part

    def _root_failover(self, root_id: int, f: Failure) -> None:
        old_entries = len(self.roots[root_id].log)
        new = self.restart_root(root_id)
        del self.root_failures[root_id]
        # The reports sent meanwhile reach the new root, in order (senders resend
        # until the root acknowledges).
        inbox = self.root_inbox.pop(root_id, [])
        for kind, clock, value in inbox:
            getattr(new, kind)(clock, value)
        self.root_up_at[root_id] = f.detect_vt
        self._log("root-failover", "root", root_id, crashed_vt=f.crashed_vt, detected_vt=f.detect_vt,
                  detect_ns=int(f.detect_vt - f.crashed_vt), log=new.log_mode,
                  log_entries=len(new.log), log_entries_lost=old_entries if new.log_mode == "local" else 0,
                  clock_resumed=new.next_seq, root_packets=new.packets_in, input_buffered=0,
                  reports_held=len(inbox), **f.why)
        self._root_events[root_id] = self.events_log[-1]     # input_buffered: once it has entered

    def _oldest_in_chain(self, root_id: int, oldest: int) -> int:
        """The oldest clock of root ``root_id`` anything in the chain still holds: a queued
        or buffered packet, a pending timer, an update not yet acknowledged."""
        clocks = [p.clock for i in self._all_instances() for p in i.queue]
        clocks += [p.clock for h in self.handovers for p in h.buffer]
        clocks += [t[7] for i in self._all_instances() for t in i.ctx._timers]
        for i in self._all_instances():
            if isinstance(i.client, StoreClient):
                clocks += [op.tag[0] for op in i.client.unacked + i.client.pending if op.tag is not None]
        clocks = [c for c in clocks if root_of(c) == root_id]
        return min(clocks) if clocks and min(clocks) < oldest else oldest

    # -- results -----------------------------------------------------------------------
    def logical_state(self) -> dict[str, dict]:
        if self.store is None:
            return {name: merge_states([i.state() for i in insts]) for name, insts in self.instances.items()}
        return {name: self._stored_state(name) for name in self.instances}

    def _stored_state(self, vertex: str) -> dict[str, dict]:
        """A vertex's logical state read back from the store (non-initial values)."""
        return stored_state(self.instances[vertex][0].objects, self.store.objects(vertex))

    def store_stats(self) -> dict:
        clients = [i.client for i in self._all_instances() if isinstance(i.client, StoreClient)]
        return {
            "backend": self.store.describe() if self.store is not None else "local",
            "model": self.model,
            "blocking_ops": sum(c.blocking_ops for c in clients),
            "nonblocking_ops": sum(c.nonblocking_ops for c in clients),
            "cache_hits": sum(c.cache_hits for c in clients),
            "round_trips": self.store.round_trips if self.store is not None else 0,
        }

    def log_stats(self) -> dict:
        out = {"logged": 0, "deleted": 0, "remaining": 0, "dropped_overflow": 0}
        for r in self.roots:
            for k, v in r.stats().items():
                if k in out:
                    out[k] += v
        out["mode"] = self.roots[0].log_mode
        out["roots"] = len(self.roots)
        return out

    def alerts(self) -> list[dict]:
        found = [a for i in self._all_instances() for a in i.ctx.alerts]
        found.sort(key=lambda a: (a.clock, a.vertex, a.kind, a.host))
        return [a.as_json() for a in found]

    def _sizes(self, vertex: str) -> list[int]:
        """Active instances of ``vertex`` at the start and after each change."""
        n = self.chain.vertices[vertex].parallelism
        sizes = [n]
        for e in self.events_log:
            if e["vertex"] == vertex and e["kind"] in ("scale-out", "retired"):
                n += 1 if e["kind"] == "scale-out" else -1
                sizes.append(n)
        return sizes

    def summary(self) -> Summary:
        roots = self.roots
        s = Summary(chain=self.chain.name, model=self.model,
                    packets_in=sum(r.packets_in for r in roots), packets_out=self.packets_out,
                    malformed=sum(r.malformed for r in roots), non_ip=sum(r.non_ip for r in roots),
                    bypassed=sum(r.bypassed for r in roots), elapsed_s=self.elapsed)
        s.alerts = self.alerts()
        dropped = sum(r.dropped for r in roots)
        for name, insts in self.instances.items():
            v = self.chain.vertices[name]
            stats = {
                "nf": v.nf.kind,
                "instances": len(insts) - sum((name, i.instance_id) in self.retired for i in insts),
                "retired": sum((name, i.instance_id) in self.retired for i in insts),
                "offpath": v.offpath,
                "packets_in": sum(i.packets_in for i in insts),
                "packets_out": sum(i.packets_out for i in insts),
                "dropped": sum(i.dropped for i in insts),
                "nf_errors": sum(i.nf_errors for i in insts),
                "alerts": sum(len(i.ctx.alerts) for i in insts),
                "scope": self.flowmaps[name].scope.name,
                "sizes": self._sizes(name),
            }
            m = next((m for m in self.managers if m.vertex == name), None)
            if m is not None and m.last_load is not None:
                stats["imbalance"] = round(m.last_load.imbalance, 3)
                stats["peak_imbalance"] = round(m.peak_imbalance, 3)
            s.vertices[name] = stats
            s.nf_errors += stats["nf_errors"]
            s.errors += [i.first_error for i in insts if i.first_error]
            if not v.offpath:
                dropped += stats["dropped"]
        s.dropped = dropped
        s.digest_state(self.logical_state())
        refused = next((i.client.unstorable for i in self._all_instances()
                        if isinstance(i.client, StoreClient) and i.client.unstorable is not None), None)
        if refused is not None:             # (the store never held what the NF wrote)
            s.no_state(unstorable_error(refused[0].key, refused[1], getattr(self.store, "name", "")))
        s.events = list(self.events_log)
        s.store = self.store_stats()
        s.log = self.log_stats()
        return s


def classify(chain: Chain, fork: Callable[[int, int], None], admitted: list[Packet]) -> dict[str, list[Packet]]:
    """Traffic classes (entry ``match``): each packet to every entry that takes it,
    ``other`` when none does; a packet taken by several is copied (``fork(clock, copies)``
    to its root: the sim's goes through the runtime, which the checker counts copies at)."""
    vs = chain.vertices
    entries = chain.entries
    other = next(n for n in entries if vs[n].match == "other")
    routed: dict[str, list[Packet]] = {n: [] for n in entries}
    for pkt in admitted:
        hits = [n for n in entries if n != other and vs[n].accepts(pkt)]
        if not hits:
            routed[other].append(pkt)
            continue
        routed[hits[0]].append(pkt)
        for n in hits[1:]:
            routed[n].append(_copy(pkt))
        if len(hits) > 1:
            fork(pkt.clock, len(hits) - 1)
    return routed


def root_index(pkt: Packet, roots: int) -> int:
    """§4.1: roots take disjoint traffic; both directions of a host pair go to one."""
    a, b = pkt.src, pkt.dst
    return crc32(a + b if a <= b else b + a) % roots


def split_targets(chain: Chain, targets: list[str]) -> list[str]:
    """The vertices an upstream feeding ``targets`` has a splitter for: those and their input taps."""
    vs = chain.vertices
    return targets + [t for d in targets for t in vs[d].taps_in]


def take_timers(ctx: Any, moves: Callable[[tuple], bool]) -> list[tuple]:
    """§5.1 the timers of the flows ``moves`` picks (by the partition fields they were
    armed with), taken out of ``ctx``'s heap; a timer armed outside a flow stays."""
    keep, moved = [], []
    for t in ctx._timers:
        (moved if t[5] is not None and moves(t[5]) else keep).append(t)
    if moved:
        heapq.heapify(keep)
        ctx._timers = keep
    return moved


def give_timers(ctx: Any, timers: Iterable[tuple]) -> None:
    """§5.1 timers taken from another instance, armed here in their order."""
    for t in sorted(timers):
        ctx._timer_seq += 1
        heapq.heappush(ctx._timers, (t[0], ctx._timer_seq, *t[2:]))


def shared_objects(chain: Chain, flowmap: FlowMap, vertex: str) -> frozenset[str]:
    """Objects of a coarser scope than the partition's (or another scope of the
    same rank, or global) are reached by several instances (R3)."""
    part = flowmap.scope
    nf = chain.vertices[vertex].nf
    return frozenset(name for name, d in nf.state_objects().items()
                     if not d.scope.per_flow and d.access is Access.READ_WRITE
                     and d.scope is not part and d.scope.rank >= part.rank)


def stored_state(handles: dict[str, Any], stored: dict[str, dict]) -> dict[str, dict]:
    """A vertex's logical state from what the store holds of it: per object (its
    instance's ``handles``), the keys whose value differs from the declared initial one."""
    out: dict[str, dict] = {}
    for name, handle in handles.items():
        init = handle._init                   # the declared initial value
        if isinstance(init, deque):
            init = list(init)
        entries = {k: v for k, v in stored.get(name, {}).items() if not _same(v, init)}
        if entries:
            out[name] = entries
    return out


class NoSuchInstance(ValueError):
    """A scenario event names an instance the vertex does not have (yet)."""


def _due(event: Any, pkt: Packet) -> bool:
    if event.at_packet is not None:
        return pkt.index >= event.at_packet
    return pkt.vt >= event.at_time_ns


# -- scenario event actions --------------------------------------------------------------

def _instance_targets(rt: SimRuntime, event: Any) -> list[Instance]:
    return rt.targets(event.target)


def _set_delay(rt: SimRuntime, event: Any, spec: str | None) -> None:
    """``slow`` and ``speed-up``: the instances named (``vertex[i]``: the one serving
    logical instance ``i`` now); one that cannot take it is logged refused with why, as
    proc logs it (the delay of a retired instance changed nothing, silently)."""
    if not _refused_on_its_instance(rt, event):
        rt.set_delay(event.target, spec)


def _refused_on_its_instance(rt: SimRuntime, event: Any) -> bool:
    """Whether ``event`` names one logical instance (``vertex[i]``) that cannot take it now
    (retired by a scale-in, crashed and not failed over yet); if so it is logged
    ``<action>-refused`` with the reason, which ``chc check`` prints (a slow or a store-link
    fault on a retired instance changed nothing, and said nothing)."""
    i = _index(event)
    reason = None if i is None else rt.unavailable(event.vertex, i)
    if reason is not None:
        rt._log(f"{event.action}-refused", event.vertex, rt.resolve(event.vertex, i), reason=reason,
                by="scenario", target=event.target)
    return reason is not None


def _link_targets(rt: SimRuntime, event: Any) -> list[str | None]:
    """Store links named by an event: every link (no target, or ``*``), a vertex's, one instance's."""
    if event.target in (None, "*"):
        return [None]
    if rt.node is None:
        raise ValueError("store-link faults need an externalized model (EO, EO+C, EO+C+NA)")
    return [f"{i.vertex}[{i.instance_id}]" for i in rt.targets(event.target)]


def _crash_target(rt: SimRuntime, event: Any) -> str:
    target = event.target or ""
    if event.params.get("copy") == "clone":
        # (vertex[i] names logical instance i, a pair's straggler or kept copy; the sim has no
        # way to name the clone of a running pair apart)
        raise ValueError(f"crash of {target}: copy: clone (the second process of a clone pair) is the proc "
                         "runtime's")
    name, _, rest = target.partition("[")
    if target == "store" or name == "root":
        if name == "root" and rest.rstrip("]") not in {str(r) for r in range(len(rt.roots))}:
            raise ValueError(f"{target!r}: the chain has roots 0-{len(rt.roots) - 1}")
        return target
    rt.targets(target)
    return target


def _nf_target(target: str | None) -> bool:
    """A crash of an NF instance (not of a root or of the store)."""
    return bool(target) and target != "store" and not str(target).startswith("root")


def _crash(rt: SimRuntime, event: Any) -> None:
    target = _crash_target(rt, event)
    at = f"packet {event.at_packet}" if event.at_packet is not None else f"{event.at_time_ns / 1000:g} µs"
    if target == "store":
        _crash_store(rt, event, at)
        return
    p = event.params
    if target.startswith("root"):
        rt.crash_root(int(target.partition("[")[2].rstrip("]")), p.get("heartbeat_us", 20), p.get("misses", 3),
                      by="scenario")
        return
    vertex, _, rest = target.partition("[")
    why = {"by": "scenario"}
    if rest:
        # a logical instance: its failover instance after a failover (the module's theory)
        rt.crash(vertex, int(rest.rstrip("]")), p.get("heartbeat_us", 20), p.get("misses", 3), logical=True,
                 **why, target=target)
        return
    # A vertex only: the seed's pick among its active instances (when it fires).
    def pick() -> None:
        active = rt.in_logical_order(vertex)
        if not active:                  # (its only instance is down, awaiting failover)
            rt._refuse("crash-ignored", vertex, None, "no active instance", why)
            return
        rt._crash(vertex, active[int(p.get("pick", 0)) % len(active)].instance_id,
                  p.get("heartbeat_us", 20), p.get("misses", 3), why)
    rt._when_idle(vertex, pick, failover=False)


def _crash_store(rt: SimRuntime, event: Any, at: str) -> None:
    """§5.4 store instance failover (chc.runtime.storefailover): the memory store only."""
    p = event.params
    if rt.store is None:
        rt._log("crash-ignored", "store", None, reason="model T keeps NF state in the instances", by="scenario")
        return
    if rt.store_failover is None:
        raise Unrecoverable(f"store crashed at {at}: store failover needs the memory store or one Redis server "
                            f"(one store instance with TS and checkpoints); this run's store is "
                            f"{rt.store.describe()}" + (f" ({rt.store.n} servers)" if getattr(rt.store, "n", 1) > 1
                                                        else ""))
    why = {"by": "scenario", **({"together": True} if p.get("together") else {})}
    rt.store_failover.crash(p.get("heartbeat_us", 20), p.get("misses", 3), why)


def _fault(kind: str) -> Callable[[SimRuntime, Any], None]:
    def apply(rt: SimRuntime, event: Any) -> None:
        extra = int(float(event.params.get("by_us", 0)) * 1000)
        if _refused_on_its_instance(rt, event):
            return
        for endpoint in _link_targets(rt, event):
            rt.net.scripted.append([kind, endpoint, int(event.params.get("count", 1)), extra])
    return apply


def _partition(rt: SimRuntime, event: Any) -> None:
    start = event.at_time_ns if event.at_time_ns is not None else rt.horizon
    until = int(start + float(event.params["duration_us"]) * 1000)
    if _refused_on_its_instance(rt, event):
        return
    for endpoint in _link_targets(rt, event):
        rt.net.partitions.append((endpoint, until))


@dataclasses.dataclass(frozen=True)
class Action:
    """A scenario event: ``check`` validates its parameters, ``resolve`` its target
    against a runtime, ``apply`` performs it."""

    check: Callable[[Any], None]
    apply: Callable[[SimRuntime, Any], None]
    resolve: Callable[[SimRuntime, Any], Any] = _instance_targets


def _check_delay(event: Any, required: bool) -> None:
    if not event.target:
        raise ValueError("needs a target: vertex or vertex[i]")
    unknown = set(event.params) - {"delay"}
    if unknown:
        raise ValueError(f"unknown parameter {sorted(unknown)[0]!r} (known: delay)")
    spec = event.params.get("delay")
    if spec is None:
        if required:
            raise ValueError("needs delay: DIST (e.g. uniform:200:400, µs)")
        return
    Delay(str(spec), 0, "check")


def _check_params(event: Any, allowed: dict[str, Callable[[Any], bool]], required: tuple = ()) -> None:
    for name in required:
        if name not in event.params:
            raise ValueError(f"needs {name}")
    for name, value in event.params.items():
        ok = allowed.get(name)
        if ok is None:
            raise ValueError(f"unknown parameter {name!r} (known: {', '.join(allowed) or 'none'})")
        if not ok(value):
            raise ValueError(f"{name}: {_WANTED.get(name, 'a positive number')}, got {value!r}")


_WANTED = {"fraction": "a number above 0 and at most 1", "from": "an instance index (0, 1, ...)",
           "to": "an instance index (0, 1, ...)", "pick": "an index (0, 1, ...)"}


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _check_fault(event: Any) -> None:
    _check_params(event, {"count": lambda v: _positive(v) and isinstance(v, int)})


def _check_delay_fault(event: Any) -> None:
    _check_params(event, {"count": lambda v: _positive(v) and isinstance(v, int), "by_us": _positive},
                  ("by_us",))


def _check_crash(event: Any) -> None:
    if not event.target:
        raise ValueError("needs a target: vertex[i], vertex (an instance the seed picks), root[i] or store")
    allowed = {"heartbeat_us": _positive, "misses": _is_index, "pick": _is_index,
               "copy": lambda v: v in ("straggler", "clone")}
    if event.target == "store":         # §5.4: the failover store starts from the latest checkpoint
        allowed = {"heartbeat_us": _positive, "misses": _is_index, "checkpoint_ms": _positive,
                   "together": lambda v: isinstance(v, bool)}
    _check_params(event, allowed)


def _vertex(rt: SimRuntime, event: Any) -> str:
    name = event.vertex
    if name not in rt.instances:
        raise ValueError(f"unknown vertex {name!r} in {event.target!r} (vertices: {', '.join(rt.instances)})")
    return name


def _index(event: Any) -> int | None:
    _, bracket, rest = (event.target or "").partition("[")
    return int(rest.rstrip("]")) if bracket else None


def _check_scale(event: Any) -> None:
    if not event.target:
        raise ValueError("needs a target: vertex (or vertex[i] for scale-in)")
    name, bracket, rest = event.target.partition("[")
    if bracket and not rest.rstrip("]").isdigit():
        raise ValueError(f"target {event.target!r}: expected vertex or vertex[i]")
    if bracket and event.action == "scale-out":
        # (the index was ignored: the new instance's number is the vertex's next one)
        raise ValueError(f"target {event.target!r}: a scale-out adds an instance: target the vertex ({name})")
    _check_params(event, {})


def _is_index(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_move(event: Any) -> None:
    if not event.target or "[" in event.target:
        raise ValueError("needs a target: the vertex whose flow groups move")
    if event.params.get("from") == event.params.get("to") is not None:
        raise ValueError(f"from and to are both {event.params['to']}: a move between two instances")
    fraction = {"fraction": lambda v: _positive(v) and v <= 1}
    if "pick" in event.params:          # drawn by the seed (scenario ``random:``)
        _check_params(event, {"pick": _is_index, **fraction}, ("pick",))
    else:
        _check_params(event, {"from": _is_index, "to": _is_index, **fraction}, ("from", "to"))


def _check_refine(event: Any) -> None:
    if not event.target or "[" in event.target:
        raise ValueError("needs a target: the vertex to partition on a finer scope")
    _check_params(event, {})


def _check_clone(event: Any) -> None:
    if not event.target:
        raise ValueError("needs a target: vertex (its instance furthest behind) or vertex[i]")
    _, bracket, rest = event.target.partition("[")
    if bracket and not rest.rstrip("]").isdigit():
        raise ValueError(f"target {event.target!r}: expected vertex or vertex[i]")
    for name, value in event.params.items():
        if name == "for_us":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"for_us: virtual microseconds (>= 0), got {value!r}")
        elif name != "for_packets":
            raise ValueError(f"unknown parameter {name!r} (known: for_packets, for_us)")
        elif not _is_index(value):
            raise ValueError(f"for_packets: a whole number of input packets (>= 0), got {value!r}")


def _apply_move(rt: SimRuntime, event: Any) -> None:
    vertex = _vertex(rt, event)
    if "pick" in event.params:
        # A seed-drawn move: two of the instances active now.
        active = [a.instance_id for a in rt.in_logical_order(vertex)]
        if len(active) < 2:
            rt._refuse("move-refused", vertex, None, f"{'one' if active else 'no'} active instance", {"by": "scenario"})
            return
        k = event.params["pick"]
        src = active[k % len(active)]
        to = active[(k % len(active) + 1 + (k // len(active)) % (len(active) - 1)) % len(active)]
        rt.move(vertex, src, to, float(event.params.get("fraction", 0.5)))
        return
    src, to = event.params["from"], event.params["to"]
    n = len(rt.serving[vertex])
    if src >= n or to >= n:
        # (how many there are depends on the run so far: refused and logged, as the proc
        # runtime does, not a failure in the middle of a run or a serve)
        rt._refuse("move-refused", vertex, src, f"instances are 0-{n - 1}, got from {src} to {to}", {})
        return
    # from and to name logical instances, as on proc: after a failover, its instance
    rt.move(vertex, src, to, float(event.params.get("fraction", 0.5)), logical=True)


def _apply_scale_in(rt: SimRuntime, event: Any) -> None:
    vertex, i = _vertex(rt, event), _index(event)
    if i is None:
        rt.scale_in(vertex)
        return
    rt.resolve(vertex, i)               # (NoSuchInstance now: refused as not there when it fired)
    rt.scale_in(vertex, i, logical=True, target=event.target)


def _apply_clone(rt: SimRuntime, event: Any) -> None:
    vertex, i = _vertex(rt, event), _index(event)
    if i is not None:
        rt.resolve(vertex, i)
    rt.clone(vertex, i, int(event.params.get("for_packets", 0)), float(event.params.get("for_us", 0)),
             logical=i is not None, **({"target": event.target} if i is not None else {}))


ACTIONS: dict[str, Action] = {
    # Slow an instance down: a new per-packet delay distribution from here on.
    "slow": Action(lambda e: _check_delay(e, True),
                   lambda rt, e: _set_delay(rt, e, str(e.params["delay"]))),
    # Speed it up again: a faster distribution, or none (instant processing).
    "speed-up": Action(lambda e: _check_delay(e, False),
                       lambda rt, e: _set_delay(rt, e, e.params.get("delay"))),
    # Store-link faults of one instance (target), a vertex's or every link (no target):
    # lose, duplicate or hold back (by_us) the next `count` messages (requests or replies).
    "drop": Action(_check_fault, _fault("drop"), _link_targets),
    "duplicate": Action(_check_fault, _fault("duplicate"), _link_targets),
    "delay": Action(_check_delay_fault, _fault("delay"), _link_targets),
    # Cut store links for duration_us of virtual time: every message sent meanwhile is lost.
    "partition": Action(lambda e: _check_params(e, {"duration_us": _positive}, ("duration_us",)),
                        _partition, _link_targets),
    # Elasticity (§5.1): add an instance of a vertex (flow groups rebalanced), retire
    # one (vertex: its newest active instance; vertex[i]: that one), move a fraction
    # of one instance's flow groups to another.
    "scale-out": Action(_check_scale, lambda rt, e: rt.scale_out(_vertex(rt, e)), _vertex),
    "scale-in": Action(_check_scale, _apply_scale_in, _vertex),
    "move": Action(_check_move, _apply_move, _vertex),
    # §4.1: partition a vertex on the next finer scope of its NF (flows handed over).
    "refine": Action(_check_refine, lambda rt, e: rt.refine(_vertex(rt, e)), _vertex),
    # Operator control (runtime/control.py): the LB's backends and weights, changed at
    # the store, whose callbacks refresh every instance's cached copy (Table 1).
    "set-backends": Action(control.check, control.apply, control.resolve),
    # §5.3 straggler mitigation: clone vertex[i] (or the vertex's instance furthest
    # behind); the pair runs side by side, the faster copy is kept once the clone has
    # processed its replay, for_packets more input packets came and for_us of virtual
    # time passed (defaults 0).
    "clone": Action(_check_clone, _apply_clone),
    # Crash an instance, a root or the store: its memory is lost (recovery: R6).
    "crash": Action(_check_crash, _crash, _crash_target),
}


def _copy(p: Packet) -> Packet:
    c = p.copy()
    c.xor = 0            # §5.4: each update id travels on exactly one copy
    return c


def _get(key: Any) -> Op:
    return Op("get", key)


def _same(a: Any, b: Any) -> bool:
    """Equal as state values: tuples and lists with equal items are the same."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


__all__ = ["SimRuntime", "DEFAULT_BATCH", "CLOCK_BITS", "Unrecoverable"]
