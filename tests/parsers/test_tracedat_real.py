"""trace.dat reader against real recordings and the reports trace-cmd wrote of them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from tracedat_support import (
    REAL,
    SAMPLE,
    SAMPLE_REPORT,
    TRAPPY,
    report_rows,
    shared,
    trace_cmd_report,
)

from parsers.schema import EVENTS_SCHEMA
from parsers.tracedat.reader import read_tracedat

TC_FILES = ["tc_kvm.dat", "tc_kvm.v6.dat", "tc_kvm.v7.dat"]

#: Per-event counts of tc_kvm (../shared/traces/README.md).
TC_COUNTS = {
    "kvm_apicv_inhibit_changed": 3, "kvm_emulate_insn": 757, "kvm_fpu": 1790,
    "kvm_inj_exception": 1, "kvm_mmio": 979, "kvm_mmu_get_page": 192,
    "kvm_mmu_pagetable_walk": 2282, "kvm_mmu_paging_element": 9091,
    "kvm_mmu_prepare_zap_page": 103, "kvm_mmu_set_accessed_bit": 269,
    "kvm_mmu_set_dirty_bit": 215, "kvm_mmu_set_spte": 725, "kvm_mmu_spte_requested": 591,
    "kvm_mmu_sync_page": 11, "kvm_mmu_unsync_page": 11, "kvm_mmu_walker_error": 1,
    "kvm_mmu_zap_all_fast": 6, "kvm_pio": 60, "kvm_track_tsc": 7, "kvm_unmap_hva_range": 37,
    "kvm_update_master_clock": 9, "kvm_userspace_exit": 895, "kvm_write_tsc_offset": 7,
    "vcpu_match_mmio": 794,
}


def _check_against_report(trace_path: Path, report_text: str) -> None:
    """Row for row: ts (ns), cpu, pid, comm, event; args where the event has no typed table."""
    rows = report_rows(report_text)
    ev = read_tracedat(trace_path).events.to_pydict()
    assert len(ev["ts"]) == len(rows)
    for i, row in enumerate(rows):
        mine = {k: ev[k][i] for k in ("ts", "cpu", "pid", "comm", "event")}
        assert mine == {k: row[k] for k in mine}, f"row {i}"
        if ev["args"][i] is not None:
            assert ev["args"][i] == row["args"], f"row {i}"


def test_sample_matches_its_report() -> None:
    _check_against_report(SAMPLE, SAMPLE_REPORT.read_text())


@pytest.mark.shared
@pytest.mark.parametrize("name", TC_FILES)
def test_tc_kvm_counts(name: str) -> None:
    trace = read_tracedat(shared(REAL / name))
    assert trace.event_counts() == TC_COUNTS
    assert trace.events.schema.equals(EVENTS_SCHEMA)
    assert trace.events.column("seq").to_pylist() == list(range(18836))
    assert trace.metadata.clock == "local" and trace.metadata.ts_unit == "ns"
    assert trace.metadata.cpus == 2


@pytest.mark.shared
@pytest.mark.parametrize("name", TC_FILES)
def test_tc_kvm_ts_and_context_match_report_t(name: str) -> None:
    """Every line of report_t.txt (ns timestamps): same ts, cpu, pid, comm and event."""
    rows = report_rows(shared(REAL / "tc_kvm.report_t.txt").read_text())
    ev = read_tracedat(shared(REAL / name)).events.to_pydict()
    assert len(rows) == len(ev["ts"]) == 18836
    for key in ("ts", "cpu", "pid", "comm", "event"):
        assert ev[key] == [r[key] for r in rows], key


@pytest.mark.shared
def test_tc_kvm_args_match_report_r() -> None:
    """Untyped events' args equal the -R payloads; typed ones have args null."""
    rows = report_rows(shared(REAL / "tc_kvm.report_R.txt").read_text())
    trace = read_tracedat(shared(REAL / "tc_kvm.dat"))
    ev = trace.events.to_pydict()
    typed = set(trace.names)
    for i, row in enumerate(rows):
        if ev["event"][i] in typed:
            assert ev["args"][i] is None
        else:
            assert ev["args"][i] == row["args"], f"row {i}"


@pytest.mark.shared
def test_tc_kvm_typed_fields_match_report_r() -> None:
    """Typed columns hold the values -R prints (radix as the print format gives it)."""
    rows = report_rows(shared(REAL / "tc_kvm.report_R.txt").read_text())
    trace = read_tracedat(shared(REAL / "tc_kvm.v6.dat"))
    by_seq = {i: r for i, r in enumerate(rows)}
    hexed = {("kvm_mmu_set_spte", "gfn"), ("kvm_mmu_set_spte", "spte"),
             ("kvm_mmu_set_spte", "sptep"), ("kvm_mmu_spte_requested", "gfn"),
             ("kvm_mmu_spte_requested", "pfn"), ("kvm_mmu_zap_all_fast", "mmu_used_pages"),
             ("kvm_mmu_pagetable_walk", "addr"), ("kvm_mmu_paging_element", "pte"),
             ("kvm_mmu_set_accessed_bit", "gpa"), ("kvm_mmu_set_dirty_bit", "gpa"),
             ("kvm_mmu_walker_error", "pferr"), ("kvm_mmu_pagetable_walk", "pferr")}
    checked = 0
    for name in trace.names:
        table = trace.table(name).to_pylist()
        for rec in table:
            text = by_seq[rec["seq"]]
            assert text["event"] == name
            printed = dict(kv.split("=", 1) for kv in str(text["args"]).split())
            for fld, value in printed.items():
                base = 16 if (name, fld) in hexed else 10
                want = int(value, base)
                got = rec[fld]
                assert (int(got) if got is not None else None) == want, (name, fld, rec["seq"])
                checked += 1
    assert checked > 14392


@pytest.mark.shared
def test_role_bits_decoded() -> None:
    trace = read_tracedat(shared(REAL / "tc_kvm.dat"))
    page = trace.table("kvm_mmu_get_page").to_pylist()
    first = next(r for r in page if r["role"] == 14084)
    assert (first["level"], first["access"], first["cr0_wp"]) == (4, 7, True)


@pytest.mark.shared
def test_trappy_four_byte_long() -> None:
    trace = read_tracedat(shared(TRAPPY))
    assert trace.events.num_rows == 525
    assert "long32" in trace.metadata.variants and trace.metadata.cpus == 8


@pytest.mark.shared
@pytest.mark.parametrize("name", [*TC_FILES, "trappy"])
def test_against_live_trace_cmd(name: str) -> None:
    path = shared(TRAPPY if name == "trappy" else REAL / name)
    _check_against_report(path, trace_cmd_report(path, "-R", "-t"))


def test_sample_against_live_trace_cmd() -> None:
    _check_against_report(SAMPLE, trace_cmd_report(SAMPLE, "-R", "-t"))


@pytest.mark.shared
def test_tables_equal_text_reader() -> None:
    """Native tables equal the text reader's tables of the -R report on every shared column."""
    parsers = pytest.importorskip("parsers")
    read_trace = getattr(parsers, "read_trace", None)
    if read_trace is None:
        pytest.skip("parsers.read_trace (the text reader) is not in this branch yet")
    native = read_tracedat(shared(REAL / "tc_kvm.dat"))
    text_r = read_trace(shared(REAL / "tc_kvm.report_R.txt"))
    text_t = read_trace(shared(REAL / "tc_kvm.report_t.txt"))
    assert native.events.column("ts").equals(text_t.events.column("ts"))
    for col in ("cpu", "pid", "comm", "event"):
        a = native.events.column(col).combine_chunks()
        b = text_r.events.column(col).combine_chunks()
        if pa.types.is_dictionary(a.type):
            a, b = a.dictionary_decode(), b.dictionary_decode()
        assert a.equals(b), col
    assert native.names == text_r.names
    for name in native.names:
        mine, theirs = native.table(name), text_r.table(name)
        for col in mine.schema.names:
            if col not in ("seq", "ts"):
                assert mine.column(col).equals(theirs.column(col)), (name, col)


def test_counts_of_sample() -> None:
    trace = read_tracedat(SAMPLE)
    counts = Counter(r["event"] for r in report_rows(SAMPLE_REPORT.read_text()))
    assert trace.event_counts() == dict(sorted(counts.items()))
