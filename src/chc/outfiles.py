"""Output files that never destroy input and never show half-written.

Every file a command writes goes first to a temporary name in the same
directory (so the final rename is atomic on one file system) and is renamed
over the final name only when the command has finished writing all of its
outputs; a failed or aborted command removes its temporary files, and an
existing file under the final name stays as it was.  Before anything is
written, :func:`refuse_clobber` rejects an output that is one of the command's
inputs or another of its outputs (same device and inode, so hard links and
symbolic links count, whatever the spelling of the path).

A path that cannot be an output at all (a directory, a folder that does not
exist, one this process may not create files in) is refused before any work
too, by :func:`check_writable`: the commands declare their output options with
:class:`chc.cliargs.OutputPath`, and ``chc``'s entry point checks them all
(:func:`check_outputs`) before it runs the command, so a mistyped folder costs
no run and no result.  Should a path go bad during the run anyway (a folder
removed meanwhile), :meth:`Outputs.open` and :meth:`Outputs.commit` report it as
the same one-line error and leave no temporary file behind.

An output that is a symbolic link is written through it (its target replaced,
the link kept); one that is a FIFO or a device (``/dev/null``, ``/dev/stdout``, a
shell's ``/dev/fd/N``) is written in place, as the shell's ``>`` would: there is
nothing to rename over.
"""

from __future__ import annotations

import argparse
import errno
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import BinaryIO

from .capture import STDIN
from .cliargs import OutputPath

__all__ = ["ClobberError", "OutputPathError", "Outputs", "check_outputs", "check_writable", "refuse_clobber"]


class ClobberError(ValueError):
    """An output would overwrite an input or another output."""


class OutputPathError(ValueError):
    """An output's path cannot be written: ``PATH: cannot write (why)``, one line."""


def _cannot(path: str, why: str | int) -> OutputPathError:
    return OutputPathError(f"{path}: cannot write ({os.strerror(why) if isinstance(why, int) else why})")


def _special(path: str) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a directory (a FIFO,
    a device, a socket; followed through links)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def check_writable(path: str, kind: str = "file") -> None:
    """OutputPathError unless ``path`` can become an output, without creating anything.

    ``kind`` "file": a file renamed into place (:class:`Outputs`), so ``path`` must
    not be a directory and its folder must exist and take new files; an existing
    file is replaced, whatever its own permissions.  "append": a file appended to,
    so an existing one must be writable itself.  "dir": a directory files are
    written into, created if missing, so it must be a directory or, missing, have
    a folder that takes new entries.  "tree" / "tree-dir": a file / a directory whose
    missing folders are made (the benchmarks'), so the nearest existing one must take
    new entries.  ``-`` (standard output) always passes."""
    if path == STDIN:
        return
    if kind in ("tree", "tree-dir"):
        # (the benchmarks' outputs: missing folders are made, as every bench script and the
        # docs' `--json out/...` take it; what must hold is where the first one is made)
        if kind == "tree" and (os.path.isdir(path) or path.endswith(os.sep)):
            raise _cannot(path, errno.EISDIR)
        here = os.path.abspath(path if kind == "tree-dir" else os.path.dirname(os.path.abspath(path)))
        while not os.path.exists(here):
            here = os.path.dirname(here)
        if not os.path.isdir(here):
            raise _cannot(path, f"{here}: {os.strerror(errno.ENOTDIR)}")
        if not os.access(here, os.W_OK | os.X_OK):
            raise _cannot(path, errno.EACCES)
        return
    if kind != "dir" and _special(path):
        if not os.access(path, os.W_OK):
            raise _cannot(path, errno.EACCES)
        return                              # (written in place: Outputs.open)
    if kind == "dir" and os.path.isdir(path):
        target = path
    elif kind == "dir" and os.path.exists(path):
        raise _cannot(path, errno.ENOTDIR)
    elif kind != "dir" and (os.path.isdir(path) or path.endswith(os.sep)):
        raise _cannot(path, errno.EISDIR)
    else:
        if kind == "append" and os.path.exists(path) and not os.access(path, os.W_OK):
            raise _cannot(path, errno.EACCES)
        # (abspath: a bare "x.json" is in the current folder, which dirname calls "")
        target = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(target):
            shown = os.path.dirname(path.rstrip(os.sep)) or target
            raise _cannot(path, f"no such directory {shown}" if not os.path.exists(target) else
                          f"{shown}: {os.strerror(errno.ENOTDIR)}")
    if not os.access(target, os.W_OK | os.X_OK):        # (a read-only file system says so too)
        raise _cannot(path, errno.EACCES)


def check_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """OutputPathError for the first output option of ``parser`` (declared with
    ``action=OutputPath``) given a path that cannot be written: every command runs
    this before any work, so a mistyped path costs no run and loses no result (found
    when the results were written, it threw all of them away).  Nothing is created."""
    for action in parser._actions:
        path = getattr(args, action.dest, None) if isinstance(action, OutputPath) else None
        if path:
            check_writable(path, action.kind)


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
        # (file, temporary, final); temporary None: a special file written in place
        self._pending: list[tuple[BinaryIO, str | None, str]] = []

    def open(self, path: str) -> BinaryIO:
        """A new binary file that becomes ``path`` at :meth:`commit`; OutputPathError
        if ``path`` cannot be written (nothing is created then)."""
        # Checked here too, not only up front: a directory as ``path`` put the temporary
        # file in its parent (``/tmp`` -> ``/.tmp.XXXX.partial``) and failed only at the rename.
        check_writable(path)
        if _special(path):
            # A FIFO, a device (/dev/null, /dev/stdout), a process substitution's /dev/fd/N:
            # nothing to rename over (a rename replaced the FIFO with a file, and as root
            # would replace /dev/stdout), so written in place, as `>` writes it.
            try:
                fh = open(path, "wb")       # noqa: SIM115 (closed at commit or discard)
            except OSError as exc:
                raise _cannot(path, exc.strerror or str(exc)) from None
            self._pending.append((fh, None, path))
            return fh
        if os.path.islink(path):
            path = os.path.realpath(path)   # written through the link, as `>` does (not replacing it)
        head, tail = os.path.split(path)
        # Same directory (atomic rename), hidden, and the final suffix kept.
        temp = os.path.join(head, f".{tail}.{secrets.token_hex(4)}.partial")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # the umask applies
        except OSError as exc:
            raise _cannot(path, exc.strerror or str(exc)) from None
        fh = os.fdopen(fd, "wb")
        self._pending.append((fh, temp, path))
        return fh

    def commit(self) -> None:
        """Close every file and rename it to its final name.  If one cannot be (its
        folder went away meanwhile), OutputPathError, and the temporary files not yet
        renamed are removed: a failed commit leaves no ``.partial`` file behind."""
        pending, self._pending = self._pending, []
        renamed = 0
        try:
            for fh, _temp, _final in pending:
                fh.close()
            for _fh, temp, final in pending:
                if temp is None:            # (written in place)
                    renamed += 1
                    continue
                try:
                    os.replace(temp, final)
                except OSError as exc:
                    raise _cannot(final, exc.strerror or str(exc)) from None
                renamed += 1
        finally:
            for fh, temp, _final in pending[renamed:]:
                with suppress(OSError):
                    fh.close()
                if temp is not None:
                    with suppress(OSError):
                        os.unlink(temp)

    def discard(self) -> None:
        """Close and remove every file not committed (idempotent)."""
        pending, self._pending = self._pending, []
        for fh, temp, _final in pending:
            fh.close()
            if temp is not None:
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
