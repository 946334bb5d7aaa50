"""The folders show the architecture, and the imports keep to it (docs/style.md §16).

The import graph is read from the sources with :mod:`ast` (every ``import``, including those
inside functions and ``TYPE_CHECKING`` blocks) — nothing is imported to build it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("parsers", "replay")
MAX_MODULES_PER_FOLDER = 16

#: Reading a trace: the format readers and what drives them.
READERS = ("parsers.detect", "parsers.convert", "parsers.text", "parsers.tracedat",
           "parsers.perfetto.reader", "parsers.perfetto.sql", "parsers.recording")
#: Orchestration at replay's root: trace in, results out.
ORCHESTRATION = ("replay.trace_replay", "replay.cli", "replay.cli_support", "replay.cli_fleet",
                 "replay.compare", "replay.fleets")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = _modules()


def _targets(node: ast.AST, here: str, is_pkg: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = here.split(".") if is_pkg else here.split(".")[:-1]
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        for a in node.names:
            sub = f"{base}.{a.name}"
            yield sub if sub in MODULES else base


def import_graph() -> dict[str, set[str]]:
    """``module -> modules of this project it imports`` (packages count as their ``__init__``)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        graph[name] = {t for n in ast.walk(tree) for t in _targets(n, name, is_pkg)
                       if t.split(".")[0] in PACKAGES and t != name}
    return graph


GRAPH = import_graph()


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _violations(sources: tuple[str, ...], forbidden: tuple[str, ...],
                allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(f"{m} imports {t}" for m, ts in GRAPH.items() if _under(m, sources)
                  for t in ts if _under(t, forbidden) and not _under(t, allowed))


def test_the_graph_is_read() -> None:
    assert "replay.model.lock" in GRAPH["replay.model.lifecycle"]
    assert "parsers.text.grammar" in GRAPH["parsers.text.reader"]


def test_parsers_never_import_replay() -> None:
    assert _violations(("parsers",), ("replay",)) == []


def test_model_imports_neither_inference_rendering_nor_readers() -> None:
    forbidden = ("replay.infer", "replay.render", *ORCHESTRATION, "parsers")
    assert _violations(("replay.model",), forbidden, allowed=("parsers.errors",)) == []


def test_inference_never_renders() -> None:
    assert _violations(("replay.infer",), ("replay.render", *ORCHESTRATION)) == []


def test_rendering_imports_results_never_readers() -> None:
    forbidden = (*READERS, "replay.infer", *ORCHESTRATION)
    assert _violations(("replay.render",), forbidden) == []


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(GRAPH.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_another_that_imports_it_back() -> None:
    assert _cycles() == []


@pytest.mark.parametrize("folder", sorted({p.parent for p in MODULES.values()}),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_folders_stay_small(folder: Path) -> None:
    modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
    assert len(modules) <= MAX_MODULES_PER_FOLDER, f"{folder}: {len(modules)} modules"


@pytest.mark.parametrize("package", sorted(n for n, p in MODULES.items() if p.name == "__init__.py"))
def test_each_package_says_what_it_takes_and_gives(package: str) -> None:
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text()))
    assert doc and doc.count(".") >= 2, f"{package}: its __init__ opens with what comes in and out"
