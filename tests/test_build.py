"""The two builds of chc: compiled (the normal install, setup.py) and the
pure-Python fallback (the same ``.py`` sources, interpreted).  Both must give
the same results; the core tests run here once more against the fallback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import chc.packet

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "chc"
CORE_TESTS = ["tests/test_packet.py", "tests/test_nfs.py", "tests/test_models.py",
              "tests/test_store_conformance.py", "tests/test_metadata.py"]


@pytest.mark.skipif(os.environ.get("CHC_PURE_PYTHON") == "1", reason="installed as plain Python on purpose")
def test_the_normal_install_is_compiled():
    """setup.py compiles the per-packet modules; a failed compile would only
    warn, so this is where it shows."""
    assert Path(chc.packet.__file__).suffix != ".py", chc.packet.__file__


@pytest.mark.skipif(os.environ.get("CHC_FALLBACK_RUN") == "1", reason="already the fallback run")
def test_the_pure_python_fallback_passes_the_core_tests(tmp_path):
    pure = tmp_path / "chc"
    shutil.copytree(SRC, pure, ignore=shutil.ignore_patterns("*.so", "*.c", "*.html", "__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path), CHC_FALLBACK_RUN="1", CHC_PURE_PYTHON="1")
    where = subprocess.run([sys.executable, "-c", "import chc.packet; print(chc.packet.__file__)"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(pure / "packet.py")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          *CORE_TESTS, "-k", "not redis"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
