"""No import cycle in chc, lazy imports included.

A cycle hidden in a function body (``chc.bench`` and ``chc.trace.cli`` once
imported ``chc.cli`` late for its ``UsageError``, and ``chc.cli`` imports them)
imports fine until a module is imported first from the other end or is split
up; so the graph is read from the source (every ``import`` statement, at any
depth, except those only a type checker follows) rather than from what an
interpreter happens to load.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "chc").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _targets(mod: str, is_pkg: bool, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> set[str]:
    """The chc modules one import statement of ``mod`` loads."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if node.level:
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # ``from pkg import name``: the submodule if ``name`` is one, else the package
    return {f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    graph = {}
    for mod, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                node.body = []
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                deps |= _targets(mod, path.name == "__init__.py", node, known)
        # a package's own parents are loaded before it: an import of them closes no cycle
        graph[mod] = {d for d in deps if d in known and d != mod and not mod.startswith(d + ".")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}              # 1: on the path, 2: done

    def visit(mod: str, path: list[str]) -> list[str] | None:
        state[mod] = 1
        path.append(mod)
        for dep in sorted(graph[mod]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, path)):
                return found
        path.pop()
        state[mod] = 2
        return None

    for mod in sorted(graph):
        if mod not in state and (found := visit(mod, [])):
            return found
    return None


def test_no_import_cycle():
    graph = _graph()
    assert graph["chc.cli"] >= {"chc.bench", "chc.trace.cli", "chc.cliargs"}     # the graph is read
    assert graph["chc.cliargs"] == set()        # what the CLI modules share imports nothing of chc
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["chc.cliargs", "chc.trace.cli", "chc.bench", "chc.cli"])
def test_each_cli_module_imports_alone(module):
    res = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
