"""Operator code for tests/test_proc_manager.py, a module the proc runtime's worker
processes import by reference: a scaling policy (``scaling: {policy:
"proc_policies:to_two"}``) and an NF that cannot start in a worker process."""

from __future__ import annotations

import multiprocessing
from typing import Any

from chc.core.manager import Decision, VertexLoad
from chc.nfs.passthrough import PassThrough


class FailsInAWorker(PassThrough):
    """Passes packets in the coordinator's process; raises where a worker builds it."""

    kind = "fails-in-a-worker"

    def __init__(self, config: Any) -> None:
        if multiprocessing.parent_process() is not None:
            raise RuntimeError("this NF cannot start here")
        super().__init__(config)


def to_two(load: VertexLoad) -> Decision | None:
    """One more instance while there is one, with a reason of its own."""
    return Decision("scale-out", reason=f"{load.size} instance(s), want two") if load.size < 2 else None


_cloned: list[int] = []


def clone_once(load: VertexLoad) -> Decision | None:
    """§5.3 a clone of instance 0, once (tests/test_proc_clones.py)."""
    if _cloned:
        return None
    _cloned.append(0)
    return Decision("clone", 0, reason="clone_once")
