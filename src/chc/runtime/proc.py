"""The ``proc`` runtime: every root and NF instance in its own OS process.

Theory of operation
-------------------
:class:`ProcRuntime` is the coordinator, the process ``chc run --runtime proc``
runs in.  It starts the run's processes, feeds them the capture, and collects
what they counted; the chain itself runs in the workers
(:mod:`chc.runtime.procworker`), around the same sans-I/O state machines as
the ``sim`` runtime, with ZeroMQ between them (:mod:`chc.runtime.wire`).

Processes.  One per root and one per NF instance; with no ``--store``, one more
serves the store engine (:mod:`chc.runtime.storeserver`, the paper's
datastore); with ``--store redis://...`` (or ``redis-cluster://``) each process
has its own connection to Redis, except with recovery on or under ``chc check``:
then the store server runs in front of Redis, every op's one way there (§5.4:
NF failover's read log and fences, the checker's one order; docs/proc.md, "In
front of Redis").  They are started with multiprocessing's ``forkserver`` method: a
clean server process (started once, with chc imported) forks each worker, so a
worker starts in milliseconds without inheriting the coordinator's sockets,
threads or open capture, which ``fork`` from the coordinator would copy and
``spawn`` would avoid only at a fresh interpreter's start-up per worker.  All
endpoints are ``ipc://`` sockets in a private temporary directory (mode 0700),
removed at the end.

No orphans.  The coordinator watches every worker's sentinel, and its
heartbeats (:mod:`chc.runtime.procio`: one silent for ``misses`` of them is
killed, so a hung worker ends too): a worker that dies before it has reported
stops the run (:class:`ProcFailure`, one line,
exit code 1), and every other worker is killed; except, with recovery on
(``--kill``, ``--failover``), an NF instance's, a root's or the store server's
process, which is failed over (§5.4, :meth:`ProcRuntime._failover`,
:mod:`chc.runtime.procstore`, docs/proc.md).  For a root's,
the coordinator keeps the input it sent each root from the oldest clock the
root still logs (the root says its floor after every batch), which the failover
root stamps again (:meth:`ProcRuntime._fail_over_root`).  Failovers run one at a
time: a death seen during one waits for it, except a dead feeder of the
instance being failed over, which goes first; control messages to a failover
wait until it is connected.
Every worker watches the coordinator's sentinel and exits when it dies,
however it dies (also by SIGKILL).  On the way out, normal or not, whatever
still runs is killed and reaped, and the forkserver stopped (:func:`stop_forkserver`).

End of input, Ctrl-C and SIGTERM.  At the end of the feed (its end, ``-c``, or
the first Ctrl-C or SIGTERM, which end the feed) the coordinator sends the
roots end-of-input, which follows the last packets through the chain; each
instance then fires its timers, settles its store client and reports; the
roots apply every report and pull the last commit reports; the coordinator
reads the final state from the store and stops the store server.  A second
Ctrl-C aborts (the workers are killed).  Workers and the forkserver ignore
SIGINT and SIGTERM: a terminal's Ctrl-C, systemd's or timeout(1)'s SIGTERM
reach the whole process group, and they are the coordinator's to handle.

Scaling (§5.1): a scenario's scale-out, scale-in, move and refine events are
the coordinator's :class:`~chc.runtime.procscale.Scaler`'s, tied to a barrier
clock (docs/proc.md, "Scaling"), also with ``--kill`` and ``--failover`` (one
at a time: a kill waits for a change's go-ahead); a scale-out's new instance is
a warm spare process started ahead when one is up.  A scenario's crash events
are kills (SIGKILL) at their input packets, as ``--kill``.  Clones (§5.3) are
:meth:`ProcRuntime.clone`; a copy of a pair that dies leaves the other to go on
(:meth:`ProcRuntime._copy_died`, §5.3 with §5.4); slow-downs (``slow``, ``speed-up``) make a process really
sleep per packet (:meth:`ProcRuntime.slow`).  Operator controls (``set-backends``,
§4.3) wait for a quiet chain and write the store as client ``operator``
(:mod:`chc.runtime.proccontrol`).  Not yet: network
faults and the scenario's ``delays:`` (the sim's virtual time);
failover of the Redis server itself.  :mod:`chc.runtime.procray` places the same
workers in Ray actors, through ``_address`` and ``_context``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import pickle
import re
import shutil
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import zmq

from .. import ctrlc
from ..backends.redis import redact
from ..backends.redis_checkpoint import per_flow_objects
from ..core.client import StoreLost
from ..core.recovery import RecoveryError
from ..core.recovery import Unrecoverable as LostState
from ..core.state import LocalObject
from ..core.store import CLOCK_BITS
from ..nf import Alert
from ..packet import Packet
from ..spec import Chain
from ..summary import Summary, merge_states
from . import procboot, proccontrol, procmanager, procscale, procstore, procworker, storeserver
from .errors import ProcFailure
from .pacing import Pacer
from .procio import Guard
from .procworker import (
    COORDINATOR,
    INF,
    ROOT_COUNTERS,
    STORE,
    Plan,
    input_name,
    instance_name,
    managed_vertex,
    manager_name,
    root_name,
)
from .sim import DEFAULT_BATCH, root_index, stored_state
from .storefailover import recoverable_url
from .wire import CLONE, Kind, Mailbox, Marks, dealer, encode, generation_name, logical

log = logging.getLogger("chc.proc")

START_TIMEOUT_S = 60.0          # workers not ready by then: the run fails
STOP_GRACE_S = 2.0              # the workers that reported exit by then, all together, or are killed
KILLED_S = 5.0                  # killed workers reaped by then, all together
SAY_WAIT_S = 0.5                # a stop that waits longer says so
# Imported once by the forkserver, so a forked worker starts with chc loaded.
_ENVIRON = threading.Lock()         # os.environ changed around the forkserver's start; _FORKING
# The runs of this process under way whose workers the forkserver forks (and forkserver_kept
# blocks), whether the first of them started multiprocessing's resource tracker too (it
# starts with the forkserver), and workers of ended runs that were not reaped
_FORKING: dict[str, Any] = {"runs": 0, "tracker": False, "unreaped": []}
PRELOAD = ["chc.runtime.procboot", "chc.cli", "chc.runtime.procworker", "chc.runtime.storeserver"]
REPORT_GRACE_S = 5.0            # a worker that exited 0 has this long to be heard


class ProcRuntime:
    """The coordinator of a ``proc`` run: the interface of :class:`~chc.runtime.sim.SimRuntime`
    that ``chc run`` uses (``run``, ``summary``, ``logical_state``)."""

    name = "proc"           # the summary's runtime
    _abandoned = True       # the run did not finish (yet): _stop kills every worker at once
    _forking = False        # this run counted in _FORKING (its workers forked by the forkserver)

    def __init__(self, chain: Chain, model: str = "T", batch_size: int = DEFAULT_BATCH, store: Any = None, *,
                 store_url: str = "memory", namespace: str = "chc", tls: dict | None = None,
                 log_mode: str = "local", log_limit: int = 0, persist_every: int = 1000,
                 write_out: bool = False, hwm: int = 8, record: bool = False, breaks: tuple[str, ...] = (),
                 break_from: int = 0, kills: Iterable[Kill] = (), failover: bool = False,
                 heartbeat_s: float = 0.5, misses: int = 10, checkpoint_ms: float | None = None,
                 events: Iterable[Any] = (), pacer: Pacer | None = None, spares: bool = True,
                 seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if heartbeat_s < 0 or misses < 1:
            raise ValueError("heartbeats: an interval >= 0 (0: none) and at least 1 miss")
        # §5.4 a scenario's crash events are real kills (SIGKILL) at their input packets
        events, kills = list(events), list(kills)
        grown = {e.vertex for e in events if e.action == "scale-out"}
        crashes = [crash_kill(e, chain, grown) for e in events if e.action == "crash"]
        events = [e for e in events if e.action != "crash"]
        self.kills = sorted([*kills, *crashes], key=lambda k: k.at)
        # §3 a vertex manager process per vertex with a scaling policy (procmanager)
        managed = tuple(name for name, v in chain.vertices.items() if v.scaling is not None)
        # §5.3 clones (scenario events, or a policy's straggler_factor): a clone starts from
        # its straggler's state and takes what the upstreams sent it from the records they
        # keep for failover, so the run keeps them (docs/proc.md, "Clones")
        cloning = [e.target for e in events if e.action == "clone"] + [
            name for name in managed if chain.vertices[name].scaling.straggler_factor is not None]
        if cloning:
            _check_clonable(chain, model, log_mode, cloning[0], type(self).name)
        elif model != "T" and log_mode != "off" and type(self).name == "proc":
            # (a policy callable may decide a clone too; where it cannot, it is refused then)
            cloning = [name for name in managed if chain.vertices[name].scaling.policy is not None]
        # (a vertex manager holds no packet and no state: its death needs no recovery)
        recover = failover or bool(cloning) or any(managed_vertex(k.vertex) is None for k in self.kills)
        if failover or any(managed_vertex(k.vertex) is None for k in self.kills):
            cause = "--kill" if kills else "a scenario's crash" if crashes else "--failover"
            _check_recoverable(chain, model, store_url, log_mode, self.kills, cause)
        # §5.4 a root is failed over when its packet log is its own (rebuilt from the input replayed)
        self.roots_recover = recover and log_mode == "local"
        if any(k.during for k in self.kills) and not events and not managed:
            raise ValueError("--kill VERTEX[I]@change:K: the run makes no scaling changes (it needs a chain with "
                             "a scaling: policy, or scale-out, scale-in, move or refine events: chc check's "
                             "scenario, chc serve --scenario)")
        refused = procscale.refusal(events, chain, model, managed)
        if refused:
            raise ValueError(refused)
        self.chain = chain
        self.model = model
        self.redis = store_url.startswith(("redis://", "rediss://", "redis-cluster://"))
        self.store = store if self.redis else None      # the coordinator's own handle (lease, final state)
        # On Redis, what NF and root failover keep at the store (the read log, pre-image
        # holds, fences) and the checker's record of the serialization live in a store
        # server in front of Redis, the one connection every op goes through (docs/proc.md)
        self.fronted = self.redis and (recover or record)
        # §5.4 store-server failover (chc.runtime.procstore): with recovery on the default store
        if checkpoint_ms is not None and checkpoint_ms <= 0:
            raise ValueError("--checkpoint-ms: the store server's checkpoint interval must be > 0 ms")
        # (not with the packet log in the store: the roots' writes to it since a checkpoint
        # would be lost with the store server; docs/proc.md)
        # (on with --failover or a planned kill of the store server: an NF or root kill alone
        # does not pay for checkpoints and logs)
        store_can_fail = failover or any(k.vertex == STORE_KILL for k in self.kills)
        # (why the store server takes no checkpoints, if it takes none: chc run and serve
        # refuse a --checkpoint-ms that would do nothing, in one line)
        self.no_checkpoints = (
            "the store server takes checkpoints only to fail over, with --failover or --kill store@N "
            "(or a scenario's crash of the store); this run has neither" if not store_can_fail else
            f"the store server is not failed over on {redact(store_url)} (store failover needs the memory store "
            "or one Redis server), so it takes no checkpoints" if not recoverable_url(store_url) else
            "with --packet-log store the store server is not failed over (the roots' writes to that log are "
            "not logged), so it takes no checkpoints" if log_mode != "local" else "")
        checkpoint_s = 0.0 if self.no_checkpoints else (checkpoint_ms or procstore.DEFAULT_CHECKPOINT_MS) / 1000
        self.plan = Plan("", chain, model, batch_size, (), log_mode=log_mode, log_limit=log_limit,
                         persist_every=persist_every, send_out=write_out, hwm=hwm, record=record,
                         breaks=tuple(breaks), break_from=break_from, recover=recover,
                         replay="no-replay" not in breaks, heartbeat_s=heartbeat_s, checkpoint_s=checkpoint_s,
                         managers=managed, clones=bool(cloning))
        self.no_wal = "no-wal" in breaks      # --break no-wal: the failover store is the checkpoint alone
        self.misses = misses
        self.heard: dict[str, float] = {}               # process -> when it last sent anything
        self.hung: dict[str, float] = {}                # process -> how long it had been silent (killed)
        self._next_check = 0.0
        self.serial: list[bytes] = []                   # record: the store server's steps (encoded)
        self._redis_spec = (store_url.split(","), namespace, {k: v for k, v in (tls or {}).items() if v})
        self.procs: dict[str, Any] = {}                 # name -> multiprocessing.Process
        self.reported: dict[str, dict] = {}             # name -> its final counters
        self.ready: set[str] = set()
        self.final_state: dict[str, dict] = {}
        self.store_stats: dict = {}
        self._store_stopping = False
        self.packets_out = 0
        self.elapsed = 0.0
        self.startup_s = 0.0            # of elapsed: until every worker was ready
        self.directory = ""
        self.ctx: zmq.Context | None = None
        # §5.4 NF failover: the process each logical instance runs in now, its generation,
        # the failovers under way, and what the instances counted (their batches' stats).
        self.current: dict[str, str] = {}
        self.generation: dict[str, int] = {}
        self.recovering: dict[str, dict] = {}
        # §5.4 root failover: per root, the input batches sent to it from the oldest clock
        # it logs (number, rows), what it said after each (next clock, counters), the
        # state its failover starts from (first kept batch, next clock, counters), its floor.
        self.kept_input: dict[int, deque] = {r: deque() for r in range(chain.roots)}
        self.ingested: dict[int, dict[int, tuple]] = {r: {} for r in range(chain.roots)}
        self.input_start: dict[int, tuple] = {r: (0, r << CLOCK_BITS, [0] * len(ROOT_COUNTERS))
                                              for r in range(chain.roots)}
        self.root_floor: dict[int, int] = dict.fromkeys(range(chain.roots), -1)
        self.sent_batches: dict[int, int] = dict.fromkeys(range(chain.roots), 0)
        # what each root was told in band that its failover must be told again: end, finish,
        # and an operator control's quiet while its barrier is awaited ([what, body] each)
        self.told: dict[int, list[list]] = {r: [] for r in range(chain.roots)}
        # Deaths seen while a failover is under way wait for it (a wait inside it, say for
        # the store's answer, must not start another); a dead feeder of the instance being
        # failed over goes first, since its hand-over can only come from its failover.
        self._failing = ""              # the process being failed over
        self._deaths: list[tuple[str, Any]] = []
        self._store_up: set[str] = set()               # store server processes that took a checkpoint
        self.fenced: list[str] = []     # failed processes: a failover started later fences them too
        self.bounds: dict[str, int] = {}    # logical instance -> the highest clock its last failover replays
        # §5.3 clone pairs (logical instance -> the pair), clones made per instance, the
        # processes a resolution stopped, each instance's base name (a kept clone's
        # failover is nat.0~1#1: wire.previous), every process's count (its load reports)
        self.pairs: dict[str, dict] = {}
        # (kept copies still reading their private view: a new clone of one, or a scaling
        # change, waits until it has run what the pair had been sent and says so)
        self.unpairing: set[str] = set()
        self.deferred_clones: list[tuple] = []      # (clone's arguments) waiting for an unpairing
        self.clone_count: dict[str, int] = {}
        self.stopped_copies: set[str] = set()
        self.base: dict[str, str] = {}
        self.processes: dict[str, int] = {}
        self.through_of: dict[str, int] = {}       # process -> the highest clock of its counted batches
        self.pairing: dict[str, Any] = {}          # process -> what it said when paired / cloned / teed
        # §5.3 per logical instance, what was counted: clocks up to a mark, alerts by key
        self._count_mark: dict[str, int] = {}
        self._alert_keys: dict[str, set] = {}
        self._out_mark: dict[str, int] = {}
        self.dup = {"outputs": 0, "alerts": 0}     # a pair's duplicates the coordinator saw
        # §5.3 stragglers made by a scenario's slow events: the process -> its delay model
        # (the run's seed draws it, as the sim's), until a speed-up (docs/proc.md, "Slow-downs")
        self.seed = seed
        self.slowed: dict[str, str] = {}
        self.events: list[dict] = []
        # §4.3 operator controls (proccontrol): how many so far, the root's barrier of each,
        # the instances past it (by id; model T's acknowledged values by -id)
        self.controls = 0
        self.quiet_barriers: dict[int, int] = {}
        self.quiet_acks: dict[int, set[str]] = {}
        self.wals: set[str] = set()     # store failover: the processes that handed in their logs
        # --kill: process -> (when, packets fed, the packet the kill named)
        self._killed: dict[str, tuple[float, int, int | str]] = {}
        self._started = False           # every worker ready
        self._bye = False               # the workers were told to go (everything durable before)
        self.stats: dict[str, dict] = {}
        self.issued: list = []          # record + recover: the updates issued, from every batch's stats
        self._seen_stats = Marks()
        self._seen_out = Marks()
        self.fed = 0
        # §5.1 the scenario's scaling events (chc.runtime.procscale); warm spares for the
        # vertices that may scale out (off: each scale-out starts its process then)
        self.spares = spares
        self.scaler = procscale.Scaler(self, events) if events or managed else None
        if self.scaler is not None:
            self.plan.room = procscale.room(chain, events)
        self.decisions: list[list] = []     # §3 the vertex managers' decisions not yet carried out
        self.managers_up: set[str] = set()  # the managers that have been ready (a dead one is started again)
        # scenario events at a time: input arrival by the scenario's pacing (default: the
        # capture's time since its first packet, as the sim's at multiplier 1)
        self.pacer = pacer or Pacer("multiplier", 1)

    # -- the run ---------------------------------------------------------------------------
    def run(self, records: Iterable[tuple[int, bytes]], emit: Callable[[list[Packet]], None] | None = None,
            progress: Callable[[int], None] | None = None) -> None:
        """Run the chain over ``(timestamp ns, frame)`` records (see the module doc)."""
        started = time.perf_counter()
        self.emit = emit
        previous = None
        if hasattr(records, "interrupt") and threading.current_thread() is threading.main_thread():
            # SIGTERM ends the input as Ctrl-C does: the run drains and reports.
            previous = signal.signal(signal.SIGTERM, lambda signum, frame: records.interrupt())
        self._abandoned = True          # (until it finishes: then _stop lets the workers exit)
        try:
            # chc check's Ctrl-C (chc.ctrlc): the first stops the seed at the next wait or
            # batch, the second kills the workers at once
            with ctrlc.polling(functools.partial(self._kill_all, checked=False)):
                self._start()
                self.startup_s = time.perf_counter() - started
                self._feed(records, progress)
                self._finish()
            self._abandoned = False
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self._stop()
            self.elapsed += time.perf_counter() - started

    def _start(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="chc-proc-")      # mode 0700: this user's alone
        plan = self.plan
        plan.directory = self.directory
        self._address(plan)
        served = not self.redis or self.fronted
        plan.store = ("memory", plan.address(STORE)) if served else ("redis", *self._redis_spec)
        self.ctx = zmq.Context()
        roots = [root_name(r) for r in range(self.chain.roots)]
        workers = self._workers()
        managers = [manager_name(v) for v in plan.managers]
        self.box = Mailbox(self.ctx, plan.address(COORDINATOR), "coordinator",
                           {w.encode() for w in [*workers, STORE, *managers]})
        # A worker that fails while it is built says why on a new connection under its own
        # name, while the one its half-built state opened is still up: the new one takes
        # over (a ROUTER drops a second peer of one name, and the error was lost: the run
        # said only "exited with code 0")
        self.box.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        mp = self._context()
        self.guard = Guard([], self._gone)
        self._sentinels: dict[int, str] = {}
        self.mp = mp
        if served:
            self._launch_store(STORE, "")
        for v in plan.managers:
            self._launch(mp, manager_name(v), procmanager.main, (plan, v))
        for v, i in plan.instances():
            self._launch(mp, instance_name(v, i), procworker.main, (plan, "instance", (v, i)))
        for r in range(self.chain.roots):
            self._launch(mp, root_name(r), procworker.main, (plan, "root", r))
        self.current = {w: w for w in [*workers, STORE, *managers]}
        self.generation = dict.fromkeys([*workers, STORE], 0)
        self.inputs = [dealer(self.ctx, plan.address(name + ".in"), COORDINATOR, plan.hwm) for name in roots]
        self.remote = (storeserver.RemoteStore(self.ctx, plan.store[1], COORDINATOR, self.guard)
                       if served else None)
        self.guard.idle = self._idle
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(self.ready) < len(workers) + len(managers):
            if time.monotonic() > deadline:
                raise ProcFailure(f"proc runtime: workers not ready after {START_TIMEOUT_S:g} s: "
                                  f"{', '.join(sorted(set(workers + managers) - self.ready))}")
            self._service(1000)
        self._started = True
        if self.scaler is not None:
            self.scaler.start_spares()      # (§5.1 once the chain is up: not in its way)

    def _address(self, plan: Plan) -> None:
        """Where the mailboxes are: ``ipc://`` in the run's directory (the plan's default)."""

    def _context(self) -> Any:
        """What starts the workers: multiprocessing's forkserver (module doc)."""
        mp = multiprocessing.get_context("forkserver")
        mp.set_forkserver_preload(PRELOAD)
        # The forkserver is ``python -c ...``, which puts the working directory first on
        # sys.path while it boots: a queue.py there was imported for the standard
        # library's, and the store server died on it with a message about failover (a
        # new user's trial).  PYTHONSAFEPATH (3.11) leaves it out; the workers get the
        # coordinator's sys.path as before.
        with _ENVIRON:
            safe = os.environ.get("PYTHONSAFEPATH")
            os.environ["PYTHONSAFEPATH"] = "1"
            os.environ[procboot.SAFEPATH_WAS] = safe or ""     # (procboot gives it back)
            try:
                if not _FORKING["runs"]:
                    _FORKING["tracker"] = not _tracker_running()
                self._start_forkserver()
                _FORKING["runs"] += 1       # (the last run to stop stops the forkserver: _end_forkserver)
                self._forking = True
            finally:
                del os.environ[procboot.SAFEPATH_WAS]
                if safe is None:
                    del os.environ["PYTHONSAFEPATH"]
                else:
                    os.environ["PYTHONSAFEPATH"] = safe
        return mp

    @staticmethod
    def _start_forkserver() -> None:
        if threading.current_thread() is not threading.main_thread():
            multiprocessing.forkserver.ensure_running()
            return
        # Started with SIGTERM and SIGINT ignored (kept across its exec, and by the
        # workers it forks until worker_guard): a SIGTERM to the whole process group
        # (systemd, timeout(1), kill -- -PGID) killed it, and every worker's end, which
        # it reports, read as "exited with code 255"; a Ctrl-C while a worker started
        # ended that worker ("exited with code 1").  It ends with the coordinator.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _launch_store(self, name: str, restore: str) -> None:
        """The store server process ``name`` (a failover's boots from ``restore``)."""
        plan = self.plan
        self._launch(self.mp, name, storeserver.serve, (plan.store[1], plan.record, plan.recover,
                                                        plan.address(COORDINATOR), plan.heartbeat_s,
                                                        plan.directory, plan.checkpoint_s, name, restore,
                                                        self._redis_spec if self.fronted else None,
                                                        per_flow_objects(plan.chain) if self.fronted else None,
                                                        plan.chain.nf_modules()))

    def _join(self, name: str, args: tuple) -> bool:
        """§5.1 a scale-out's new instance process, its warm spare if it has one up (then
        True); waited for until it is ready."""
        self.box.expected.add(name.encode())
        self.current[name] = name
        self.generation[name] = 0
        spare = self.scaler is not None and self.scaler.take_spare(name)
        # (its beats are checked once it is an instance: not by what a spare of that name,
        # taken or dead, last sent; a new process was killed as silent)
        self.heard.pop(name, None)
        if spare:
            self.box.reply(name.encode(), encode(Kind.CONTROL, ["assign", pickle.dumps(args)]))
        else:
            self._launch(self.mp, name, procworker.main, args)
        deadline = time.monotonic() + START_TIMEOUT_S
        while name not in self.ready:
            if time.monotonic() > deadline:
                raise ProcFailure(f"proc runtime: {name} (a scale-out's new instance) not ready after "
                                  f"{START_TIMEOUT_S:g} s")
            self._service(100)
        return spare

    def _launch(self, mp: Any, name: str, target: Callable, args: tuple) -> None:
        p = mp.Process(target=target, args=args, name=f"chc {name}", daemon=True)
        p.start()
        self.procs[name] = p
        self._sentinels[p.sentinel] = name
        self.guard.sentinels.append(p.sentinel)

    def _reap(self, name: str) -> None:
        """The end of ``name``'s process, handled now if it has not been yet (before another
        process of that name starts)."""
        fd = self.procs[name].sentinel
        if fd in self.guard.sentinels:
            self._gone(fd)

    def _gone(self, fd: int) -> None:
        """A worker's process ended: fine once it has reported, else the run fails."""
        ctrlc.poll()                        # (a death after chc check's Ctrl-C is no failure: its kills)
        name = self._sentinels[fd]
        self.guard.sentinels.remove(fd)
        p = self.procs[name]
        p.join(1)
        if self.scaler is not None and self.scaler.spare_gone(name):
            return                          # (§5.1 a warm spare: a scale-out starts a process then)
        if name in self.stopped_copies:
            return                          # (§5.3 the copy a clone pair's resolution stopped)
        paired = next((n for n, pair in self.pairs.items() if name in (pair["straggler"], pair["clone"])), None)
        if paired is not None:
            self._copy_died(paired, name, p)
            return
        store = _logical(name) == STORE
        if _logical(name) in self.reported or (store and self.store_stats):
            return
        if managed_vertex(name) is not None:
            self._manager_gone(name, p)
            return
        if store and self._store_stopping:
            # Its answer to stop may still be on its way; if none comes, the wait gives up.
            self.remote.deadline = time.monotonic() + REPORT_GRACE_S
            return
        if store and self.current.get(STORE) == name and self.plan.checkpoint_s and (self._failing
                                                                                      or not self._started):
            # §5.4 a failover under way needs the store (Table 3: together); workers still
            # starting are in their declarations and cannot hand in a log yet.
            why = ("while the run was starting" if not self._started else
                   f"while {self._failing}'s failover was under way: they failed together (Table 3)")
            raise ProcFailure(f"proc runtime: {name} (pid {p.pid}) {self._how(name, p)} {why}; the run stops")
        # (the store server is recovered only from its checkpoints; a root only with its own log)
        recoverable = self.plan.checkpoint_s if store else not name.startswith("@") or self.roots_recover
        if self.plan.recover and self.current.get(_logical(name)) == name and recoverable:
            if self._failing:
                self._deaths.append((name, p))
                return
            self._failover(name, p)
            while self._deaths:
                self._failover(*self._deaths.pop(0))
            return
        if p.exitcode == 0:
            # It reported before it exited: the report may still be on its way.
            deadline = time.monotonic() + REPORT_GRACE_S
            while name not in self.reported and time.monotonic() < deadline:
                self._service(100)
            if name in self.reported:
                return
        how = self._how(name, p)
        why = ("the store server is recovered only with --failover or a --kill store@N, on the default store "
               "or one Redis server" if store
               else "a root with its packet log in the store is not recovered here" if self.plan.recover
               else "no recovery without --kill or --failover")
        raise ProcFailure(f"proc runtime: {name} (pid {p.pid}) {how} before the end of the run; "
                          f"the run stops ({why})")

    # -- §3 vertex managers -----------------------------------------------------------------------
    def _manager_gone(self, name: str, p: Any) -> None:
        """A vertex manager holds no packet and no state: one that dies is started again
        (it counts from then on) and the run goes on; after the workers' bye it is done."""
        if self._bye:
            return
        vertex = managed_vertex(name)
        how = self._how(name, p)
        if name not in self.managers_up:    # (never started: another would fail the same way)
            deadline = time.monotonic() + REPORT_GRACE_S
            while time.monotonic() < deadline and name not in self.ready:
                self._service(100)      # (its error, if it sent one, stops the run with its words)
            if name not in self.ready:
                raise ProcFailure(f"proc runtime: {vertex}'s vertex manager {how} before it started; "
                                  "the run stops")
        self.ready.discard(name)
        self.heard.pop(name, None)
        self.hung.pop(name, None)
        self.decisions = [d for d in self.decisions if d[0] != vertex]
        self._launch(self.mp, name, procmanager.main, (self.plan, vertex, True))
        event = {"kind": "manager-restarted", "vertex": vertex, "packet": self.fed, "pid": p.pid, "how": how,
                 "new_pid": self.procs[name].pid}
        if name in self._killed:
            event["killed_at_packet"] = self._killed.pop(name)[1]
        self.events.append(event)

    def _decided(self, index: int) -> None:
        """§3 carry out the vertex managers' decisions that came (procscale), and tell each
        manager its vertex's shape after them (it decides again only then)."""
        while self.decisions:
            vertex, decisions, counts = self.decisions.pop(0)
            self.scaler.decide(vertex, decisions, counts, index)
            self._shape(vertex, answered=True)

    def _shape(self, vertex: str, answered: bool) -> None:
        """Tell ``vertex``'s manager (if it has one, and it runs) the vertex as it is now:
        after every change of it (``answered``: one the manager asked for)."""
        name = manager_name(vertex)
        if self.scaler is None or name not in self.ready or not self.procs[name].is_alive():
            return
        fm = self.scaler.flowmaps[vertex]
        shape = [self.scaler.active[vertex], fm.scope.name, fm.level + 1 < len(fm.ladder), answered]
        self.box.reply(name.encode(), encode(Kind.CONTROL, ["shape", shape]))

    def _decisions_expired(self) -> None:
        """Decisions that came after the input ended are not carried out (logged why: the
        reason a longer run would give, a clone or the policy's bounds, if there is one)."""
        for vertex, decisions, _ in self.decisions:
            for action, instance, reason in decisions:
                why = self.scaler.why_refused(vertex, action) or "the input ended before it"
                self.events.append({"kind": f"{action}-refused", "vertex": vertex, "instance": instance,
                                    "packet": self.fed, "reason": why, "by": "manager", "asked": reason})
        self.decisions = []

    # -- §5.4 NF failover ------------------------------------------------------------------------
    def _failover(self, dead: str, p: Any) -> None:
        """A failover instance takes over the failed one's logical identity (its state
        ownership and XOR ids, a fresh client): the store fences the failed process and
        keeps the clock log it will need, every upstream re-points to the failover and
        hands over what it sent the failed one, and the failover replays it from the
        oldest clock still logged (:meth:`InstanceWorker._replay`)."""
        if self.scaler is not None and self.scaler.open is not None and (
                self.scaler.open["change"].get("barrier") is None):
            c = self.scaler.open["change"]
            raise ProcFailure(f"proc runtime: {dead} (pid {p.pid}) {self._how(dead, p)} during a change of "
                              f"{c['vertex']} (§5.1, barrier at clock {c.get('barrier')}); a failure in the middle "
                              "of a scaling change before its barrier is known is not recovered (docs/proc.md); "
                              "the run stops")
        if self.pairs:
            raise ProcFailure(f"proc runtime: {dead} (pid {p.pid}) {self._how(dead, p)} while a clone pair of "
                              f"{', '.join(sorted(self.pairs))} ran; only a copy of a pair that dies is recovered then "
                              "(docs/proc.md, \"Clones\"); the run stops")
        failing, self._failing = self._failing, dead
        try:
            if _logical(dead) == STORE:
                self._fail_over_store(dead, p)
            else:
                (self._fail_over_root if dead.startswith("@root") else self._fail_over)(dead, p)
        finally:
            self._failing = failing

    def _failure(self, kind: str, dead: str, p: Any, name: str, **where: Any) -> tuple[dict, int, str, float]:
        """A failure's summary event as every failover opens it (what died, how, when it
        was found), its failover's generation and process name, and when it was found."""
        detected = time.perf_counter()
        gen = self.generation[name] + 1
        base = self.base.get(name, name)       # (§5.3 a kept clone's failovers: nat.0~1#1)
        # §5.4 on Ray a generation is placed on the next node of the ring (on_ring); one whose
        # node is gone is skipped, and fenced as if it had failed (_fence), since each
        # receiver takes a generation's frames once the one before it is fenced
        # (wire.previous).  Once round the ring at most: then the launch says no node is left.
        skipped = []
        while len(skipped) < len(self.plan.ring) and not self._placeable(generation_name(base, gen)):
            skipped.append(generation_name(base, gen))
            gen += 1
        new = generation_name(base, gen)
        killed = self._killed.get(dead)
        event = {"kind": kind, **where, "process": dead, "pid": p.pid, "how": self._how(dead, p, short=True),
                 "failover_process": new, "packet": self.fed,
                 "detect_s": None if killed is None else round(detected - killed[0], 6)}
        if skipped:
            event["skipped"] = skipped      # (their nodes were gone)
        return {**event, **self._kill_marks(dead)}, gen, new, detected

    def _kill_marks(self, dead: str) -> dict:
        """Where a kill of ours that ``dead`` died of was made (and asked: kills land between
        input batches, said, not hidden); {} when it died by itself."""
        killed = self._killed.pop(dead, None)
        if killed is None:
            return {}
        return {"killed_at_packet": killed[1], **({"kill_asked_at": killed[2]} if killed[2] != killed[1] else {})}

    def _placeable(self, worker: str) -> bool:
        """Whether ``worker`` can start where the plan places it (on Ray: its node is alive)."""
        placeable = getattr(self.mp, "placeable", None)
        return placeable is None or placeable(worker)

    def _fail_over(self, dead: str, p: Any) -> None:
        name = _logical(dead)
        vertex, i = name.rsplit(".", 1)
        event, gen, new, detected = self._failure("failover", dead, p, name, vertex=vertex, instance=int(i))
        gone = [dead, *event.get("skipped", ())]
        for g in gone:
            self.remote.fence(g)
        self.fenced += gone
        floors = self.remote.hold_pruning(True)
        interrupted = self.recovering.pop(name, None)
        # A failover that died before its replay was reported (fenced: a late report is dropped).
        if interrupted is not None:
            self.remote.hold_pruning(False)     # (its hold: the new one holds from here)
            interrupted["event"]["interrupted"] = f"{dead} died before its replay was reported"
            self.events.append(interrupted["event"])
        # Its receivers take nothing more from it (what they read after this its failover
        # sends again), and take its failover's frames only from then on.
        for g in gone:
            self._fence_at_receivers(vertex, g)
        # (a retired upstream stays until the end with what it sent: §5.1, docs/proc.md)
        feeders = [f for f in self.plan.feeders(vertex, retired=True)
                   if f not in self.plan.retired or self.procs[self.current[f]].is_alive()]
        records: dict[str, list] = {}
        self.recovering[name] = {"event": event, "records": records, "partial": set(), "started": detected}
        for f in feeders:
            self._repoint(f, vertex, int(i), new)
        while len(records) < len(feeders):
            self._service(1000)
            self._dead_feeders(vertex, int(i), new, feeders, records)
        for f in feeders:
            if f in self.plan.retired:
                # §5.1 it ended when it retired, after its go-ahead: everything it will ever
                # send this instance is in its record (one it never fed: nothing), and its
                # end may have gone to the dead process.
                records[f][1:3] = [INF, True]
        self.generation[name] = gen
        self.current[name] = new
        # What the failed one may have run: what every upstream's hand-over watermark has
        # passed; an upstream still replaying (a failover itself) has handed over only
        # part, and will send up to what its own failed process can have sent.
        partial = self.recovering[name]["partial"]
        bound = self.bounds[name] = min(self.bounds[f] if f in partial else records[f][1] for f in feeders)
        # (its load reports' generation: every process of the instance counts, §5.3 clones too)
        self.processes[name] = self.processes.get(name, 0) + 1
        replay = {"floors": floors, "feeds": records, "bound": bound, "current": dict(self.current),
                  "fenced": list(self.fenced), "feeders": feeders, "generation": self.processes[name]}
        if self.scaler is not None:     # §5.1 what moves gave it, and R3 as the vertex shares now
            replay.update(self.scaler.for_failover(name, floors))
            if "change" in replay:      # §5.1 with §5.4 it died during a change: its failover takes its part
                event["during_change"] = replay["change"]["id"]
                event["change_part"] = procscale.part_in(replay["change"], vertex, int(i),
                                                         self.plan.targets(vertex))
        self._launch(self.mp, new, procworker.main, (self.plan, "instance", (vertex, int(i), gen), replay))
        event["logged_floor"] = [floors.get(r, -1) for r in range(self.chain.roots)]    # per root
        event["handed_over"] = sum(len(r[0]) for r in records.values())     # packets sent to it, from the floor
        _say_failover(event, dead, p.pid, new)

    def _fence_at_receivers(self, vertex: str, process: str) -> None:
        """Nothing more of ``process`` (an instance of ``vertex``) is taken here, at the next
        vertex's instances and at the roots (§5.4 a dead one; §5.3 a pair's stopped copy)."""
        self.box.fence(process.encode())
        fence = encode(Kind.CONTROL, ["fence", process])
        for d in self.plan.targets(vertex):
            for j in range(self.plan.width(d)):
                self._tell(instance_name(d, j), fence)
                clone = self.pairs.get(instance_name(d, j), {}).get("clone")
                if clone is not None:       # (§5.3 both copies of a pair receive)
                    self._tell_process(clone, fence)
        for r in range(self.chain.roots):
            self._tell(root_name(r), fence)

    def _fail_over_root(self, dead: str, p: Any) -> None:
        """§5.4 a root failed (docs/proc.md, "Root failover"): every instance takes nothing
        more from it and sends its reports to the failover root, first the ones it kept
        since the root's floor; the failover root starts from the input the coordinator
        kept since that floor (:meth:`RootWorker._restore`), and new input goes to it."""
        name = _logical(dead)
        r = int(name.rsplit(".", 1)[1])
        event, gen, new, detected = self._failure("root-failover", dead, p, name, root=r)
        self.remote.fence(dead)
        self.fenced.append(dead)
        self.box.fence(dead.encode())
        interrupted = self.recovering.pop(name, None)
        if interrupted is not None:
            interrupted["event"]["interrupted"] = f"{dead} died before its replay was reported"
            self.events.append(interrupted["event"])
        fence = encode(Kind.CONTROL, ["fence", dead])
        reroot = encode(Kind.CONTROL, ["reroot", [r, new]])
        for v, i in self.plan.instances():
            inst = instance_name(v, i)
            if inst in self.reported and not self.procs[self.current[inst]].is_alive():
                # Done and gone (it is not failed over): its reports, which the failover
                # root needs to complete its packets, are gone with it (Table 3).
                raise ProcFailure(f"proc runtime: {dead} (pid {p.pid}) {self._how(dead, p)} after {inst} had "
                                  f"finished and gone with the reports its failover needs; the run stops")
            self._tell(inst, fence)
            self._tell(inst, reroot)
        self.generation[name] = gen
        self.current[name] = new
        first, nxt, counters = self.input_start[r]
        kept = self.kept_input[r]
        last = self.ingested[r].get(first + len(kept) - 1)
        overflow = ROOT_COUNTERS.index("dropped_overflow")
        if last is not None and last[1][overflow] > counters[overflow]:
            # Its log was full: it dropped input by the log's size, which its failover's
            # log, rebuilt as it replays, does not reproduce.
            raise ProcFailure(f"proc runtime: {dead} (pid {p.pid}) {self._how(dead, p)} after dropping input for "
                              "a full packet log (--log-limit); its failover cannot replay the same input")
        replay = {"first": first, "next": nxt, "counters": counters, "batches": [rows for _, rows in kept],
                  "floor": self.root_floor[r], "current": dict(self.current), "fenced": list(self.fenced),
                  "past": self.scaler.past({r: self.root_floor[r]}) if self.scaler is not None else {}}
        if self.scaler is not None and self.scaler.open is not None:
            # §5.1 with §5.4 past the barrier the root's part is done (it stamped the barrier
            # and switched): its failover replays by the maps of then and goes on by the new
            event["during_change"] = self.scaler.open["change"]["id"]
            self.scaler.open.setdefault("failed_over", []).append(name)
            # (an instance retiring in it has not handed over yet: it may still need the
            # replay's packets up to the barrier, which went by the map of then)
            c = self.scaler.open["change"]
            replay["retiring"] = [[c["vertex"], i] for i in c["retire"]]
        self.recovering[name] = {"event": event, "started": detected}
        self._launch(self.mp, new, procworker.main, (self.plan, "root", (r, gen), replay))
        self.inputs[r].close(0)
        self.inputs[r] = dealer(self.ctx, self.plan.address(input_name(new)), COORDINATOR, self.plan.hwm)
        for what, body in self.told[r]:
            self._send(r, encode(Kind.INPUT, [what, body]))
        event["logged_floor"] = self.root_floor[r]
        event["handed_over"] = sum(len(rows) for _, rows in kept)     # input packets kept, from the floor
        _say_failover(event, dead, p.pid, new)

    def _store_can_fail_over(self, dead: str, p: Any, event: dict) -> None:
        """A store server that died of what its failover would die of too stops the run
        (a new-user trial: a Redis server that died by itself under ``--failover`` was met
        with a failover store server every half second, without end): on Redis, the Redis
        server gone too; and a failover store server that died before it was up (its
        first checkpoint), unless a ``--kill`` of ours killed it."""
        how = self._how(dead, p)
        if self.redis:
            why = self.store.unreachable()
            if why:
                raise ProcFailure(f"proc runtime: {dead} (pid {p.pid}) {how}, and the Redis server behind it "
                                  f"is unreachable ({why}): a store server cannot be failed over without it; "
                                  "the run stops")
        if "#" in dead and dead not in self._store_up and "killed_at_packet" not in event:
            raise ProcFailure(f"proc runtime: the failover store server {dead} (pid {p.pid}) {how} before it "
                              "was up: another would end the same way; the run stops")

    def _fail_over_store(self, dead: str, p: Any) -> None:
        """§5.4 the store server failed (docs/proc.md, "Store-server failover"): every live
        instance hands in its write-ahead log; the failover store is the latest checkpoint
        rolled forward from them (:func:`procstore.rebuild`), in a new process that every
        client re-points to, sending again what was not answered."""
        event, gen, new, detected = self._failure("store-failover", dead, p, STORE)
        busy = sorted(self.recovering) + [d for d, _ in self._deaths]
        if busy:
            # Table 3: failed together (a failover under way needs the store; a dead process's
            # log died with it)
            raise ProcFailure(f"proc runtime: {dead} (pid {p.pid}) {self._how(dead, p)} while {busy[0]} was "
                              "down and not yet failed over: they failed together (Table 3), and the store's "
                              "failover needs its write-ahead log; the run stops")
        self._store_can_fail_over(dead, p, event)
        self.box.fence(dead.encode())
        # (one that finished and went: its last updates are in the checkpoint taken before it went)
        finished = [self.current[n] for n in (instance_name(v, i) for v, i in self.plan.instances())
                    if self._bye or (n in self.reported and not self.procs[self.current[n]].is_alive())]
        logs = self._collect_wals(dead, p, finished)
        collected = time.perf_counter()
        directory = self.plan.directory
        try:
            # retired: failed instances (failed over, a checkpoint after), finished ones gone
            retired = {procstore.client_id(f) for f in [*self.fenced, *finished] if not f.startswith("@")}
            rec, state = procstore.rebuild(directory, logs, retired, self.fenced, self.no_wal)
        except (LostState, RecoveryError, OSError) as exc:
            raise ProcFailure(f"proc runtime: {dead} (pid {p.pid}) {self._how(dead, p)} and cannot be "
                              f"recovered: {exc}") from None
        rebuilt = time.perf_counter()
        if self.plan.record:        # the checker's record: the failover store's history (procstore)
            serial = procstore.SerialLog(os.path.join(directory, procstore.SERIAL))
            serial.append(encode(Kind.REPLY, ["recover", state["serial"], procstore.redo(rec, logs)]))
            serial.close()
        self.generation[STORE] = gen
        self.current[STORE] = new
        self.plan.store = ("memory", self.plan.address(new))
        self._launch_store(new, os.path.join(directory, procstore.RESTORE))
        address = self.plan.store[1]
        self.remote.repoint(address)
        if self.scaler is not None:     # §5.1 with §5.4 a change under way (docs/proc.md)
            event.update(self.scaler.store_failed_over())
        frame = encode(Kind.CONTROL, ["store", address])
        for name in self._workers():
            self._tell(name, frame)
        if self.scaler is not None:
            self.scaler.go_if_owed()
        ckpt = state["checkpoint"]
        marks = ckpt.applied_seq
        event.update(checkpoint=ckpt.number, wal_updates=sum(
            sum(op.seq > marks.get(lg.client_id, 0) for op in lg.wal.updates + lg.wal.flow_updates)
            for lg in logs), re_executed=len(rec.re_executed), reads_selected=len(rec.selected),
            per_flow_rolled=rec.per_flow, commits_reported=len(rec.commits),
            read_log_rebuilt=sum(1 for lg in logs for _ in (lg.wal.shared_reads or ())),
            wal=not self.no_wal, logs_s=round(collected - detected, 6), rebuild_s=round(rebuilt - collected, 6),
            recovery_s=round(time.perf_counter() - detected, 6))
        self.events.append(event)
        _say_failover(event, dead, p.pid, new)

    def _backend(self) -> str:
        """The summary's store backend."""
        if self.model == "T":
            return "local"
        if not self.redis:
            return "memory"
        return self.store.describe() + (" (through the store server)" if self.fronted else "")

    def _workers(self) -> list[str]:
        """Every logical root and instance."""
        return [root_name(r) for r in range(self.chain.roots)] + [instance_name(v, i) for v, i in
                                                                   self.plan.instances()]

    def _collect_wals(self, dead: str, p: Any, finished: list[str]) -> list:
        """§5.4 every live instance's write-ahead log, written where the coordinator reads it."""
        if self.model == "T":
            return []
        asked = {instance_name(v, i): self.current[instance_name(v, i)] for v, i in self.plan.instances()
                 if self.current[instance_name(v, i)] not in finished}
        self.wals = set()
        ask = encode(Kind.CONTROL, ["wal", None])
        for name in asked:
            self._tell(name, ask)
        while not set(asked.values()) <= self.wals:
            self._service(100)
            for process in asked.values():
                if process not in self.wals and not self.procs[process].is_alive():
                    raise ProcFailure(f"proc runtime: {dead} (pid {p.pid}) {self._how(dead, p)} and {process} "
                                      "died before it handed in its write-ahead log: they failed together "
                                      "(Table 3); the run stops")
        try:
            return [procstore.load_wal(procstore.wal_path(self.plan.directory, process))
                    for process in asked.values()]
        except OSError as exc:
            raise ProcFailure(f"proc runtime: {dead} (pid {p.pid}) {self._how(dead, p)} and a write-ahead log "
                              f"cannot be read: {exc}") from None

    def _root_replayed(self, name: str, body: dict) -> None:
        """The failover root has replayed the input kept for it: the event is complete."""
        rec = self.recovering.pop(name)
        event = rec["event"]
        event.update(replayed=body["packets"], replayed_batches=body["batches"],
                     not_replayed=0 if self.plan.replay else event["handed_over"],
                     commits_pulled_again=body["commits"], log_entries=body["logged"],
                     dropped_below_floor=body["forgotten"], past_maps=body["past_maps"],
                     sent_by_past_maps=body["by_past_maps"], replay_s=round(body["seconds"], 6),
                     recovery_s=round(time.perf_counter() - rec["started"], 6))
        self.events.append(event)

    def _ingested(self, r: int, body: list) -> None:
        """Root ``r`` ingested an input batch: what it kept and said lets the coordinator
        forget the batches whose clocks are all below its floor (its failover needs none)."""
        k, nxt, counters, oldest = body
        if oldest > self.root_floor[r]:
            self.root_floor[r] = oldest
        if k >= self.input_start[r][0]:
            self.ingested[r][k] = (nxt, counters)
        kept, said, floor = self.kept_input[r], self.ingested[r], self.root_floor[r]
        while kept and kept[0][0] in said and said[kept[0][0]][0] <= floor:
            k0 = kept.popleft()[0]
            self.input_start[r] = (k0 + 1, *said.pop(k0))

    def _dead_feeders(self, vertex: str, i: int, new: str, feeders: list[str], records: dict) -> None:
        """A feeder that died before handing over what it sent ``vertex[i]``: its own
        failover first (a sequential failure), then that failover hands it over (its
        replay sends again what the dead feeder had sent)."""
        for dead, p in list(self._deaths):
            feeder = _logical(dead)
            if feeder in feeders and feeder not in records:
                self._deaths.remove((dead, p))
                self._failover(dead, p)
                self._repoint(feeder, vertex, i, new)

    def _repoint(self, feeder: str, vertex: str, i: int, new: str) -> None:
        """Tell ``feeder`` to send to ``new`` from now on and hand over what it sent ``vertex[i]``."""
        self._tell(feeder, encode(Kind.CONTROL, ["repoint", [vertex, i, new]]))

    def _tell(self, name: str, frame: bytes) -> None:
        """A control message to the process logical instance ``name`` runs in now; one that
        is a failover just started is waited for (the mailbox drops what goes to a peer
        not yet connected: a lost fence held a failover's frames at it for good)."""
        process = self.current[name]
        while process not in self.ready and self.procs[process].is_alive():
            self._service(100)
        self.box.reply(process.encode(), frame)

    def _replayed(self, name: str, body: dict) -> None:
        """The failover finished its replay: pruning resumes; the event is complete."""
        rec = self.recovering[name]         # (under way until durable: a store lost before is Table 3's)
        self.remote.hold_pruning(False)
        if self.plan.checkpoint_s:
            # §5.4 per-flow owners changed: since the checkpoint each object has one writer
            self.remote.checkpoint()
        del self.recovering[name]
        event = rec["event"]
        event.update(replayed=body["packets"], not_replayed=body["skipped"], replay_steps=body["steps"],
                     moved_timers_replayed=body.get("moved_timers", 0),
                     replayed_sharing_otherwise=body.get("sharing_otherwise", 0),
                     timers_moved_away=body.get("timers_moved_away", 0), past_maps=body["past_maps"],
                     sent_by_past_maps=body["by_past_maps"], replay_s=round(body["seconds"], 6),
                     **({"replayed_batches": body["batches"]} if "batches" in body else {}),     # §5 several roots
                     recovery_s=round(time.perf_counter() - rec["started"], 6))
        self.events.append(event)

    # -- §5.3 clones (docs/proc.md, "Clones") -------------------------------------------------------
    def clone(self, vertex: str, instance: int | None, why: dict, for_packets: int = 0) -> None:
        """§5.3 start a clone of ``vertex[instance]`` (None: the active instance furthest
        behind, by the highest clock it has counted) while it runs: the straggler settles
        and reads from a private view of its state from then on, and says where it is
        (:meth:`InstanceWorker._pair`); each upstream copies everything it sends the
        straggler to the clone from then on, and hands over what it had sent it (``tee``,
        one message); the clone starts from the straggler's state and runs what the
        straggler had not (:meth:`InstanceWorker._start_clone`).  Receivers take each
        clock once of the pair; :meth:`_resolve` keeps the copy that is further."""
        active = self.scaler.active[vertex] if self.scaler is not None else list(range(self.plan.width(vertex)))
        if instance is None:
            instance = min(active, key=lambda j: (self.through_of.get(self.current[instance_name(vertex, j)], -1), j))
        name = instance_name(vertex, instance)
        paired = any(p["vertex"] == vertex for p in self.pairs.values())
        refused = ("not an active instance" if instance not in active else
                   f"a clone pair of {vertex} runs" if why.get("by") == "manager" and paired
                   else f"{name} has ended" if name in self.reported else None)
        if refused:
            self.events.append({"kind": "clone-refused", "vertex": vertex, "instance": instance, "packet": self.fed,
                                "reason": refused, **why})
            return
        # one pair a vertex (as the sim): a scenario's clone ends the vertex's pair first
        for other in [n for n, p in self.pairs.items() if p["vertex"] == vertex]:
            self._resolve(other)
        if name in self.unpairing:
            # The kept copy is back on the store once it has run what the pair had been sent,
            # and packets of that may wait for watermarks that only more input brings (an
            # idle upstream sends none): waited for here, with the feed stopped, it never
            # came (chc check hung at input packet 438 under load).  Tried again after the
            # next batches are fed (_clones_due).
            self.deferred_clones.append((vertex, instance, why, for_packets))
            return
        started = time.perf_counter()
        straggler = self.current[name]
        # (the clock log and read log stay from here until the pair ends: the slower copy
        # needs the entries of clocks the faster one completed)
        self.remote.hold_pruning(True)
        self.pairing.pop(("paired", straggler), None)
        self._tell(name, encode(Kind.CONTROL, ["pair", None]))
        snap = self._await_pairing(("paired", straggler), straggler)
        if snap is None:
            self.remote.hold_pruning(False)
            self.events.append({"kind": "clone-refused", "vertex": vertex, "instance": instance,
                                "packet": self.fed, "reason": f"{name} has ended", **why})
            return
        k = self.clone_count[name] = self.clone_count.get(name, 0) + 1
        new = f"{straggler}{CLONE.decode()}{k}"
        feeders = [f for f in self.plan.feeders(vertex, retired=True)
                   if f not in self.plan.retired or self.procs[self.current[f]].is_alive()]
        key = ("teed", vertex, instance)
        self.pairing[key] = {}
        tee = encode(Kind.CONTROL, ["tee", [vertex, instance, new]])
        # (an upstream in a pair of its own: both copies send the straggler, both copy to the clone)
        senders = [p for f in feeders for p in self._copies(f)]
        for p in senders:
            self._tell_process(p, tee)
        while len(self.pairing[key]) < len(senders):
            self._service(100)
        records: dict[str, list] = {}
        for p, record in self.pairing.pop(key).items():
            f = _logical(p)
            records[f] = _merged(records[f], record) if f in records else record
        for f in feeders:
            if f in self.plan.retired:      # (§5.1 it sent all it will: as for a failover)
                records[f][1:3] = [INF, True]
        gen = self.processes[name] = self.processes.get(name, 0) + 1
        # (a target in a pair of its own: the clone copies to that pair's clone too)
        tees = [[d, j, self.pairs[instance_name(d, j)]["clone"]] for d in self.plan.targets(vertex)
                for j in range(self.plan.width(d)) if instance_name(d, j) in self.pairs]
        replay = {"clone": snap, "feeds": records, "current": dict(self.current), "fenced": list(self.fenced),
                  "feeders": feeders, "shared": snap["shared"], "generation": gen, "tees": tees,
                  "born": self.scaler.born.get(name, -1) if self.scaler is not None else -1}
        self._launch(self.mp, new, procworker.main, (self.plan, "instance", (vertex, instance, new), replay))
        cloned = self._await_pairing(("cloned", new), new)
        event = {"kind": "clone", "vertex": vertex, "instance": instance, "packet": self.fed,
                 "straggler_process": straggler, "clone_process": new, "from_clock": snap["through"],
                 "handed_over": cloned["handed_over"], "timers": len(snap["timers"]),
                 "start_s": round(time.perf_counter() - started, 6), **why}
        if straggler in self.slowed:        # (§5.3 the clone is not: it runs at full speed)
            event["straggler_delay"] = self.slowed[straggler]
        self.events.append(event)
        self.pairs[name] = {"vertex": vertex, "instance": instance, "straggler": straggler, "clone": new,
                            "feeders": feeders, "started": self.fed, "started_s": time.perf_counter(),
                            "for_packets": for_packets, "from": snap["through"], "dup": dict(self.dup)}

    # -- §5.3 slow-downs (docs/proc.md, "Slow-downs") ------------------------------------------------
    def slow(self, vertex: str, instance: int | None, spec: str | None, why: dict, action: str = "slow") -> None:
        """§5.3 make a straggler: the process logical instance ``vertex[instance]`` runs in
        now (None: every active instance of the vertex) sleeps ``spec`` (a delay model, µs
        per packet) per packet it processes, from its next batch on; ``spec`` None (a
        speed-up) ends that.  A control message, not in band: it acts on the packets the
        process takes next, which the coordinator's feed is ahead of (as a --kill).  The
        slow-down is the process's: a clone or failover of it starts at full speed (the
        sim's new instances take no slow event; §5.3, the clone is the fast copy)."""
        active = self.scaler.active[vertex] if self.scaler is not None else list(range(self.plan.width(vertex)))
        for i in active if instance is None else [instance]:
            name = instance_name(vertex, i)
            refused = ("not an active instance" if i not in active else
                       f"{name} has ended" if name in self.reported else None)
            if refused:
                self.events.append({"kind": f"{action}-refused", "vertex": vertex, "instance": i,
                                    "packet": self.fed, "reason": refused, **why})
                continue
            process = self.current[name]
            self._tell(name, encode(Kind.CONTROL, ["slow", [spec, self.seed, f"{vertex}[{i}]"]]))
            if spec is None:
                self.slowed.pop(process, None)
            else:
                self.slowed[process] = spec
            self.events.append({"kind": action, "vertex": vertex, "instance": i, "packet": self.fed,
                                "process": process, "delay": spec, **why})

    def _copies(self, name: str) -> list[str]:
        """The live processes of logical instance ``name``: its process, and its clone
        while it is in a pair (§5.3)."""
        pair = self.pairs.get(name)
        return [p for p in [self.current[name]] + ([pair["clone"]] if pair else []) if self.procs[p].is_alive()]

    def _tell_process(self, process: str, frame: bytes) -> None:
        """:meth:`_tell` to a process by its name (a pair's clone is no instance's current one)."""
        while process not in self.ready and self.procs[process].is_alive():
            self._service(100)
        self.box.reply(process.encode(), frame)

    def _await_pairing(self, key: tuple, process: str) -> Any:
        """What ``process`` says when paired or cloned (the run stops if it dies first)."""
        while key not in self.pairing:
            self._service(100)
            if key not in self.pairing and not self.procs[process].is_alive():
                self._reap(process)
        return self.pairing.pop(key)

    def _clones_due(self) -> None:
        """§5.3 the clones that waited for their instance's kept copy to be back on the
        store (:meth:`clone`), started now if it is (else they wait again)."""
        waiting, self.deferred_clones = self.deferred_clones, []
        for args in waiting:
            self.clone(*args)

    def _clones_expired(self) -> None:
        """The input ended with clones still waiting: not made, and said why."""
        for vertex, instance, why, _ in self.deferred_clones:
            self.events.append({"kind": "clone-refused", "vertex": vertex, "instance": instance, "packet": self.fed,
                                "reason": "the input ended while the kept copy of its last pair was still running "
                                          "what the pair had been sent", **why})
        self.deferred_clones = []

    def resolve_due(self, final: bool = False) -> None:
        """§5.3 resolve each pair that has run ``for_packets`` input packets side by side
        and whose clone has counted a batch past where it started; all at the end of
        input (and before a scaling change: one change at a time, as the sim)."""
        for name, pair in list(self.pairs.items()):
            if final or (self.fed - pair["started"] >= pair["for_packets"]
                         and self.through_of.get(pair["clone"], -1) > pair["from"]):
                self._resolve(name)

    def _copy_died(self, name: str, dead: str, p: Any) -> None:
        """§5.3 with §5.4: a copy of a clone pair died.  The pair is resolved for the other,
        which needs no replay: the tee gave it every packet either copy was sent since the
        clone started (and the straggler's in-transit ones before), its state is its own, its
        reads of clocks the dead copy read are answered from the read log, its updates of
        clocks whose updates the dead copy made are the clock log's, and the receivers take
        each clock of the pair once.  So a resolution with the survivor kept is its recovery."""
        died = {"died": dead, "pid": p.pid, "how": self._how(dead, p, short=True), **self._kill_marks(dead)}
        pair = self.pairs[name]
        other = pair["clone"] if dead == pair["straggler"] else pair["straggler"]
        _say_failover(died, dead, p.pid, f"{other}, the other copy of its clone pair")
        self._resolve(name, died)

    def _resolve(self, name: str, died: dict | None = None) -> None:
        """§5.3 keep the copy that has counted the higher clock (the clone on a tie: it
        has caught up), stop the other: the store, the receivers and this coordinator
        take nothing more of it (fenced: the kept copy sends every clock it did not),
        the upstreams send only to the kept one, and the kept one reads the store again
        once it has run everything the pair had been sent (before, the store may hold
        the stopped copy's updates of clocks the kept one has not run: it counted less
        than it had run, its batch unfinished; read back, they were counted twice)."""
        pair = self.pairs.pop(name)
        vertex, i = pair["vertex"], pair["instance"]
        s_at = self.through_of.get(pair["straggler"], -1)
        c_at = self.through_of.get(pair["clone"], -1)
        keep_clone = c_at >= s_at and self.procs[pair["clone"]].is_alive() if died is None else \
            died["died"] == pair["straggler"]
        kept, gone = (pair["clone"], pair["straggler"]) if keep_clone else (pair["straggler"], pair["clone"])
        self.stopped_copies.add(gone)
        self.remote.fence(gone)
        self._fence_at_receivers(vertex, gone)
        untee = encode(Kind.CONTROL, ["untee", [vertex, i, keep_clone]])
        key = ("untee'd", vertex, i)
        self.pairing[key] = {}
        senders = [p for f in pair["feeders"] for p in self._copies(f)]
        for p in senders:
            self._tell_process(p, untee)
        while len(self.pairing[key]) < len(senders):
            self._service(100)
        sent: dict[str, int] = {}       # upstream -> the through of the last message it sent the pair
        for p, through in self.pairing.pop(key).items():
            sent[_logical(p)] = max(through, sent.get(_logical(p), -1))
        self.procs[gone].kill()
        if keep_clone:
            # its failovers are its generations (nat.0~1#1): wire.previous names it
            self.current[name] = self.base[name] = kept
            self.generation[name] = 0
        self.unpairing.add(name)
        self._tell(name, encode(Kind.CONTROL, ["unpair", sent]))
        # (pruning stays held until it is back on the store, "unpaired": a kept copy behind
        # the stopped one, say a straggler whose clone died, runs clocks the other completed,
        # and the roots prune what they completed; pruned, its updates of them applied again)
        self.events.append({"kind": "clone-resolved", "vertex": vertex, "instance": i, "packet": self.fed,
                            "kept": "clone" if keep_clone else "straggler", "kept_process": kept,
                            "stopped_process": gone, "started_packet": pair["started"],
                            "clock_straggler": s_at, "clock_clone": c_at,
                            "side_by_side_s": round(time.perf_counter() - pair["started_s"], 6),
                            **({"by": "death", **died} if died is not None else {}),
                            # (what the coordinator saw of the pair: sink outputs and alerts)
                            ("duplicates_delivered" if "no-dup-suppression" in self.plan.breaks else
                             "duplicates_suppressed"): {k: self.dup[k] - pair["dup"][k] for k in self.dup},
                            **({"straggler_delay": self.slowed[pair["straggler"]]}
                               if pair["straggler"] in self.slowed else {})})
        self.slowed.pop(gone, None)         # (stopped: slow no more)

    def _service(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` ms for the workers; handle what they sent."""
        poller = zmq.Poller()
        poller.register(self.box.sock, zmq.POLLIN)
        if self.guard.poll(poller, timeout):
            self._take()
        self._check_beats()

    def _idle(self) -> None:
        """After every wait of the coordinator, also one for the store inside a failover or a
        drain: a Ctrl-C of chc check (chc.ctrlc), what the workers said (their heartbeats
        too), then who is silent (a hung store server is seen while the coordinator waits
        for it)."""
        ctrlc.poll()
        if self.box.sock.poll(0):
            self._take()
        self._check_beats()

    def _check_beats(self) -> None:
        """A worker that has sent nothing (not even a heartbeat) for ``misses`` heartbeats
        hangs: it is killed (fail-stop), and its end is handled as any death (procio)."""
        every = self.plan.heartbeat_s
        now = time.monotonic()
        if not every or now < self._next_check:
            return
        self._next_check = now + every
        for name, p in list(self.procs.items()):
            if _logical(name) == STORE:     # (it says no "ready": checked once it has beaten)
                if name not in self.heard or name in self.hung or self._store_stopping \
                        or self.current.get(STORE) != name:
                    continue
            elif (name not in self.heard or name in self.hung or _logical(name) in self.reported
                    or self.current.get(_logical(name)) != name):
                continue                # (checked once heard from: a failover root beats while it replays)
            silent = now - self.heard.get(name, now)
            if silent > every * self.misses and p.is_alive():
                self.hung[name] = silent
                log.warning("proc runtime: %s (pid %s) sent nothing for %.1f s (%d heartbeats); killing it",
                            name, p.pid, silent, self.misses)
                p.kill()

    def _how(self, name: str, p: Any, short: bool = False) -> str:
        """How a worker ended (one that hung: how long it was silent)."""
        if name in self.hung:
            return f"{'' if short else 'was '}silent for {self.hung[name]:.1f} s ({self.misses} heartbeats) and killed"
        return _how(p, short)

    def _take(self) -> None:
        heard = self.heard
        for peer, (what, data) in self.box.messages(Kind.CONTROL, 2, "control"):
            name = peer.decode()
            # (each message's own time: a handler below can wait, even fail a process over)
            heard[name] = max(time.monotonic(), heard.get(name, 0.0))
            if what == "hb":
                continue
            if what == "ready":
                self.ready.add(name)
                if managed_vertex(name) is not None:
                    self.managers_up.add(name)
                    self._shape(managed_vertex(name), answered=False)     # (a restarted one: the vertex now)
            elif what == "error":
                raise ProcFailure(f"proc runtime: {data}")
            elif what == "out":
                if self.emit is not None and data[1]:
                    rows = self._fresh_out(name, data) if self.plan.clones else (
                        data[1] if self._seen_out.fresh(peer, data[0]) else [])
                    if rows:
                        self.emit([_out_packet(ts, clock, frame) for ts, clock, frame in rows])
            elif what == "stats":
                # Issued updates are a set to the checker: a replay's (the same tags) count too.
                self.issued += data[5]
                if data[0] > self.through_of.get(name, -1):
                    self.through_of[name] = data[0]
                if self.plan.clones:
                    self._count_clocks(name, data)
                elif self._seen_stats.fresh(peer, data[0]):
                    self._count(_logical(name), data)
            elif what == "unpaired":
                self.unpairing.discard(_logical(name))
                self.remote.hold_pruning(False)     # (§5.3 held since its pair started)
            elif what in ("paired", "teed", "cloned", "untee'd"):
                if what in ("teed", "untee'd"):
                    self.pairing.setdefault((what, data[0], data[1]), {})[name] = data[2]
                else:
                    self.pairing[(what, name)] = data
            elif what == "record":
                vertex, i, record = data
                rec, feeder = self.recovering.get(instance_name(vertex, i)), _logical(name)
                # The first hand-over wins: a feeder that answered and then died, whose
                # failover was asked again, answers twice (the second may come late).
                if rec is not None and feeder not in rec["records"]:
                    rec["records"][feeder] = record
                    # Its own replay not done: more comes behind.  (Not a failover root's: it
                    # is ready to hand over only once its replay is computed, all of it.)
                    if feeder in self.recovering and not feeder.startswith("@root"):
                        rec["partial"].add(feeder)
            elif what == "replayed":
                (self._root_replayed if name.startswith("@root") else self._replayed)(_logical(name), data)
            elif what == "ingested":
                self._ingested(int(_logical(name).rsplit(".", 1)[1]), data)
            elif what in ("instance", "root"):
                self.reported[_logical(name)] = data
            elif what == "wal":
                self.wals.add(name)
            elif what == "checkpoint":      # §5.4 durable: the instances truncate their logs
                self._store_up.add(name)
                self._truncate(data)
            elif what == "decide":
                self.decisions.append(data)
            elif what in ("quiet", "control"):     # §4.3 an operator control (proccontrol)
                proccontrol.take(self, name, what, data)
            elif what == "policy-error":
                self.events.append({"kind": "policy-error", "vertex": data[0], "instance": None,
                                    "packet": self.fed, "error": data[1]})
            elif self.scaler is not None and self.scaler.take(name, what, data):
                pass
            else:
                self.box.ban(peer, f"unknown control message {str(what)[:40]!r}")

    def _truncate(self, notice: list) -> None:
        frame = encode(Kind.CONTROL, ["truncate", notice])
        for v, i in self.plan.instances():
            process = self.current.get(instance_name(v, i))     # (None: a scale-out's, not started yet)
            if process in self.ready and self.procs[process].is_alive():
                self.box.reply(process.encode(), frame)

    def _count_clocks(self, process: str, data: list) -> None:
        """§5.3 a batch's counters with clones: per clock, each counted once of the logical
        instance (the two copies of a pair send the same clocks in batches of their own);
        alerts once per (kind, host, clock), as the sim's pairs."""
        name = _logical(process)
        through, clocks, alerts = data[0], data[7], data[2]
        mark = self._count_mark.get(name, -1)
        fresh = [row for row in clocks or () if row[0] > mark]
        keys = self._alert_keys.setdefault(name, set())
        kept = []
        for a in alerts:
            key = (a[2], a[3], a[5])
            if key in keys:
                self.dup["alerts"] += 1
                if "no-dup-suppression" not in self.plan.breaks:
                    continue
            keys.add(key)
            kept.append(a)
        self._count_mark[name] = max(mark, through)
        counters = [sum(row[k] for row in fresh) for k in (1, 2, 3, 4)]
        self._count(name, [through, counters, kept, sum(row[5] for row in fresh), *data[4:7]])

    def _fresh_out(self, process: str, data: list) -> list:
        """§5.3 a sink's output with clones: each packet once per logical instance, by clock."""
        name = _logical(process)
        mark = self._out_mark.get(name, -1)
        rows = data[1]
        if rows[0][1] <= mark:
            fresh = [r for r in rows if r[1] > mark]
            self.dup["outputs"] += len(rows) - len(fresh)
            if "no-dup-suppression" not in self.plan.breaks:
                rows = fresh
        self._out_mark[name] = max(mark, data[0])
        return rows

    def _count(self, name: str, data: list) -> None:
        """A batch's counters, alerts and outputs of an instance (recover: what survives it)."""
        _, counters, alerts, out, first_error, _, state_error = data[:7]
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = _no_stats()
        st["counters"] = [a + b for a, b in zip(st["counters"], counters, strict=True)]
        st["alerts"] += alerts
        st["packets_out"] += out
        if st["first_error"] is None:
            st["first_error"] = first_error
        if st["state_error"] is None:
            st["state_error"] = state_error

    def _send(self, r: int, frame: bytes, kept: bool = False) -> None:
        """Send to root ``r``, serving the workers while it has no room (back-pressure).
        If the root fails over meanwhile, a ``kept`` batch is in its failover's replay;
        anything else goes to the failover."""
        while True:
            sock = self.inputs[r]
            poller = zmq.Poller()
            poller.register(self.box.sock, zmq.POLLIN)
            poller.register(sock, zmq.POLLOUT)
            while not sock.closed:
                try:
                    sock.send(frame, zmq.NOBLOCK, copy=False)
                    return
                except zmq.Again:
                    pass
                events = self.guard.poll(poller, 1000)
                if events.get(self.box.sock):
                    self._take()
                self._check_beats()
            if kept:
                return

    def _feed(self, records: Iterable[tuple[int, bytes] | None], progress: Callable[[int], None] | None) -> None:
        """Send the records to the roots in batches; a ``None`` record says nothing more is
        ready now (``chc serve``'s paced replay): what is pending goes at once."""
        size = self.plan.batch_size
        n = self.chain.roots
        batches: list[list] = [[] for _ in range(n)]
        pending = 0
        self._last_lease = time.monotonic()
        kills = [k for k in self.kills if not k.during]
        timed = self.scaler is not None and bool(self.scaler.timed)
        index = 0
        for rec in records:
            if rec is None:
                if pending:
                    self._sent(batches, pending, progress, kills)
                    pending = 0
                self._service(0)        # (idle input: a worker's death is seen now)
                continue
            ts, data = rec
            # (events at a time: when this packet arrives, by the scenario's pacing)
            vt = self.pacer.arrival(ts, len(data)) if timed else None
            if self.scaler is not None and (self.decisions or self.scaler.due(index, vt)):
                if pending:             # (§5.1 the barrier: what came before it goes first)
                    self._sent(batches, pending, progress, kills)
                    pending = 0
                self.scaler.run_due(index, vt)
                self._decided(index)
            r = 0
            if n > 1:
                p = Packet(data, ts, index)
                if p.l3 and p.malformed is None:
                    r = root_index(p, n)
            batches[r].append([ts, data, index])
            index += 1
            pending += 1
            if pending >= size:
                self._sent(batches, pending, progress, kills)
                pending = 0
        if pending:
            self._sent(batches, pending, progress, kills)
        self._clones_expired()
        if self.pairs:
            self.resolve_due(final=True)       # (§5.3 one copy of each pair sees the end)
            self._kill_due(kills)           # (those that waited for the pair)
        for kill in kills:              # (past the input: never done, and said so)
            self.events.append({"kind": "kill-skipped", "process": kill.process, "packet": self.fed,
                                "reason": f"the input ended before packet {kill.at}"})
        if self.scaler is not None:
            self.scaler.expire()
        for r in range(len(self.inputs)):
            self._tell_root(r, "end")

    def _sent(self, batches: list[list], pending: int, progress: Callable[[int], None] | None,
              kills: list[Kill]) -> None:
        """The ``pending`` records in ``batches`` to the roots; the kills now due."""
        ctrlc.poll()
        self._flush(batches)
        if progress is not None:
            progress(pending)
        self.fed += pending
        if self.pairs:
            self.resolve_due()
        if self.deferred_clones:
            self._clones_due()
        self._kill_due(kills)
        if self.store is not None and time.monotonic() - self._last_lease > 5:
            self.store.renew_lease()
            self._last_lease = time.monotonic()

    def _tell_root(self, r: int, what: str) -> None:
        """End of input or finish to root ``r``; kept for its failover, which is told again
        (a root that dies right after one is sent never reads it)."""
        self._send(r, encode(Kind.INPUT, [what, None]))
        self.told[r].append([what, None])

    def _kill_due(self, kills: list[Kill]) -> None:
        # (§5.3 kills wait while a clone pair runs, as they wait for a scaling change; one of
        # a pair's own copies does not: the pair goes on as the other copy, _copy_died)
        while kills and kills[0].at <= self.fed and (not self.pairs or self._of_a_pair(kills[0])):
            self._kill(kills.pop(0))

    def _of_a_pair(self, kill: Kill) -> bool:
        """Whether ``kill`` is of a copy of a clone pair that runs now."""
        return (self._picked(kill) if kill.pick is not None else kill).process in self.pairs

    def _picked(self, kill: Kill) -> Kill:
        """A scenario's crash of a vertex: of its instances now (not retired), the seed's
        pick (the sim picks among the active ones so too)."""
        width = self.plan.width(kill.vertex)
        active = [i for i in range(width) if instance_name(kill.vertex, i) not in self.plan.retired] or [0]
        return dataclasses.replace(kill, instance=active[kill.pick % len(active)], pick=None)

    def _kill(self, kill: Kill) -> None:
        """``--kill``: SIGKILL the process that runs ``kill``'s instance now (deaths not
        yet seen are failed over first: a second kill of an instance kills its failover;
        the store server's waits for the failovers under way)."""
        if not kill.during:         # (during a change: now, before its go-ahead can come)
            self._service(0)
        while kill.process == STORE and self.recovering:
            # One failure after another (the sim's scenarios too): a failover under way
            # needs the store, and a store lost meanwhile is Table 3's (the run stops).
            self._service(100)
        while self.scaler is not None and self.scaler.open is not None and not kill.during:
            # §5.1 a change under way completes first (a kill at a packet is one between
            # changes; VERTEX[I]@change:K is one during a change: docs/proc.md)
            self._service(100)
        if kill.pick is not None:
            kill = self._picked(kill)
        # (during a scale-in the instance retiring in it is alive until it hands over)
        retiring = kill.during and kill.vertex == self.scaler.open["change"]["vertex"] \
            and kill.instance in self.scaler.open["change"]["retire"]
        if (kill.process in self.plan.retired and not retiring) or kill.process not in self.current:
            self.events.append({"kind": "kill-skipped", "process": kill.process, "packet": self.fed,
                                "reason": "retired by a scale-in before it" if kill.process in self.plan.retired
                                else "no such instance (yet): no scale-out added it"})
            return
        name = self.current[kill.process]
        if kill.clone:
            if kill.process not in self.pairs:
                self.events.append({"kind": "kill-skipped", "process": f"{kill.process}~", "packet": self.fed,
                                    "reason": "no clone pair of it ran then"})
                return
            name = self.pairs[kill.process]["clone"]
        p = self.procs[name]
        self._killed[name] = (time.perf_counter(), self.fed, self.fed if kill.during else kill.at)
        p.kill()                # multiprocessing: SIGKILL
        p.join(5)               # gone before the next kill looks for the instance's process
        # ...and its death handled (failed over) before the next kill: join may read the exit
        # status from the sentinel before it reads as ended, and a poll then missed it (CI: a
        # store kill right after an NF kill came before the NF failover it must wait for).
        deadline = time.monotonic() + REPORT_GRACE_S
        while p.sentinel in self.guard.sentinels and time.monotonic() < deadline:
            self._service(10)

    def _flush(self, batches: list[list]) -> None:
        for r, rows in enumerate(batches):
            if rows:
                if self.plan.recover:       # §5.4 kept until the root's floor passes it
                    self.kept_input[r].append((self.sent_batches[r], rows))
                    self.sent_batches[r] += 1
                self._send(r, encode(Kind.INPUT, ["batch", rows]), self.plan.recover)
                batches[r] = []
        if self.box.sock.poll(0):
            self._take()

    def _finish(self) -> None:
        """Drain: every instance reported, then every root, then the store's final state."""
        instances = [instance_name(v, i) for v, i in self.plan.instances()]
        while any(n not in self.reported for n in instances) or self.recovering:
            self._service(1000)
        self._decisions_expired()
        for r in range(len(self.inputs)):
            self._tell_root(r, "finish")
        roots = [root_name(r) for r in range(self.chain.roots)]
        while any(n not in self.reported for n in roots):
            self._service(1000)
        if self.plan.checkpoint_s:
            # §5.4 everything the workers did is durable before they go with their logs
            self.remote.checkpoint()
        self._bye = True
        bye = encode(Kind.CONTROL, ["bye", None])
        for name in roots + instances + [manager_name(v) for v in self.plan.managers]:
            self.box.reply(self.current[name].encode(), bye)     # everything has arrived: the workers may go
        if self.scaler is not None:
            self.scaler.end_spares()
        store = self.remote if self.remote is not None else self.store
        if self.model != "T":
            self.final_state = {name: store.objects(name) for name in self.chain.vertices}
        if self.remote is not None:
            # Its reply may still be on the way when the store's exit is seen (a large one
            # is: the recorded serialization), and that exit is then no failure.
            self._store_stopping = True
            try:
                self.store_stats = self.remote.stop()
            except StoreLost as exc:        # (gone while stopping: the state was read already)
                log.warning("proc runtime: %s", exc)
                self.store_stats = {"lost": str(exc)}
            if self.plan.record:
                self.serial = procstore.frames(os.path.join(self.plan.directory, procstore.SERIAL))
        self.packets_out = sum((self._instance_report(n) if not n.startswith("@") else r)["packets_out"]
                               for n, r in self.reported.items())

    def _stop(self) -> None:
        """Whatever still runs is killed and reaped; the sockets and the directory go.  After
        a finished run the workers that reported (and dismissed spares) may exit on their
        own for :data:`STOP_GRACE_S` in all; after a failed or interrupted one none waits.
        (Each had 2 s in turn: a Ctrl-C's stop took up to 24 s, silently, and a second
        Ctrl-C inside it left the workers running and the interpreter's exit joined them
        for good.)"""
        try:
            dismissed = self.scaler.dismissed if self.scaler is not None else ()
            done = [p for name, p in self.procs.items()
                    if not self._abandoned and (_logical(name) in self.reported or name in dismissed
                                                or (_logical(name) == STORE and self.store_stats))]
            self._kill_all(spare=done)
            _join_all(done, STOP_GRACE_S, "exit")
        finally:
            try:
                self._kill_all()            # (also when a second Ctrl-C cut the wait short)
                _join_all(list(self.procs.values()), KILLED_S, "be reaped")
                if self.ctx is not None:
                    self.ctx.destroy(linger=0)
                    self.ctx = None
                if self.directory:
                    shutil.rmtree(self.directory, ignore_errors=True)
            finally:
                self._end_forkserver()

    def _end_forkserver(self) -> None:
        """The forkserver stops with the last run of this process that forks from it, once
        every worker it forked is reaped (each holds the pipe it waits on), and so does the
        resource tracker if these runs started it.  They ended only when they saw the
        coordinator's process end: the forkserver outlived a finished, failed or
        interrupted ``chc run`` by up to 1.4 s (a new user's trial), a library run for as
        long as its process lived.  Stopping them takes 0.01-0.4 s; a next run in this
        process starts them again (0.3-1.5 s on a loaded two-core machine:
        :func:`forkserver_kept` keeps it over several)."""
        if self._forking:
            self._forking = False
            _forking_ends(list(self.procs.values()))

    def _kill_all(self, spare: Iterable[Any] = (), checked: bool = True) -> None:
        """SIGKILL every worker still running but those in ``spare``.  Not ``checked``: from
        a signal handler (a second Ctrl-C of chc check, chc.ctrlc), each is killed without
        reading its exit status, which the code it interrupted may be reading."""
        keep = {id(p) for p in spare}
        for p in list(self.procs.values()):
            if id(p) not in keep and (not checked or p.exitcode is None):
                with contextlib.suppress(ValueError):     # (closed)
                    p.kill()

    @property
    def pids(self) -> dict[str, int]:
        """The workers' process ids (tests check that none outlives the run)."""
        return {name: p.pid for name, p in self.procs.items()}

    # -- results ---------------------------------------------------------------------------
    def recorded(self, recorder: Any) -> list[tuple[int, int]]:
        """With ``record``: give ``recorder`` (:class:`~chc.coe.Serialization`) the store
        server's serialization, in its order; return the roots' deletions from their
        packet logs as ``(clock, position)``: a deletion after a root's n-th pull of
        commit reports is placed at that pull (§5.4: it may delete a packet only once
        every update of it was applied, which it learns from those reports).  A root
        that was failed over reports its failover's deletions alone."""
        pulls = storeserver.recorded_steps(self.serial, recorder)
        deleted = []
        for name, rep in self.reported.items():
            if not name.startswith("@root"):
                continue
            flat, marks = rep.get("deleted", ()), pulls.get(rep.get("process", ""), [])
            if flat and flat[-1] > len(marks):
                # (a miscount would place every later deletion wrongly: not guessed)
                raise RuntimeError(f"{rep.get('process')} counted {flat[-1]} commit pulls, the store server "
                                   f"recorded {len(marks)}")
            deleted += [(clock, marks[n - 1] if n else 0) for clock, n in zip(flat[::2], flat[1::2], strict=True)]
        return deleted

    def issued_updates(self) -> list:
        """With ``record``: every update the instances issued, as ``(key, tag)`` (the
        checker's exactly-once comparison); with recovery, also those of processes that
        were killed (sent with every batch's stats), and their failovers' replays."""
        return self.issued + [x for rep in self.reported.values() for x in rep.get("issued", ())]

    def logical_state(self) -> dict[str, dict]:
        if self.model == "T":
            out = {}
            for name in self.chain.vertices:
                states = [self.reported[instance_name(name, i)]["state"] for i in range(self.plan.width(name))]
                out[name] = merge_states(states)
            return out
        out = {}
        for name, v in self.chain.vertices.items():
            handles = {obj: LocalObject(decl, v.config) for obj, decl in v.nf.state_objects().items()}
            out[name] = stored_state(handles, self.final_state.get(name, {}))
        return out

    def _instance_report(self, name: str) -> dict:
        """What an instance counted: with recovery, the sum of its batches' stats (a failed
        process's final report is lost with it); else its final report."""
        rep = self.reported[name]
        if not self.plan.recover:
            return rep
        st = self.stats.get(name, _no_stats())
        return {**rep, "counters": dict(zip(("packets_in", "packets_out", "dropped", "nf_errors"), st["counters"],
                                            strict=True)),
                "alerts": st["alerts"], "packets_out": st["packets_out"], "first_error": st["first_error"],
                "state_error": st["state_error"] or rep.get("state_error")}

    def alerts(self) -> list[dict]:
        found = [Alert(*row) for n in self.reported for row in
                 (self._instance_report(n)["alerts"] if not n.startswith("@") else ())]
        found.sort(key=lambda a: (a.clock, a.vertex, a.kind, a.host))
        return [a.as_json() for a in found]

    def summary(self) -> Summary:
        roots = [self.reported[root_name(r)] for r in range(self.chain.roots)]
        total = {k: sum(r["counters"][k] for r in roots) for k in roots[0]["counters"]}
        s = Summary(chain=self.chain.name, model=self.model, packets_in=total["packets_in"],
                    packets_out=self.packets_out, malformed=total["malformed"], non_ip=total["non_ip"],
                    bypassed=total["bypassed"], elapsed_s=self.elapsed)
        s.runtime = self.name
        s.alerts = self.alerts()
        s.events = list(self.events)
        dropped = total["dropped"]
        flowmaps = self.plan.flowmaps()
        scaler = self.scaler
        refused: list[str] = []
        for name, v in self.chain.vertices.items():
            width = self.plan.width(name)
            reps = [self._instance_report(instance_name(name, i)) for i in range(width)]
            retired = scaler.retired[name] if scaler else 0
            # (active at the end, as the sim counts them: every one started, less the retired)
            stats = {"nf": v.nf.kind, "instances": width - retired, "retired": retired,
                     "offpath": v.offpath,
                     **{k: sum(r["counters"][k] for r in reps) for k in ("packets_in", "packets_out", "dropped",
                                                                          "nf_errors")},
                     "alerts": sum(len(r["alerts"]) for r in reps), "scope": flowmaps[name].scope.name,
                     "sizes": scaler.sizes[name] if scaler else [v.parallelism]}
            s.vertices[name] = stats
            s.nf_errors += stats["nf_errors"]
            s.errors += [r["first_error"] for r in reps if r["first_error"]]
            refused += [r["state_error"] for r in reps if r.get("state_error")]
            if not v.offpath:
                dropped += stats["dropped"]
        s.dropped = dropped
        s.digest_state(self.logical_state())
        for r in refused:                   # (the store never held what the NF wrote; or, model T,
            s.no_state(r)                   # an instance's own state could not be sent: as the sim)
        clients = [r["client"] for r in self.reported.values() if r.get("client")]
        round_trips = (self.store_stats.get("round_trips", 0) if self.remote is not None
                       else sum(r["round_trips"] for r in self.reported.values()))
        s.store = {"backend": self._backend(),
                   "model": self.model, **{k: sum(c[k] for c in clients)
                                           for k in ("blocking_ops", "nonblocking_ops", "cache_hits")},
                   "round_trips": round_trips if self.model != "T" else 0}
        log = {k: sum(r["log"][k] for r in roots) for k in ("logged", "deleted", "remaining", "dropped_overflow")}
        s.log = {**log, "mode": self.plan.log_mode, "roots": len(roots)}
        return s


def _no_stats() -> dict:
    """An instance's counters from its batches' stats (recovery on), none yet."""
    return {"counters": [0, 0, 0, 0], "alerts": [], "packets_out": 0, "first_error": None, "state_error": None}


@dataclasses.dataclass(frozen=True)
class Kill:
    """``--kill VERTEX[I]@N``: SIGKILL the process of ``vertex[instance]`` once N input
    packets have been fed; ``VERTEX[I]@change:K``: during the K-th scaling change, past
    its barrier and before the instances are told of it; ``VERTEX[I]~@N``: the clone of
    the instance's running clone pair (docs/proc.md)."""

    vertex: str                     # ROOT for a root
    instance: int
    at: int
    during: int = 0                 # the change (1, 2, ...) it kills during; 0: at ``at``
    pick: int | None = None         # a scenario's crash of a vertex: of its instances then, this one
    clone: bool = False             # §5.3 the clone of the instance's pair (not its straggler)

    @property
    def process(self) -> str:
        """The logical process it kills (a root, the store server, or an NF instance)."""
        if self.vertex == ROOT:
            return root_name(self.instance)
        if managed_vertex(self.vertex) is not None:
            return self.vertex
        return STORE if self.vertex == STORE_KILL else instance_name(self.vertex, self.instance)


ROOT = "root"           # --kill root[R]@N: root R (unless a vertex has that name)
STORE_KILL = "store"    # --kill store@N: the store server (unless a vertex has that name)


@contextlib.contextmanager
def forkserver_kept() -> Iterator[None]:
    """The forkserver kept for the runs inside, one after another (chc check's seeds: each
    would start it again, 0.3-1.5 s), and stopped at the end as a run's own is."""
    with _ENVIRON:
        if not _FORKING["runs"]:
            _FORKING["tracker"] = not _tracker_running()
        _FORKING["runs"] += 1
    try:
        yield
    finally:
        _forking_ends([])


def _forking_ends(procs: list[Any]) -> None:
    """A run (with its ``procs``) or a :func:`forkserver_kept` block has ended: the last one
    stops the forkserver, unless a process it forked still runs (each holds the pipe the
    forkserver waits on: the stop would wait for it; they end together later)."""
    with _ENVIRON:
        _FORKING["runs"] -= 1
        unreaped = _FORKING["unreaped"] = [p for p in [*_FORKING["unreaped"], *procs] if _running(p)]
        if not _FORKING["runs"] and not unreaped:
            stop_forkserver(tracker=_FORKING["tracker"])


def _running(p: Any) -> bool:
    try:
        return p.exitcode is None
    except ValueError:                  # (closed: reaped)
        return False


def stop_forkserver(tracker: bool = False) -> None:
    """Stop multiprocessing's forkserver of this process, if one runs, and (``tracker``) its
    resource tracker, and wait for their ends.  Only once no process the forkserver forked
    runs: it waits until every one has closed its pipe.  Private API: the standard library
    has no public way to stop either (``_stop`` is what its own tests use; 3.11-3.13 have
    it), so each is looked up and skipped when absent: it then ends, as before, once it
    sees this process end."""
    helpers = [(multiprocessing.forkserver, "_forkserver")]
    if tracker:
        helpers.append((multiprocessing.resource_tracker, "_resource_tracker"))
    # (a Ctrl-C or SIGTERM waits the few ms: raised inside a stop, it left it half done)
    main = threading.current_thread() is threading.main_thread()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) if main else None
    try:
        for module, name in helpers:
            stop = getattr(getattr(module, name, None), "_stop", None)
            if stop is None:
                continue
            try:
                stop()
            except (OSError, ChildProcessError) as exc:     # (already reaped, its socket file gone)
                log.debug("proc runtime: stopping %s: %s", name, exc)
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _tracker_running() -> bool:
    """Whether multiprocessing's resource tracker runs for this process already (started by
    its own use of multiprocessing: then not ours to stop)."""
    tracker = getattr(multiprocessing.resource_tracker, "_resource_tracker", None)
    return getattr(tracker, "_fd", 1) is not None


def _join_all(procs: list[Any], within_s: float, what: str) -> None:
    """Wait for ``procs`` to end, all of them within ``within_s`` (one deadline, not one
    each); a wait past :data:`SAY_WAIT_S` says so."""
    start = time.monotonic()
    deadline, said = start + within_s, False
    for p in procs:
        while p.exitcode is None:
            now = time.monotonic()
            if now >= deadline:
                return
            if not said and now - start >= SAY_WAIT_S:
                left = sum(q.exitcode is None for q in procs)
                log.warning("proc runtime: waiting up to %.1f s more for %d worker%s to %s",
                            deadline - now, left, "s" if left > 1 else "", what)
                said = True
            p.join(min(deadline - now, SAY_WAIT_S) if not said else deadline - now)


def parse_kill(text: str, chain: Chain) -> Kill:
    """``VERTEX[I]@N`` (``VERTEX@N``: instance 0), ``root[R]@N`` or ``store@N``, or any of
    them ``@change:K`` (during the K-th scaling change), or ``manager:VERTEX@N`` (a vertex
    manager's process), or ``VERTEX[I]~@N`` (the clone of the instance's clone pair that
    runs then); a one-line ValueError otherwise."""
    m = re.fullmatch(r"manager:([\w.-]+)@(\d+)", text.strip())
    if m is not None:
        v = chain.vertices.get(m.group(1))
        if v is None or v.scaling is None:
            raise ValueError(f"--kill {text!r}: no vertex {m.group(1)!r} with a scaling policy (vertices with "
                             f"a manager: {', '.join(n for n, x in chain.vertices.items() if x.scaling) or 'none'})")
        return Kill(manager_name(m.group(1)), 0, int(m.group(2)))
    m = re.fullmatch(r"([\w.-]+)(?:\[(\d+)\])?(~)?@(change:)?(\d+)", text.strip())
    if m is None:
        raise ValueError(f"--kill {text!r}: expected VERTEX[I]@PACKETS, root[R]@PACKETS, store@PACKETS, "
                         "VERTEX[I]@change:K, VERTEX[I]~@PACKETS (a clone) or manager:VERTEX@PACKETS, "
                         "e.g. nat[0]@1000")
    vertex, i, clone, at = m.group(1), int(m.group(2) or 0), bool(m.group(3)), int(m.group(5))
    during, at = (at, 0) if m.group(4) else (0, at)
    if clone and (during or vertex in (STORE_KILL, ROOT) and vertex not in chain.vertices):
        raise ValueError(f"--kill {text!r}: a clone (~) is an NF instance's, at an input packet "
                         "(no change runs while a clone pair does)")
    if m.group(4) and during < 1:
        raise ValueError(f"--kill {text!r}: changes are counted from 1")
    if vertex == STORE_KILL and STORE_KILL not in chain.vertices:
        if i and not during:
            raise ValueError(f"--kill {text!r}: there is one store server (store@PACKETS)")
        return Kill(STORE_KILL, 0, at, during)
    if vertex == ROOT and ROOT not in chain.vertices:
        if i >= chain.roots:
            raise ValueError(f"--kill {text!r}: the chain has {chain.roots} root(s)")
        return Kill(ROOT, i, at, during)
    v = chain.vertices.get(vertex)
    if v is None:
        raise ValueError(f"--kill {text!r}: no vertex {vertex!r} (vertices: {', '.join(chain.vertices)})")
    # (during a change, or of a vertex its manager scales: maybe a scale-out's instance, killed
    # if it is there when the kill is due, else logged kill-skipped)
    if i >= v.parallelism and not during and v.scaling is None:
        raise ValueError(f"--kill {text!r}: {vertex} has {v.parallelism} instance(s)")
    return Kill(vertex, i, at, during, clone=clone)


def crash_kill(event: Any, chain: Chain, grown: frozenset[str] | set[str] = frozenset()) -> Kill:
    """§5.4 a scenario's ``crash`` event as a real kill at its input packet: ``vertex[i]``,
    ``vertex`` (one of its instances when the kill is due, by the seed's ``pick``, as the
    sim picks among the active ones), ``root[R]`` or ``store``; a one-line ValueError.
    ``copy: clone`` kills the clone of the instance's clone pair that runs then (§5.3);
    ``grown``: the vertices a scale-out of the scenario adds instances to."""
    where = f"crash of {event.target}"
    copy = event.params.get("copy", "straggler")
    if copy not in ("straggler", "clone"):
        raise ValueError(f"{where}: copy is straggler (the default: the instance's own process) or clone, "
                         f"not {copy!r}")
    if event.at_packet is None:
        raise ValueError(_at_a_time(event))
    target = event.target or ""
    name, bracket, rest = target.partition("[")
    if name in (STORE_KILL, ROOT) and name not in chain.vertices:
        if copy == "clone":
            raise ValueError(f"{where}: copy: clone is an NF instance's (a root or the store has no clone)")
        return parse_kill(f"{target}@{event.at_packet}", chain)
    if name not in chain.vertices:
        raise ValueError(f"{where}: no vertex {name!r} (vertices: {', '.join(chain.vertices)})")
    if bracket:
        i, v = int(rest.rstrip("]")), chain.vertices[name]
        if i >= v.parallelism and name not in grown and v.scaling is None:
            # (as the sim refuses it, and --kill: it would never be made)
            raise ValueError(f"{where}: {name} has instances 0-{v.parallelism - 1}")
        return Kill(name, i, event.at_packet, clone=copy == "clone")
    return Kill(name, 0, event.at_packet, pick=int(event.params.get("pick", 0)), clone=copy == "clone")


def _at_a_time(event: Any) -> str:
    return (f"crash of {event.target} at {event.at_time_ns / 1000:g} µs: the proc runtime kills at input packets "
            "(at: {packets: N}); a time is the sim's virtual time")


def _say_failover(event: dict, dead: str, pid: int, new: str) -> None:
    """A failover, on the log: a warning when the process died by itself, an info line
    when it was a --kill of ours (chc check printed a warning for every seed's kill)."""
    log.log(logging.INFO if "killed_at_packet" in event else logging.WARNING,
            "proc runtime: %s (pid %s) %s; failing over to %s", dead, pid, event["how"], new)


def _check_recoverable(chain: Chain, model: str, store_url: str, log_mode: str, kills: list[Kill],
                       cause: str = "--kill") -> None:
    """What NF failover over processes needs (one-line ValueErrors, naming the ``cause``:
    ``--kill``, a scenario's crash or ``--failover``)."""
    def of(target: str) -> str:
        return f"{cause} {target}" if cause == "--kill" else f"{cause} of the {target}"
    if model == "T" and any(k.vertex == STORE_KILL for k in kills):
        raise ValueError(f"{of('store')}: in model T the NFs' state lives inside their instances: there is no "
                         "store server to kill (store failover needs EO, EO+C or EO+C+NA)")
    if model == "T":
        raise ValueError(f"{cause}: in model T an instance's state lives inside it and dies with it "
                         "(R1 needs an externalized model: EO, EO+C or EO+C+NA)")
    if log_mode == "off":
        raise ValueError(f"{cause}: with the packet log off there is nothing to replay")
    if not recoverable_url(store_url) and any(k.vertex == STORE_KILL for k in kills):
        what = "a Redis Cluster" if store_url.startswith("redis-cluster") else "several servers"
        raise ValueError(f"{of('store')}: store failover needs the default store server or one Redis server; "
                         f"{redact(store_url)} is {what} (each would be a store instance of its own, docs/proc.md); "
                         "NF and root kills recover there")
    if any(k.vertex == STORE_KILL for k in kills) and log_mode != "local":
        raise ValueError(f"{of('store')}: the failover store server is rebuilt from checkpoints and the instances' "
                         "logs; the roots' writes of a packet log in the store (--packet-log store) are not "
                         "logged (docs/proc.md)")
    if any(k.vertex == ROOT for k in kills) and log_mode != "local":
        raise ValueError(f"{of('root')}: a failover root rebuilds its packet log from the input it replays "
                         "(docs/proc.md); with the log in the store (--packet-log store) it is not recovered here")


def _merged(a: list, b: list) -> list:
    """§5.3 one record of what an upstream in a clone pair sent: its two copies' records
    (``[rows, watermark, ended, report throughs, through]``), each clock once."""
    seen = {row[3] for row in a[0]}
    rows = sorted(a[0] + [row for row in b[0] if row[3] not in seen], key=lambda row: row[3])
    throughs = {r: max(t, b[3].get(r, -1)) for r, t in a[3].items()} | {r: t for r, t in b[3].items()
                                                                          if r not in a[3]}
    return [rows, max(a[1], b[1]), a[2] or b[2], throughs, max(a[4], b[4])]


def _check_clonable(chain: Chain, model: str, log_mode: str, target: str, runtime: str) -> None:
    """What clones over processes need (one-line ValueErrors; docs/proc.md, "Clones")."""
    what = f"clone of {target}"
    if runtime != "proc":
        raise ValueError(f"{what}: clones run on --runtime proc and sim; not yet on {runtime} (docs/proc.md)")
    if model == "T":
        raise ValueError(f"{what}: in model T an instance's state lives inside it, and a clone starts from the "
                         "state in the store (§5.3 needs an externalized model: EO, EO+C or EO+C+NA)")
    if log_mode == "off":
        raise ValueError(f"{what}: with the packet log off the upstreams keep nothing a clone could take over")


def _how(p: Any, short: bool = False) -> str:
    """How a worker ended, from its exit code (a Ray actor's host says it itself)."""
    if hasattr(p, "how"):
        return p.how
    if p.exitcode and p.exitcode < 0:
        return f"{'' if short else 'was '}killed by signal {-p.exitcode}"
    return f"exit code {p.exitcode}" if short else f"exited with code {p.exitcode}"


def _logical(name: str) -> str:
    return logical(name.encode()).decode()


def _out_packet(ts: int, clock: int, frame: bytes) -> Packet:
    p = Packet(frame, ts)
    p.clock = clock
    return p
