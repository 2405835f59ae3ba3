"""Shared by the ``bench/`` scripts: run sections of :mod:`chc.bench` from this checkout.

Each script is a thin wrapper: ``python bench/<script>.py --json out/results.json`` runs
its section(s) with the options of ``chc bench`` (``--help`` lists them), prints
the summary table (ratios against the baseline measured in the same run, and
absolute packets/s), and writes JSON (``--json``) and PNG plots (``--png DIR``).
The measurement code lives in the installed package (``chc.bench``) so that
``chc bench`` and these scripts run the same code; ``src/`` of this checkout is
put first on ``sys.path``, so a clean checkout runs without ``pip install -e``
as long as the dependencies (PyYAML, msgpack, redis) are installed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run(sections: tuple[str, ...], prog: str) -> int:
    src = ROOT / "src"
    if (src / "chc").is_dir() and str(src) not in sys.path:
        sys.path.insert(0, str(src))
    from chc.bench import main

    return main(sys.argv[1:], sections, prog)


def load_floor() -> Any:
    """This checkout's ``chc/bench/floor.py`` (issue 15's floor), loaded by its path: a
    worker subprocess that imports an older ``chc`` runs the same floor."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("chc_floor", ROOT / "src" / "chc" / "bench" / "floor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_json(path: str | None, data: dict) -> None:
    """``data`` as indented JSON at ``path`` (its directory made), if a path was given."""
    if path:
        import json
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


def print_ratios(ratios: dict[str, float]) -> None:
    """Each ratio on a line of its own, after a blank line."""
    print()
    width = max(map(len, ratios), default=0) + 2
    for k, v in ratios.items():
        print(f"{k:<{width}}{v:6.2f}x")
