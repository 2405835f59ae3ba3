"""The store server of the ``proc`` runtime: the store engine in its own process.

Theory of operation
-------------------
With no ``--store``, a ``proc`` run keeps NF state in the in-process store
engine (:class:`~chc.core.store.StoreEngine`, through the ``memory`` backend),
served from a process of its own: the paper's datastore (§4.3).  :func:`serve`
is that process: one ROUTER mailbox, requests applied one at a time in arrival
order (so ops on one object have one global order, as the engine requires),
each answered on the connection it came on.  ZeroMQ keeps each connection
FIFO, so a client's requests are applied in the order it sent them and its
replies come back in that order.

:class:`RemoteStore` is a client's end: the backend interface the store client
library (:class:`~chc.core.client.StoreClient`) and the root expect of
``memory`` and ``redis`` (``execute``, ``submit``, ``settle``, ownership,
callbacks, commits, ``objects``).  ``execute`` is a round trip; ``submit``
(EO+C+NA, §4.3) sends and returns, and the reply acknowledges the request when
it is read (at the next request, or when the client settles); a refused
submitted request is not acknowledged, as on Redis, and the client sends its
ops again.  The store engine's refusals (:class:`~chc.core.store.StoreError`
and its subclasses) travel back by name and are raised again at the client.
Ops refused for what they are (:class:`~chc.core.store.Refused`: an increment of
a non-number; behind Redis, a value it cannot hold) while the request's others
were applied come back as such (reply status 2: the results, and each refused
op's place and error), raised again as ``Refused`` (``execute``) or given to the
acknowledgement (``submit``), as the in-process backends do; an op whose value
the wire cannot carry is refused so at the client, before sending
(:func:`~chc.runtime.wire.sendable`).

A request the server cannot decode, or whose arguments are not what the method
takes, bans its sender (logged), answered with an error if it had a request id.

Recording (``chc check --runtime proc``, docs/coe.md).  Started with
``record=True``, the server keeps what the sim's
:class:`~chc.runtime.simnet.StoreNode` gives the COE checker's
:class:`~chc.coe.Serialization`: every instance's ``execute`` it applied, with
its answers, in the order it applied them, every ``declare``, and where each
root's pull of commit reports falls (the §5.4 log-safety check).  A client
that records sends the clock its instance is processing with each blocking
request (the packet a read is for).  Each step is encoded when it is applied
(a snapshot: a stored list lives on) and appended to a file of the run's
directory as it is applied (:class:`~chc.runtime.procstore.SerialLog`: a killed
server's steps survive it), which the coordinator reads at the end.  The roots'
metadata writes are not recorded (the sim writes them past the recorder too).  Without ``record`` nothing of this runs.

In front of Redis (§5.4; ``redis``: ``--store redis://`` with a ``--kill``,
``--failover`` or ``chc check``).  The same server, its engine the run's Redis store
(:class:`~chc.backends.redis.RedisStore`, one connection) instead of the memory
engine: Redis keeps the state and its clock log and pre-images, this server
what the instances cannot each keep for themselves (NF failover's read log,
fences and pruning holds, the reports roots pulled) and the one order the COE
checker records; every client's ops go through it.  Without those, each
process talks to Redis directly.
"""

from __future__ import annotations

import importlib
import logging
import os
import resource
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from ..backends import redis_checkpoint
from ..backends.memory import MemoryStore
from ..core.client import StoreLost, StoreUnavailable
from ..core.failover import log_reads, prune_reads
from ..core.recovery import RecoverableEngine, Stamped
from ..core.root import root_of
from ..core.store import CustomOp, ObjectKey, Op, OwnershipError, Refused, StoreError, UnstorableValue
from . import procstore
from .procio import Guard, worker_guard
from .storefailover import UNSEEN
from .wire import Kind, Mailbox, WireError, dealer, decode, encode, fields, logical, op_rows, rows_ops, sendable

log = logging.getLogger("chc.proc")

# The backend methods a client may call, with a check of their arguments.
_SERVED: dict[str, Callable[[list], bool]] = {
    "execute": lambda a: (len(a) == 1 or (len(a) == 2 and a[1].__class__ in (int, type(None))))
    and a[0].__class__ is list,
    "declare": lambda a: len(a) == 2 and a[0].__class__ is ObjectKey,
    "subscribe": lambda a: len(a) == 2 and a[0].__class__ is ObjectKey and a[1].__class__ is str,
    "notifications": lambda a: len(a) == 1 and a[0].__class__ is str,
    "release": lambda a: len(a) == 2 and a[0].__class__ is ObjectKey and a[1].__class__ is int,
    "release_instance": lambda a: len(a) == 2 and a[0].__class__ is str and a[1].__class__ is int,
    "take": lambda a: len(a) == 3 and a[0].__class__ is ObjectKey and a[1].__class__ is str
    and a[2].__class__ is int,
    "prune_below": lambda a: len(a) == 1 and a[0].__class__ is int,
    "commits": lambda a: not a or (len(a) == 1 and a[0].__class__ is int),
    "objects": lambda a: len(a) == 1 and a[0].__class__ is str,
    "keep_preimages": lambda a: not a,
    "objects_at": lambda a: len(a) == 2 and a[0].__class__ is str and a[1].__class__ is set,
}
# §5.4 NF failover (the coordinator's and a failover instance's; served only with recover=True)
_FAILOVER: dict[str, Callable[[list], bool]] = {
    "fence": lambda a: len(a) == 1 and a[0].__class__ is str,
    "hold_pruning": lambda a: len(a) == 1 and a[0].__class__ is bool,
    "replaying": lambda a: len(a) == 1 and a[0].__class__ is bool,
    "pairing": lambda a: len(a) == 3 and a[0].__class__ is bool and a[1].__class__ is list and len(a[1]) == 2
    and (a[2] is None or a[2].__class__ is list),
    "recommits": lambda a: len(a) == 1 and a[0].__class__ is int,
    "checkpoint": lambda a: not a,
    "unknown_of": lambda a: len(a) == 1 and a[0].__class__ is str,
    "read_part": lambda a: len(a) == 1 and a[0].__class__ is list and len(a[0]) == 2,
    "order": lambda a: len(a) == 1 and a[0].__class__ is list and len(a[0]) >= 3
    and all(x.__class__ is int for x in a[0]),
    "orders": lambda a: len(a) == 1 and a[0].__class__ is str,
}
LINGER_MS = 10_000         # how long the answer to stop may take to leave
STORE = "@store"           # the store server's mailbox, and its name to the coordinator
OPERATOR = "operator"      # §4.3 the client of operator controls (the coordinator records them too)
_ERRORS = {c.__name__: c for c in (StoreError, OwnershipError, StoreLost, StoreUnavailable)}
REFUSED = 2                # a reply's status: applied, but for the ops it names, refused (Refused)
_UNSENDABLE = (TypeError, ValueError, OverflowError)    # a request holding a value the wire cannot carry


class Failover:
    """§5.4 what the store server keeps for NF failover: pre-images (in the engine), the
    read log, the fenced clients of failed instances (in the mailbox: what they sent
    and arrives late is never applied), the replaying clients (their reads answered from the read
    log), and pruning held while a failover instance replays (the clock-log entries
    its replay needs stay)."""

    def __init__(self, store: MemoryStore) -> None:
        store.keep_preimages()
        self.reads: dict = {}
        self.replaying: dict[bytes, dict] = {}
        # §5.3 the copies of a clone pair: their reads of a clock the other copy read first
        # are answered from the read log (the slower copy sees what the faster one saw),
        # the others are answered by the store and logged (peer -> its read positions)
        self.pairs: set[bytes] = set()
        self.holds = 0
        self.floors: dict[int, int] = {}    # root id -> the clock log of its clocks is kept from here
        self.delivered: dict[int, list[tuple[int, int]]] = {}  # root id -> commits pulled, from its floor
        # §5.4 after a store failover: per object, the clocks whose pre-image the failover
        # store has not (left out of its checkpoint, or a Case 2 covered update)
        self.unknown: dict[ObjectKey, set[int]] = {}
        # §5 with §5.4 several roots (Plan.per_root): per logical instance, the batches it
        # ran in the order it ran them, ``[k, through, highest clock of each root so far]``
        # each, told before the batch's first op (its failover replays the same batches:
        # an instance interleaves the roots' packets as they arrive)
        self.orders: dict[str, list[list[int]]] = {}

    def commits(self, store: MemoryStore, root: int) -> list[tuple[int, int]]:
        """A root pulls its commit reports; they are kept for its successor."""
        fresh = store.commits(root)
        self.delivered.setdefault(root, []).extend(fresh)
        return fresh

    def call(self, box: Mailbox, peer: bytes, method: str, arg: Any) -> Any:
        if method == "order":           # (k-th: one sent again to a failover store is had)
            mine = self.orders.setdefault(logical(peer).decode(), [])
            if arg[0] == len(mine):
                mine.append(arg)
            return None
        if method == "orders":          # a failover instance's: what its logical instance ran
            return self.orders.get(arg, [])
        if method == "unknown_of":
            return self.unknown_of(arg)
        if method == "read_part":       # a failover instance's part of the read log (its copy)
            return [[list(slot), answers] for slot, answers in self.reads.items() if list(slot[:2]) == arg]
        if method == "recommits":       # a new root: its floor here, then every commit of its clocks
            return [self.floors.get(arg, -1), [x for pair in self.delivered.get(arg, ()) for x in pair]]
        if method == "fence":
            box.fence(arg.encode())     # what it sent and is read from now on is never applied
            return None
        if method == "hold_pruning":
            self.holds = max(self.holds + (1 if arg else -1), 0)
            return self.floors
        if arg:
            self.replaying[peer] = {}
        else:
            self.replaying.pop(peer, None)
        return None

    def pairing(self, peer: bytes, on: bool, instance: list, cursor: list | None) -> list | None:
        """§5.3 ``peer`` is (``on``) or is no longer a copy of logical instance ``instance``
        (``[vertex, i]``) in a clone pair.  Its read positions start from ``cursor`` (the
        clone: the straggler's when it was cloned), or from what the log holds of the
        instance now (the straggler: every read logged so far is its own), which is returned."""
        if not on:
            self.pairs.discard(peer)
            self.replaying.pop(peer, None)
            return None
        if cursor is None:
            mine = [[list(slot), len(answers)] for slot, answers in self.reads.items()
                    if list(slot[:2]) == instance]
        else:
            mine = cursor
        self.replaying[peer] = {tuple(slot): n for slot, n in mine}
        self.pairs.add(peer)
        return mine

    def prune_below(self, store: MemoryStore, clock: int) -> int:
        """``clock``'s root is done with its clocks below it (each root prunes its own)."""
        floors = self.floors
        root = root_of(clock)
        if self.holds > 0 or clock <= floors.get(root, -1):
            return 0
        floors[root] = clock
        prune_reads(self.reads, lambda c: c < floors.get(root_of(c), -1))
        kept = self.delivered.get(root)
        if kept:
            self.delivered[root] = [c for c in kept if c[0] >= clock]
        for key in list(self.unknown):
            self.unknown[key] = {c for c in self.unknown[key] if c >= floors.get(root_of(c), -1)}
            if not self.unknown[key]:
                del self.unknown[key]
        return store.prune_below(clock)

    def unknown_of(self, vertex: str) -> list[list]:
        """``vertex``'s objects whose pre-images of some clocks this (failover) store has not:
        ``[object name, key, clocks]`` each, for a failover instance to check its replay."""
        return [[key.obj, key.key, sorted(clocks)] for key, clocks in self.unknown.items() if key.vertex == vertex]


def serve(address: str, record: bool = False, recover: bool = False, coordinator: str = "",
          heartbeat_s: float = 0.0, directory: str = "", checkpoint_s: float = 0.0,
          me: str = STORE, restore: str = "", redis: tuple | None = None,
          per_flow: frozenset | None = None, modules: tuple[str, ...] = ()) -> None:
    """Serve a fresh memory store at ``address`` until a ``stop`` call (a process of its own),
    or with ``redis`` (URLs, namespace, TLS options) the run's Redis store, in front of it;
    ``record``: write the serialization for the COE checker to the run's ``directory``
    (module doc); ``recover``: keep what NF failover needs (:class:`Failover`);
    ``checkpoint_s``: checkpoints for store failover (:mod:`chc.runtime.procstore`),
    ``restore``: a failover store's boot state (on Redis: ``per_flow``, the chain's
    per-flow object names, :class:`CheckpointedRedis`); heartbeats to ``coordinator``
    every ``heartbeat_s`` (:mod:`chc.runtime.procio`); ``modules``: the operators' NF
    modules, imported first: the value operations they register (``chc.nf.value_op``)
    are run by the store (§4.3), which knew none of them (every op refused)."""
    guard = worker_guard(me)
    for name in modules:
        importlib.import_module(name)
    ctx = zmq.Context()
    box = Mailbox(ctx, address, "store server")
    to_coordinator = dealer(ctx, coordinator, me) if coordinator else None
    if to_coordinator is not None and heartbeat_s:
        guard.heartbeat(heartbeat_s, encode(Kind.CONTROL, ["hb", None]), to_coordinator)
    store: Any
    if redis is None:
        store = MemoryStore(RecoverableEngine() if checkpoint_s else None)
    else:
        store = redis_store(*redis, guard)
        if checkpoint_s:
            store = CheckpointedRedis(store, per_flow or frozenset())
    state = procstore.boot(restore) if restore else None
    if state is not None:
        _boot(store, box, state)
    failover = Failover(store) if recover else None
    if state is not None and failover is not None:
        failover.floors, failover.delivered, failover.reads = state["floors"], state["delivered"], state["reads"]
        failover.unknown = state["unknown"]
        failover.orders = state.get("orders") or {}
    steps = procstore.SerialLog(os.path.join(directory, procstore.SERIAL)) if record else None
    durable = None
    if checkpoint_s:
        def told(body: list) -> None:
            guard.send(to_coordinator, encode(Kind.CONTROL, ["checkpoint", body]))
        durable = procstore.Durable(store, failover, directory, checkpoint_s, told, steps)
    stopped = False
    poller = zmq.Poller()
    poller.register(box.sock, zmq.POLLIN)
    try:
        if durable is not None:
            durable.take()          # the first: a failover store's fresh start too
        while True:
            guard.poll(poller, durable.wait_ms() if durable is not None else None)
            while True:
                if durable is not None and durable.due():
                    durable.take()
                try:
                    msg = box.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if msg is not None and _handle(box, store, *msg, steps=steps, failover=failover,
                                               durable=durable):
                    stopped = True
                    return
                guard.tick()                # (a busy store server may not wait for a long time)
    except (StoreLost, StoreUnavailable) as exc:
        # The Redis server behind it went away (a checkpoint's read met it): the coordinator
        # names that in one line when this process exits; a traceback would only repeat it.
        log.debug("store server: %s", exc)
        raise SystemExit(1) from None
    finally:
        # The answer to stop must leave before the socket goes (a recorded serialization
        # is large enough to be still unsent); an abnormal end drops what is queued.
        box.close(LINGER_MS if stopped else 0)
        if to_coordinator is not None:
            # (ctx.term() waits for every socket to be closed: this one left open held the
            # exit until the coordinator gave up waiting and killed the process, 2 s a run)
            to_coordinator.close(LINGER_MS if stopped else 0)
        ctx.term()


def redis_store(urls: list[str], namespace: str, tls: dict, guard: Guard) -> Any:
    """A process's own connection to the run's Redis store (or Redis Cluster), whose
    namespace the coordinator made fresh and holds the lease of: a worker's, or this
    server's in front of it (the module doc's "In front of Redis").  Its retries keep
    the process's heartbeats going (``guard``)."""
    from ..backends import open_store
    store = open_store(",".join(urls), fresh=False, namespace=namespace, lease=False, **tls)
    store.waiting = guard.tick
    return store


class CheckpointedRedis:
    """§5.4 the run's Redis store (one server) as the store server's checkpoints take a
    store: Redis keeps TS (``keep_ts``); :class:`procstore.Durable` drains its commit
    reports into ``held`` and reads the namespace as a checkpoint
    (:mod:`chc.backends.redis_checkpoint`); a failover server writes the recovered state
    back (:meth:`boot`).  Every other call goes to the Redis store."""

    def __init__(self, redis: Any, per_flow: frozenset) -> None:
        self.redis = redis
        self.per_flow = per_flow
        self.held: dict[int, list[tuple[int, int]]] = {}     # root id -> commit reports drained for it
        self.inboxes: dict[str, list[tuple]] = {}           # a failover's callbacks, not yet fetched
        self.engine = self                                  # (what Durable asks of an engine)
        self.taken = 0
        redis.keep_ts()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.redis, name)

    def drain_commits(self) -> list[tuple[int, int]]:
        return self.redis.commits()

    def image(self, preimage_limit: int = 0) -> Any:
        self.taken += 1
        return redis_checkpoint.image(self.redis, self.taken, self.per_flow, preimage_limit)

    def commits(self, root: int | None = None) -> list[tuple[int, int]]:
        if root is not None:
            return self.held.pop(root, []) + self.redis.commits(root)
        held, self.held = self.held, {}
        return [c for v in held.values() for c in v] + self.redis.commits()

    def notifications(self, client: str) -> list[tuple]:
        box = self.inboxes.pop(client, None)
        got = self.redis.notifications(client)
        return box + got if box else got

    def boot(self, engine: RecoverableEngine) -> None:
        """A failover store: the namespace is what the failed one lost, then the recovered
        state; this server listens for the restored subscriptions' callbacks (the failed
        one's pub/sub connection died with it: without this, no callback arrived again)."""
        redis_checkpoint.wipe(self.redis)
        redis_checkpoint.restore(self.redis, engine)
        for key, clients in engine.subscribers.items():
            for client in clients:
                self.redis.subscribe(key, client)
        self.taken = engine.checkpoints


def _boot(store: Any, box: Mailbox, state: dict) -> None:
    """§5.4 a failover store server: the state recovery built (:mod:`chc.runtime.procstore`)."""
    engine = state["checkpoint"].restore(copy=False)
    if isinstance(store, CheckpointedRedis):
        store.boot(engine)
    else:
        store.engine = engine
    store.held = state["held"]
    store.inboxes.update(state["inboxes"])
    for dead in state["fenced"]:
        box.fence(dead.encode())


def _handle(box: Mailbox, store: MemoryStore, peer: bytes, kind: int, body: Any,
            steps: Any = None, failover: Failover | None = None, durable: Any = None) -> bool:
    """Apply one request; True when it was the coordinator's ``stop``.  ``steps``: the
    recording of the serialization (module doc), None when not recording."""
    try:
        if kind != Kind.CALL:
            raise WireError(f"a {Kind(kind).name} message to the store")
        rid, method, args = fields(body, 3, "store request")
        if method == "stop":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            stats = {"round_trips": store.round_trips, "ops": store.ops, "rejected": box.rejected,
                     "cpu_s": usage.ru_utime + usage.ru_stime}
            if isinstance(store, MemoryStore):
                stats["clock_log"] = len(store.engine.log_order)
            if durable is not None:
                stats["checkpoints"] = durable.taken
                stats["checkpoint_s"] = round(durable.seconds, 6)
            box.reply(peer, encode(Kind.REPLY, [rid, 1, stats]))
            return True
        check = _SERVED.get(method) or (_FAILOVER.get(method) if failover is not None else None)
        if check is None or args.__class__ is not list or not check(args):
            raise WireError(f"bad store request {str(method)[:40]!r}")
    except WireError as exc:
        _ban(box, peer, str(exc))
        return False
    try:
        rows = refused = replaying = None
        if method == "execute":
            rows = args[0]
            read_clock = args[1] if len(args) == 2 else None
            args = [rows_ops(rows)]
            if failover is not None:
                replaying = failover.replaying.get(peer)
        try:
            if failover is None:
                result = getattr(store, method)(*args)
            elif method == "checkpoint":    # §5.4 per-flow owners changed (an NF failover's end)
                if durable is not None:
                    durable.take()
                result = None
            elif method == "pairing":
                result = failover.pairing(peer, *args)
            elif method in _FAILOVER:
                result = failover.call(box, peer, method, args[0])
            elif method == "prune_below":
                result = failover.prune_below(store, args[0])
            elif method == "commits" and args:
                result = failover.commits(store, args[0])
            else:
                result = getattr(store, method)(*args)
                if method == "declare" and durable is not None:
                    durable.take()  # §5.4 durable before it is answered (no log holds declarations)
        except Refused as exc:              # (execute) these refused for what they are, the others applied
            result, refused = exc.results, _refusal_rows(args[0], exc.refused)
        paired = failover is not None and rows is not None and read_clock is not None and peer in failover.pairs
        if paired:
            # §5.3 a pair's reads: those of a clock the other copy read first are answered
            # from the read log (the checker follows the first copy's, the store's answers)
            answers = list(result)
            from_log = log_reads(failover.reads, args[0], result, read_clock, replaying, pair=True)
        # (instances' ops, not roots' metadata; §4.3 and the coordinator's operator controls)
        operator = method == "execute" and peer.startswith(b"@") and all(op.client == OPERATOR for op in args[0])
        if steps is not None and (not peer.startswith(b"@") or operator):
            if paired:
                steps.append(encode(Kind.REPLY, ["execute", rows, answers, None if from_log else read_clock]
                                    + ([[r[0] for r in refused]] if refused else [])))
            elif rows is not None:
                # The store's own answers (before a replay's reads are answered from the
                # read log, below); a replay's reads are the store's to answer, not the
                # logical chain's to follow.
                answers = result if durable is None else [     # (the answers, not their TS: §5.4)
                    r.result if r.__class__ is Stamped else r for r in result]
                steps.append(encode(Kind.REPLY, ["execute", rows, answers,
                                                 read_clock if replaying is None else None]
                                    + ([[r[0] for r in refused]] if refused else [])))
            elif method == "declare":
                steps.append(encode(Kind.REPLY, ["declare", args[0], args[1]]))
        elif steps is not None and method == "commits":
            # §5.4 where a root's pull of commit reports falls: what it deletes after it
            # must have had every update applied before it (the checker's log safety);
            # with its request id, as a pull a failover store is sent again counts once
            steps.append(encode(Kind.REPLY, ["commits", peer.decode(), rid]))
        if failover is not None and rows is not None and read_clock is not None and not paired:
            log_reads(failover.reads, args[0], result, read_clock, replaying)     # §5.4 the read log
        if method == "commits":
            result = [x for pair in result for x in pair]      # flat: a tuple each costs on the wire
        reply = [rid, 1, result] if refused is None else [rid, REFUSED, [result, refused]]
    except WireError as exc:
        _ban(box, peer, str(exc))
        return False
    except StoreError as exc:
        reply = [rid, 0, [type(exc).__name__, str(exc)]]
    try:
        frame = encode(Kind.REPLY, reply)
    except TypeError as exc:           # a stored value the wire cannot carry
        frame = encode(Kind.REPLY, [rid, 0, ["StoreError", str(exc)]])
    box.reply(peer, frame)
    return False


def _refusal_rows(ops: list[Op], refused: list) -> list[list]:
    """A :class:`Refused`'s (op, error) pairs as they travel: the op's place in the request,
    the error's class and text, and what a value the store cannot hold needs
    (:class:`UnstorableValue`: Redis behind the server)."""
    at = {id(op): i for i, op in enumerate(ops)}
    return [[at[id(op)], "UnstorableValue" if isinstance(err, UnstorableValue) else "StoreError", str(err),
             *((err.what, err.value, None if err.part is err.value else err.part)   # (None: the value itself)
               if isinstance(err, UnstorableValue) else ())]
            for op, err in refused]


def _refusals(ops: list[Op], rows: Any) -> list[tuple[Op, StoreError]]:
    """The (op, error) pairs of a reply's refusals (:func:`_refusal_rows`) of request ``ops``."""
    try:
        out = []
        for row in rows:
            err = (UnstorableValue(row[2], *row[3:6]) if row[1] == "UnstorableValue" and len(row) == 6
                   else StoreError(row[2]))
            out.append((ops[row[0]], err))
        return out
    except (TypeError, IndexError, KeyError) as exc:
        raise StoreLost(f"store server: a malformed refusal ({exc})") from None


def _in_order(ops: list[Op], *parts: list) -> list:
    """(op, error) pairs of ``parts`` merged in the order of request ``ops``."""
    at = {id(op): i for i, op in enumerate(ops)}
    return sorted((r for part in parts for r in part), key=lambda r: at[id(r[0])])


def _ban(box: Mailbox, peer: bytes, why: str) -> None:
    """Drop the peer, and say so (request id 0): a client of ours that sent it fails at once
    instead of waiting for an answer that will not come."""
    box.ban(peer, why)
    box.reply(peer, encode(Kind.REPLY, [0, 0, ["StoreLost", f"the store server dropped this client: {why}"]]))


class RemoteStore:
    """A client's connection to the store server (the ``memory`` backend's interface)."""

    name = "memory"

    def __init__(self, ctx: zmq.Context, address: str, identity: str, guard: Guard) -> None:
        self.ctx = ctx
        self.identity = identity
        self.sock = dealer(ctx, address, identity)
        self.guard = guard
        self.rid = 0
        # §5.4 store failover: every request not yet answered, sent again to a failover store
        self.unanswered: dict[int, bytes] = {}
        self.deadline = 0.0             # a server seen gone: waits give up then (0: none)
        # submitted requests not yet answered: (request id, seq, on_ack, the ops sent, the
        # (op, error) of those refused before sending)
        self.acks: deque[tuple[int, int, Callable[..., None], list[Op], list]] = deque()
        self.round_trips = 0
        self.ops = 0
        self.refused = 0                # submitted requests the store refused (not acknowledged)
        self.in_flight = 0              # the highest op seq sent and not refused (submit)
        # Answers by request id: a wait for one can run another call (the coordinator's
        # wait sees a process die and fails it over, which calls the store), whose
        # loop must not take the first one's answer (that hung a run with three kills).
        self._answers: dict[int, tuple[bool, Any]] = {}
        self.dedup = True
        # The COE checker (module doc): the clock a blocking request reads for, sent along.
        self.clock_of: Callable[[], int] | None = None

    # -- transport ---------------------------------------------------------------------
    def _send(self, method: str, args: list) -> int:
        frame = encode(Kind.CALL, [self.rid + 1, method, args])    # (TypeError: what the wire cannot carry)
        self.rid += 1
        self.unanswered[self.rid] = frame
        self.guard.send(self.sock, frame)
        return self.rid

    def detach(self) -> None:
        """§5.4 the store server died and this client's log went to its recovery: nothing
        more is taken from it (a reply read now, say a popped port, would be one the
        failover store, rolled forward from the log, does not know of); what is unanswered
        goes to the failover once re-pointed (a send meanwhile waits for that)."""
        self.sock.close(0)
        self.sock = self.ctx.socket(zmq.DEALER)     # (connected to nothing until repoint)

    def repoint(self, address: str) -> None:
        """§5.4 the store server failed over: talk to its failover at ``address`` from now
        on, and send it again every request not yet answered, in their order (replies
        still unread from the failed one are dropped with its connection)."""
        self.sock.close(0)
        self.sock = dealer(self.ctx, address, self.identity)
        for rid in sorted(self.unanswered):
            self.guard.send(self.sock, self.unanswered[rid])

    def _wait(self) -> None:
        """Wait a while for a reply (on the connection of now: a wait can re-point it)."""
        if self.deadline and time.monotonic() > self.deadline:
            raise StoreLost("store server: gone before it answered")
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        self.guard.poll(poller, 100 if self.deadline else 1000)

    def _read(self, block: bool) -> bool:
        """Take one reply (waiting for it if ``block``); it acknowledges a submitted
        request or answers the awaited one.  False when none was there."""
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
                break
            except zmq.Again:
                if not block:
                    return False
                self._wait()
        try:
            kind, body = decode(frame)
            rid, ok, payload = fields(body, 3, "store reply")
        except WireError as exc:
            raise StoreLost(f"store server: {exc}") from None
        if rid == 0:
            raise StoreLost(payload[1])
        if self.unanswered.pop(rid, None) is None:
            return True                 # (answered already: a request sent again)
        if self.acks and self.acks[0][0] == rid:
            _, seq, on_ack, sent, early = self.acks.popleft()
            if ok == REFUSED:
                on_ack(seq, _in_order(sent, early, _refusals(sent, payload[1])))
            elif ok and early:
                on_ack(seq, early)
            elif ok:
                on_ack(seq)
            else:
                self.refused += 1
                self.in_flight = 0          # every un-ACKed op goes out again with the next request
                log.warning("store refused a non-blocking request (resent with the next): %s", payload[1])
            return True
        self._answers[rid] = (ok, payload)
        return True

    def _call(self, method: str, *args: Any) -> Any:
        return self._answer(self._send(method, list(args)))

    def _answer(self, rid: int, ops: Any = None) -> Any:
        """The answer to request ``rid`` (``execute``'s: of ``ops``), waited for."""
        while rid not in self._answers:         # (not a blocking read: a call inside the wait may take it)
            if not self._read(False):
                self._wait()
        ok, payload = self._answers.pop(rid)
        if ok == REFUSED and ops is not None:
            raise Refused(_refusals(ops, payload[1]), payload[0])
        if not ok:
            raise _ERRORS.get(payload[0], StoreError)(payload[1])
        return payload

    # -- the backend interface -------------------------------------------------------------
    def execute(self, ops: list[Op]) -> list[Any]:
        self.round_trips += 1
        self.ops += len(ops)
        clock = [self.clock_of()] if self.clock_of is not None else []
        try:
            rid = self._send("execute", [op_rows(ops), *clock])
        except _UNSENDABLE:
            return self._execute_sendable(ops, clock)
        return self._answer(rid, ops)

    def _execute_sendable(self, ops: list[Op], clock: list) -> list[Any]:
        """``execute`` of a request some ops of which the wire cannot carry: those are
        refused (:func:`~chc.runtime.wire.sendable`), the others go."""
        keep, early = sendable(ops)
        got: list = []
        if keep:
            try:
                got = self._answer(self._send("execute", [op_rows(keep), *clock]), keep)
            except Refused as exc:
                got, early = exc.results, _in_order(ops, early, exc.refused)
        it = iter(got)
        bad = {id(op) for op, _ in early}
        raise Refused(early, [None if id(op) in bad else next(it) for op in ops])

    def submit(self, ops: list[Op], on_ack: Callable[[int], None]) -> None:
        # §4.3 the client resends its un-ACKed ops in front of each request (go-back-N,
        # for a lossy link).  This connection loses nothing and keeps order: ops of a
        # request not yet answered are in flight, not lost, and go out again only after
        # a refusal.  Resending them made each small request carry the whole window:
        # a failover's replay (a request per clock, §5.4) grew quadratic.
        if self.acks and self.in_flight:
            ops = [op for op in ops if op.seq > self.in_flight]
        self.round_trips += 1
        self.ops += len(ops)
        sent, early = ops, []
        try:
            rid = self._send("execute", [op_rows(ops)])
        except _UNSENDABLE:
            # Those the wire cannot carry refused here; the others go (none: an empty
            # request, whose reply acknowledges the refusals in their turn).
            sent, early = sendable(ops)
            rid = self._send("execute", [op_rows(sent)])
        self.in_flight = ops[-1].seq
        self.acks.append((rid, ops[-1].seq, on_ack, sent, early))
        while self.acks and self._read(False):
            pass

    def settle(self, resend: Callable[[], bool]) -> None:
        """Every submitted request answered; what is un-ACKed sent again until it is."""
        for _ in range(100):
            while self.acks:
                self._read(True)
            if not resend():
                return
        raise StoreLost("store server: updates still refused after 100 tries")

    def wait(self) -> None:
        while self.acks:
            self._read(True)

    def declare(self, key: ObjectKey, initial: Any) -> None:
        self._call("declare", key, list(initial) if isinstance(initial, range) else initial)

    def subscribe(self, key: ObjectKey, client: str) -> Any:
        self.round_trips += 1
        return self._call("subscribe", key, client)

    def notifications(self, client: str) -> list[tuple]:
        return self._call("notifications", client)

    def register(self, name: str, fn: CustomOp, lua: str | None = None) -> None:
        raise StoreError(f"custom operation {name!r}: the proc runtime's store server runs the built-in "
                         "operations only")

    def release(self, key: ObjectKey, instance: int) -> None:
        self._call("release", key, instance)

    def release_instance(self, vertex: str, instance: int) -> int:
        return self._call("release_instance", vertex, instance)

    def take(self, key: ObjectKey, client: str, instance: int) -> bool:
        return self._call("take", key, client, instance)

    def prune_below(self, clock: int) -> int:
        return self._call("prune_below", clock)

    def commits(self, root: int | None = None) -> list[tuple[int, int]]:
        flat = self._call("commits") if root is None else self._call("commits", root)
        return list(zip(flat[::2], flat[1::2], strict=True))

    def objects(self, vertex: str) -> dict:
        return self._call("objects", vertex)

    def keep_preimages(self) -> None:
        self._call("keep_preimages")

    def objects_at(self, vertex: str, replayed: set[int]) -> dict:
        return self._call("objects_at", vertex, replayed)

    def fence(self, identity: str) -> None:
        self._call("fence", identity)

    def hold_pruning(self, on: bool) -> dict[int, int]:
        """Hold (or release) the clock log's pruning; per root id, the clock it is kept from."""
        return self._call("hold_pruning", on)

    def replaying(self, on: bool) -> None:
        self._call("replaying", on)

    def pairing(self, on: bool, instance: list, cursor: list | None = None) -> list | None:
        """§5.3 this client is (or no longer is) a copy of ``instance`` in a clone pair (:class:`Failover`)."""
        return self._call("pairing", on, instance, cursor)

    def checkpoint(self) -> None:
        """§5.4 a checkpoint now (per-flow owners changed)."""
        self._call("checkpoint")

    def unknown_of(self, vertex: str) -> list[list]:
        """§5.4 ``vertex``'s objects whose pre-images a failover store lacks (:class:`Failover`)."""
        return self._call("unknown_of", vertex)

    def read_part(self, vertex: str, instance: int) -> dict:
        """§5.4 the read log's part of ``vertex[instance]`` (a failover instance's copy)."""
        return {tuple(slot): answers for slot, answers in self._call("read_part", [vertex, instance])}

    def order(self, record: list[int]) -> int:
        """§5 with §5.4 several roots: the batch this instance is about to run (the k-th,
        ``[k, through, highest clock of each root so far]``), told before its first op
        and not waited for here; the request id, whose answer :meth:`answered` waits for
        before the batch's output leaves (a batch seen downstream is one its failover
        replays)."""
        return self._send("order", [record])

    def answered(self, rid: int) -> None:
        self._answer(rid)

    def orders(self, instance: str) -> list[list[int]]:
        """§5 with §5.4 the batches logical ``instance`` ran, in order (:meth:`order`)."""
        return self._call("orders", instance)

    def recommits(self, root: int) -> tuple[int, list[tuple[int, int]]]:
        """Root failover: the store's floor of ``root``'s clocks, and every commit report
        of them it pulled from there (:class:`Failover`)."""
        floor, flat = self._call("recommits", root)
        return floor, list(zip(flat[::2], flat[1::2], strict=True))

    def stop(self) -> dict:
        """End the server (the coordinator's last call); its counters, and with
        ``record`` its serialization (``"serial"``: encoded steps, :func:`recorded_steps`)."""
        return self._call("stop")

    def close(self) -> None:
        self.sock.close(0)

    def describe(self) -> str:
        return "memory"


def recorded_steps(serial: list[bytes], recorder: Any) -> dict[str, list[int]]:
    """Give ``recorder`` (a :class:`~chc.coe.Serialization`) the steps a recording
    store server shipped, in its order; return, per root process, the recorder's
    position at each of its commit pulls."""
    at: list[int] = []          # the recorder's position before each frame
    pulls: dict[str, list[tuple[int, int]]] = {}     # root process -> (request id, position)
    for frame in serial:
        at.append(recorder.position)
        _, body = decode(frame)
        if body[0] == "commits":
            # (a pull sent again to a failover store, its reply lost with the failed one, is
            # the same pull: the root counted it once; its answer is the later one)
            mine = pulls.setdefault(body[1], [])
            if mine and mine[-1][0] == body[2]:
                mine.pop()
            mine.append((body[2], recorder.position))
        elif body[0] == "execute":
            recorder.request(rows_ops(body[1]), body[2], body[3], body[4] if len(body) > 4 else ())
        elif body[0] == "recover":      # §5.4 a failover store's history (chc.runtime.procstore)
            recorder.recover(at[body[1]], [(op, result if seen else UNSEEN, in_place)
                                           for op, seen, result, in_place in body[2]])
        else:
            recorder.declare(body[1], body[2])
    return {peer: [at for _, at in marks] for peer, marks in pulls.items()}
