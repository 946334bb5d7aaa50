"""The report's marks and labels: a legend for every mark, whole lane labels with thread and
VM, zero-length zaps drawn, a headline comparing MMU-caused time only (userspace and exit
handling apart), and tick-clock durations printed as ticks."""

from __future__ import annotations

import re
from dataclasses import replace

import pyarrow as pa
from conftest import SAMPLES
from report_runs import observed_tables

from replay import replay
from replay.model.recorders import ROOTS_SCHEMA
from replay.render.html import render_report

TRACE = SAMPLES / "tracefs_record_tgid.txt"


def _svgs(page: str, kind: str) -> list[str]:
    return re.findall(rf'<svg[^>]*class="{kind}".*?</svg>', page, re.S)


def test_every_timeline_mark_has_a_legend() -> None:
    page = render_report({"observed": observed_tables()}, title="t")
    timeline = _svgs(page, "timeline")[0]
    assert 'class="lost"' in timeline and "blocks overlapping lost events" in timeline
    assert "<path d=\"M" in timeline and "worst block of the lane" in timeline
    assert "zero-length zap or block" in timeline  # vcpu 3's zero-length block
    refcount = _svgs(page, "refcount")[0]
    assert 'stroke-dasharray="3,3"' in refcount
    assert "root event: invalidated, zap_start, zap_end, freed" in refcount
    for word in ("invalidated", "zap_start", "zap_end", "freed"):
        assert f'fill="#666">{word}</text>' in refcount


def test_a_zero_length_zap_is_drawn() -> None:
    tables = observed_tables()
    roots = tables["roots"].to_pylist()
    roots[1].update(invalidated=70_000, zap_start=70_000, zap_end=70_000, zapped_by="kworker/3:1-9")
    tables["roots"] = pa.Table.from_pylist(roots, schema=ROOTS_SCHEMA)
    timeline = _svgs(render_report({"observed": tables}, title="t"), "timeline")[0]
    lane = timeline.index("zap: kworker/3:1-9")
    assert 'class="instant"' in timeline[lane:]


def test_lane_labels_are_whole_with_thread_and_vm() -> None:
    result = replay(str(TRACE), policy=["6.9"])
    page = render_report(result.runs, title="t", vcpu_names=result.vcpu_names())
    timeline = _svgs(page, "timeline")[0]
    labels = re.findall(r'text-anchor="end">([^<]+)</text>', timeline)
    vcpu = [lb for lb in labels if lb.startswith("vcpu ")]
    assert vcpu and all(re.fullmatch(r"vcpu \d+: .+-\d+ \(VM \d+(, vcpu_id \d+)?\)", lb)
                        for lb in vcpu), vcpu
    assert not any("…" in lb for lb in labels)
    names = {r["zapped_by"] for r in result.runs["observed"]["roots"].to_pylist()
             if r["zapped_by"]}
    for name in names:
        assert f"zap: {name}" in labels


def test_headline_compares_mmu_caused_time_only() -> None:
    result = replay(str(TRACE), policy=["6.9"])
    page = render_report(result.runs, title="t")
    head = page[page.index('<table class="worst"'):]
    head = head[:head.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", head)
    header = re.findall(r"<th[^>]*>([^<]*)</th>", rows[0])
    assert header[:3] == ["vcpu", "observed", "6.9"]
    assert "observed: userspace" in header and "observed: exit handling" in header
    for row in rows[1:]:
        cells = re.findall(r"<td([^>]*)>([^<]*)</td>", row)
        mmu = [text for attrs, text in cells[1:3]]
        assert all(t == "–" or t.split()[-1] in ("zap", "lock_wait", "root_alloc",
                                                 "root_put", "fault") for t in mmu), row
        apart = [text for attrs, text in cells if 'class="apart"' in attrs]
        assert any("userspace" in t for t in apart)


def test_tick_clock_durations_print_as_ticks() -> None:
    result = replay(str(SAMPLES / "tracefs_clock_counter.head.txt"), policy=["6.9"])
    assert result.ts_unit == "ticks"
    page = render_report(result.runs, title="t", units={"observed": "ticks"})
    observed = page[page.index('data-label="observed"'):page.index('data-label="6.9"')]
    summary = observed[observed.index('<table class="summary"'):]
    summary = summary[:summary.index("</table>")]
    assert " ticks</td>" in summary and " ms</td>" not in summary and " us</td>" not in summary
    assert "not nanoseconds" in page
    assert " ticks</text>" in _svgs(page, "cdf")[0]


def test_trace_result_report_carries_names_and_units(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = replay(str(SAMPLES / "tracefs_clock_counter.head.txt"), policy=["6.9"])
    out = result.write_report(tmp_path / "r.html")
    page = out.read_text()
    assert " ticks</td>" in page and "(VM " in page
    assert replace(result, ts_unit="ns").ts_unit == "ns"
