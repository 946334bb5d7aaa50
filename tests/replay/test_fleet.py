"""``fleet``: many traces on a Dask LocalCluster (2 worker processes, 1 thread each) into one
hive-partitioned dataset; what it holds is what :func:`replay.replay` gives for each trace."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import FLEET_POLICIES
from typer.testing import CliRunner

from parsers import MissingExtraError, OutputError, read_trace
from replay import replay
from replay.cli import app
from replay.fleets import fleet
from replay.fleets.inputs import content_id
from replay.fleets.store import read_table
from tests.replay.fleet_support import assert_same_dataset

distributed = pytest.importorskip("distributed", reason="the fleet extra is not installed")
POLICIES = FLEET_POLICIES


def _by_path(result: Any) -> dict[str, dict[str, Any]]:
    return {Path(r["path"]).name: r for r in result.table("traces").to_pylist()}


def test_every_trace_is_a_row_and_damage_is_an_error_not_a_stop(
        fleet_clean: tuple[Path, Any], fleet_inputs: dict[str, Path]) -> None:
    _, result = fleet_clean
    rows = _by_path(result)
    assert sorted(rows) == sorted(p.name for p in fleet_inputs.values())
    for name in ("host-truncated.dat", "host-garbage.bin"):
        assert rows[name]["status"] == "error" and name in rows[name]["error"]
    ok = [r for n, r in rows.items() if n not in ("host-truncated.dat", "host-garbage.bin")]
    assert all(r["status"] == "ok" and r["error"] is None for r in ok)
    assert rows["host-dat.dat"]["format"] == "trace.dat"
    assert rows["tdp_5.18_workqueue.txt"]["era"] == "5.18"
    for path in fleet_inputs.values():
        assert rows[path.name]["trace"] == content_id(str(path))[0]
        assert rows[path.name]["size"] == path.stat().st_size


def test_each_trace_holds_what_replay_gives(fleet_clean: tuple[Path, Any],
                                            fleet_inputs: dict[str, Path]) -> None:
    root, result = fleet_clean
    blocks = read_table(root, "block_intervals")
    summary = result.table("summary")
    for name in ("dat", "tdp_5.18_workqueue", "host-emitted-1"):
        path = fleet_inputs[name]
        trace_id = content_id(str(path))[0]
        want = replay(path, policy=POLICIES)
        mine = blocks.filter(pc.equal(blocks.column("trace"), trace_id)).drop_columns("trace")
        assert mine.num_rows and mine.to_pylist() == want.block_intervals.to_pylist()
        rows = summary.filter(pc.equal(summary.column("trace"), trace_id)).drop_columns("trace")
        assert rows.to_pylist() == want.summary().to_pylist()
        events = _by_path(result)[path.name]["events"]
        assert events == sum(read_trace(path).event_counts().values())


def test_resume_skips_done_traces_and_rewrites_nothing(
        fleet_clean: tuple[Path, Any], fleet_inputs: dict[str, Path], fleet_client: Any,
        tmp_path: Path) -> None:
    first = tmp_path / "ds"
    some = [str(fleet_inputs[n]) for n in ("dat", "tdp_6.6_inline")]
    fleet(some, first, policies=POLICIES, client=fleet_client)
    before = {p: p.stat().st_ino for p in first.glob("*/trace=*/part-0.parquet")}
    extra = str(fleet_inputs["tdp_5.17_sync"])
    again = fleet([*some, extra], first, policies=POLICIES, client=fleet_client, resume=True)
    assert sorted(s for s, _ in again.skipped) == sorted(some)
    assert [Path(r["path"]).name for r in again.rows] == ["tdp_5.17_sync.txt"]
    assert all(p.stat().st_ino == ino for p, ino in before.items())


def test_the_same_bytes_twice_are_one_trace(fleet_inputs: dict[str, Path], fleet_client: Any,
                                            tmp_path: Path) -> None:
    copy = tmp_path / "again.txt"
    copy.write_bytes(fleet_inputs["tdp_6.6_inline"].read_bytes())
    result = fleet([str(fleet_inputs["tdp_6.6_inline"]), str(copy)], tmp_path / "ds",
                   policies=["sync"], client=fleet_client)
    assert len(result.rows) == 1 and len(result.duplicates) == 1
    assert result.to_pandas("traces").shape[0] == 1


def test_events_tables_are_written_on_request(fleet_inputs: dict[str, Path], fleet_client: Any,
                                              tmp_path: Path) -> None:
    path = fleet_inputs["tdp_5.18_workqueue"]
    result = fleet([str(path)], tmp_path / "ds", policies=["sync"], client=fleet_client,
                   events=True)
    trace = read_trace(path)
    assert result.table("events").num_rows == trace.events.num_rows
    for name in trace.names:
        assert result.table(name).num_rows == trace.table(name).num_rows


def test_an_existing_dataset_is_continued_or_replaced_only_when_asked(
        fleet_inputs: dict[str, Path], fleet_client: Any, tmp_path: Path) -> None:
    one = [str(fleet_inputs["tdp_6.6_inline"])]
    out = tmp_path / "ds"
    fleet(one, out, policies=["sync"], client=fleet_client)
    with pytest.raises(OutputError, match="--force"):
        fleet(one, out, policies=["sync"], client=fleet_client)
    assert len(fleet(one, out, policies=["sync"], client=fleet_client, force=True).rows) == 1
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not yours")
    for flags in ({"resume": True}, {"force": True}):
        with pytest.raises(OutputError, match="not written by kvm-mmu-replay"):
            fleet(one, foreign, policies=["sync"], client=fleet_client, **flags)
    assert (foreign / "notes.txt").read_text() == "not yours"


def test_cli_fleet_then_query_and_resume(fleet_inputs: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "ds"
    args = ["fleet", str(fleet_inputs["tdp_5.17_sync"]), str(fleet_inputs["garbage"]), "-o", str(out),
            "--workers", "2", "-p", "sync"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 traces replayed, 1 failed" in result.stdout
    assert "host-garbage.bin" in result.stderr
    query = runner.invoke(app, ["query", str(out), "select status, count(*) as n from traces "
                                "group by 1 order by 1", "--csv"])
    assert query.stdout.splitlines() == ["status,n", "error,1", "ok,1"]
    again = runner.invoke(app, [*args, "--resume"])
    assert "0 traces replayed, 0 failed, 2 already done" in again.stdout
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--force" in refused.stderr


def test_a_clean_run_twice_gives_the_same_dataset(fleet_clean: tuple[Path, Any],
                                                  fleet_inputs: dict[str, Path], fleet_client: Any,
                                                  tmp_path: Path) -> None:
    fleet([str(p) for p in reversed(fleet_inputs.values())], tmp_path / "ds", policies=POLICIES,
          client=fleet_client)
    assert_same_dataset(tmp_path / "ds", fleet_clean[0])


def test_without_the_extra_the_error_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MissingExtraError, match=r"kvm-mmu-replay\[fleet\]"):
        fleet([os.devnull], tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_traces_table_types() -> None:
    from replay.fleets.task import TRACES_SCHEMA

    assert TRACES_SCHEMA.field("events").type == pa.int64()
    assert TRACES_SCHEMA.field("event_counts").type == pa.map_(pa.string(), pa.int64())


def test_the_issue_signature_writes_a_scratch_dataset(
        fleet_inputs: dict[str, Path], fleet_client: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``replay.fleet(inputs, policies=..., client=...)``: no dataset named, one is made in
    the temporary directory, kept, and the result reads from it."""
    import replay

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = replay.fleet([str(fleet_inputs["tdp_6.6_inline"])], policies=["sync"],
                          client=fleet_client)
    assert result.dataset.parent.parent == tmp_path
    assert result.dataset.parent.name.startswith("kvm-mmu-fleet-")
    assert result.ok == 1
    assert set(result.to_pandas("summary")["run"]) == {"observed", "sync"}
