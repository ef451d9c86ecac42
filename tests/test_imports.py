"""No import circle inside dni_dist, not even through a function-level (lazy) import (issue 29, goal 4).

A lazy import hides a circle from Python (nothing fails at import time) but not from a reader:
module A needs B needs A, and neither can be read alone. This walks every module of the package
with :mod:`ast` and collects every ``import``/``from ... import`` of a dni_dist module, at module
level and inside functions alike. Importing ``dni_dist.a.b`` also runs ``dni_dist/a/__init__.py``,
so a module depends on the packages above what it imports too (all but those it sits in itself,
which ran before it, and the root package, whose ``__init__`` only gathers the public surface).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "dni_dist"
PACKAGE = "dni_dist"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = (PACKAGE, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The dni_dist modules ``name``'s source imports anywhere (module level or in a function)."""
    here = name if is_package else name.rpartition(".")[0]  # what a relative import starts from
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" imports the module pkg.mod; "from mod import name" imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # "import dni_dist.x.y" of a name inside a module: its module
                t = t.rpartition(".")[0]
            if not t.startswith(PACKAGE + "."):
                continue  # another package, or the root package
            found.add(t)
            parent = t.rpartition(".")[0]
            while parent != PACKAGE:  # importing a.b runs a/__init__.py first, unless it runs already:
                if not (name + ".").startswith(parent + "."):  # a package this module is in
                    found.add(parent)
                parent = parent.rpartition(".")[0]
    found.discard(name)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(files)
    return {name: imported(ast.parse(p.read_text(), str(p)), name, p.name == "__init__.py", modules)
            for name, p in sorted(files.items())}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_walk_sees_lazy_imports_and_parent_packages(tmp_path):
    """On a small package: a function-level relative import, the package a submodule import runs,
    ``from . import mod`` in a package, and an absolute import close a circle the test names."""
    files = {"__init__.py": "from .a import f\n",
             "a.py": "import os\n\n\ndef f():\n    from .sub.b import g\n    return g\n",
             "sub/__init__.py": "from . import c\n",
             "sub/b.py": "def g():\n    return 1\n",
             "sub/c.py": "import dni_dist.a\n"}
    for name, text in files.items():
        (tmp_path / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / name).write_text(text)
    g = import_graph(tmp_path / PACKAGE)
    assert g == {"dni_dist": {"dni_dist.a"}, "dni_dist.a": {"dni_dist.sub", "dni_dist.sub.b"},
                 "dni_dist.sub": {"dni_dist.sub.c"}, "dni_dist.sub.b": set(), "dni_dist.sub.c": {"dni_dist.a"}}
    assert find_cycle(g) == ["dni_dist.a", "dni_dist.sub", "dni_dist.sub.c", "dni_dist.a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


if __name__ == "__main__":  # print the whole graph's circles, one at a time
    print(find_cycle(import_graph()))
