"""Store instance failover in the sim runtime (§5.4, Figure 7): memory store or one Redis server.

Theory of operation
-------------------
:mod:`chc.core.recovery` is the sans-I/O half: a :class:`RecoverableEngine`
that keeps TS and takes checkpoints, a write-ahead log in front of each
instance's store connection, and :func:`recover`.  This module wires it into
:class:`~chc.runtime.sim.SimRuntime` when a scenario can crash the store
(``do: crash, target: store``); otherwise nothing of it exists (no cost).

Checkpoints.  The store's engine becomes a :class:`RecoverableEngine`; the
runtime takes a checkpoint every ``checkpoint_ms`` of virtual time (at the first
batch boundary past each multiple) and keeps the latest one outside the store.
The store first sends the commit reports it owes (so every update before the
checkpoint is reported), and every write-ahead log is then truncated to it.

Write-ahead logs.  Every instance's client gets one (:func:`attach_wal`),
instances added later too (scale-out, clone, NF failover: ``instance_hooks``).
A checkpoint is also taken at every change of per-flow owner (a handover, a
clone pair's end, an NF failover: :meth:`StoreFailover.owners_changed`), so each
per-flow object has one writer since the latest checkpoint and its logged
updates roll forward in that writer's order.

The root is a client of the store too (its persisted clock, a store-kept packet
log): its writes since the checkpoint are kept at the root (:class:`RootLog`)
and written again once a failover store is up.

A crash.  It waits while a move or clone runs, or an NF instance or root is
down and not yet failed over (a scenario's failures come one after another),
unless the event says ``together`` (Table 3's correlated failure).  The store
node stops answering: requests and their retransmissions are lost
(``Network.store_down``), root writes wait.  The failure is noticed ``misses``
heartbeats (``heartbeat_us``) later, a timer on the network's clock, so a client
blocked on a reply sees the store come back; replies the failed store sent that
are still on the wire then are void (the node's ``epoch``).  Recovery then reads
every live instance's log (:meth:`InstanceLog.from_client`),
builds the failover store with :func:`recover` and swaps it into the
``MemoryStore`` after the time restoring takes (:data:`RESTORE_NS_PER_OBJECT`
per object restored, re-read or re-executed: a model, not a measurement).
Clients resend what is un-acknowledged as after any lost request; the failover
store knows their sequence marks, so nothing is applied twice.

Commit reports (§5.4 XOR check).  A re-executed update's report may repeat one
the failed store already sent, and a repeat cancels itself in the root's XOR.
The root keeps the (clock, id) of the reports it received since the latest
checkpoint; of the re-executed updates' reports it takes those it has not
received (the failed store applied the update after the checkpoint and died
before reporting it, or never got it).  Updates of the checkpoint itself were
reported before it was taken.

The COE checker follows the store's history: after a recovery that history is
the failed store's up to the checkpoint, then the re-executed updates (those of
an object with one writer since the checkpoint stay where they were: the
failover store applied them in the same order) and what came after.  The recorder gets a
``recover`` step (:meth:`chc.coe.Serialization.recover`) and the re-executed
steps, each with the result the instance observed, if it observed one, so a
recovery that contradicts what an instance saw diverges.

The read log (§5.4 with §5.3's emulation, :mod:`chc.core.failover`).  While an NF
instance can crash too, the store logs its answers to reads of shared objects so
that a failover instance's replay reads what the failed one read; that log is in
the store's memory and dies with it.  Each instance's write-ahead log keeps a copy
of its own part (a failover instance takes its part over from the store when its
replay starts), and the failover store's log is rebuilt from the live instances'
copies.

On Redis (one server) the same recovery runs on the engine's format:
:mod:`chc.backends.redis_checkpoint` reads the namespace into each checkpoint
(``chc_batch`` keeps TS once :meth:`RedisStore.keep_ts` is on), deletes it at the
crash, and writes the recovered engine back when the failover store is up.

Unrecoverable (Table 3) and limits: several Redis servers or a cluster; an NF
instance or a root that crashed and was not failed over yet when the store
failed (its log, or its persisted clock and packet log, are gone with it);
an NF failover after a store failover whose replay reaches a Case 2 covered
update of an object it caches (no pre-image: :meth:`StoreFailover.check_replay`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..backends import redis_checkpoint
from ..backends.memory import MemoryStore
from ..backends.redis import RedisStore
from ..core.client import StoreLost
from ..core.failover import merge_reads, prune_reads
from ..core.recovery import (
    Checkpoint,
    InstanceLog,
    RecoverableEngine,
    Recovery,
    RecoveryError,
    Stamped,
    WALBackend,
    WriteAheadLog,
    attach_wal,
    recover,
)
from ..core.recovery import Unrecoverable as LostState
from ..core.store import Op, StoreEngine
from .errors import Unrecoverable

if TYPE_CHECKING:
    from ..core.instance import Instance
    from .sim import SimRuntime

DEFAULT_CHECKPOINT_MS = 100.0
# Restoring one object (from the checkpoint or a cache) or re-executing one logged
# update at the failover store: a store op, about a microsecond (§7.1 model).
RESTORE_NS_PER_OBJECT = 1000


def recoverable(store: Any) -> bool:
    """Whether store failover can run on ``store``: the memory store, or a Redis store of
    one server (with several, each would be a store instance with its own TS)."""
    return isinstance(store, MemoryStore) or (isinstance(store, RedisStore) and store.n == 1
                                              and not store.cluster)


def recoverable_url(url: str) -> bool:
    """:func:`recoverable` of the store at ``url`` (before it is opened)."""
    return url == "memory" or (url.startswith(("redis://", "rediss://"))
                               and len([u for u in url.split(",") if u.strip()]) == 1)


def store_crashes(events: Iterable[Any]) -> list[Any]:
    return [e for e in events if e.action == "crash" and e.target == "store"]


class RootLog:
    """The root's store connection with its own write-ahead log (the root is a
    client of the store too): the writes since the latest checkpoint, written
    again to a failover store.  Replies of a recoverable store lose their TS."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.since_checkpoint: list[Op] = []

    def execute(self, ops: list[Op]) -> list[Any]:
        results = self.store.execute(ops)
        self.since_checkpoint += [op for op in ops if op.code != "get"]
        return [r.result if r.__class__ is Stamped else r for r in results]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@dataclasses.dataclass
class Outage:
    """A store crash, until the failover store is up."""

    crashed_vt: float
    detect_vt: int
    crashed_packet: int
    why: dict
    checkpoint: Checkpoint
    checkpoint_vt: float


class StoreFailover:
    """Checkpoints, write-ahead logs and failover of the sim's one store instance."""

    def __init__(self, rt: SimRuntime, interval_ms: float) -> None:
        self.rt = rt
        self.store: MemoryStore = rt.store
        self.interval_ns = int(interval_ms * 1_000_000)
        self.no_wal = False                 # --break no-wal: checkpoint and caches only
        self.redis = not isinstance(self.store, MemoryStore)
        self.checkpoints = 0
        if self.redis:
            self.per_flow = redis_checkpoint.per_flow_objects(rt.chain)
            self.store.keep_ts()
        else:
            old = self.store.engine
            engine = RecoverableEngine()
            # What the store holds so far (declared objects) and its switches go over as they are.
            engine.__dict__.update({k: v for k, v in old.__dict__.items() if k in StoreEngine().__dict__})
            self.store.engine = engine
        self.root_log = RootLog(rt.meta_store)
        rt.meta_store = self.root_log
        for inst in rt._all_instances():
            self._attach(inst)
        rt.instance_hooks.insert(0, self._attach)   # before others see the client
        rt.step_hooks.append(self._tick)
        self.reported: set[tuple[int, int]] = set()     # commit reports the roots got since the checkpoint
        # Called with what recovery starts from (checkpoint, logs, users) just before
        # recover(): the Figure 14 benchmark times recover() on copies of them.
        self.recovery_hooks: list[Callable[[Checkpoint, list[InstanceLog], set[str]], None]] = []
        self.outage: Outage | None = None
        self.waiting: list[tuple[float, int, dict]] = []    # crashes held back while a move or clone runs
        self.checkpoint_vt: float = 0
        self.position = 0
        self.owner_checkpoints = 0          # checkpoints taken at a change of per-flow owner
        # Per object, clocks whose pre-image no failover store had (Case 2 covered
        # updates): an NF failover's replay must not start before them.
        self.unknown_before: dict[Any, set[int]] = {}
        self.checkpoint = self._take()
        self.next_vt = self.interval_ns

    @classmethod
    def install(cls, rt: SimRuntime) -> StoreFailover | None:
        """Store failover for ``rt`` if a scenario event can crash its store: the memory
        store, or one Redis server (:mod:`chc.backends.redis_checkpoint`)."""
        crashes = store_crashes(rt.events)
        if not crashes or rt.store is None or not recoverable(rt.store):
            return None
        interval = min(float(e.params.get("checkpoint_ms", DEFAULT_CHECKPOINT_MS)) for e in crashes)
        return cls(rt, interval)

    def _attach(self, inst: Instance) -> None:
        c = inst.client
        if c is None or isinstance(c.backend, WALBackend):
            return
        link = c.backend
        wal = attach_wal(c)
        if self.rt.node.read_log is not None:
            # §5.4 the instance's copy of its part of the store's read log.
            wal.shared_reads = {}
            wal.read_clock = lambda: link.clock_of() if link.clock_of is not None else None

    def replaying(self, inst: Instance, on: bool) -> None:
        """A failover instance's replay starts (``on``) or ends.  It takes its logical
        instance's part of the read log over from the store (the store answers its
        replay from there) and logs nothing of the replay itself, as the store does not."""
        wal = inst.client.backend.wal if inst.client is not None else None
        if wal is None or wal.shared_reads is None:
            return
        wal.replaying = on
        if on:
            mine = (inst.vertex, inst.client.instance)
            wal.shared_reads.update({slot: list(answers) for slot, answers in self.rt.node.read_log.items()
                                     if slot[:2] == mine})

    def prune_reads(self, done: Callable[[int], bool]) -> None:
        """The instances' copies of the read log forget what the store's forgets."""
        for _, wal in self._wals():
            prune_reads(wal.shared_reads, done)

    def _wals(self) -> list[tuple[Instance, WriteAheadLog]]:
        """The live instances' logs (a failed-over instance's died with it)."""
        dead = self.rt.dead
        return [(i, i.client.backend.wal) for i in self.rt._all_instances()
                if i.client is not None and isinstance(i.client.backend, WALBackend)
                and (i.vertex, i.instance_id) not in dead]

    def owners_changed(self, why: str) -> None:
        """Per-flow objects changed owner (a handover, a clone pair's end, an NF
        failover): a checkpoint now, so that since the latest checkpoint each
        per-flow object has one writer, whose log orders its updates exactly."""
        if self.outage is not None:
            raise RuntimeError(f"{why} while the store is down (moves, clones and failovers wait for it)")
        self.checkpoint = self._take()
        self.owner_checkpoints += 1

    # -- checkpoints ---------------------------------------------------------------------------
    def _tick(self, rt: SimRuntime) -> None:
        if self.waiting:
            ready = [w for w in self.waiting if not self._held(w[2])]
            self.waiting = [w for w in self.waiting if self._held(w[2])]
            for args in ready:
                self._crash(*args)
        if self.outage is None and self.next_vt <= rt.horizon < float("inf"):
            self.checkpoint = self._take()
            self.next_vt = (int(rt.horizon) // self.interval_ns + 1) * self.interval_ns

    def _take(self) -> Checkpoint:
        """A checkpoint of the store now: its owed commit reports sent first, the
        logs truncated after (the checkpoint is durable: kept outside the store)."""
        rt = self.rt
        rt._send_commits(rt.node.commits())
        if self.redis:
            self.checkpoints += 1
            ckpt = redis_checkpoint.checkpoint(self.store, self.checkpoints, self.per_flow)
        else:
            ckpt = self.store.engine.checkpoint()
        now = rt.now()
        self.checkpoint_vt = now
        self.position = rt.node.record.position if rt.node.record is not None else 0
        self.reported = set()
        self.root_log.since_checkpoint = []
        for _, wal in self._wals():
            wal.truncate(ckpt)
        return ckpt

    def reports(self, commits: list[tuple[int, int]]) -> None:
        """Commit reports on their way to the roots (what the roots will have got)."""
        self.reported.update(commits)

    # -- the crash -------------------------------------------------------------------------------
    def crash(self, heartbeat_us: float, misses: int, why: dict) -> None:
        rt = self.rt
        if self.outage is not None:
            rt._refuse("crash-ignored", "store", None, "the store is already down", why)
            return
        if self._held(why):
            self.waiting.append((heartbeat_us, misses, why))
            return
        self._crash(heartbeat_us, misses, why)

    def _held(self, why: dict) -> bool:
        """A crash waits while a handover or a clone pair runs (as an NF crash waits for
        its vertex's move: an outage does not hold one half done), and, unless it is
        one of Table 3's failures ``together`` with another component, while an NF
        instance or a root is down and not yet failed over: a scenario's failures are
        then one after another, each recovered before the next (as an NF or root crash
        waits while the store is down)."""
        rt = self.rt
        if rt.handovers or rt.clones:
            return True
        return not why.get("together") and bool(rt.failures or rt.root_failures)

    def _crash(self, heartbeat_us: float, misses: int, why: dict) -> None:
        rt = self.rt
        at = f"packet {sum(r.packets_in for r in rt.roots)}"
        if rt.failures:
            f = rt.failures[0]
            raise StoreUnrecoverable(f"the store crashed at {at} while {f.vertex}[{f.instance}] (crashed at "
                                     f"{f.crashed_vt / 1000:g} µs) was not yet failed over: they failed together "
                                     "(Table 3), and its write-ahead log is gone with it")
        if rt.root_failures:
            r, f = next(iter(rt.root_failures.items()))
            raise StoreUnrecoverable(f"the store crashed at {at} while root[{r}] (crashed at "
                                     f"{f.crashed_vt / 1000:g} µs) was not yet failed over: they failed together "
                                     "(Table 3), and the root's persisted clock, its packet log and its writes "
                                     "since the checkpoint were in the two of them")
        period = int(heartbeat_us * 1000)
        now = rt.now()
        last = int(now) // period * period if period else int(now)
        o = self.outage = Outage(now, last + misses * period, sum(r.packets_in for r in rt.roots), why,
                                 self.checkpoint, self.checkpoint_vt)
        rt.node.crashed = True              # requests in flight and to come are lost
        if rt.node.read_log:
            rt.node.read_log.clear()        # the store's read log is in its memory (rebuilt in _up)
        rt.net.store_down = True
        self.store.down = True              # the root's writes wait too
        if self.redis:
            redis_checkpoint.wipe(self.store)   # the server lost the namespace
        rt.net.at(o.detect_vt, self._detected)
        rt._log("store-crash", "store", None, crashed_vt=o.crashed_vt, detect_vt=o.detect_vt,
                checkpoint=o.checkpoint.number, checkpoint_age_ns=int(o.crashed_vt - o.checkpoint_vt), **why)

    def check_replay(self, instance: str, processed: list[Any], cached: set[str]) -> None:
        """An NF failover after a store failover: the replay fills the failover
        instance's cached objects (``cached``: their names) with the store's pre-images
        of its packets' clocks.  The failover store has them for what it restored or
        re-executed, not for a Case 2 covered update (its effect came with a read's
        value): a replay reaching one would start from the wrong state, so it is
        refused (docs/recovery.md, open limits)."""
        if not self.unknown_before or not processed:
            return
        vertex = instance.partition("[")[0]
        clocks = {p.clock for p in processed}
        for key, unknown in self.unknown_before.items():
            if key.vertex == vertex and key.obj in cached and not clocks.isdisjoint(unknown):
                first = min(p.index for p in processed if p.clock in unknown)
                raise Unrecoverable(f"{instance} failed over after the store failed over: its replay reaches "
                                    f"packet {first}, whose update of {key.obj}[{key.key!r}] the failover store "
                                    "took from a read's value (§5.4 Case 2) and has no pre-image for")

    def busy(self) -> bool:
        """Moves, clones and NF failures wait while the store is down."""
        return self.outage is not None

    # -- recovery -------------------------------------------------------------------------------
    def _detected(self) -> None:
        """Missed heartbeats: build the failover store from the checkpoint, the
        instances' logs and caches (§5.4)."""
        o = self.outage
        rt = self.rt
        rt.node.epoch += 1                  # replies of the failed store still on the wire are void
        logs: list[InstanceLog] = []
        wal_updates = 0
        marks = o.checkpoint.applied_seq
        for inst, wal in self._wals():
            c = inst.client
            logs.append(InstanceLog.from_client(c))
            mark = marks.get(c.client_id, 0)
            wal_updates += sum(op.seq > mark for op in wal.updates + wal.flow_updates)
        users = {log.client_id for log in logs}
        # A failed-over instance's client: its failover instance replayed its work and a
        # checkpoint was taken after (owners_changed), so nothing of it is lost here.
        retired = {i.client.client_id for i in rt._all_instances()
                   if i.client is not None and (i.vertex, i.instance_id) in rt.dead}
        for hook in self.recovery_hooks:
            hook(o.checkpoint, logs, users)
        try:
            rec = recover(o.checkpoint, logs, users=users, retired=retired, no_wal=self.no_wal)
        except LostState as exc:
            raise StoreUnrecoverable(f"the store crashed at packet {o.crashed_packet}: {exc}") from None
        except RecoveryError as exc:
            raise StoreUnrecoverable(f"the store crashed at packet {o.crashed_packet} and its logs cannot be "
                                 f"rolled forward: {exc}") from None
        # What the failover store reports: re-executed updates, unless the roots already
        # got the report.
        commits = [c for c in rec.commits if c not in self.reported]
        observed = {log.client_id: log.wal.results for log in logs}
        redo = [(op, observed.get(client, {}).get(op.seq, UNSEEN), (client, op.seq) in rec.in_place)
                for client, op in rec.re_executed]
        restored = len(o.checkpoint.data) + len(rec.re_executed)
        up = o.detect_vt + restored * RESTORE_NS_PER_OBJECT
        rt.net.at(up, lambda: self._up(rec, commits, redo, wal_updates, up))

    def _up(self, rec: Recovery, commits: list[tuple[int, int]], redo: list[tuple[Op, Any, bool]],
            wal_updates: int, up: int) -> None:
        """The failover store takes over: swapped into the store, the root's writes
        since the checkpoint again, the owed commit reports sent."""
        o = self.outage
        rt = self.rt
        engine = rec.engine
        if self.redis:
            redis_checkpoint.restore(self.store, engine)
        else:
            old = self.store.engine
            for name in ("dedup", "emulate", "preimages", "customs", "emulated", "reapplied"):
                setattr(engine, name, getattr(old, name))   # switches, code and counters, not state
            self.store.engine = engine
        self.store.down = False
        rt.node.crashed = False
        reads = 0
        if rt.node.read_log is not None:
            # §5.4 the read log, from the live instances' copies: a failover instance's
            # replay after this recovery still decides as the failed instance did.
            rt.node.read_log.update(merge_reads(wal.shared_reads for _, wal in self._wals()
                                                if wal.shared_reads is not None))
            reads = len(rt.node.read_log)
        rt.net.store_down = False
        record = rt.node.record
        if record is not None and hasattr(record, "recover"):
            record.recover(self.position, redo)
        for key, clocks in rec.unknown_before.items():
            self.unknown_before.setdefault(key, set()).update(clocks)
        # The root is alive: its writes since the checkpoint go to the failover store.
        root_writes = list(self.root_log.since_checkpoint)
        if root_writes:
            self.store.execute(root_writes)
        rt._send_commits(commits)
        self.outage = None
        rt._log("store-recovered", "store", None, crashed_vt=o.crashed_vt, detected_vt=o.detect_vt,
                detect_ns=int(o.detect_vt - o.crashed_vt), checkpoint=o.checkpoint.number,
                checkpoint_age_ns=int(o.crashed_vt - o.checkpoint_vt), re_executed=len(rec.re_executed),
                wal_updates=wal_updates, reads_selected=len(rec.selected), per_flow_rolled=rec.per_flow,
                commits_reported=len(commits), root_writes=len(root_writes), read_log_rebuilt=reads,
                up_vt=up, recovery_ns=int(up - o.crashed_vt), restore_ns=int(up - o.detect_vt),
                wal=not self.no_wal, **o.why)
        self.checkpoint = self._take()      # a fresh start: the logs need not go back further
        rt._retry_deferred()


UNSEEN = object()        # an update whose result no instance saw


class StoreUnrecoverable(Unrecoverable, StoreLost):
    """An :class:`~chc.runtime.errors.Unrecoverable` that is also a
    :class:`~chc.core.client.StoreLost`: raised where a client waits for the store
    (a failure detector's timer runs there), it must stop the run, not be taken
    for an error of the NF that happened to be waiting."""



__all__ = ["DEFAULT_CHECKPOINT_MS", "UNSEEN", "RootLog", "StoreFailover", "store_crashes"]
