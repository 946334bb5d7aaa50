"""Layouts generated from a real line: trace-cmd >= 3.3 -R flags, multi-input prefixes,
trace-cmd loss markers, buffer-started lines and the empty-CPU preamble."""

from __future__ import annotations

from pathlib import Path

from conftest import SAMPLES

from parsers import read_trace

REAL = next(line for line in (SAMPLES / "tc_kvm.report_R.head.txt").read_text().splitlines()
            if "kvm_mmu_get_page" in line)


def _write(tmp: Path, lines: list[str]) -> Path:
    path = tmp / "t.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_raw_flags_glued_to_cpu(tmp_path: Path) -> None:
    line = REAL.replace("[000] ", "[000]-0x1 ")  # trace-cmd >= 3.3 -R
    trace = read_trace(_write(tmp_path, ["cpus=2", line]))
    row = trace.events.to_pylist()[0]
    assert (row["cpu"], row["latency_flags"], row["comm"]) == (0, "0x1", "CPU 0/KVM")
    assert trace.table("kvm_mmu_get_page").column("role").to_pylist() == [14084]


def test_multi_input_prefix_becomes_instance(tmp_path: Path) -> None:
    lines = ["  a.dat: cpus=2", "b.dat: cpus=2", f"  a.dat: {REAL.lstrip()}",
             f"b.dat: {REAL.lstrip()}"]
    trace = read_trace(_write(tmp_path, lines))
    rows = trace.events.to_pylist()
    assert [r["instance"] for r in rows] == ["a.dat", "b.dat"]
    assert [r["comm"] for r in rows] == ["CPU 0/KVM", "CPU 0/KVM"]
    assert "multi-input-prefix" in trace.metadata.variants


def test_trace_cmd_markers_and_preambles(tmp_path: Path) -> None:
    lines = ["version = 6", "CPU 1 is empty", "cpus=2", REAL, "CPU:0 [12 EVENTS DROPPED]",
             "CPU:1 [EVENTS DROPPED]", "##### CPU 1 buffer started ####", REAL]
    trace = read_trace(_write(tmp_path, lines))
    assert trace.lost_events() == {0: 12, 1: None}
    names = trace.events.column("event").to_pylist()
    assert names == ["kvm_mmu_get_page", "lost_events", "lost_events", "buffer_started",
                     "kvm_mmu_get_page"]
    assert trace.event_counts() == {"kvm_mmu_get_page": 2}  # markers are not events
    assert trace.metadata.skipped == {"preamble": 3}
