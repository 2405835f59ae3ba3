"""What the command-line modules share: argument types, :class:`UsageError`, the
exit code of an interrupted command, and the declaration of output options
(:class:`OutputPath`, checked by :func:`chc.outfiles.check_outputs`).

``chc.cli`` imports the subcommand modules (``chc.trace.cli``, ``chc.bench``), and
they raise the same usage error; it lives here, in a module that imports nothing
of chc, so that no subcommand module has to import ``chc.cli`` back.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

EXIT_INTERRUPTED = 130     # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_PARTIAL = 3           # the capture stopped early: the results cover part of it


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit code 2."""


class OutputPath(argparse.Action):
    """``add_argument(..., action=OutputPath)``: the option names something the command
    writes, a file (``kind="file"``, the default), a file it appends to (``"append"``)
    or a directory it writes files into (``"dir"``).  So declared, the option is
    checked by :func:`chc.outfiles.check_outputs` before the command starts,
    wherever it is."""

    def __init__(self, option_strings: Sequence[str], dest: str, kind: str = "file", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.kind = kind

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)


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
