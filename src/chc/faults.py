"""Faults the COE checker injects into a store client (``chc check --break``).

Theory of operation
-------------------
A break that acts inside a physical run's store client must run where that
client runs: in the sim runtime's one process, or in an NF instance's process
of the ``proc`` runtime.  So it lives here, apart from the checker
(:mod:`chc.coe`), which the workers of the ``proc`` runtime do not import.
What a fault did is written into ``state.acted`` (break name -> one line), the
checker's record of which breaks found something to act on.
"""

from __future__ import annotations

from typing import Any

from .packet import describe_flow, ip_str


def show(v: Any, limit: int = 120) -> str:
    """A value as a report shows it: a flow key as a flow, an address as an address (also
    inside a tuple: the port-scan detector's keys), the rest by repr, cut at ``limit``."""
    text = _shown(v)
    return text if len(text) <= limit else text[:limit] + "..."


def _shown(v: Any) -> str:
    if isinstance(v, bytes):
        return repr(ip_str(v)) if len(v) in (4, 16) else describe_flow(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(_shown(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


class DropOneUpdate:
    """``--break drop-update``: the first non-blocking update issued for a packet
    at or after ``from_clock`` is lost: never sent, never retransmitted (the
    client's ``faults``)."""

    def __init__(self, state: Any, from_clock: int) -> None:
        self.state = state
        self.from_clock = from_clock
        self.dropped: Any = None

    def swallow(self, op: Any) -> bool:
        if self.dropped is None and op.tag is not None and op.tag[0] >= self.from_clock:
            self.dropped = op
            self.state.acted["drop-update"] = (f"dropped {op.code} on {op.key.vertex}.{op.key.obj}"
                                               f"[{show(op.key.key, 60)}] at clock {op.tag[0]}")
            return True
        return False
