"""The code's shape: the import graph of src/promptport has no cycle (imports inside functions count)
and no function is longer than 120 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "promptport"
MAX_FUNCTION_LINES = 120


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> promptport modules it imports anywhere in its body (top level or inside functions)."""
    modules = {p.stem for p in src.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in src.glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "promptport":
                    deps |= {a.name for a in node.names if a.name in modules}
                elif node.module.startswith("promptport."):
                    deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {
                    a.name.split(".")[1] for a in node.names if a.name.startswith("promptport.")
                }
        graph[path.stem] = {d for d in deps if d in modules and d != path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return path[path.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def long_functions(src: Path = SRC, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path.name}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_the_checks_catch_what_they_are_for(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from promptport.b import g\n")
    (tmp_path / "b.py").write_text("from promptport import c\n")
    (tmp_path / "c.py").write_text("import promptport.a\n" + "def h():\n" + "    x = 1\n" * 130)
    assert find_cycle(import_graph(tmp_path)) == ["a", "b", "c", "a"]
    assert long_functions(tmp_path) == ["c.py:2 h (131 lines)"]
    (tmp_path / "c.py").write_text("import numpy\n")
    assert find_cycle(import_graph(tmp_path)) is None


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert {"pipeline", "distill", "models", "student"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_no_function_longer_than_120_lines():
    assert long_functions() == []
