"""What the runtimes report when a crash cannot be recovered (§5.4, Table 3).

Apart from the runtime modules so that the recovery mechanisms (``sim``,
``storefailover``) can raise it without importing each other."""

from __future__ import annotations


class Unrecoverable(Exception):
    """A component crashed and nothing can recover it: the message says which and why."""
