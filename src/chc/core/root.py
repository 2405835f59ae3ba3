"""Root: the chain's entry; logical clocks, the packet log, the XOR commit check.

Theory of operation
-------------------
The root (§4.1, §5) receives every input frame of its share of the traffic.

Clocks (§5).  Each packet gets a unique, increasing logical clock with the root
id in the high bits (``CLOCK_BITS``), so clocks of different roots never collide
and the root that owns a clock is found from the clock alone (:func:`root_of`).
Every ``persist_every``-th clock is written to the store; a root restarted after
a failure resumes at ``last persisted + persist_every``, which is above every
clock the failed root can have used, so clocks keep following arrival order
(§7.2, footnote 5).

Screening.  Frames no NF can use, malformed and non-IP frames, are dropped or
passed around the NFs by the chain's input policies; they are counted, not logged.

Packet log (§5, §7.2).  Every admitted packet is logged with its clock and the
entry instance it went to, until the chain is done with it.  The log entry keeps
a reference count of the packet's live copies (1, plus one per ``fork``: an
off-path tap or a second successor) and an XOR accumulator.  Messages in:

* ``fork(clock, k)``: k more copies of the packet exist downstream;
* ``done(clock, vector)``: a copy reached the end of its path (the last NF output
  it, dropped it, or consumed it off-path), with the packet's 32-bit XOR vector
  (§5.4): every instance that issued a state update for the packet XORed
  (instance, object, n) into it;
* ``commit(clock, id)``: the store committed one such update.

A packet is deleted when no copy is live and ``vector XOR all commits == 0``
(Figure 6): a packet whose non-blocking update has not committed stays logged,
so it can be replayed after a failure.  When the log holds ``log_limit``
packets, new input is dropped and counted (back-pressure, not buffer bloat).

The log lives in the root's memory (``local``) or in the store (``store``:
entries are written and deleted through store ops, batched per input batch,
and so is each touched entry's accounting, live copies and XOR accumulator).
No I/O happens here: store writes are returned as ops for the runtime to send.

Root failover (§5.4).  A new root resumes its clock from the store
(``resume_from``); with a ``store`` log it takes the log over as the store has
it (:meth:`restore`), so a packet logged before the crash is still deleted
exactly when its copies are done and its updates committed, and can still be
replayed.  A ``local`` log dies with its root.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..packet import Packet
from .store import CLOCK_BITS, ObjectKey, Op

_SEQ_MASK = (1 << CLOCK_BITS) - 1


def root_of(clock: int) -> int:
    """The id of the root that stamped ``clock`` (§5: high bits)."""
    return clock >> CLOCK_BITS


def clock_text(clock: int, grouped: bool = False) -> str:
    """``clock`` for people: root 0's as its sequence number, another root's as
    ``R:seq`` (a raw clock of root 1 is 281474976710656 and up), none as -1;
    ``grouped``: the sequence number with thousands separators (the summary's)."""
    if clock < 0:
        return str(clock)
    root = clock >> CLOCK_BITS
    seq = f"{clock & _SEQ_MASK:,}" if grouped else str(clock & _SEQ_MASK)
    return seq if root == 0 else f"{root}:{seq}"


def clock_key(root_id: int) -> ObjectKey:
    return ObjectKey("root", "clock", root_id)


class LogEntry:
    __slots__ = ("packet", "instance", "live", "vector", "commits")

    def __init__(self, packet: Packet | None) -> None:
        self.packet = packet
        self.instance: tuple[str, int] | None = None     # entry (vertex, instance) it went to
        self.live = 1
        self.vector = 0
        self.commits: set[int] | None = None     # xor ids committed (dedup_commits)


class Root:
    def __init__(self, root_id: int = 0, policies: dict[str, str] | None = None, *,
                 persist_every: int = 1000, resume_from: int | None = None,
                 log_mode: str = "local", log_limit: int = 0) -> None:
        if not 0 <= root_id < 1 << 15:
            raise ValueError("root id out of range")
        if persist_every < 1:
            raise ValueError("clock persistence interval must be >= 1")
        if log_mode not in ("local", "store", "off"):
            raise ValueError(f"packet log must be local, store or off, not {log_mode!r}")
        policies = policies or {}
        self.root_id = root_id
        self.persist_every = persist_every
        # §7.2 fn. 5: a restarted root starts above anything its predecessor used.
        self.next_seq = 0 if resume_from is None else (resume_from & _SEQ_MASK) + persist_every
        self.drop_malformed = policies.get("malformed", "drop") == "drop"
        self.drop_non_ip = policies.get("non_ip", "pass") == "drop"
        self.log_mode = log_mode
        self.log_limit = log_limit
        self.log: dict[int, LogEntry] = {}
        self._low: int | None = None      # no logged clock is below it (oldest)
        self.xor_check = True             # off only to show what it prevents (--break no-xor)
        self.live_check = True            # likewise (--break no-live-count)
        self.xor_skipped = 0              # deletions the XOR check would have held back
        # §5.4 store failover over processes: a failover store reports again what it
        # re-executed and what was unpulled at its checkpoint; a report the root had
        # already taken would cancel itself in the XOR, so each entry keeps its ids.
        self.dedup_commits = False
        self.duplicate_commits = 0
        self.observer: Any = None         # COE checker: called with each deleted clock
        self.outbox: list[Op] = []        # store writes (clock persistence, store log)
        self.dirty: set[int] = set()      # store log: entries whose accounting changed
        self.packets_in = 0
        self.malformed = 0
        self.non_ip = 0
        self.dropped = 0
        self.bypassed = 0
        self.logged = 0
        self.deleted = 0
        self.dropped_overflow = 0

    @property
    def base(self) -> int:
        return self.root_id << CLOCK_BITS

    @property
    def oldest(self) -> int:
        """The oldest clock still logged, or the next clock when none is: what a replay
        may start from (§5.4); the store's clock log is kept from here."""
        log = self.log
        if not log:
            return self.base | self.next_seq
        # Clocks enter the log in increasing order (record; restore starts over) and leave
        # in any order, so the oldest only grows: found from the last one, each clock
        # stepped over once.  (min(self.log) on every settle was 15% of a NAT run on
        # Redis, whose log is long: py-spy, 2026-12-05.)
        low = self._low
        if low is None:
            low = min(log)
        while low not in log:
            low += 1
        self._low = low
        return low

    def ingest(self, batch: list[Packet]) -> tuple[list[Packet], list[Packet]]:
        """Stamp clocks (§5); return (to the entry vertices, bypassing the chain)."""
        base = self.base
        seq = self.next_seq
        every = self.persist_every
        admitted: list[Packet] = []
        bypass: list[Packet] = []
        logging = self.log_mode != "off"
        for pkt in batch:
            if pkt.malformed is not None or not pkt.l3:
                if not self._screen(pkt):
                    continue
                bypass.append(pkt)          # gets a unique clock, though never logged
            elif logging and self.log_limit and len(self.log) + len(admitted) >= self.log_limit:
                self.dropped_overflow += 1
                self.dropped += 1
                continue
            else:
                pkt.xor = 0
                admitted.append(pkt)
            pkt.clock = base | seq
            if seq % every == 0:
                self.outbox.append(Op("set", clock_key(self.root_id), (base | seq,)))
            seq += 1
        self.packets_in += len(batch)
        self.next_seq = seq
        self.bypassed += len(bypass)
        return admitted, bypass

    def _screen(self, pkt: Packet) -> bool:
        """Count a frame no NF can use; True if it passes around the chain."""
        if pkt.malformed is not None:
            self.malformed += 1
            drop = self.drop_malformed
        else:
            self.non_ip += 1
            drop = self.drop_non_ip
        if drop:
            self.dropped += 1
        return not drop

    # -- packet log (§5, §5.4) ------------------------------------------------------
    def record(self, pkts: list[Packet]) -> None:
        """Log admitted packets (§5) until the chain is done with them."""
        if self.log_mode == "off":
            return
        log = self.log
        if pkts and self._low is not None and min(p.clock for p in pkts) < self._low:
            self._low = None                # (not in clock order: oldest looks again)
        if self.log_mode == "store":
            for pkt in pkts:
                log[pkt.clock] = LogEntry(None)
                self.outbox.append(Op("set", ObjectKey("root", "log", pkt.clock), (bytes(pkt.data), pkt.ts)))
        else:
            for pkt in pkts:
                log[pkt.clock] = LogEntry(pkt)
        self.logged += len(pkts)

    def place(self, pkts: Iterable[Packet], vertex: str, instance: int) -> None:
        """Note the entry instance the logged packets went to (for replay)."""
        log = self.log
        where = (vertex, instance)
        for pkt in pkts:
            entry = log.get(pkt.clock)
            if entry is not None and entry.instance is None:
                entry.instance = where

    def fork(self, clock: int, copies: int) -> None:
        entry = self.log.get(clock)
        if entry is not None:
            entry.live += copies
            if self.log_mode == "store":
                self.dirty.add(clock)

    def done(self, clock: int, vector: int) -> None:
        entry = self.log.get(clock)
        if entry is None:
            return
        entry.live -= 1
        entry.vector ^= vector
        if (entry.live <= 0 or not self.live_check) and (entry.vector == 0 or not self.xor_check):
            if entry.vector:
                self.xor_skipped += 1
            self._delete(clock)
        elif self.log_mode == "store":
            self.dirty.add(clock)

    def commit(self, clock: int, xor_id: int) -> None:
        entry = self.log.get(clock)
        if entry is None:
            return
        if self.dedup_commits:
            if entry.commits is None:
                entry.commits = set()
            elif xor_id in entry.commits:
                self.duplicate_commits += 1
                return
            entry.commits.add(xor_id)
        entry.vector ^= xor_id
        if (entry.live <= 0 or not self.live_check) and entry.vector == 0:
            self._delete(clock)
        elif self.log_mode == "store":
            self.dirty.add(clock)

    def _delete(self, clock: int) -> None:
        del self.log[clock]
        self.deleted += 1
        if self.observer is not None:
            self.observer(clock)
        if self.log_mode == "store":
            self.dirty.discard(clock)
            self.outbox += [Op("delete", ObjectKey("root", "log", clock)),
                            Op("delete", ObjectKey("root", "acct", clock))]

    def drain_outbox(self) -> list[Op]:
        if self.dirty:
            log = self.log
            self.outbox += [Op("set", ObjectKey("root", "acct", c), ((log[c].live, log[c].vector),))
                            for c in sorted(self.dirty) if c in log]
            self.dirty.clear()
        out, self.outbox = self.outbox, []
        return out

    def forget_below(self, floor: int) -> int:
        """Root failover in the proc runtime (§5.4): the failed root had deleted every
        entry below ``floor``, its floor as someone last heard it; a successor that logged
        them again from the input it replayed drops them (their reports and commits are
        not kept any more, so they would never complete), counted as the deletions they
        were.  Returns how many went."""
        old = [c for c in self.log if c < floor and root_of(c) == self.root_id]
        for c in old:
            del self.log[c]
        self.deleted += len(old)
        return len(old)

    def restore(self, stored: dict[str, dict]) -> int:
        """Take over a store-held log (``store.objects("root")`` after the old root's
        last write): every entry of its own clocks, with its live copies and XOR
        accumulator.  Returns the number of entries."""
        acct = stored.get("acct", {})
        mine = self.root_id
        self._low = None
        for clock in stored.get("log", {}):
            if root_of(clock) != mine:
                continue                # another root's (one store holds every root's log)
            entry = self.log[clock] = LogEntry(None)
            entry.live, entry.vector = acct.get(clock, (1, 0))
        return len(self.log)

    def stats(self) -> dict[str, Any]:
        return {"mode": self.log_mode, "logged": self.logged, "deleted": self.deleted,
                "remaining": len(self.log), "dropped_overflow": self.dropped_overflow}
