"""``query`` on DuckDB: a trace's tables, a replay's tables, a written table directory; no
binary needed. Counts are checked against the Arrow tables the readers give."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from parsers import QueryError, read_trace
from parsers.sql import dataset_views, query_dataset, query_tables
from replay.cli import app

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"
TEXT = SAMPLES / "tracefs_record_tgid.txt"
DAT = SAMPLES / "tc_kvm.head.dat"
runner = CliRunner()


def _csv(args: list[str]) -> pd.DataFrame:
    result = runner.invoke(app, ["query", *args, "--csv"])
    assert result.exit_code == 0, result.output
    return pd.read_csv(io.StringIO(result.stdout))


@pytest.mark.parametrize("path", [TEXT, DAT, SAMPLES / "perfetto_kvm_dense.pftrace"],
                         ids=lambda p: p.name)
def test_event_counts_by_sql_match_the_reader(path: Path) -> None:
    frame = _csv([str(path), "select event, count(*) as n from events "
                  "where event not in ('lost_events', 'buffer_started') group by 1"])
    assert dict(zip(frame["event"], frame["n"], strict=True)) == read_trace(path).event_counts()


def test_typed_tables_are_views_under_their_names() -> None:
    trace = read_trace(TEXT)
    frame = _csv([str(TEXT), "select count(*) as n, min(gfn) as g from kvm_mmu_get_page"])
    table = trace.table("kvm_mmu_get_page")
    assert int(frame["n"][0]) == table.num_rows
    assert int(frame["g"][0]) == min(table.column("gfn").to_pylist())


def test_replay_tables_join_with_the_trace() -> None:
    frame = _csv([str(TEXT), "select run, count(*) as n from block_intervals group by 1 "
                  "order by 1", "--replay", "--policy", "sync"])
    assert list(frame["run"]) == ["observed", "sync"]
    assert (frame["n"] > 0).all()


def test_a_parse_output_directory_is_queried(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    assert runner.invoke(app, ["parse", str(TEXT), "-o", str(out)]).exit_code == 0
    views = dataset_views(out)
    assert {"events", "kvm_mmu_get_page"} <= set(views)
    n = query_dataset(out, "select count(*) as n from kvm_mmu_get_page").to_pylist()[0]["n"]
    assert n == read_trace(TEXT).table("kvm_mmu_get_page").num_rows


def test_a_feather_directory_is_queried(tmp_path: Path) -> None:
    out = tmp_path / "t.feather"
    assert runner.invoke(app, ["parse", str(DAT), "-o", str(out)]).exit_code == 0
    n = query_dataset(out, "select count(*) as n from events").to_pylist()[0]["n"]
    assert n == read_trace(DAT).events.num_rows


def test_bad_sql_is_one_line_naming_the_trace() -> None:
    result = runner.invoke(app, ["query", str(TEXT), "select * from no_such_table"])
    assert result.exit_code == 2
    assert "tracefs_record_tgid.txt" in result.stderr and "no_such_table" in result.stderr
    assert "Traceback" not in result.output


def test_a_directory_without_tables_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(QueryError, match="holds no table"):
        query_dataset(tmp_path, "select 1")


def test_query_tables_api() -> None:
    import pyarrow as pa

    got = query_tables({"a": pa.table({"x": [1, 2]}), "b": pa.table({"x": [2, 3]})},
                       "select a.x from a join b using (x)")
    assert got.to_pylist() == [{"x": 2}]
