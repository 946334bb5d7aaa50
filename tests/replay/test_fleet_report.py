"""``report DATASET``: the fleet page's figures against the dataset, computed apart with
DuckDB and NumPy over the same Parquet files; determinism; failed and tick-clock traces;
the CLI and the output policy; the two-pass exact percentiles on random data."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from conftest import FLEET_POLICIES, SAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import replay
from parsers import KvmMmuError
from replay.cli import app
from replay.fleets import fleet
from replay.fleets.histogram import BucketValues, LogHistogram, exact_quantiles, nearest_rank
from replay.fleets.report import LIMITS_NS, fleet_page, write_fleet_report
from replay.fleets.store import is_dataset
from replay.render.fleet_html import PERCENTS, render_fleet_page
from replay.render.tables import MMU_CAUSES

distributed = pytest.importorskip("distributed", reason="the fleet extra is not installed")
LOW = 100_000  # 100 us: the sample traces have blocks that long, none of 100 ms


class _Tables(HTMLParser):
    """Every ``<table class=...>`` of a page: rows of cells, each ``(attrs, text)``, plus the
    row's own attrs; and every ``id`` and ``href`` of the page."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[dict[str, str], list[tuple[dict[str, str], str]]]]] = {}
        self.ids: set[str] = set()
        self.links: list[str] = []
        self._table: str | None = None
        self._cell: dict[str, str] | None = None
        self._text = ""
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag == "table":
            self._table = a.get("class", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append((a, []))
        elif tag in ("td", "th") and self._table is not None:
            self._cell, self._text = a, ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1][1].append((self._cell, self._text))
            self._cell = None
        elif tag == "table":
            self._table = None

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Body rows as ``header -> number`` (data-n / data-ns) or text."""
        head, *body = self.tables[table]
        names = [text for _, text in head[1]]
        return [{n: _value(attrs, text) for n, (attrs, text) in zip(names, cells, strict=True)}
                | {"_row": row} for row, cells in body]


def _value(attrs: dict[str, str], text: str) -> Any:
    for key in ("data-n", "data-ns"):
        if key in attrs:
            return int(attrs[key])
    return text


def _sql(root: Path, query: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    for name in ("block_intervals", "traces"):
        con.execute(f"create view {name} as select * from read_parquet("
                    f"'{root}/{name}/*/*.parquet', hive_partitioning = true)")
    return con.execute(query).fetchall()


def _mmu(root: Path, run: str) -> tuple[np.ndarray, np.ndarray]:
    causes = ", ".join(f"'{c}'" for c in MMU_CAUSES)
    got = _sql(root, "select each_ns, n_blocks from block_intervals where run = ? and cause in "
               f"({causes})".replace("?", f"'{run}'"))
    each = np.array([r[0] for r in got], np.int64)
    count = np.array([r[1] for r in got], np.int64)
    return each, count


def _nearest_rank(each: np.ndarray, count: np.ndarray, percent: int) -> int:
    order = np.argsort(each, kind="stable")
    cum = np.cumsum(count[order])
    need = max(1, int(np.ceil(percent / 100 * cum[-1])))
    return int(each[order][np.searchsorted(cum, need)])


@pytest.fixture(scope="module")
def page(fleet_clean: tuple[Path, Any]) -> _Tables:
    return _Tables(render_fleet_page(fleet_page(fleet_clean[0], threshold_ns=LOW)))


def test_distribution_per_run_is_the_datasets(page: _Tables, fleet_clean: tuple[Path, Any]
                                              ) -> None:
    root = fleet_clean[0]
    rows = {r["run"]: r for r in page.rows("distribution")}
    assert list(rows) == ["observed", *FLEET_POLICIES]
    for run, row in rows.items():
        each, count = _mmu(root, run)
        assert row["blocks"] == count.sum() > 0
        assert row["max"] == each.max()
        for p in PERCENTS:
            assert row[f"p{p}"] == _nearest_rank(each, count, p), (run, p)
        over = [row[k] for k in row if str(k).startswith("≥")]
        assert over == [int(count[each >= t].sum()) for t in LIMITS_NS]
        assert row["traces"] == 9  # the 11 inputs less the 2 that failed
    assert rows["observed"]["≥ 100.00 us"] > 0  # the comparison below is not 0 == 0


def test_removal_table_answers_observed_against_each_policy(
        page: _Tables, fleet_clean: tuple[Path, Any]) -> None:
    root = fleet_clean[0]
    per = _sql(root, "select trace, run, sum(n_blocks) from block_intervals where each_ns >= "
               f"{LOW} and cause in ({', '.join(repr(c) for c in MMU_CAUSES)}) group by all")
    long = {(t, r): int(n) for t, r, n in per}
    traces = {t for t, _ in long}
    for row in page.rows("removed"):
        pol = row["policy"]
        observed = sum(long.get((t, "observed"), 0) for t in traces)
        replayed = sum(long.get((t, pol), 0) for t in traces)
        seen = [t for t in traces if long.get((t, "observed"))]
        assert (row["observed"], row["replayed"], row["removed"]) == (
            observed, replayed, observed - replayed)
        assert row["traces with one observed"] == len(seen) > 0
        assert row["of which none replayed"] == sum(not long.get((t, pol)) for t in seen)
    (top,), = _sql(root, "select max(each_ns) from block_intervals where run = 'observed'"
                   f" and cause in ({', '.join(repr(c) for c in MMU_CAUSES)})")
    (at_top,), = _sql(root, f"select sum(n_blocks) from block_intervals where each_ns = {top}"
                      " and run = 'observed'")
    assert [r.observed for r in fleet_page(root, threshold_ns=top).removals] == [at_top] * 2


def test_counts_by_status_era_and_cause(page: _Tables, fleet_clean: tuple[Path, Any]) -> None:
    root = fleet_clean[0]
    status = dict(_sql(root, "select status, count(*) from traces group by 1"))
    assert {r["status"]: r["traces"] for r in page.rows("by-status")} == status
    era = dict(_sql(root, "select coalesce(era, '–'), count(*) from traces group by 1"))
    assert {r["era"]: r["traces"] for r in page.rows("by-era")} == era
    causes = _sql(root, "select cause, run, sum(n_blocks) from block_intervals group by all")
    want = {(c, r): int(n) for c, r, n in causes}
    for row in page.rows("causes"):
        for run in ("observed", *FLEET_POLICIES):
            assert row[run] == want.get((row["cause"], run), 0), (row["cause"], run)
    assert {r["cause"] for r in page.rows("causes")} == {c for c, _ in want}


def test_worst_vcpus_link_to_their_traces(page: _Tables, fleet_clean: tuple[Path, Any]) -> None:
    root = fleet_clean[0]
    causes = ", ".join(repr(c) for c in MMU_CAUSES)
    got = [(r["run"], r["_row"], r["vcpu"], r["max block"]) for r in page.rows("worst")]
    links = [h.removeprefix("#trace-") for h in page.links if h.startswith("#trace-")]
    assert links and all(f"trace-{t}" in page.ids for t in links)
    for run in ("observed", *FLEET_POLICIES):
        want = _sql(root, f"select trace, vcpu, max(each_ns) as m from block_intervals where run"
                    f" = '{run}' and cause in ({causes}) group by all order by m desc, trace, "
                    "vcpu limit 10")
        mine = [(v, m) for r, _, v, m in got if r == run]
        assert mine == [(v, m) for _, v, m in want]
    by_id = {r["trace"]: r for r in page.rows("traces")}
    paths = dict(_sql(root, "select trace, path from traces"))
    assert set(by_id) == set(links)
    assert all(row["path"] == paths[t] for t, row in by_id.items())


def test_failed_traces_are_listed_with_their_messages(page: _Tables,
                                                      fleet_clean: tuple[Path, Any]) -> None:
    want = _sql(fleet_clean[0], "select trace, path, error from traces where status = 'error'")
    rows = {r["trace"]: r for r in page.rows("errors")}
    assert {t: (r["path"], r["message"]) for t, r in rows.items()} == {
        t: (p, e) for t, p, e in want}
    assert len(want) == 2 and all(f"trace-{t}" in page.ids for t in rows)


def test_two_renders_are_the_same_bytes_and_the_api_writes_them(
        fleet_clean: tuple[Path, Any], tmp_path: Path) -> None:
    root, result = fleet_clean
    a = write_fleet_report(root, tmp_path / "a.html")
    b = result.write_report(tmp_path / "b.html")
    assert a.read_bytes() == b.read_bytes()
    assert "<script" not in a.read_text() and replay.fleet is fleet


def test_cli_report_of_a_dataset_and_the_output_policy(fleet_clean: tuple[Path, Any],
                                                      tmp_path: Path) -> None:
    root = fleet_clean[0]
    runner = CliRunner()
    out = tmp_path / "fleet.html"
    first = runner.invoke(app, ["report", str(root), "-o", str(out), "-p", "6.9"])
    assert first.exit_code == 0, first.output
    assert first.stdout == f"wrote {out}\n"
    shown = {r["run"] for r in _Tables(out.read_text()).rows("distribution")}
    assert shown == {"observed", "6.9"}
    before = out.read_bytes()
    refused = runner.invoke(app, ["report", str(root), "-o", str(out)])
    assert refused.exit_code == 2 and "--force" in refused.stderr
    assert out.read_bytes() == before
    again = runner.invoke(app, ["report", str(root), "-o", str(out), "--force"])
    assert again.exit_code == 0 and out.read_bytes() != before  # every run now
    for args, says in ((["--strict"], "--strict"), (["-p", "6.6"], "6.6")):
        bad = runner.invoke(app, ["report", str(root), "-o", str(tmp_path / "x.html"), *args])
        assert bad.exit_code == 2 and says in bad.stderr
        assert not (tmp_path / "x.html").exists()


def test_only_a_fleet_dataset_is_taken_for_one(tmp_path: Path) -> None:
    parsed = tmp_path / "t.parquet"
    runner = CliRunner()
    trace = SAMPLES / "handwritten" / "tdp_5.18_workqueue.txt"
    assert runner.invoke(app, ["parse", str(trace), "-o", str(parsed)]).exit_code == 0
    assert not is_dataset(parsed) and not is_dataset(tmp_path)
    with pytest.raises(KvmMmuError, match="not a fleet dataset"):
        fleet_page(parsed)
    refused = runner.invoke(app, ["report", str(parsed), "-o", str(tmp_path / "r.html")])
    assert refused.exit_code == 2 and not (tmp_path / "r.html").exists()


def test_only_failures_and_a_tick_clock_trace(fleet_inputs: dict[str, Path], fleet_client: Any,
                                              tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    fleet([str(fleet_inputs["garbage"])], failed, policies=["sync"], client=fleet_client)
    lone = _Tables(render_fleet_page(fleet_page(failed)))
    assert [r["run"] for r in lone.rows("distribution")] == ["observed"]
    assert [r["status"] for r in lone.rows("errors")] == ["error"]
    ticks = tmp_path / "ticks"
    clock = SAMPLES / "tracefs_clock_counter.head.txt"
    fleet([str(clock), str(fleet_inputs["tdp_5.17_sync"])], ticks, policies=["sync"],
          client=fleet_client)
    figures = fleet_page(ticks)
    assert any("tick-clock" in n for n in figures.notes)
    observed, sync = figures.runs
    assert (observed.traces, sync.traces) == (1, 2)
    rows = _sql(ticks, "select t.ts_unit, b.run, b.cause, sum(b.n_blocks) from block_intervals"
                " b join traces t using (trace) group by all")
    mmu_ns = sum(n for unit, run, cause, n in rows
                 if unit == "ns" and run == "observed" and cause in MMU_CAUSES)
    assert observed.blocks == mmu_ns
    assert observed.causes == {c: sum(n for _, r, cc, n in rows if r == "observed" and cc == c)
                               for c in observed.causes}
    assert {u for u, *_ in rows} == {"ns", "ticks"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(-3, 10**13), st.integers(1, 10**6)),
                         max_size=40), min_size=1, max_size=6))
def test_two_passes_give_the_exact_nearest_rank(chunks: list[list[tuple[int, int]]]) -> None:
    hist = LogHistogram()
    arrays = [(np.array([v for v, _ in c], np.int64), np.array([n for _, n in c], np.int64))
              for c in chunks]
    for each, count in arrays:
        hist.add(each, count)
    values = BucketValues(frozenset(
        hist.locate(nearest_rank(hist.total, p))[0] for p in PERCENTS)
        if hist.total else frozenset())
    for each, count in arrays:
        values.add(each, count)
    got = exact_quantiles(hist, values, PERCENTS)
    each = np.concatenate([e for e, _ in arrays])
    count = np.concatenate([c for _, c in arrays])
    if not each.size:
        assert got == {} and hist.max is None
        return
    assert got == {p: _nearest_rank(each, count, p) for p in PERCENTS}
    assert hist.max == each.max()
    cdf = hist.cdf(200)
    for v, frac in zip(cdf.values.tolist(), cdf.fraction.tolist(), strict=True):
        assert frac == pytest.approx(count[np.maximum(each, 1) <= v].sum() / count.sum())


def test_a_damaged_partition_is_named_and_left_out(fleet_clean: tuple[Path, Any],
                                                   tmp_path: Path) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(fleet_clean[0], copy)
    whole = fleet_page(copy)
    trace_id = whole.worst[0].trace
    part = copy / "block_intervals" / f"trace={trace_id}" / "part-0.parquet"
    part.write_bytes(part.read_bytes()[:100])
    damaged = fleet_page(copy)
    assert any(str(part) in n for n in damaged.notes)
    assert [r.traces for r in damaged.runs] == [r.traces - 1 for r in whole.runs]
    assert trace_id not in {w.trace for w in damaged.worst}
    assert damaged.error_count == whole.error_count
