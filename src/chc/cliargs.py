"""What the command-line modules share: argument types, :class:`UsageError` and the
exit code of an interrupted command.

``chc.cli`` imports the subcommand modules (``chc.trace.cli``, ``chc.bench``), and
they raise the same usage error; it lives here, in a module that imports nothing
of chc, so that no subcommand module has to import ``chc.cli`` back.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

EXIT_INTERRUPTED = 130     # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_PARTIAL = 3           # the capture stopped early: the results cover part of it


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit code 2."""


def int_at_least(minimum: int, maximum: int | None = None, limit: str = "") -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (and <= ``maximum``, named ``limit``
    in the message if given), with a clear message otherwise."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if maximum is not None:
        what = f"an integer from {minimum} to {maximum}" + (f" ({limit})" if limit else "")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


def parse_listen(text: str, option: str = "--metrics-port") -> tuple[str, int]:
    """``PORT`` (on 127.0.0.1) or ``ADDR:PORT``; ValueError otherwise."""
    addr, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{option} {text!r}: expected PORT or ADDR:PORT")
    return addr.strip("[]") or "127.0.0.1", int(port)
