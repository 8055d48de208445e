"""The import graph of platform/galeno: no cycles, layers in order, no reach-ins to private names.

Imports inside functions count: one that dodges a cycle at import time still ties the two modules
together. The graph is read from the source (ast), so the test needs no optional dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "platform"
PACKAGE = ROOT / "galeno"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> tuple[set[str], list[str]]:
    """The galeno modules ``name`` imports anywhere in its file, and its uses of other modules' private names."""
    tree = ast.parse(MODULES[name].read_text())
    edges: set[str] = set()
    private: list[str] = []
    aliases: dict[str, str] = {}  # a local name bound to a galeno module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("galeno.") and alias.name in MODULES:
                    edges.add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "galeno":
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if target in MODULES:  # `from galeno.ner import data`: the module itself
                    edges.add(target)
                    aliases[alias.asname or alias.name] = target
                else:
                    edges.add(node.module)
                    if alias.name.startswith("_") and not alias.name.startswith("__") and node.module != name:
                        private.append(f"{name}:{node.lineno} imports {node.module}.{alias.name}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            private.append(f"{name}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    edges.discard(name)
    return {e for e in edges if e in MODULES}, private


GRAPH = {name: imports_of(name)[0] for name in MODULES}


def cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in GRAPH[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_graph_is_read():
    assert "galeno.inference.token_classification" in GRAPH["galeno.serve.app"]
    assert "galeno.inference.align" in GRAPH["galeno.inference.token_classification"]


def test_no_import_cycles():
    assert cycles() == []


def test_ner_and_serve_do_not_import_each_other():
    by_package: dict[str, set[str]] = defaultdict(set)
    for name, targets in GRAPH.items():
        by_package[".".join(name.split(".")[:2])] |= {".".join(t.split(".")[:2]) for t in targets}
    assert "galeno.serve" not in by_package["galeno.ner"]
    assert "galeno.ner" not in by_package["galeno.serve"]


def test_inference_sits_below_ner_serve_and_registry():
    """The one layer that loads and runs models imports none of the stages that use it."""
    above = ("galeno.ner", "galeno.serve", "galeno.registry", "galeno.train", "galeno.pipeline")
    for name in MODULES:
        if name.startswith("galeno.inference"):
            assert not [t for t in reach(name) if t.startswith(above)], name


def test_nothing_imports_a_private_name_of_another_module():
    assert [p for name in MODULES for p in imports_of(name)[1]] == []
