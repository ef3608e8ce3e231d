"""Fail when any module of the project imports itself through a chain of other modules.

The graph is grimp's (import-linter's graph library): every ``import`` statement, including
those inside functions and under ``TYPE_CHECKING``, plus every ``importlib.import_module("...")``
or ``__import__("...")`` call with a literal project module name, since such a call is an import
that only hides from static tools. A cycle between modules means neither can be understood,
tested or loaded without the other; break it by moving the shared part into a third module or
by having the lower module publish what the upper one subscribes to.

Usage: ``python deploy/import_cycles.py`` from the repository root; exit status 1 and one line
per cycle when there is any.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import grimp

PACKAGES = ("api", "scheduler", "compute_agent", "cli")


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def dynamic_imports(root: Path, packages: Iterable[str]) -> list[tuple[str, str, int]]:
    """``(importer, imported, line)`` for each literal ``import_module``/``__import__`` call."""
    found: list[tuple[str, str, int]] = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and node.args):
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                target = node.args[0]
                if name in ("import_module", "__import__") and isinstance(target, ast.Constant) \
                        and isinstance(target.value, str) \
                        and target.value.split(".")[0] in packages:
                    found.append((_module_name(root, path), target.value, node.lineno))
    return found


def _components(adjacency: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    for start in sorted(adjacency):
        if start in index:
            continue
        work = [(start, iter(sorted(adjacency[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(adjacency[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return result


def _shortest_cycle(adjacency: dict[str, set[str]], members: list[str]) -> list[str]:
    """One shortest cycle through the first member, staying inside the component."""
    inside = set(members)
    start = members[0]
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(adjacency[node] & inside):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError("a strongly connected component always has a cycle")


def find_cycles(root: Path) -> list[tuple[list[str], list[str]]]:
    """``(group, example cycle)`` for each group of mutually importing modules."""
    sys.path.insert(0, str(root))
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    adjacency = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    for importer, imported, _line in dynamic_imports(root, PACKAGES):
        adjacency.setdefault(importer, set()).add(imported)
        adjacency.setdefault(imported, set())
    return [(c, _shortest_cycle(adjacency, c)) for c in _components(adjacency)]


def main() -> int:
    """Print each cycle; non-zero exit status when there is one."""
    root = Path(__file__).resolve().parent.parent
    cycles = find_cycles(root)
    for group, cycle in cycles:
        print("import cycle: " + " -> ".join(cycle))
        if len(group) > len(cycle) - 1:
            print("  modules that all import each other: " + ", ".join(group))
    if not cycles:
        print(f"no import cycles in {', '.join(PACKAGES)}")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
