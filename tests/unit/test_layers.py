"""The layers of ARCHITECTURE.md hold: the runtime is the bottom layer and no folder imports in a loop."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "slmops"
STAGES = ("fetch", "export", "quantize", "evaluate", "benchmark", "register", "recommend")


def _node(module: str) -> str:
    """A module's place in the layer graph: its folder under slmops/, or the top-level module itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every slmops module ``path`` imports, at module level or inside functions, except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("slmops")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("slmops") and not node.level:
            for alias in node.names:  # `from slmops import names` imports the module slmops.names
                sub = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or (
                    PACKAGE.parent / Path(*sub.split("."))
                ).is_dir()
                found.add(sub if is_module else node.module)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        src = _node(_module_name(path))
        for target in _imports(path):
            dst = _node(target)
            if dst not in (src, "slmops"):
                graph.setdefault(src, set()).add(dst)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_folder_imports_in_a_loop() -> None:
    graph = _graph()
    assert graph.get("slmops.runtime"), "the import graph is empty: the parser found no imports"
    assert _cycles(graph) == []


@pytest.mark.parametrize("bottom", ["slmops.runtime", "slmops.tasks", "slmops.settings", "slmops.errors"])
def test_lower_layers_import_no_stage(bottom: str) -> None:
    stages = {f"slmops.{s}" for s in STAGES} | {
        "slmops.pipeline",
        "slmops.project",
        "slmops.cli",
        "slmops.serve",
        "slmops.catalog",
        "slmops.taskdefs",
    }
    assert not _graph().get(bottom, set()) & stages


def test_importing_the_runtime_loads_no_stage_module() -> None:
    code = (
        "import slmops.runtime, slmops.runtime.open, slmops.runtime.ranking, slmops.runtime.registry, sys\n"
        "print(' '.join(m for m in sys.modules if m.startswith('slmops')))"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert "slmops.runtime.loader" in loaded  # the probe did import the runtime
    stages = {m for m in loaded if _node(m) in {f"slmops.{s}" for s in (*STAGES, "catalog", "taskdefs", "cli")}}
    assert stages == set()


def test_cycle_detection_finds_a_loop() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
