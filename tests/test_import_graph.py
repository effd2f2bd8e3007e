"""The import graph of wildvision has no circles, and the core imports no subpackage.

Read from the source with ``ast`` (nothing is imported): every ``import``/``from ... import``
anywhere in a module (top level, inside functions, under ``TYPE_CHECKING``), relative imports
resolved, and string constants naming a wildvision module (``importlib.import_module``) count
as edges. A module's own enclosing packages are not edges: Python initialises them before the
module, so ``from . import metrics`` inside ``wildvision.bench`` is an edge to
``wildvision.bench.metrics`` only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import wildvision

ROOT = Path(wildvision.__file__).parent


def _modules() -> dict[str, tuple[Path, bool]]:
    mods: dict[str, tuple[Path, bool]] = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (f, is_pkg)
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module name -> the wildvision modules it imports."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        package = name if is_pkg else name.rsplit(".", 1)[0]
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and node.value.startswith("wildvision.")):
                targets = [node.value]
            out.update(t for t in targets
                       if t in mods and t != name and not name.startswith(t + "."))
        graph[name] = out
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(comps)


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_relative_lazy_and_string_imports() -> None:
    graph = import_graph()
    assert "wildvision.predict" in graph["wildvision"]  # from .predict import ...
    assert "wildvision.errors" in graph["wildvision.predict"]
    # cli loads the subcommand modules by name (importlib)
    assert "wildvision.train._cli" in graph["wildvision.cli"]


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles among wildvision modules:\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def _is_core(name: str) -> bool:
    return name == "wildvision" or (name.count(".") == 1 and name != "wildvision.cli"
                                    and not (ROOT / name.split(".")[1]).is_dir())


def test_core_imports_no_subpackage_and_nothing_imports_cli() -> None:
    graph = import_graph()
    bad = sorted(
        f"{m} -> {t}" for m, targets in graph.items() for t in targets
        if (_is_core(m) and not _is_core(t) and t != "wildvision.cli")
        or (t == "wildvision.cli" and m != "wildvision.__main__")
    )
    assert not bad, "core importing a subpackage, or a module importing the CLI:\n" + "\n".join(
        bad
    )
