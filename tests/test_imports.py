"""The package's import graph: no module-level import cycles, and every module imports cleanly.

The static check parses every module under ``astroflax/`` with :mod:`ast` and collects the
``astroflax.*`` imports that run when the module is imported: top-level statements, including
those nested in top-level ``try``/``if``/``with`` blocks, but not imports inside function or
class bodies (those run later, when called) nor under ``if TYPE_CHECKING:``.

``from astroflax.x import y`` is an edge to ``astroflax.x.y`` when that is a module, else to
``astroflax.x``. Importing a module also initialises its parent packages, so an import of
``astroflax.a.b`` is also an edge to ``astroflax.a`` (its ``__init__``), except for packages
that contain the importing module itself: those are necessarily already being initialised
when it runs (a package's ``__init__`` importing its own submodules is not a cycle; a
submodule importing a *name* from its package's ``__init__`` is, and is an explicit edge).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = "astroflax"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def package_modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the (regular) package tree."""
    modules: dict[str, Path] = {}

    def walk(directory: Path, prefix: str) -> None:
        modules[prefix] = directory / "__init__.py"
        for path in sorted(directory.iterdir()):
            if path.is_dir() and (path / "__init__.py").is_file():
                walk(path, f"{prefix}.{path.name}")
            elif path.suffix == ".py" and path.name != "__init__.py":
                modules[f"{prefix}.{path.stem}"] = path

    walk(root, package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(body: list[ast.stmt]):
    """Import statements executed at import time (not in functions/classes, not TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level_imports(node.body)
            yield from _module_level_imports(node.orelse)
        elif isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _module_level_imports(block)
            for handler in node.handlers:
                yield from _module_level_imports(handler.body)
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            yield from _module_level_imports(node.body)
            yield from _module_level_imports(getattr(node, "orelse", []))


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that importing ``name`` imports at module level (see the docstring)."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    targets: set[str] = set()
    for node in _module_level_imports(tree.body):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        if node.level:  # relative: resolve against this module's package
            base = name.split(".")
            base = base[: len(base) - node.level + (1 if is_package else 0)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            targets.add(sub if alias.name != "*" and sub in modules else source)
    own = set(_ancestors(name)) | {name}
    edges: set[str] = set()
    for target in targets:
        if target != PACKAGE and not target.startswith(PACKAGE + "."):
            continue
        # the nearest module that exists (``import astroflax.x.Name`` never happens, but be safe)
        while target not in modules and "." in target:
            target = target.rsplit(".", 1)[0]
        edges.update(t for t in [*_ancestors(target), target] if t not in own)
    return edges


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (or a self-loop),
    each as a closed path ``[a, b, ..., a]`` starting from the component's smallest name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan; module graphs are small, recursion is fine
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in sorted(components):
        members = set(comp)
        start = comp[0]
        if len(comp) == 1 and start not in graph.get(start, ()):
            continue
        # shortest path from start back to start inside the component (BFS)
        parents: dict[str, str] = {}
        frontier, seen, end = [start], set(), None
        while frontier and end is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph.get(v, ())):
                    if w not in members:
                        continue
                    if w == start:
                        end = v
                        break
                    if w not in seen:
                        seen.add(w)
                        parents[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        path = [end]
        while path[-1] != start:
            path.append(parents[path[-1]])
        cycles.append([*reversed(path), start])
    return cycles


def test_find_cycles_reports_closed_paths():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["d", "d"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_static_import_graph_has_no_cycles():
    graph = import_graph()
    assert "astroflax.cli" in graph and "astroflax.errors" in graph["astroflax.cli"]  # the parser sees imports
    cycles = find_cycles(graph)
    assert not cycles, "module-level import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_library_modules_never_import_the_cli():
    """Only the command line (its entry point ``astroflax.launch`` and ``python -m astroflax``) may
    import ``astroflax.cli``, not even inside a function."""
    offenders = []
    for name, path in package_modules().items():
        if name in ("astroflax.cli", "astroflax.__main__", "astroflax.launch") or name.startswith("astroflax.cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{name} (line {node.lineno})" for m in mods if m == "astroflax.cli" or m.startswith("astroflax.cli.")]
    assert not offenders, f"library modules importing astroflax.cli: {offenders}"


IMPORT_ALL = """
import importlib, pkgutil, sys, traceback
import astroflax
failed = []
names = sorted({m.name for m in pkgutil.walk_packages(astroflax.__path__, "astroflax.", onerror=failed.append)})
for name in names:
    try:
        importlib.import_module(name)
    except BaseException:
        failed.append(name)
        traceback.print_exc()
print(len(names), "modules")
sys.exit(f"could not import: {failed}" if failed else 0)
"""


def test_every_module_imports_in_a_fresh_interpreter():
    proc = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
