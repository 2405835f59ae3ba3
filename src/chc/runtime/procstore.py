"""Store-server failover in the ``proc`` runtime (§5.4, Figure 7).

Theory of operation
-------------------
The sans-I/O half is :mod:`chc.core.recovery` (checkpoints with TS, write-ahead
logs, :func:`~chc.core.recovery.recover`), as in the sim's store failover
(:mod:`chc.runtime.storefailover`).  Here it is spread over processes; what must
outlive the store server is kept in files of the run's private directory (mode
0700, this user's alone; pickled, since only this run's own processes write
them), never sent over a socket:

* **Checkpoints** (:class:`Durable`, in the store server): every
  ``checkpoint_s`` and when the coordinator asks (a change of per-flow owner:
  an NF failover's end), the server moves the commit reports it owes into its
  kept reports, then writes the engine's :class:`~chc.core.recovery.Checkpoint`
  with what else only it holds (those reports, the notifications not yet
  fetched, the root floors and the reports each root pulled since its floor,
  kept for a root failover) to ``store.ckpt`` (written whole, then renamed: a
  kill leaves the previous one).  It then tells the coordinator the
  checkpoint's seq marks and TS, which every instance gets to truncate its log.
* **Write-ahead logs**: every instance's store client has one
  (:func:`~chc.core.recovery.attach_wal`, with its copy of its part of the
  read log); on a store failure the coordinator asks each live instance for it
  and the instance writes it to ``wal-<process>`` (:func:`dump_wal`).
* **Recovery** (:func:`rebuild`, in the coordinator): the latest checkpoint, the
  logs, TS selection and roll forward, exactly as the sim's; the failover
  store's boot state goes to ``store.restore`` (:func:`write_state`) and a new
  store server process starts from it (:func:`boot`).  Its owed reports are the
  ones owed at the checkpoint plus those of every re-executed update; a root
  takes each report once (:attr:`chc.core.root.Root.dedup_commits`), so one it
  had pulled from the failed server is not applied again.  The read log is
  merged from the instances' copies.
* **The COE checker's record** (``chc check``): the server appends every step
  to ``store.serial`` as it applies it (:class:`SerialLog`: one ``write`` per
  step, so a kill loses none that was applied); a recovery appends its own step
  (the frame position of the checkpoint and the re-executed updates, with the
  results the instances observed), and the failover server goes on appending.

Clients re-point (``RemoteStore.repoint``) and send again every request not
yet answered; the failover store knows their sequence marks, so nothing is
applied twice (§4.3).
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import time
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..core.failover import merge_reads
from ..core.recovery import Checkpoint, CheckpointImage, InstanceLog, Recovery, Stamp, WriteAheadLog, recover
from ..core.root import root_of
from .wire import logical

CHECKPOINT = "store.ckpt"
RESTORE = "store.restore"
SERIAL = "store.serial"
DEFAULT_CHECKPOINT_MS = 100.0
# Checkpoints take at most 1 / (1 + COST_RATIO) of the store server's time (see Durable.take).
COST_RATIO = 4.0
# Pre-images of containers longer than this stay out of checkpoints (measured: the NAT's
# 40,000-port pool, one pre-image per clock that took a port, made a checkpoint 1.3 s).
PREIMAGE_LIMIT = 1000


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic GC off while a state is (un)pickled: measured, it ran repeatedly while a
    1 MB checkpoint was read, 27-354 ms a read instead of 19 ms."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _write(path: str, data: Any) -> None:
    """Whole or not at all: a kill while writing leaves the previous file.  (No fsync:
    the failure model is a process's, not the machine's; the page cache survives it.)"""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f, _no_gc():
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def _read(path: str) -> Any:
    with open(path, "rb") as f, _no_gc():
        return pickle.load(f)


# -- the store server's side --------------------------------------------------------------------

class Durable:
    """The store server's checkpoints (module doc)."""

    def __init__(self, store: Any, failover: Any, directory: str, every_s: float,
                 told: Callable[[list], None], serial: SerialLog | None) -> None:
        self.store = store
        self.failover = failover
        self.path = os.path.join(directory, CHECKPOINT)
        self.every_s = every_s
        self.told = told
        self.serial = serial
        self.next = 0.0
        self.taken = 0
        self.seconds = 0.0              # spent taking them (the run's cost of store failover)

    def wait_ms(self) -> float:
        return max(self.next - time.monotonic(), 0.0) * 1000

    def due(self) -> bool:
        return time.monotonic() >= self.next

    def take(self) -> None:
        started = time.monotonic()
        store = self.store
        held = store.held
        for c in store.engine.drain_commits():      # §5.4 every update before it is reported
            held.setdefault(root_of(c[0]), []).append(c)
        with _no_gc():
            image = store.engine.image(PREIMAGE_LIMIT)
        f = self.failover
        write_state(self.path, image, held, store.inboxes, f.floors, f.delivered, None, [],
                    self.serial.count if self.serial is not None else 0, f.unknown)
        self.taken += 1
        number, _, ts, applied = image.parts[:4]
        self.told([number, applied, [[c, s.clock, s.seq] for c, s in ts.items()]])
        now = time.monotonic()
        self.seconds += now - started
        # The next one after the interval, or after COST_RATIO times what this one took if
        # longer: on a large Redis namespace a checkpoint took seconds, and the server did
        # little but checkpoint (a run of a review's did not end in 16 minutes).
        self.next = now + max(self.every_s, COST_RATIO * (now - started))


def write_state(path: str, ckpt: Checkpoint | CheckpointImage, held: dict, inboxes: dict, floors: dict, delivered: dict,
                reads: dict | None, fenced: list[str], serial: int, unknown: dict, orders: dict | None = None) -> None:
    """A store server's durable state: a checkpoint, or a failover store's boot state.
    ``unknown``: the pre-images a failover store of it lacks besides those the checkpoint
    left out (its own predecessor's); ``orders``: a failover store's batch orders (several
    roots; rebuilt, as the read log, from the instances' copies)."""
    _write(path, {"checkpoint": ckpt, "held": {r: list(v) for r, v in held.items()},
                  "inboxes": {c: list(v) for c, v in inboxes.items() if v}, "floors": dict(floors),
                  "delivered": {r: list(v) for r, v in delivered.items()}, "reads": reads,
                  "fenced": list(fenced), "serial": serial, "unknown": {k: set(v) for k, v in unknown.items()},
                  "orders": orders})


def boot(path: str) -> dict:
    """A failover store server's boot state (:func:`write_state`)."""
    return _read(path)


class SerialLog:
    """The recorded serialization, a frame at a time, in a file (module doc): a 4-byte
    length, then the frame."""

    def __init__(self, path: str) -> None:
        self.count = repair(path)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, frame: bytes) -> None:
        os.write(self.fd, len(frame).to_bytes(4, "little") + frame)
        self.count += 1

    def close(self) -> None:
        os.close(self.fd)


def frames(path: str) -> list[bytes]:
    """Every whole frame of a :class:`SerialLog` file (a kill can cut the last one)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    out, at = [], 0
    while at + 4 <= len(data):
        n = int.from_bytes(data[at:at + 4], "little")
        if at + 4 + n > len(data):
            break
        out.append(data[at + 4:at + 4 + n])
        at += 4 + n
    return out


def repair(path: str) -> int:
    """Cut a frame a kill left half written; how many whole frames there are."""
    whole = frames(path)
    if os.path.exists(path):
        size = sum(4 + len(f) for f in whole)
        if os.path.getsize(path) != size:
            os.truncate(path, size)
    return len(whole)


# -- an instance's side -------------------------------------------------------------------------

def wal_path(directory: str, process: str) -> str:
    return os.path.join(directory, f"wal-{process}")


def dump_wal(path: str, client: Any) -> None:
    """What this instance hands the failover store (:class:`~chc.core.recovery.InstanceLog`)."""
    wal = client.backend.wal
    _write(path, {"client_id": client.client_id, "instance": client.instance, "sent_seq": client.seq,
                  "subscriptions": frozenset(client.callback_caches), "updates": wal.updates,
                  "flow_updates": wal.flow_updates, "reads": wal.reads, "results": wal.results,
                  "logged_seq": wal.logged_seq, "shared_reads": wal.shared_reads, "orders": wal.orders})


def load_wal(path: str) -> InstanceLog:
    d = _read(path)
    wal = WriteAheadLog(d["client_id"])
    for k in ("updates", "flow_updates", "reads", "results", "logged_seq", "shared_reads"):
        setattr(wal, k, d[k])
    wal.orders = d.get("orders")
    return InstanceLog(d["client_id"], d["instance"], wal, d["sent_seq"], d["subscriptions"])


def truncation(body: list) -> Any:
    """What a checkpoint's notice (:meth:`Durable.take`) gives ``WriteAheadLog.truncate``."""
    _, applied, ts = body
    return types.SimpleNamespace(applied_seq=applied, ts={c: Stamp(clock, seq) for c, clock, seq in ts})


# -- the coordinator's side ---------------------------------------------------------------------

def rebuild(directory: str, logs: list[InstanceLog], retired: Iterable[str], fenced: list[str],
            no_wal: bool = False) -> tuple[Recovery, dict]:
    """§5.4 the failover store from the latest checkpoint and the instances' logs, written
    as its boot state; the recovery and the checkpoint's state.  Raises what
    :func:`~chc.core.recovery.recover` raises (Table 3: ``Unrecoverable``)."""
    state = _read(os.path.join(directory, CHECKPOINT))
    rec = recover(state["checkpoint"], logs, users={log.client_id for log in logs}, retired=retired,
                  no_wal=no_wal, copy=False)
    engine = rec.engine
    held = state["held"]
    for c in rec.commits:
        held.setdefault(root_of(c[0]), []).append(c)
    # Callbacks: each subscriber is told every subscribed object's value now.  (The
    # checkpoint's undelivered ones may have been fetched since, and one of the
    # subscriber's own later updates would never be notified to it: a stale cache.)
    engine.drain_notifications()
    inboxes: dict = {}
    for client, msgs in state["inboxes"].items():
        inboxes[client] = [m for m in msgs if m[0] != "update"]
    for key, clients in engine.subscribers.items():
        if key in engine.data:          # (never written: the subscriber's default is its value)
            for client in clients:
                inboxes.setdefault(client, []).append(("update", key, engine.data[key]))
    reads = merge_reads(log.wal.shared_reads for log in logs if log.wal.shared_reads is not None)
    unknown = state["unknown"]
    for part in (state["checkpoint"].unknown_before, rec.unknown_before):
        for key, clocks in part.items():
            unknown.setdefault(key, set()).update(clocks)
    # §5 with §5.4 several roots: each instance's batch order, from its copy (the longest
    # of a logical instance's: a failover's holds its predecessor's, fetched at its start)
    orders: dict[str, list] = {}
    for lg in logs:
        if lg.wal.orders is not None and len(lg.wal.orders[1]) >= len(orders.get(lg.wal.orders[0], ())):
            orders[lg.wal.orders[0]] = list(lg.wal.orders[1])
    write_state(os.path.join(directory, RESTORE), engine.image(), held, inboxes, state["floors"],
                state["delivered"], reads, fenced, 0, unknown, orders)
    return rec, state


def redo(rec: Recovery, logs: list[InstanceLog]) -> list[list]:
    """The re-executed updates for the checker's record (``Serialization.recover``), each
    with the result an instance observed (``seen``) and whether it stayed in place."""
    observed = {log.client_id: log.wal.results for log in logs}
    out = []
    for client, op in rec.re_executed:
        results = observed.get(client, {})
        out.append([op, op.seq in results, results.get(op.seq), (client, op.seq) in rec.in_place])
    return out


def client_id(process: str) -> str:
    """The store client id of an NF instance's process (``nat.0#1``: its failover's own)."""
    name = logical(process.encode()).decode()
    vertex, i = name.rsplit(".", 1)
    rest = process[len(name):]
    if rest[:1] == "#" and rest[1:].isdigit():      # (nat.0#2)
        return f"{vertex}/{i}+failover{rest[1:]}"
    return f"{vertex}/{i}" + (f"+{rest}" if rest else "")     # (§5.3 a clone, nat.0~1, and its failovers)


__all__ = ["CHECKPOINT", "DEFAULT_CHECKPOINT_MS", "RESTORE", "SERIAL", "Durable", "SerialLog", "boot",
           "client_id", "dump_wal", "frames", "load_wal", "rebuild", "redo", "repair", "truncation",
           "wal_path", "write_state"]
