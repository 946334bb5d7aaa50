"""The text reader on real traces: exact per-event counts, and agreement across renderings."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import GOLDEN, SAMPLES, SHARED_TRACES, check_golden, readme_counts, shared_trace

from parsers import read_trace

COUNTED = sorted(readme_counts()) or ["real/tracefs_default.txt"]


@pytest.mark.shared
@pytest.mark.parametrize("relative", COUNTED)
def test_counts_match_reference_readme(relative: str) -> None:
    path = shared_trace(relative)
    expected = readme_counts()[relative]
    total = expected.pop("TOTAL")
    info = read_trace(path).info()
    assert info["event_counts"] == expected
    assert info["events"] == total
    assert "unparsed" not in info["skipped_lines"]


def test_sample_record_tgid_counts() -> None:
    info = read_trace(SAMPLES / "tracefs_record_tgid.txt").info()
    assert info["events"] == 11957
    assert info["event_counts"]["kvm_mmu_get_page"] == 104
    assert info["event_counts"]["kvm_mmu_zap_all_fast"] == 4
    assert "record-tgid" in info["variants"]
    assert info["skipped_lines"] == {"header": 12}


def test_lost_event_markers_become_rows() -> None:
    trace = read_trace(SAMPLES / "trace_pipe_lost_events.txt")
    assert trace.lost_events() == {0: 16496, 1: 15154}
    lost = trace.table("lost_events").to_pylist()
    assert [(r["seq"], r["cpu"], r["lost"]) for r in lost] == [(0, 0, 16496), (47, 1, 15154)]
    events = trace.events
    # The marker takes the timestamp of the record that follows it in the file.
    row = events.filter(pc.equal(events.column("seq"), 47)).to_pylist()[0]
    nxt = events.filter(pc.equal(events.column("seq"), 48)).to_pylist()[0]
    assert row["event"] == "lost_events" and row["ts"] == nxt["ts"]


def _compare_renderings(raw: pa.Table, text: pa.Table) -> list[str]:
    assert raw.num_rows == text.num_rows
    bad = []
    for col in raw.column_names:
        if col == "ts":
            continue
        a, b = raw.column(col), text.column(col)
        both = pc.and_(pc.is_valid(a), pc.is_valid(b))
        if pc.any(pc.and_(both, pc.not_equal(a, b))).as_py():
            bad.append(col)
    return bad


@pytest.mark.parametrize("folder,stem", [("sample", "tc_kvm.report{}.head.txt"),
                                         ("shared", "real/tc_kvm.report{}.txt")])
def test_raw_and_rendered_reports_agree(folder: str, stem: str) -> None:
    if folder == "sample":
        raw, ns = SAMPLES / stem.format("_R"), SAMPLES / stem.format("_t")
    else:
        raw, ns = shared_trace(stem.format("_R")), shared_trace(stem.format("_t"))
    r, t = read_trace(raw), read_trace(ns)
    assert r.names == t.names
    for name in r.names:
        assert _compare_renderings(r.table(name), t.table(name)) == [], name
    # -t keeps nanoseconds; -R rounds to microseconds.
    diff = pc.subtract(t.events.column("ts"), r.events.column("ts"))
    assert pc.max(pc.abs(diff)).as_py() < 1000


def test_plugin_rendering_drops_fields_to_null() -> None:
    t = read_trace(SAMPLES / "tc_kvm.report_t.head.txt").table("kvm_mmu_get_page")
    first = t.to_pylist()[0]
    assert first["gfn"] == 0x100 and first["level"] == 4 and first["created"] is True
    assert first["mmu_valid_gen"] is None and first["role"] is None  # the plugin drops them
    assert first["cr0_wp"] is True and first["has_4_byte_gpte"] is False
    r = read_trace(SAMPLES / "tc_kvm.report_R.head.txt").table("kvm_mmu_get_page").to_pylist()[0]
    assert r["role"] == 14084 and r["mmu_valid_gen"] == 0 and r["ad_disabled"] is False


def test_kernel_rendering_decodes_role_bits() -> None:
    trace = read_trace(SAMPLES / "tracefs_record_tgid.txt")
    pages = trace.table("kvm_mmu_get_page")
    row = pages.to_pylist()[0]
    assert (row["gfn"], row["level"], row["access"], row["efer_nx"], row["ad_disabled"]) == (
        0x100, 4, 7, True, False)
    assert row["role"] is None and row["cr0_wp"] is None  # not printed by the kernel
    assert set(pc.unique(pages.column("created")).to_pylist()) == {True, False}
    spte = trace.table("kvm_mmu_set_spte").to_pylist()[0]
    assert spte["r"] is True and spte["u"] in (-1, 0, 1)


def test_counter_clock_keeps_ticks() -> None:
    trace = read_trace(SAMPLES / "tracefs_clock_counter.head.txt")
    assert trace.metadata.ts_unit == "ticks"
    assert trace.events.column("ts")[0].as_py() == 34985


def test_golden_info_of_report_excerpt(update_golden: bool) -> None:
    info = read_trace(SAMPLES / "tc_kvm.report.head.txt").info()
    info["source"] = "tc_kvm.report.head.txt"
    check_golden(GOLDEN / "tc_kvm.report.head.info.json",
                 json.dumps(info, indent=1, sort_keys=True) + "\n", update_golden)


def test_golden_get_page_rows(update_golden: bool) -> None:
    df = read_trace(SAMPLES / "tracefs_record_tgid.txt").to_pandas("kvm_mmu_get_page")
    check_golden(GOLDEN / "tracefs_record_tgid.get_page.csv", df.to_csv(index=False),
                 update_golden)


@pytest.mark.parametrize("name", ["trace_sched.txt", "trace_failed_to_parse.txt",
                                  "trace_equals.txt", "trace_no_trailing_line.txt"])
def test_trappy_samples_parse_without_loss(name: str) -> None:
    trace = read_trace(SAMPLES / "trappy" / name)
    assert "unparsed" not in trace.metadata.skipped
    args = trace.events.column("args")
    assert args.null_count == 0  # no typed tables: every payload is kept as text


def test_shared_folder_constant_points_beside_checkout() -> None:
    assert SHARED_TRACES.name == "traces"
