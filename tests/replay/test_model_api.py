"""The public API: ``__all__`` names exist, are documented, and appear in docs/model.md."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import replay
from replay import COST_SOURCES

DOCS = "".join((Path(__file__).resolve().parents[2] / "docs" / f).read_text()
               for f in ("model.md", "replay.md"))
MODULES = sorted(m.name.removeprefix("replay.")
                 for m in pkgutil.walk_packages(replay.__path__, "replay.") if not m.ispkg)


@pytest.mark.parametrize("name", replay.__all__)
def test_public_name_is_documented(name: str) -> None:
    obj = getattr(replay, name)
    if callable(obj):
        assert obj.__doc__, name
    assert name in DOCS, f"{name} missing from docs/model.md and docs/replay.md"


@pytest.mark.parametrize("module", MODULES)
def test_every_module_declares_all(module: str) -> None:
    mod = importlib.import_module(f"replay.{module}")
    assert all(hasattr(mod, n) for n in mod.__all__)


def test_every_cost_key_is_documented() -> None:
    for key in COST_SOURCES:
        assert f"`{key}`" in DOCS


@pytest.mark.parametrize("module", ["replay.model.runner", "replay.sizes", "replay.infer.threads",
                                    "replay.infer.observed", "replay.infer.workload",
                                    "replay.trace_replay", "replay.fleets.histogram"])
def test_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
