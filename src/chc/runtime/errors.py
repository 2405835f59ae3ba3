"""What the runtimes report when a crash cannot be recovered (§5.4, Table 3).

Apart from the runtime modules so that the recovery mechanisms (``sim``,
``storefailover``) can raise it without importing each other, and so that the
command line catches :class:`ProcFailure` without importing ZeroMQ."""

from __future__ import annotations


class Unrecoverable(Exception):
    """A component crashed and nothing can recover it: the message says which and why."""


class ProcFailure(Exception):
    """A ``proc`` run cannot go on: a worker process died or failed (one line)."""
