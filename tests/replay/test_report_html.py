"""The HTML report: structure (parsed back), numbers, determinism, atomic writes, size."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from report_runs import (
    blocks_table,
    mixed_runs,
    observed_tables,
    random_blocks,
    random_refcounts,
    scenario_runs,
)

from parsers.errors import KvmMmuError, OutputError
from replay.errors import ReplayConfigError
from replay.render.html import MAX_ROOTS, TIMELINE_RECTS, render_report, write_report
from replay.result import summarize_blocks


class Page(HTMLParser):
    """What the tests read back from a report: svgs, their paths/rects, tables, warnings."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.svgs: list[dict[str, str | None]] = []
        self.elements: list[tuple[int, str, dict[str, str | None]]] = []  # (svg index, tag, attrs)
        self.tables: list[dict[str, str | None]] = []
        self.rows: list[list[list[dict[str, str | None]]]] = []  # per table: rows of cell attrs
        self.warnings: list[str] = []
        self.tags: list[str] = []
        self._svg_depth = 0
        self._in_li = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "svg":
            self.svgs.append(a)
            self._svg_depth += 1
        elif self._svg_depth:
            self.elements.append((len(self.svgs) - 1, tag, a))
        if tag == "table":
            self.tables.append(a)
            self.rows.append([])
        elif tag == "tr":
            self.rows[-1].append([])
        elif tag in ("td", "th"):
            self.rows[-1][-1].append({"tag": tag, **a})
        elif tag == "li":
            self._in_li = True

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag == "svg":
            self._svg_depth -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg_depth -= 1
        elif tag == "li":
            self._in_li = False

    def handle_data(self, data: str) -> None:
        if self._in_li:
            self.warnings.append(data)

    def svgs_of(self, kind: str, label: str) -> list[int]:
        return [i for i, s in enumerate(self.svgs) if s["class"] == kind and s["data-label"] == label]

    def inside(self, svg: int, tag: str) -> list[dict[str, str | None]]:
        return [a for i, t, a in self.elements if i == svg and t == tag]

    def summary_rows(self, label: str) -> list[list[dict[str, str | None]]]:
        (k,) = [i for i, t in enumerate(self.tables)
                if t.get("class") == "summary" and t.get("data-label") == label]
        return [r for r in self.rows[k] if r and r[0]["tag"] == "td" and "data-n" in r[0]]


def _expected_summary(tables: dict[str, pa.Table]) -> list[dict[str, object]]:
    blocks = tables["blocks"]
    vcpus = sorted(set(blocks.column("vcpu").to_pylist()))
    return summarize_blocks(blocks.select(["vcpu", "start", "end", "cause", "n_blocks", "each_ns",
                                           "root"]), vcpus).to_pylist()


def _check_structure(page: Page, runs: dict[str, dict[str, pa.Table]]) -> None:
    for label, tables in runs.items():
        cdf = page.svgs_of("cdf", label)
        assert len(cdf) == 1, label
        vcpus = sorted(set(tables["blocks"].column("vcpu").to_pylist()))
        lines = [p for p in page.inside(cdf[0], "path") if p.get("fill") == "none"]
        assert len(lines) == len(vcpus)
        (timeline,) = page.svgs_of("timeline", label)
        assert len(page.inside(timeline, "rect")) <= TIMELINE_RECTS + 50  # + legend and frame
        rows = page.summary_rows(label)
        assert [int(r[0]["data-n"] or -1) for r in rows] == vcpus


def test_structure_and_numbers_match_summarize_blocks() -> None:
    runs = mixed_runs()
    page = Page(render_report(runs, title="t", source="max-guest-memory 4GiB",
                              warnings=["3 lost-event windows", "<b>not bold</b>"]))
    assert page.tags.count("script") == 0 and "link" not in page.tags
    _check_structure(page, runs)
    for label, tables in runs.items():
        expected = _expected_summary(tables)
        if "summary" in tables:
            assert tables["summary"].to_pylist() == expected
        for row, want in zip(page.summary_rows(label), expected, strict=True):
            assert int(row[1]["data-n"] or -1) == want["blocks"]
            got = [int(c["data-ns"] or -1) for c in row[2:6]]
            assert got == [want["p50_ns"], want["p99_ns"], want["max_ns"], want["total_ns"]]
    obs = page.summary_rows("observed")
    assert [int(r[-1]["data-n"] or -1) for r in obs] == [1, 1, 0]  # count-weighted lost blocks
    assert page.warnings == ["3 lost-event windows", "<b>not bold</b>"]  # escaped, not markup
    assert len(page.svgs_of("refcount", "observed")) == 2
    lost_bars = [a for i in page.svgs_of("timeline", "observed") for a in page.inside(i, "rect")
                 if a.get("class") == "lost"]
    assert len(lost_bars) == 2


def test_roots_beyond_the_cap_are_named() -> None:
    tables = observed_tables()
    n = MAX_ROOTS + 3
    tables["refcounts"] = pa.Table.from_pydict({
        "ts": list(range(n * 2)), "root": [r for r in range(n) for _ in range(2)],
        "refcount": [1, 0] * n, "delta": [1, -1] * n, "holder": ["v"] * (2 * n),
        "reason": ["x"] * (2 * n)}, schema=tables["refcounts"].schema)
    text = render_report({"observed": tables}, title="t")
    page = Page(text)
    assert len(page.svgs_of("refcount", "observed")) == MAX_ROOTS
    assert "roots 8, 9, 10." in text


def test_deterministic_bytes(tmp_path: Path) -> None:
    a = write_report(mixed_runs(), tmp_path / "a.html", title="t", warnings=["w"])
    b = write_report(mixed_runs(), tmp_path / "b.html", title="t", warnings=["w"])
    assert a.read_bytes() == b.read_bytes()


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "r.html"
    target.write_text("old")
    bad = {"observed": {"blocks": observed_tables()["blocks"].drop_columns(["each_ns"])}}
    with pytest.raises(ReplayConfigError, match="each_ns"):
        write_report(bad, target, title="t")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]
    with pytest.raises(KvmMmuError, match="parent directory"):
        write_report(mixed_runs(), tmp_path / "missing" / "r.html", title="t")


def test_failure_inside_the_write_leaves_nothing(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    class Boom(str):
        def encode(self, *args: object, **kwargs: object) -> bytes:
            raise OSError("disk full")

    monkeypatch.setattr("replay.render.html.render_report", lambda *a, **k: Boom("x"))
    with pytest.raises(OutputError, match="r.html: cannot write: disk full"):
        write_report(mixed_runs(), tmp_path / "r.html", title="t")
    assert list(tmp_path.iterdir()) == []


def test_missing_blocks_is_an_error() -> None:
    with pytest.raises(ReplayConfigError, match="no 'blocks'"):
        render_report({"6.9": {"refcounts": observed_tables()["refcounts"]}}, title="t")


def test_one_tib_run_stays_small(tmp_path: Path) -> None:
    runs = scenario_runs(1 << 40, ("sync", "async", "5.18", "6.4", "6.6", "6.9"))
    path = write_report({"observed": observed_tables(), **runs}, tmp_path / "r.html", title="t")
    assert path.stat().st_size < 2_000_000
    _check_structure(Page(path.read_text()), {"observed": observed_tables(), **runs})


@pytest.mark.slow
def test_sixty_four_tib_run_stays_small(tmp_path: Path) -> None:
    runs = scenario_runs(64 << 40, ("sync", "async", "6.9"))
    path = write_report(runs, tmp_path / "r.html", title="t")
    assert path.stat().st_size < 2_000_000
    page = Page(path.read_text())
    _check_structure(page, runs)
    assert "967.24 s zap" in path.read_text()  # docs/model.md headline: the sync last-put zap
    assert page.svgs_of("refcount", "sync")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=random_blocks(), refs=random_refcounts())
def test_random_tables_render(blocks: pa.Table, refs: pa.Table) -> None:
    runs = {"observed": {"blocks": blocks, "refcounts": refs}, "6.9": {"blocks": blocks}}
    text = render_report(runs, title="random <t>", warnings=["w&"])
    assert text == render_report(runs, title="random <t>", warnings=["w&"])
    page = Page(text)
    for label in runs:
        assert len(page.svgs_of("cdf", label)) == 1
        assert len(page.svgs_of("timeline", label)) == 1
        want = _expected_summary(runs[label])
        got = [int(r[1]["data-n"] or -1) for r in page.summary_rows(label)]
        assert got == [w["blocks"] for w in want]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium on PATH (apt-get install chromium)")


def test_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    page = write_report(mixed_runs(), tmp_path / "r.html", title="t", warnings=["w"])
    shot = tmp_path / "shot.png"
    base = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert dom.count('class="cdf"') == 4 and dom.count('class="timeline"') == 4
    subprocess.run(base + ["--window-size=1000,3000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_block_ending_before_its_start_is_named() -> None:
    tables = observed_tables()
    rows = tables["blocks"].to_pylist()
    rows[1]["end"] = rows[1]["start"] - 1
    tables["blocks"] = blocks_table(rows)
    with pytest.raises(ReplayConfigError, match=r"1 blocks rows end before they start \(row 1:"):
        render_report({"observed": tables}, title="t")


def test_no_runs_is_a_page_with_no_sections() -> None:
    page = Page(render_report({}, title="empty", warnings=["nothing recorded"]))
    assert page.svgs == [] and page.warnings == ["nothing recorded"]
