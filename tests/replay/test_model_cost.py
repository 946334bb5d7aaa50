"""Cost model: defaults and their sources, TOML files, KEY=VALUE overrides, bad values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from replay import COST_SOURCES, DEFAULT_COST, CostModel, ReplayConfigError
from replay.model.cost import apply_overrides, load_cost_file
from replay.model.ids import GIB
from replay.model.population import Extent, Granularity, counts_of, zap_segments


def test_every_default_has_a_source() -> None:
    assert set(COST_SOURCES) == {f.name for f in dataclasses.fields(CostModel)}


def test_seed_per_leaf_cost_reproduces_900s() -> None:
    assert DEFAULT_COST.leaf_exclusive_ns * 2**34 == pytest.approx(900e9)
    assert round(DEFAULT_COST.leaf_exclusive_ns, 2) == 52.39


def test_64tib_counts_match_the_spec() -> None:
    c = counts_of([Extent(0, 64 << 40, 4096)])
    assert (c.leaves_4k, c.tables_l1, c.tables_l2, c.tables_l3) == (2**34, 2**25, 65536, 128)


def test_one_gib_subtree_is_about_13_7_ms() -> None:
    segs = zap_segments([Extent(0, GIB, 4096)], Granularity.GIB, DEFAULT_COST, shared=True,
                        tlb_per_table=False)
    assert segs[0].count == 1 and segs[0].total_ns == pytest.approx(13.73e6, rel=1e-3)


def test_toml_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("fault_ns = 500\nyield_on_contention = false\nhost_cpus = 4\n")
    cost = load_cost_file(f)
    assert (cost.fault_ns, cost.yield_on_contention, cost.host_cpus) == (500.0, False, 4)
    cost = apply_overrides(cost, ["fault_ns=750", "yield_on_contention=true"])
    assert (cost.fault_ns, cost.yield_on_contention) == (750.0, True)


@pytest.mark.parametrize(
    ("text", "message"),
    [("nope = 1", "unknown cost key"), ("fault_ns = 'x'", "expected a number"),
     ("fault_ns = -1", ">= 0"), ("fault_ns = ", "not valid TOML"),
     ("yield_on_contention = 3", "true or false")],
)
def test_bad_cost_files(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ReplayConfigError, match=message):
        load_cost_file(f)


def test_override_syntax() -> None:
    with pytest.raises(ReplayConfigError, match="KEY=VALUE"):
        apply_overrides(DEFAULT_COST, ["fault_ns"])
