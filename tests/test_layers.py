"""The package's import graph (docs/DESIGN.md §11): its layers are a contract (pyproject.toml's
tool.importlinter, checked by import-linter), and no module imports, directly or through others,
a module that imports it back."""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest
from importlinter.application.use_cases import lint_imports
from importlinter.configuration import configure

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("triforce", exclude_type_checking_imports=True)


def test_the_layers_contract_holds(monkeypatch):
    configure()  # import-linter's readers and graph builder, as its command line sets them up
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_logo=True), (
        "an import points up a layer: run `lint-imports pyproject.toml` for the chain")


def import_circles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
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
                circles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return circles


def test_no_import_circle(graph):
    assert import_circles(graph) == []


@pytest.mark.parametrize("importer,imported", [
    ("triforce.cache", "triforce.models"),  # a cache stores, selects and moves KV: it never runs a model
    ("triforce.cache", "triforce.prefill"),
    ("triforce.cache", "triforce.parallel"),
    ("triforce.models", "triforce.cache"),
    ("triforce.models", "triforce.parallel"),
    ("triforce.kernels", "triforce.models"),
    ("triforce.inputs", "triforce"),  # the ground floor: torch only
])
def test_the_ground_floor_is_clean(graph, importer, imported):
    if imported == "triforce":
        assert not {m for m in graph.find_modules_directly_imported_by(importer)}
        return
    assert not graph.chain_exists(importer=importer, imported=imported, as_packages=True)
