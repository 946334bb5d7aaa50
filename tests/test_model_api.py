"""The public API: ``__all__`` names exist, are documented, and appear in docs/model.md."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import replay
from replay import COST_SOURCES

DOCS = (Path(__file__).resolve().parents[1] / "docs" / "model.md").read_text()
MODULES = ["actors", "compare", "cost", "engine", "errors", "ids", "model", "policies",
           "population", "recorders", "records", "result", "roots", "runner", "rwlock",
           "scenarios", "sizes", "trace_emit", "workload", "workqueue", "cli"]


@pytest.mark.parametrize("name", replay.__all__)
def test_public_name_is_documented(name: str) -> None:
    obj = getattr(replay, name)
    if callable(obj):
        assert obj.__doc__, name
    assert name in DOCS, f"{name} missing from docs/model.md"


@pytest.mark.parametrize("module", MODULES)
def test_every_module_declares_all(module: str) -> None:
    mod = importlib.import_module(f"replay.{module}")
    assert all(hasattr(mod, n) for n in mod.__all__)


def test_every_cost_key_is_documented() -> None:
    for key in COST_SOURCES:
        assert f"`{key}`" in DOCS


@pytest.mark.parametrize("module", ["replay.runner", "replay.sizes"])
def test_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
