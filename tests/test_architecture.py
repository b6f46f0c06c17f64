"""The package's structure, read from its source: no import cycle, and the core imports no entry point or figure.

Every import counts, also one inside a function: a cycle that only a late import breaks is still
two modules that cannot be understood one without the other.
"""

import ast

import pytest

from support.paths import ROOT

PACKAGE = ROOT / "pnp"
# What each layer must not import: the method knows no pipeline, the pipelines no visualisation or
# entry point, the visualisations no entry point.
FORBIDDEN = {
    "pnp.method": ("pnp.pipelines", "pnp.visual", "pnp.app", "pnp.evaluation"),
    "pnp.pipelines": ("pnp.visual", "pnp.app", "pnp.evaluation"),
    "pnp.visual": ("pnp.app", "pnp.evaluation"),
    # The toy world, its scorer and its quality figures read any pipeline by its components.
    "pnp.toy": ("pnp.pipelines", "pnp.visual", "pnp.app", "pnp.evaluation"),
}


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, object]:
    """Every module of the package by name, with its file."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path, known: set[str]) -> set[str]:
    """The package's modules that module ``name`` (in ``path``) imports, anywhere in its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # ``from pnp.pipelines import base`` imports the module pnp.pipelines.base.
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    files = modules()
    return {name: imported(name, path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_check_finds_cycles_and_only_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_imports_are_read_wherever_they_are_and_however_they_are_written():
    graph = import_graph()
    assert "pnp.pipelines.base" in graph["pnp.pipelines.pipeline_pnp"]  # from pnp.pipelines import base
    assert "pnp.visual.visualise" in graph["pnp.app.cli"]  # imported inside a function
    assert "pnp.config" in graph["pnp.pipelines.loading"]


def test_no_module_of_the_package_imports_itself_back():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("layer", FORBIDDEN)
def test_the_core_imports_no_entry_point_or_figure(layer):
    wrong = {
        (name, target)
        for name, targets in import_graph().items()
        if name == layer or name.startswith(f"{layer}.")
        for target in targets
        if target.startswith(FORBIDDEN[layer])
    }
    assert wrong == set()
