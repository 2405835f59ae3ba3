"""Argument types shared by the command-line modules."""

from __future__ import annotations

import argparse
from collections.abc import Callable


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
