"""Build of chc: the hot modules compiled with Cython, the rest plain Python.

The compiled modules are the same ``.py`` files, typed by the ``.pxd`` file
beside each (Cython's pure-Python mode), so there is one source for both
builds.  Without a C compiler or Cython, or with ``CHC_PURE_PYTHON=1``, chc
installs as plain Python and runs the same (slower; docs/benchmarks.md).
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# Modules on the per-packet path, in the order the profile ranks them
# (docs/benchmarks.md, "Where the time goes").
COMPILED = [
    "src/chc/packet.py",
    "src/chc/core/client.py",
    "src/chc/core/instance.py",
    "src/chc/core/state.py",
    "src/chc/core/store.py",
    "src/chc/backends/memory.py",
    "src/chc/nf.py",
    "src/chc/nfs/_common.py",
    "src/chc/nfs/nat.py",
    "src/chc/nfs/lb.py",
    "src/chc/nfs/portscan.py",
    "src/chc/nfs/trojan.py",
]


class OptionalBuildExt(build_ext):
    """A failed compile leaves the pure-Python module in place (with a warning);
    modules compile in parallel, one per core."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure falls back
            print(f"chc: compiled build skipped ({exc}); running as plain Python", file=sys.stderr)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"chc: {ext.name} not compiled ({exc}); it runs as plain Python", file=sys.stderr)


def extensions() -> list:
    if os.environ.get("CHC_PURE_PYTHON") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("chc: Cython not available; running as plain Python", file=sys.stderr)
        return []
    return cythonize(COMPILED, language_level=3, quiet=True,
                     compiler_directives={"binding": True, "embedsignature": True,
                                          # the .pxd files type; annotations stay documentation
                                          "annotation_typing": False})


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
