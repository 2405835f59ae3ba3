"""Blocking without hanging: how a ``proc`` worker waits and sends.

Theory of operation
-------------------
A worker process must never outlive the run.  Every wait in a worker (for a
frame, for room to send, for a store reply) therefore also watches the
*parent sentinel*, a pipe whose write end the coordinator holds (multiprocessing
passes it to every child it starts): when the coordinator dies, however it
dies, the pipe reads end-of-file and the worker exits at once.  The coordinator
in turn watches each worker's sentinel, so a worker that dies is noticed and
the run stops (docs/proc.md).

:class:`Guard` is that watch: ``poll`` is :class:`zmq.Poller`'s poll with the
sentinel added, ``send`` sends a frame, waiting for room as long as needed
(ZeroMQ high-water marks are the data path's back-pressure) but never past the
coordinator's death.

Heartbeats.  A process that hangs (stopped, deadlocked, a host that stops
answering) never closes its sentinel.  So a worker's guard also sends the
coordinator a heartbeat every ``beat_s`` seconds, from every wait and every
send (a worker busy in a long replay sends too); the coordinator takes a
worker that has sent nothing for ``misses`` beats for failed, kills it (fail-stop,
so it can never come back) and recovers it or stops the run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable
from typing import Any

import zmq

EXIT_ORPHANED = 3       # a worker whose coordinator is gone


class Guard:
    """Waits that watch file descriptors besides: ``sentinels`` readable means a
    process is gone, and ``gone(fd)`` decides what to do (a worker exits; the
    coordinator stops the run unless the process was done)."""

    def __init__(self, sentinels: list[int], gone: Callable[[int], None] | None = None) -> None:
        self.sentinels = list(sentinels)
        self.gone = gone or _orphaned
        # A worker's socket from the coordinator: what arrives there (a failover's
        # re-pointing, §5.4) is handled in every wait, even one for room to send.
        self.control: zmq.Socket | None = None
        self.on_control: Callable[[], None] | None = None
        self._in_control = False
        self.beat_s = 0.0                   # heartbeats to the coordinator; 0: none
        self._next_beat = 0.0
        self._beat = b""
        self._beat_to: zmq.Socket | None = None
        self.idle: Callable[[], None] | None = None    # called after every wait (the coordinator's beat check)

    def heartbeat(self, every_s: float, frame: bytes, sock: zmq.Socket) -> None:
        """Send ``frame`` on ``sock`` every ``every_s`` seconds, from now on (module doc)."""
        self.beat_s = every_s
        self._beat = frame
        self._beat_to = sock
        self._next_beat = 0.0
        self.tick()

    def tick(self) -> None:
        """A heartbeat, if one is due (a loop that may run long without a wait calls it)."""
        now = time.monotonic()
        if now >= self._next_beat and self._beat_to is not None:
            self._next_beat = now + self.beat_s
            with contextlib.suppress(zmq.Again):     # (not reading now: it will see later ones)
                self._beat_to.send(self._beat, zmq.NOBLOCK)

    def poll(self, poller: zmq.Poller, timeout: float | None = None) -> dict[Any, int]:
        """``poller.poll(timeout ms)`` as a dict, the sentinels checked first."""
        control = self.control if not self._in_control else None
        if self.beat_s:
            self.tick()
            wait = max(self._next_beat - time.monotonic(), 0) * 1000
            timeout = wait if timeout is None else min(timeout, wait)
        for fd in self.sentinels:
            poller.register(fd, zmq.POLLIN)
        if control is not None:
            poller.register(control, zmq.POLLIN)
        try:
            events = dict(poller.poll(timeout))
        finally:
            for fd in self.sentinels:
                poller.unregister(fd)
            if control is not None:
                poller.unregister(control)
        for fd in list(self.sentinels):
            # (one gone() can wait and see the next death itself: then it is no sentinel now)
            if events.pop(fd, 0) and fd in self.sentinels:
                self.gone(fd)
        if control is not None and events.pop(control, 0):
            self._in_control = True
            try:
                self.on_control()
            finally:
                self._in_control = False
        if self.idle is not None:
            self.idle()
        return events

    def send(self, sock: zmq.Socket, frame: bytes) -> None:
        """Send ``frame``, waiting for room (back-pressure) while the coordinator lives."""
        if self.beat_s:
            self.tick()
        try:
            sock.send(frame, zmq.NOBLOCK, copy=False)
            return
        except zmq.Again:
            pass
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLOUT)
        while True:
            ready = self.poll(poller, 1000).get(sock)
            if sock.closed:
                return              # re-pointed meanwhile: what it carried is replayed (§5.4)
            if ready:
                try:
                    sock.send(frame, zmq.NOBLOCK, copy=False)
                    return
                except zmq.Again:
                    continue

    def recv(self, sock: zmq.Socket) -> bytes:
        """The next frame on ``sock`` (a DEALER), waiting while the coordinator lives."""
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while True:
            try:
                return sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                self.poll(poller, 1000)


def _orphaned(fd: int) -> None:
    os._exit(EXIT_ORPHANED)             # the coordinator is gone: nothing to report to


def worker_guard(name: str = "") -> Guard:
    """A worker's guard: it exits when its coordinator (the process that started it) dies.
    ``name`` (``nat.0``, ``@root.0#1``, ``@store``) becomes the process's name as ``ps -o
    comm``, ``top`` and ``pgrep`` show it: every worker's command line is the forkserver's,
    and a user who wanted to kill one from outside could not tell them apart."""
    import signal
    if name:
        _name_process(name)
    # Ctrl-C and SIGTERM are the coordinator's to handle (it drains the run and reports):
    # sent to the whole process group (a terminal, systemd, timeout(1)), a worker gets
    # them too, and one SIGTERM ended mid-run was a failure with no summary.  Workers end
    # on the coordinator's bye, on SIGKILL, or when the coordinator is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    return Guard([parent.sentinel] if parent is not None else [])


def _name_process(name: str) -> None:
    # prctl(PR_SET_NAME): at most 15 bytes; Linux only (elsewhere, nothing)
    import ctypes
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)
