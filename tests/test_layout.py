"""The package's import layering (README, "Code layout"): what may import what, read from the source."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rsgee"


def import_graph() -> dict[str, set[str]]:
    """Module → the rsgee modules it imports anywhere in its body (lazy imports inside functions included)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rsgee"):
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("rsgee")}
        modules[name] = imported
    return {m: {d for d in imported if d in modules and d != m} for m, imported in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module."""
    found, seen = [], set()
    reach = {m: _reachable(graph, m) for m in graph}
    for m in sorted(graph):
        if m in seen:
            continue
        component = {n for n in reach[m] if m in reach[n]} | {m}
        seen |= component
        if len(component) > 1:
            found.append(component)
    return found


def _reachable(graph, start):
    stack, seen = [start], set()
    while stack:
        for n in graph[stack.pop()] - seen:
            seen.add(n)
            stack.append(n)
    return seen


def edges(graph, source: str, target: str) -> list[tuple[str, str]]:
    return sorted((m, d) for m, ds in graph.items() for d in ds
                  if m.startswith(f"rsgee.{source}") and d.startswith(f"rsgee.{target}"))


def test_acquire_and_preprocess_meet_only_in_the_export_contract():
    graph = import_graph()
    assert edges(graph, "acquire", "preprocess") == [] and edges(graph, "preprocess", "acquire") == []
    assert edges(graph, "train", "acquire") == []
    assert not any(d == "rsgee.testing.earthengine" for m, ds in graph.items() for d in ds
                   if not m.startswith("rsgee.testing"))  # the fake Earth Engine is for tests only


def test_the_only_import_circle_is_the_archive_facade():
    assert cycles(import_graph()) == [{"rsgee.preprocess.archive", "rsgee.preprocess.cache", "rsgee.preprocess.stac",
                                       "rsgee.views"}]


def test_the_command_line_and_the_configs_load_without_torch():
    import subprocess
    import sys

    code = "import sys, rsgee.cli, rsgee.configs, rsgee.api; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False"]


def test_no_module_imports_fcntl():
    """Locks go through filelock, so that rsgee imports on Windows."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            assert "fcntl" not in names, path
