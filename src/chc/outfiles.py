"""Output files that never destroy input and never show half-written.

Every file a command writes goes first to a temporary name in the same
directory (so the final rename is atomic on one file system) and is renamed
over the final name only when the command has finished writing all of its
outputs; a failed or aborted command removes its temporary files, and an
existing file under the final name stays as it was.  Before anything is
written, :func:`refuse_clobber` rejects an output that is one of the command's
inputs or another of its outputs (same device and inode, so hard links and
symbolic links count, whatever the spelling of the path).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import BinaryIO

from .capture import STDIN

__all__ = ["ClobberError", "Outputs", "refuse_clobber"]


class ClobberError(ValueError):
    """An output would overwrite an input or another output."""


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def refuse_clobber(outputs: Mapping[str, str | None], inputs: Mapping[str, str]) -> None:
    """ClobberError if an output (flag -> path) is an input (what -> path) or two
    outputs are the same file.  ``-`` (standard input/output) is never a file here."""
    seen: dict[tuple[int, int] | str, str] = {}
    for what, path in inputs.items():
        ident = _identity(path) if path != STDIN else None
        if ident is not None:
            seen[ident] = f"the {what} {path}"
    for flag, path in outputs.items():
        if not path or path == STDIN:
            continue
        key: tuple[int, int] | str = _identity(path) or os.path.abspath(path)
        if key in seen:
            raise ClobberError(f"{flag} {path}: is {seen[key]}; refusing to overwrite it")
        seen[key] = f"also {flag}'s output"


class Outputs:
    """The files of one command, written under temporary names and renamed into
    place together by :meth:`commit` (see module doc)."""

    def __init__(self) -> None:
        self._pending: list[tuple[BinaryIO, str, str]] = []   # (file, temporary, final)

    def open(self, path: str) -> BinaryIO:
        """A new binary file that becomes ``path`` at :meth:`commit`."""
        head, tail = os.path.split(path)
        # Same directory (atomic rename), hidden, and the final suffix kept.
        temp = os.path.join(head, f".{tail}.{secrets.token_hex(4)}.partial")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # the umask applies
        fh = os.fdopen(fd, "wb")
        self._pending.append((fh, temp, path))
        return fh

    def commit(self) -> None:
        """Close every file and rename it to its final name."""
        pending, self._pending = self._pending, []
        for fh, _temp, _final in pending:
            fh.close()
        for _fh, temp, final in pending:
            os.replace(temp, final)

    def discard(self) -> None:
        """Close and remove every file not committed (idempotent)."""
        pending, self._pending = self._pending, []
        for fh, temp, _final in pending:
            fh.close()
            with suppress(FileNotFoundError):
                os.unlink(temp)

    @contextmanager
    def transaction(self) -> Iterator[Outputs]:
        """Commit when the block ends normally, discard when it raises."""
        try:
            yield self
        except BaseException:
            self.discard()
            raise
        self.commit()
