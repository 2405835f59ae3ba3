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
datastore); with ``--store redis://...`` each process has its own connection
to Redis.  They are started with multiprocessing's ``forkserver`` method: a
clean server process (started once, with chc imported) forks each worker, so a
worker starts in milliseconds without inheriting the coordinator's sockets,
threads or open capture, which ``fork`` from the coordinator would copy and
``spawn`` would avoid only at a fresh interpreter's start-up per worker.  All
endpoints are ``ipc://`` sockets in a private temporary directory (mode 0700),
removed at the end.

No orphans.  The coordinator watches every worker's sentinel: a worker that
dies before it has reported stops the run (:class:`ProcFailure`, one line,
exit code 1; recovery is not there yet), and every other worker is killed.
Every worker watches the coordinator's sentinel and exits when it dies,
however it dies (also by SIGKILL).  On the way out, normal or not, whatever
still runs is killed and reaped.

End of input, Ctrl-C and SIGTERM.  At the end of the feed (its end, ``-c``, or
the first Ctrl-C or SIGTERM, which end the feed) the coordinator sends the
roots end-of-input, which follows the last packets through the chain; each
instance then fires its timers, settles its store client and reports; the
roots apply every report and pull the last commit reports; the coordinator
reads the final state from the store and stops the store server.  A second
Ctrl-C aborts (the workers are killed).  Workers ignore SIGINT: a terminal's
Ctrl-C reaches the whole process group, and it is the coordinator's to handle.

Not yet: scenario events (scaling, clones, crashes) and delay models, which
are the sim's; real kills with recovery; placement on other hosts (Ray).
"""

from __future__ import annotations

import multiprocessing
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from ..core.state import LocalObject
from ..nf import Alert
from ..packet import Packet
from ..spec import Chain
from ..summary import Summary, merge_states, state_digest
from . import procworker, storeserver
from .errors import ProcFailure
from .procio import Guard
from .procworker import COORDINATOR, STORE, Plan, instance_name, root_name
from .sim import DEFAULT_BATCH, root_index, stored_state
from .wire import Kind, Mailbox, dealer, encode, endpoint

START_TIMEOUT_S = 60.0          # workers not ready by then: the run fails
# Imported once by the forkserver, so a forked worker starts with chc loaded.
PRELOAD = ["chc.runtime.procboot", "chc.cli", "chc.runtime.procworker", "chc.runtime.storeserver"]
REPORT_GRACE_S = 5.0            # a worker that exited 0 has this long to be heard


class ProcRuntime:
    """The coordinator of a ``proc`` run: the interface of :class:`~chc.runtime.sim.SimRuntime`
    that ``chc run`` uses (``run``, ``summary``, ``logical_state``)."""

    def __init__(self, chain: Chain, model: str = "T", batch_size: int = DEFAULT_BATCH, store: Any = None, *,
                 store_url: str = "memory", namespace: str = "chc", tls: dict | None = None,
                 log_mode: str = "local", log_limit: int = 0, persist_every: int = 1000,
                 write_out: bool = False, hwm: int = 8, record: bool = False, breaks: tuple[str, ...] = (),
                 break_from: int = 0) -> None:
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        scaled = [name for name, v in chain.vertices.items() if v.scaling is not None]
        if scaled:
            raise ValueError(f"--runtime proc does not scale vertices yet ({scaled[0]} has a scaling policy); "
                             "use --no-scaling, or --runtime sim")
        self.chain = chain
        self.model = model
        self.redis = store_url.startswith(("redis://", "rediss://"))
        self.store = store if self.redis else None      # the coordinator's own handle (lease, final state)
        if record and self.redis:
            raise ValueError("chc check --runtime proc records the store's serialization in the store server: "
                             "Redis applies the ops itself and reports no order; use the memory store")
        self.plan = Plan("", chain, model, batch_size, (), log_mode, log_limit, persist_every, write_out, hwm,
                         record, tuple(breaks), break_from)
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
        try:
            self._start()
            self.startup_s = time.perf_counter() - started
            self._feed(records, progress)
            self._finish()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self._stop()
            self.elapsed += time.perf_counter() - started

    def _start(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="chc-proc-")      # mode 0700: this user's alone
        plan = self.plan
        plan.directory = self.directory
        memory = not self.redis
        plan.store = ("memory", endpoint(self.directory, STORE)) if memory else ("redis", *self._redis_spec)
        self.ctx = zmq.Context()
        roots = [root_name(r) for r in range(self.chain.roots)]
        workers = roots + [instance_name(v, i) for v, i in plan.instances()]
        self.box = Mailbox(self.ctx, plan.address(COORDINATOR), "coordinator", {w.encode() for w in workers})
        mp = multiprocessing.get_context("forkserver")
        mp.set_forkserver_preload(PRELOAD)
        self.guard = Guard([], self._gone)
        self._sentinels: dict[int, str] = {}
        if memory:
            self._launch(mp, STORE, storeserver.serve, (plan.store[1], plan.record))
        for v, i in plan.instances():
            self._launch(mp, instance_name(v, i), procworker.main, (plan, "instance", (v, i)))
        for r in range(self.chain.roots):
            self._launch(mp, root_name(r), procworker.main, (plan, "root", r))
        self.inputs = [dealer(self.ctx, plan.address(name + ".in"), COORDINATOR, plan.hwm) for name in roots]
        self.remote = (storeserver.RemoteStore(self.ctx, plan.store[1], COORDINATOR, self.guard)
                       if memory else None)
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(self.ready) < len(workers):
            if time.monotonic() > deadline:
                raise ProcFailure(f"proc runtime: workers not ready after {START_TIMEOUT_S:g} s: "
                                  f"{', '.join(sorted(set(workers) - self.ready))}")
            self._service(1000)

    def _launch(self, mp: Any, name: str, target: Callable, args: tuple) -> None:
        p = mp.Process(target=target, args=args, name=f"chc {name}", daemon=True)
        p.start()
        self.procs[name] = p
        self._sentinels[p.sentinel] = name
        self.guard.sentinels.append(p.sentinel)

    def _gone(self, fd: int) -> None:
        """A worker's process ended: fine once it has reported, else the run fails."""
        name = self._sentinels[fd]
        self.guard.sentinels.remove(fd)
        p = self.procs[name]
        p.join(1)
        if name in self.reported or (name == STORE and (self.store_stats or self._store_stopping)):
            return
        if p.exitcode == 0:
            # It reported before it exited: the report may still be on its way.
            deadline = time.monotonic() + REPORT_GRACE_S
            while name not in self.reported and time.monotonic() < deadline:
                self._service(100)
            if name in self.reported:
                return
        how = f"was killed by signal {-p.exitcode}" if p.exitcode and p.exitcode < 0 else \
            f"exited with code {p.exitcode}"
        raise ProcFailure(f"proc runtime: {name} (pid {p.pid}) {how} before the end of the run; "
                          "the run stops (no recovery in the proc runtime yet)")

    def _service(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` ms for the workers; handle what they sent."""
        poller = zmq.Poller()
        poller.register(self.box.sock, zmq.POLLIN)
        if self.guard.poll(poller, timeout):
            self._take()

    def _take(self) -> None:
        for peer, (what, data) in self.box.messages(Kind.CONTROL, 2, "control"):
            name = peer.decode()
            if what == "ready":
                self.ready.add(name)
            elif what == "error":
                raise ProcFailure(f"proc runtime: {data}")
            elif what == "out":
                if self.emit is not None and data:
                    self.emit([_out_packet(ts, clock, frame) for ts, clock, frame in data])
            elif what in ("instance", "root"):
                self.reported[name] = data
            else:
                self.box.ban(peer, f"unknown control message {str(what)[:40]!r}")

    def _send(self, sock: zmq.Socket, frame: bytes) -> None:
        """Send to a root, serving the workers while it has no room (back-pressure)."""
        poller = zmq.Poller()
        poller.register(self.box.sock, zmq.POLLIN)
        poller.register(sock, zmq.POLLOUT)
        while True:
            try:
                sock.send(frame, zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                pass
            events = self.guard.poll(poller, 1000)
            if events.get(self.box.sock):
                self._take()

    def _feed(self, records: Iterable[tuple[int, bytes]], progress: Callable[[int], None] | None) -> None:
        size = self.plan.batch_size
        n = self.chain.roots
        batches: list[list] = [[] for _ in range(n)]
        pending = 0
        last_lease = time.monotonic()
        for index, (ts, data) in enumerate(records):
            r = 0
            if n > 1:
                p = Packet(data, ts, index)
                if p.l3 and p.malformed is None:
                    r = root_index(p, n)
            batches[r].append([ts, data, index])
            pending += 1
            if pending >= size:
                self._flush(batches)
                if progress is not None:
                    progress(pending)
                pending = 0
                if self.store is not None and time.monotonic() - last_lease > 5:
                    self.store.renew_lease()
                    last_lease = time.monotonic()
        if pending:
            self._flush(batches)
            if progress is not None:
                progress(pending)
        for sock in self.inputs:
            self._send(sock, encode(Kind.INPUT, ["end", None]))

    def _flush(self, batches: list[list]) -> None:
        for r, rows in enumerate(batches):
            if rows:
                self._send(self.inputs[r], encode(Kind.INPUT, ["batch", rows]))
                batches[r] = []
        if self.box.sock.poll(0):
            self._take()

    def _finish(self) -> None:
        """Drain: every instance reported, then every root, then the store's final state."""
        instances = [instance_name(v, i) for v, i in self.plan.instances()]
        while any(n not in self.reported for n in instances):
            self._service(1000)
        sent: dict[str, dict[str, int]] = {}
        for n in instances:
            for root, count in self.reported[n]["reports"].items():
                sent.setdefault(root, {})[n] = count
        for r, sock in enumerate(self.inputs):
            self._send(sock, encode(Kind.INPUT, ["finish", sent.get(root_name(r), {})]))
        roots = [root_name(r) for r in range(self.chain.roots)]
        while any(n not in self.reported for n in roots):
            self._service(1000)
        bye = encode(Kind.CONTROL, ["bye", None])
        for name in roots + instances:
            self.box.reply(name.encode(), bye)     # everything has arrived: the workers may go
        store = self.remote if self.remote is not None else self.store
        if self.model != "T":
            self.final_state = {name: store.objects(name) for name in self.chain.vertices}
        if self.remote is not None:
            # Its reply may still be on the way when the store's exit is seen (a large one
            # is: the recorded serialization), and that exit is then no failure.
            self._store_stopping = True
            self.store_stats = self.remote.stop()
            self.serial = self.store_stats.pop("serial", [])
        self.packets_out = sum(r["packets_out"] for r in self.reported.values())

    def _stop(self) -> None:
        """Whatever still runs is killed and reaped; the sockets and the directory go."""
        for name, p in self.procs.items():
            p.join(0 if name not in self.reported and not (name == STORE and self.store_stats) else 2)
            if p.is_alive():
                p.kill()
        for p in self.procs.values():
            p.join(5)
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
            self.ctx = None
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def pids(self) -> dict[str, int]:
        """The workers' process ids (tests check that none outlives the run)."""
        return {name: p.pid for name, p in self.procs.items()}

    # -- results ---------------------------------------------------------------------------
    def recorded(self, recorder: Any) -> None:
        """With ``record``: give ``recorder`` (:class:`~chc.coe.Serialization`) the store
        server's serialization, in its order."""
        storeserver.recorded_steps(self.serial, recorder)

    def logical_state(self) -> dict[str, dict]:
        if self.model == "T":
            out = {}
            for name, v in self.chain.vertices.items():
                states = [self.reported[instance_name(name, i)]["state"] for i in range(v.parallelism)]
                out[name] = merge_states(states)
            return out
        out = {}
        for name, v in self.chain.vertices.items():
            handles = {obj: LocalObject(decl, v.config) for obj, decl in v.nf.state_objects().items()}
            out[name] = stored_state(handles, self.final_state.get(name, {}))
        return out

    def alerts(self) -> list[dict]:
        found = [Alert(*row) for n, rep in self.reported.items() if "alerts" in rep for row in rep["alerts"]]
        found.sort(key=lambda a: (a.clock, a.vertex, a.kind, a.host))
        return [a.as_json() for a in found]

    def summary(self) -> Summary:
        roots = [self.reported[root_name(r)] for r in range(self.chain.roots)]
        total = {k: sum(r["counters"][k] for r in roots) for k in roots[0]["counters"]}
        s = Summary(chain=self.chain.name, model=self.model, packets_in=total["packets_in"],
                    packets_out=self.packets_out, malformed=total["malformed"], non_ip=total["non_ip"],
                    bypassed=total["bypassed"], elapsed_s=self.elapsed)
        s.runtime = "proc"
        s.alerts = self.alerts()
        dropped = total["dropped"]
        flowmaps = self.plan.flowmaps()
        for name, v in self.chain.vertices.items():
            reps = [self.reported[instance_name(name, i)] for i in range(v.parallelism)]
            stats = {"nf": v.nf.kind, "instances": v.parallelism, "retired": 0, "offpath": v.offpath,
                     **{k: sum(r["counters"][k] for r in reps) for k in ("packets_in", "packets_out", "dropped",
                                                                          "nf_errors")},
                     "alerts": sum(len(r["alerts"]) for r in reps), "scope": flowmaps[name].scope.name,
                     "sizes": [v.parallelism]}
            s.vertices[name] = stats
            s.nf_errors += stats["nf_errors"]
            s.errors += [r["first_error"] for r in reps if r["first_error"]]
            if not v.offpath:
                dropped += stats["dropped"]
        s.dropped = dropped
        s.state_digest = state_digest(self.logical_state())
        clients = [r["client"] for r in self.reported.values() if r.get("client")]
        round_trips = (self.store_stats.get("round_trips", 0) if self.remote is not None
                       else sum(r["round_trips"] for r in self.reported.values()))
        s.store = {"backend": "local" if self.model == "T" else
                   ("memory" if self.remote is not None else self.store.describe()),
                   "model": self.model, **{k: sum(c[k] for c in clients)
                                           for k in ("blocking_ops", "nonblocking_ops", "cache_hits")},
                   "round_trips": round_trips if self.model != "T" else 0}
        log = {k: sum(r["log"][k] for r in roots) for k in ("logged", "deleted", "remaining", "dropped_overflow")}
        s.log = {**log, "mode": self.plan.log_mode, "roots": len(roots)}
        return s


def _out_packet(ts: int, clock: int, frame: bytes) -> Packet:
    p = Packet(frame, ts)
    p.clock = clock
    return p
