"""The layout's rules, checked on the source: no import circle in etl/ or train/, etl/ never
imports train/, torch or Ray, and no library module grows past 450 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

PACKAGES = ("etl", "train")
MAX_LINES = 450
LONG_MODULES_ALLOWED: set[str] = set()  # none: a module past the limit is two modules


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> dict[str, Path]:
    return {
        module_name(p): p for pkg in PACKAGES for p in sorted((PROJECT_ROOT / pkg).rglob("*.py"))
    }


def imports_of(path: Path, name: str, is_package: bool) -> set[str]:
    """Absolute names of every module this file imports, at any level (function bodies too)."""
    found: set[str] = set()
    here = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[: len(here) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def internal_graph() -> dict[str, set[str]]:
    modules = library_modules()
    graph = {}
    for name, path in modules.items():
        targets = imports_of(path, name, path.name == "__init__.py")
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle() -> None:
    graph = internal_graph()
    assert len(graph) > 40, "the walk must see the library"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


# mlflow is allowed: etl/score.py loads a registered model as a Spark UDF.
@pytest.mark.parametrize("forbidden", ["train", "torch", "ray"])
def test_etl_never_imports(forbidden: str) -> None:
    modules = library_modules()
    offenders = [
        name
        for name, path in modules.items()
        if name.startswith("etl")
        for target in imports_of(path, name, path.name == "__init__.py")
        if target == forbidden or target.startswith(f"{forbidden}.")
    ]
    assert not offenders, f"etl modules importing {forbidden}: {sorted(set(offenders))}"


def test_modules_are_small() -> None:
    sizes = {name: len(p.read_text().splitlines()) for name, p in library_modules().items()}
    big = {n: s for n, s in sizes.items() if s > MAX_LINES and n not in LONG_MODULES_ALLOWED}
    assert not big, f"modules over {MAX_LINES} lines (split them by concern): {big}"
