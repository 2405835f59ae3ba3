"""Trace toolkit: synthetic paper-scale traces, capture statistics, scenario builders.

Theory of operation
-------------------
Everything here streams: captures are read with :func:`chc.capture.open_capture`
and written with :class:`chc.capture.CaptureWriter`, one record at a time, so
memory does not grow with the number of packets.

* :mod:`chc.trace.gen` -- ``chc trace gen``: synthetic traces with the statistics
  of the paper's Trace1 / Trace2 (packets, connections, median packet size),
  generated connection by connection and merged by timestamp with a heap.
* :mod:`chc.trace.stats` -- ``chc trace inspect``: packets, flows, hosts, size
  percentiles, protocol mix, duration, malformed and non-IP counts.
* :mod:`chc.trace.ops` -- building blocks: merging captures by timestamp with
  per-input time shifts, address rewriting with checksum fixes, frame builders.
* :mod:`chc.trace.trojan` -- ``chc trace trojan``: plants the SSH -> FTP download
  -> IRC sequence of real Zeek sessions into a background capture.
* :mod:`chc.trace.scan` -- ``chc trace scan``: plants TCP SYN scans.
* :mod:`chc.trace.cli` -- the ``chc trace`` subcommands.

Scenario builders write a ground-truth JSON file next to the capture; the
indices they record are input packet indices, which are the logical clocks of a
single-root chain (root clocks start at 0 and count every input frame).
"""

from __future__ import annotations

__all__ = ["cli", "gen", "ops", "scan", "stats", "trojan"]
