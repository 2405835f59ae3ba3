"""What ``chc run`` feeds the chain: a capture's records, filtered, counted, stoppable.

Theory of operation
-------------------
A :class:`Feed` iterates over a :class:`~chc.capture.CaptureReader` and yields
``(timestamp ns, frame)`` records to the runtime, as tcpdump reads a file:

* a BPF filter (``--filter``) is applied to the frame as captured, on its own
  link type, and frames it rejects never reach the chain (counted in
  ``filtered_out``);
* frames of another link type than Ethernet go through a
  :class:`~chc.linktypes.LinkAdapter` (after the filter);
* ``--count N`` ends the feed after N records reach the chain;
* :func:`stop_on_interrupt` turns the first Ctrl-C into the end of the input:
  the runtime then finishes what it has, so the summary of what was processed
  is exact and consistent (tcpdump prints its counts the same way).  A second
  Ctrl-C aborts at once.

Why a flag and not an exception: a KeyboardInterrupt raised while the runtime is
in the middle of a batch would leave its state half-updated.  Only while the
feed is waiting for input (a pipe that has nothing yet) is the interrupt raised
there, so a quiet ``tcpdump -w - | chc run ... -`` still stops at once.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .capture import CaptureReader
from .linktypes import LinkAdapter

__all__ = ["Feed", "capture_summary", "stop_on_interrupt"]


class Feed:
    """The records of ``reader`` that reach the chain (see module doc)."""

    def __init__(self, reader: CaptureReader, adapter: LinkAdapter | None = None,
                 match: Callable[[bytes], bool] | None = None, count: int | None = None) -> None:
        self.reader = reader
        self.adapter = adapter
        self.match = match
        self.count = count
        self.read = 0               # records read from the capture
        self.fed = 0                # records given to the chain
        self.interrupted = False
        self.waiting = False        # inside the reader, waiting for input
        self.stopped_by: str | None = None   # "count" or "interrupt"; None at the end of input

    @property
    def filtered_out(self) -> int:
        return self.read - self.fed

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        records = iter(self.reader)
        adapt = self.adapter.to_ether if self.adapter is not None else None
        match = self.match
        while not self.interrupted:
            record = self._next(records)
            if record is None:
                break
            self.read += 1
            ts, data = record
            if match is not None and not match(data):
                continue
            self.fed += 1
            yield ts, data if adapt is None else adapt(data)
            if self.fed == self.count:
                self.stopped_by = "count"
                return
        if self.interrupted:
            self.stopped_by = "interrupt"

    def _next(self, records: Iterator[tuple[int, bytes]]) -> tuple[int, bytes] | None:
        self.waiting = True
        try:
            return next(records, None)
        except KeyboardInterrupt:      # raised by stop_on_interrupt's handler
            self.interrupted = True
            return None
        finally:
            self.waiting = False

    def interrupt(self) -> None:
        """End the feed at the next record (first Ctrl-C); raise KeyboardInterrupt
        to abort if it was already asked to stop, or to stop a wait for input."""
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        # (the proc runtime finishes what it has read ahead: seconds on Redis, silent before)
        print("chc: stopping: no more input; finishing what the chain holds (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)
        if self.waiting:
            raise KeyboardInterrupt


def capture_summary(path: str, reader: CaptureReader, filter: str | None = None, filtered_out: int = 0,
                    count: int | None = None) -> dict:
    """The summary's ``capture`` section (docs/summary.md)."""
    return {"path": str(path), "format": reader.format, "linktype": reader.linktype,
            "truncated": reader.stop_reason is not None, "reason": reader.stop_reason,
            "offset": reader.stop_offset, "warnings": list(reader.warnings),
            "filter": filter, "filtered_out": filtered_out, "count": count}


@contextmanager
def stop_on_interrupt(feed: Feed) -> Iterator[Feed]:
    """While the block runs, SIGINT (Ctrl-C) calls :meth:`Feed.interrupt`."""
    previous = signal.signal(signal.SIGINT, lambda signum, frame: feed.interrupt())
    try:
        yield feed
    finally:
        signal.signal(signal.SIGINT, previous)
