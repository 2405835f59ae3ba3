"""BPF capture filters (``chc run --filter 'tcp port 80'``), as tcpdump reads them.

The expression is compiled by libpcap itself, through pcapy-ng (a maintained
libpcap binding whose wheels carry libpcap), for the capture's link type; each
frame is then run through the compiled program by libpcap's own interpreter.
Nothing here parses filter syntax, so every expression tcpdump accepts works,
with tcpdump's meaning, on every link type libpcap knows.
"""

from __future__ import annotations

from collections.abc import Callable

from .capture import LINKTYPE_RAW, MAX_CAPLEN

__all__ = ["FilterError", "compile_filter"]

INSTALL_HINT = "pip install pcapy-ng"


class FilterError(ValueError):
    """A filter that cannot be compiled: a one-line message for the user."""


def _dlt(linktype: int, pcapy) -> int:
    # Files carry LINKTYPE_* values; libpcap compiles for DLT_* values, which are
    # the same numbers except LINKTYPE_RAW (101), whose DLT differs by platform.
    return pcapy.DLT_RAW if linktype == LINKTYPE_RAW else linktype


def compile_filter(expression: str, linktype: int) -> Callable[[bytes], bool]:
    """A predicate that says whether a frame of ``linktype`` matches ``expression``."""
    try:
        import pcapy
    except ImportError:
        raise FilterError(f"--filter needs libpcap's compiler: {INSTALL_HINT}") from None
    try:
        program = pcapy.compile(_dlt(linktype, pcapy), MAX_CAPLEN, expression, 1, 0)
    except pcapy.PcapError as exc:
        raise FilterError(f"--filter {expression!r}: {exc}") from None
    match = program.filter

    def matches(frame: bytes) -> bool:
        # BPF's answer is the number of bytes to keep; 0 means "not this packet".
        return match(frame) != 0
    return matches
