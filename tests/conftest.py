"""Shared fixtures: where the reference traces are, the golden-file switch, and a fleet
dataset built once per test module (on a LocalCluster of 2 worker processes)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_traces"
GOLDEN = Path(__file__).resolve().parent / "golden"
SHARED_TRACES = ROOT.parent / "shared" / "traces"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden files from the current output")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def shared_trace(relative: str) -> Path:
    """A file of ../shared/traces, or skip the test saying why."""
    path = SHARED_TRACES / relative
    if not path.exists():
        pytest.skip(f"reference trace {path} is absent (../shared is not beside the checkout)")
    return path


def readme_counts() -> dict[str, dict[str, int]]:
    """Per-event counts per file from ../shared/traces/README.md ("### real/x.txt" blocks)."""
    readme = SHARED_TRACES / "README.md"
    if not readme.exists():
        return {}
    counts: dict[str, dict[str, int]] = {}
    current: dict[str, int] | None = None
    for line in readme.read_text().splitlines():
        if m := re.match(r"^### (\S+)$", line):
            current = counts.setdefault(m[1], {})
        elif current is not None and (m := re.match(r"^(\d+) (\S+)$", line)):
            current[m[2]] = int(m[1])
        elif line.startswith("```") and current:
            current = None
    return counts


def check_golden(path: Path, text: str, update: bool) -> None:
    """Compare ``text`` with the golden file (or rewrite it with --update-golden)."""
    if update or not path.exists():
        if not update:
            pytest.fail(f"golden file {path} is missing; run pytest --update-golden")
        path.write_text(text)
        return
    assert text == path.read_text(), f"output differs from {path} (pytest --update-golden)"


#: Policies of the fleet fixtures' dataset.
FLEET_POLICIES = ["sync", "6.9"]


@pytest.fixture(scope="module")
def fleet_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fleet tests' inputs (tests/replay/fleet_support.py ``make_inputs``)."""
    from tests.replay.fleet_support import make_inputs

    return make_inputs(tmp_path_factory.mktemp("fleet-inputs"))


@pytest.fixture(scope="module")
def fleet_client() -> Iterator[Any]:
    """A Dask client of a LocalCluster for the module's fleet tests."""
    pytest.importorskip("distributed", reason="the fleet extra is not installed")
    from tests.replay.fleet_support import local_client

    with local_client() as c:
        yield c


@pytest.fixture(scope="module")
def fleet_clean(fleet_inputs: dict[str, Path], fleet_client: Any,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """``(dataset, FleetResult)`` of every fleet input under :data:`FLEET_POLICIES`."""
    from replay.fleets import fleet

    out = tmp_path_factory.mktemp("fleet") / "ds"
    return out, fleet([str(p) for p in fleet_inputs.values()], out, policies=FLEET_POLICIES,
                      client=fleet_client)
