"""Input for a proc or ray run that must kill an instance after it has done some work.

A kill fires once the coordinator has fed N input packets; on a loaded machine the
instance may not have processed (or reported) any of them by then, and a test
that needs something to replay would see nothing (CI did).  ``held`` feeds the
records but stops before record ``at`` until ``instance`` has reported a batch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path


def held(rt, records: list, instance: str, at: int, timeout: float = 60) -> Iterator:
    for index, record in enumerate(records):
        if index == at:
            deadline = time.monotonic() + timeout
            while not rt.stats.get(instance, {}).get("counters", [0])[0] and time.monotonic() < deadline:
                rt._service(100)
        yield record


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (from /proc): a run's workers, to check none outlives it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out
