"""Faults: a worker process killed while tasks run costs a retry, not a lost or duplicated
partition; Ctrl-C leaves only partitions of committed traces, and --resume completes them.
Each is compared with a clean run of the same inputs (2 worker processes, 1 thread each)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replay.fleets import fleet
from replay.fleets.store import committed_ids
from tests.replay.fleet_support import assert_same_dataset, local_client, make_inputs

distributed = pytest.importorskip("distributed", reason="the fleet extra is not installed")
POLICIES = ["sync", "6.9"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return [str(p) for p in make_inputs(tmp_path_factory.mktemp("faults-in")).values()]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with local_client() as c:
        yield c


@pytest.fixture(scope="module")
def clean(sources: list[str], client: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults-clean") / "ds"
    fleet(sources, out, policies=POLICIES, client=client)
    return out


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(
        sources: list[str], client: Any, clean: Path, tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_a_busy_worker(kind: str, value: Any) -> None:
        if killed or kind != "row":
            return
        busy = [w for w, keys in client.processing().items()
                if any(str(k).startswith("kvm-fleet-replay-") for k in keys)]
        if busy:
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    out = tmp_path / "ds"
    result = fleet(sources, out, policies=POLICIES, client=client, progress=kill_a_busy_worker)
    assert killed, "no worker was busy with a replay when the first trace finished"
    assert len(result.rows) == len(sources)
    assert_same_dataset(out, clean)


def test_ctrl_c_leaves_only_committed_partitions_and_resume_completes(
        sources: list[str], clean: Path, tmp_path: Path) -> None:
    def interrupt(kind: str, value: Any) -> None:
        if kind == "row":
            raise KeyboardInterrupt

    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        fleet(sources, out, policies=POLICIES, workers=2, progress=interrupt)
    done = committed_ids(out)
    assert 0 < len(done) < len(sources)
    for part in out.glob("*/trace=*"):
        assert part.name.removeprefix("trace=") in done
        assert [p.name for p in part.iterdir()] == ["part-0.parquet"]
    assert not any(out.glob(".staging/*"))
    fleet(sources, out, policies=POLICIES, workers=2, resume=True)
    assert_same_dataset(out, clean)
