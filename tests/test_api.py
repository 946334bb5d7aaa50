"""Every exported name exists, is documented, and the docstring examples run."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
from conftest import ROOT

import parsers

MODULES = sorted(m.name for m in pkgutil.walk_packages(parsers.__path__, "parsers.") if not m.ispkg)


def test_package_exports_are_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in parsers.__all__:
        obj = getattr(parsers, name)
        assert obj.__doc__, name
    for name in ("read_trace", "Trace"):
        assert name in readme


@pytest.mark.parametrize("module", MODULES)
def test_module_all_and_doctests(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    mod = importlib.import_module(module)
    for name in getattr(mod, "__all__", []):
        assert hasattr(mod, name), f"{module}.{name}"
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
