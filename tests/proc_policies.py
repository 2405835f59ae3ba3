"""Operator policies for tests/test_proc_manager.py: a module a vertex manager process
imports by its reference (``scaling: {policy: "proc_policies:to_two"}``)."""

from __future__ import annotations

from chc.core.manager import Decision, VertexLoad


def to_two(load: VertexLoad) -> Decision | None:
    """One more instance while there is one, with a reason of its own."""
    return Decision("scale-out", reason=f"{load.size} instance(s), want two") if load.size < 2 else None
