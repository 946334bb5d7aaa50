"""docs/validation.md shows what benchmarks/published.py's row builder computes today.

The generated part of the page (table and per-row details) must equal a fresh render of
``build_rows()``, so a model or cost change that moves a prediction cannot leave the page
stale. The whole builder runs in a few seconds (its biggest rows are the 64 TiB and 32 TiB
max-guest-memory runs, about 1 s each), so it runs once per session.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from replay import DEFAULT_COST

ROOT = Path(__file__).resolve().parents[2]
_NAME = "kvm_mmu_replay_benchmark_published"


def _published() -> ModuleType:
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(_NAME, ROOT / "benchmarks" / "published.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


pub = _published()


@pytest.fixture(scope="module")
def rows() -> list[object]:
    return list(pub.build_rows())


@pytest.mark.slow
def test_validation_doc_equals_row_builder(rows: list[object]) -> None:
    doc = (ROOT / "docs" / "validation.md").read_text(encoding="utf-8")
    section = pub.render_markdown(rows)
    current = pub.generated_section(doc)
    assert current, "docs/validation.md lost its generated-table markers"
    stale = "docs/validation.md is stale: run .venv/bin/python benchmarks/published.py --update-doc"
    for line in section.splitlines():  # row by row first: the failure names the row
        if line.startswith("| ["):
            assert line in current.splitlines(), f"{stale}\nexpected row: {line}"
    assert current == section, stale


@pytest.mark.slow
def test_every_row_is_sourced_and_explained(rows: list[object]) -> None:
    commit = re.compile(r"\b[0-9a-f]{12}\b")
    message = re.compile(r"<[^<>\s]+@[^<>\s]+>")
    keys = [r.claim.key for r in rows]  # type: ignore[attr-defined]
    assert len(keys) == len(set(keys))
    for r in rows:
        c = r.claim  # type: ignore[attr-defined]
        assert commit.search(c.source) or message.search(c.source), c.key
        assert c.quote and c.setup and c.note, c.key
        if r.verdict == "not modelled":  # type: ignore[attr-defined]
            assert c.workload is None and c.note.startswith("Not modelled"), c.key
        else:
            assert c.model and r.predicted_ns is not None, c.key  # type: ignore[attr-defined]
        if r.verdict == "miss (>2x)":  # type: ignore[attr-defined]
            assert c.note.startswith("Miss"), f"{c.key}: a miss must say why"
        if c.workload is not None and c.workload.startswith("proxy"):
            assert c.note.startswith("Proxy") or c.note.startswith("Miss"), c.key
            assert "proxy" in c.model, c.key


def test_rows_run_the_model_with_the_given_cost() -> None:
    """The same builder with leaf costs doubled doubles a zap-bound prediction: the rows come
    from model runs with the one cost model passed in, not from stored numbers."""
    claim = next(c for c in pub.CLAIMS if c.key == "pgd-1g-unit")
    base = pub.build_row(claim)
    doubled = dataclasses.replace(DEFAULT_COST, leaf_exclusive_ns=2 * DEFAULT_COST.leaf_exclusive_ns,
                                  leaf_shared_ns=2 * DEFAULT_COST.leaf_shared_ns)
    again = pub.build_row(claim, doubled)
    assert base.predicted_ns == 13_734_410  # 262,144 leaves x 52.39 ns, plus lock hand-offs
    assert 1.99 < again.predicted_ns / base.predicted_ns < 2.01


@pytest.mark.parametrize(
    ("kind", "value", "high", "predicted", "verdict"),
    [
        ("approx", 100, 0, 150, "within 2x"),
        ("approx", 100, 0, 49, "miss (>2x)"),
        ("approx", 100, 0, 201, "miss (>2x)"),
        ("at_least", 100, 0, 100, "bound holds"),
        ("at_least", 100, 0, 60, "bound missed, within 2x"),
        ("at_least", 100, 0, 40, "miss (>2x)"),
        ("at_most", 100, 0, 1, "bound holds"),
        ("at_most", 100, 0, 150, "bound missed, within 2x"),
        ("at_most", 100, 0, 250, "miss (>2x)"),
        ("range", 200, 300, 250, "in range"),
        ("range", 200, 300, 400, "within 2x"),
        ("range", 200, 300, 100, "miss (>2x)"),
    ],
)
def test_judge(kind: str, value: int, high: int, predicted: int, verdict: str) -> None:
    ratio, got = pub.judge(kind, value, high, predicted)
    assert got == verdict
    assert ratio == pytest.approx(predicted / ((value + high) / 2 if kind == "range" else value))


def test_update_doc_rewrites_only_the_generated_part(tmp_path: Path) -> None:
    doc = tmp_path / "v.md"
    doc.write_text(f"intro\n{pub.BEGIN}\nold\n{pub.END}\noutro\n", encoding="utf-8")
    section = f"{pub.BEGIN}\nnew\n{pub.END}\n"
    assert pub.update_doc(doc, section) is True
    assert doc.read_text(encoding="utf-8") == f"intro\n{section}outro\n"
    assert pub.update_doc(doc, section) is False
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        pub.update_doc(bare, section)
