"""Ctrl-C as a flag: how ``chc check`` stops its seeds.

Theory of operation
-------------------
A KeyboardInterrupt raised wherever SIGINT lands can be lost.  Python runs a
signal handler between any two bytecodes, also inside a weakref callback or a
finalizer (pyzmq's sockets sit in WeakSets), and an exception raised there is
printed as ``Exception ignored in: ...`` and dropped: a check's Ctrl-C was lost
so, and every seed ran.  One raised inside the proc runtime's stop could leave
its workers running, and the interpreter's exit then waited for them for good
(multiprocessing joins its children at exit; the workers ignore SIGTERM).

So, while :func:`flagged` holds, SIGINT is counted by its handler:

* the first asks to stop.  A loop that checks (the proc coordinator's, under
  :func:`polling`) raises KeyboardInterrupt at its next safe point; anywhere
  else it is raised at once, as before, and the caller checks the count too
  (``chc check`` between seeds), so one that was lost still stops the check;
* the second aborts: the callbacks :func:`polling` was given run first (the proc
  coordinator kills its workers: nothing is left to wait for at exit), then
  :class:`Aborted` is raised, and checked for again by the loops as above.

``chc run`` and ``chc serve`` keep their own handlers (``Feed.interrupt``: the
first Ctrl-C ends the input and the run drains); :func:`poll` does nothing there.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Aborted", "Interrupts", "flagged", "poll", "polling"]


class Aborted(KeyboardInterrupt):
    """A second Ctrl-C: stop at once, write nothing."""


class Interrupts:
    """The Ctrl-Cs since :func:`flagged` began (module doc)."""

    def __init__(self, first: str) -> None:
        self.count = 0
        self.first = first              # said on the first Ctrl-C
        self.polling = 0                # loops under way that check (polling())
        self.on_abort: list[Callable[[], None]] = []

    def handler(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            with contextlib.suppress(Exception):   # (a write to stderr the signal interrupted)
                print(self.first, file=sys.stderr, flush=True)
            if self.polling:
                return                  # the loop raises it at its next safe point
            raise KeyboardInterrupt
        for abort in list(self.on_abort):
            with contextlib.suppress(Exception):
                abort()
        raise Aborted

    def poll(self) -> None:
        """Raise what the Ctrl-Cs so far asked for (nothing if none came)."""
        if self.count > 1:
            raise Aborted
        if self.count:
            raise KeyboardInterrupt


_current: Interrupts | None = None


@contextlib.contextmanager
def flagged(first: str = "chc: stopping (Ctrl-C again to abort)") -> Iterator[Interrupts]:
    """While the block runs, SIGINT is counted (module doc); ``first`` is said at the
    first.  Outside the main thread nothing changes (no handler can be set there)."""
    global _current
    it = Interrupts(first)
    if threading.current_thread() is not threading.main_thread():
        yield it
        return
    previous, outer = signal.signal(signal.SIGINT, it.handler), _current
    _current = it
    try:
        yield it
    finally:
        signal.signal(signal.SIGINT, previous)
        _current = outer


def poll() -> None:
    """At a safe point of a loop: raise what a Ctrl-C under :func:`flagged` asked for."""
    if _current is not None:
        _current.poll()


@contextlib.contextmanager
def polling(abort: Callable[[], None]) -> Iterator[None]:
    """The block calls :func:`poll` often: a first Ctrl-C is left to it, not raised where
    it lands; a second calls ``abort`` (fast, safe in a signal handler) before it raises."""
    it = _current
    if it is None:
        yield
        return
    it.polling += 1
    it.on_abort.append(abort)
    try:
        it.poll()                       # (one that came before)
        yield
    finally:
        it.polling -= 1
        it.on_abort.remove(abort)
