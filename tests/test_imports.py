"""No import cycles between the project's own modules.

Every module under ``hub/`` and ``plugins/`` is parsed (never imported) and each import of another
project module becomes an edge: imports at module level, inside functions and classes, and inside
``if TYPE_CHECKING:`` blocks alike (a type-only import still ties two modules together). Any
strongly connected component of more than one module, or a module importing itself, is a cycle.

Resolution rules:

* relative imports are resolved against the importing module's package
  (``from .x import y``, ``from ..router import z``, ``from . import name``);
* ``import a.b.c`` imports the deepest project module of that dotted name;
* ``from pkg import name`` imports the submodule ``pkg.name`` if there is one, otherwise ``pkg``
  itself (a package counts as its ``__init__``);
* anything whose top-level name is not a project package (stdlib, third party) is ignored.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hub", "plugins")


@dataclass
class ImportGraph:
    root: Path
    #: module name -> file it was parsed from
    files: dict[str, Path]
    #: module name -> imported project module -> (line, "TYPE_CHECKING" | "function" | "module")
    edges: dict[str, dict[str, tuple[int, str]]] = field(default_factory=dict)


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Every ``.py`` file of ``packages`` (directories under ``root``), keyed by module name."""
    files: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            if "__pycache__" in rel.parts:
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module):
    """Yield (node, context) for every Import/ImportFrom anywhere in the tree."""
    stack: list[tuple[ast.AST, str]] = [(tree, "module")]
    while stack:
        node, context = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, context
            continue
        for child in ast.iter_child_nodes(node):
            child_context = context
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                child_context = "function" if context == "module" else context
            if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
                child_context = "TYPE_CHECKING"
            stack.append((child, child_context))


def build_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> ImportGraph:
    files = module_files(root, packages)
    graph = ImportGraph(root, files)

    def deepest(dotted: str) -> str | None:
        parts = dotted.split(".")
        while parts:
            name = ".".join(parts)
            if name in files:
                return name
            parts.pop()
        return None

    for name, path in files.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        out: dict[str, tuple[int, str]] = {}
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, context in _imports(tree):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [
                    deepest(alias.name) for alias in node.names if alias.name.split(".")[0] in packages
                ]
            else:
                if node.level:
                    base_parts = package.split(".") if package else []
                    up = node.level - 1
                    if up > len(base_parts) - 1:
                        raise AssertionError(f"{path}:{node.lineno}: relative import beyond top level")
                    base_parts = base_parts[: len(base_parts) - up]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base.split(".")[0] not in packages:
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if alias.name != "*" and sub in files else deepest(base))
            for target in targets:
                if target is not None and target not in out:
                    out[target] = (node.lineno, context)
        graph.edges[name] = out
    return graph


def strongly_connected(edges: dict[str, dict[str, tuple[int, str]]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components in a deterministic order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return sorted(components)


def _shortest_cycle(edges: dict[str, dict[str, tuple[int, str]]], start: str, members: set[str]) -> list[str]:
    """Shortest path start -> ... -> start inside one component (BFS)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(edges.get(node, ())):
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is not on a cycle")  # pragma: no cover


def find_cycles(graph: ImportGraph) -> list[list[str]]:
    """Each cycle as a chain [a, b, ..., a]: every self-import, and for each strongly connected
    component of more than one module enough shortest cycles that every member appears in one."""
    cycles: list[list[str]] = []
    for component in strongly_connected(graph.edges):
        members = set(component)
        if len(component) == 1:
            (only,) = component
            if only in graph.edges.get(only, {}):
                cycles.append([only, only])
            continue
        covered: set[str] = set()
        for member in component:
            if member in covered:
                continue
            chain = _shortest_cycle(graph.edges, member, members)
            covered.update(chain)
            cycles.append(chain)
    return cycles


def describe(graph: ImportGraph, chain: list[str]) -> str:
    lines = [" -> ".join(chain)]
    for a, b in zip(chain, chain[1:]):
        line, context = graph.edges[a][b]
        where = graph.files[a].relative_to(graph.root).as_posix()
        lines.append(f"    {a} -> {b}  ({where}:{line}, {context})")
    return "\n".join(lines)


def assert_no_cycles(graph: ImportGraph) -> None:
    cycles = find_cycles(graph)
    if cycles:
        raise AssertionError("import cycles:\n" + "\n".join(describe(graph, c) for c in cycles))


def test_no_import_cycles_in_project():
    graph = build_graph(ROOT)
    assert "hub.runtime" in graph.files and "plugins.ollama" in graph.files
    assert_no_cycles(graph)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cycle_finder_reports_known_cycles(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            # a -> b (module level), b -> a (only under TYPE_CHECKING): a cycle
            "pkg/a.py": "from .b import B\n",
            "pkg/b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from .a import A\n"
            ),
            # c -> sub.d (`import pkg.sub.d` is the module, not the package), and sub.d -> c
            # through a function-level `from .. import c` (c is a submodule): a cycle
            "pkg/c.py": "import os\nimport pkg.sub.d\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/d.py": "def f():\n    from .. import c\n    return c\n",
            # self-import
            "pkg/selfish.py": "from pkg import selfish\n",
            # no cycle: e -> a and the package, a third-party and a stdlib import
            "pkg/e.py": "import json\nimport numpy\nfrom . import helper_name\nfrom .a import B\n",
            # another top-level package, tied to pkg through its __init__
            "other/__init__.py": "from pkg import e\n",
            "other/x.py": "import other\n",
        },
    )
    graph = build_graph(tmp_path, ("pkg", "other"))
    assert graph.edges["pkg.e"] == {"pkg": (3, "module"), "pkg.a": (4, "module")}
    assert graph.edges["pkg.b"] == {"pkg.a": (3, "TYPE_CHECKING")}
    assert graph.edges["pkg.sub.d"] == {"pkg.c": (2, "function")}
    assert graph.edges["pkg.c"] == {"pkg.sub.d": (2, "module")}

    cycles = find_cycles(graph)
    assert cycles == [
        ["pkg.a", "pkg.b", "pkg.a"],
        ["pkg.c", "pkg.sub.d", "pkg.c"],
        ["pkg.selfish", "pkg.selfish"],
    ]
    with pytest.raises(AssertionError) as failed:
        assert_no_cycles(graph)
    report = str(failed.value)
    for chain in ("pkg.a -> pkg.b -> pkg.a", "pkg.c -> pkg.sub.d -> pkg.c", "pkg.selfish -> pkg.selfish"):
        assert f"\n{chain}\n" in report
    assert "pkg.b -> pkg.a  (pkg/b.py:3, TYPE_CHECKING)" in report
    assert "pkg.sub.d -> pkg.c  (pkg/sub/d.py:2, function)" in report


def test_cycle_finder_chains_a_longer_component(tmp_path):
    _write(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/core/__init__.py": "from .root import Root\n",
            "app/core/root.py": "from ..svc import api\n",
            "app/svc/__init__.py": "",
            "app/svc/api.py": "from app.svc import store\n",
            "app/svc/store.py": "from ..core.root import Root\n",
        },
    )
    graph = build_graph(tmp_path, ("app",))
    assert find_cycles(graph) == [["app.core.root", "app.svc.api", "app.svc.store", "app.core.root"]]
