"""Lost-event markers of trace.dat pages: counts summed and shown as "≥ N", damaged stored
counts warned about with their offset, and the counts surviving a Perfetto conversion.

The pages are those of the real ``tc_kvm.v6.dat``; only their commit words (and the count the
kernel stores after the data, ``RB_MISSED_STORED``) are set, as ``ring_buffer.c``'s
``rb_check_missed``/``ring_buffer_read_page`` would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tracedat_support import REAL, shared
from typer.testing import CliRunner

from parsers import read_trace, write_perfetto
from parsers.tracedat.header import read_info
from replay.cli import app

_MISSED, _STORED, _SIZE = 1 << 31, 1 << 30, (1 << 27) - 1


def _flag_pages(tmp_path: Path, counts: list[int | None]) -> tuple[Path, list[int]]:
    """The v6 trace with CPU 0's pages 2, 4, ... flagged lost (a count stored, or not)."""
    data = bytearray(shared(REAL / "tc_kvm.v6.dat").read_bytes())
    info = read_info(bytes(data), "v6")
    cpu0, page = info.buffers[0].cpus[0], info.page_size
    offsets = []
    index = 2
    for count in counts:
        while True:
            at = cpu0.offset + index * page
            commit = int.from_bytes(data[at + 8:at + 16], "little")
            index += 2
            if (commit & _SIZE) + 16 + 8 <= page:
                break
        size = commit & _SIZE
        flags = _MISSED | (_STORED if count is not None else 0)
        data[at + 8:at + 16] = (size | flags).to_bytes(8, "little")
        if count is not None:
            data[at + 16 + size:at + 24 + size] = count.to_bytes(8, "little")
        offsets.append(at)
    out = tmp_path / "lost.dat"
    out.write_bytes(bytes(data))
    return out, offsets


def test_counts_are_summed_and_uncounted_markers_make_it_at_least(tmp_path: Path) -> None:
    path, _ = _flag_pages(tmp_path, [None, 1718, 707])
    trace = read_trace(path)
    assert trace.lost_events() == {0: 2425}
    assert trace.lost_markers_uncounted() == {0: 1}
    info = trace.info()
    assert info["lost_events"] == {"0": 2425} and info["lost_markers_uncounted"] == {"0": 1}
    shown = CliRunner().invoke(app, ["info", str(path)])
    assert shown.exit_code == 0
    assert "cpu 0: ≥ 2426 (1 marker without a count)" in shown.stdout
    assert "unknown" not in shown.stdout


def test_all_counted_is_exact(tmp_path: Path) -> None:
    path, _ = _flag_pages(tmp_path, [1718, 707])
    shown = CliRunner().invoke(app, ["info", str(path)])
    assert "cpu 0: 2425" in shown.stdout and "≥" not in shown.stdout


def test_stored_count_of_zero_is_damage_warned_with_its_offset(tmp_path: Path) -> None:
    path, offsets = _flag_pages(tmp_path, [1718, 0])
    trace = read_trace(path)
    assert trace.lost_events() == {0: 1718}
    assert trace.lost_markers_uncounted() == {0: 1}  # not a marker of 0 lost events
    warning = [w for w in trace.metadata.warnings if "stored count of 0" in w]
    assert warning and f"byte {offsets[1]}" in warning[0]


def test_counts_survive_perfetto(tmp_path: Path) -> None:
    """Perfetto keeps per-CPU totals only (FtraceStats): the total is read back."""
    path, _ = _flag_pages(tmp_path, [1718, 707])
    out = tmp_path / "t.pftrace"
    write_perfetto(read_trace(path), out)
    back = read_trace(out)
    assert back.lost_markers_uncounted() == {0: 2}
    assert "ftrace_stats: CPU 0 lost 2425 events (ring buffer overrun)" in back.metadata.warnings
    (tmp_path / "one").mkdir()
    single, _ = _flag_pages(tmp_path / "one", [1718])
    write_perfetto(read_trace(single), tmp_path / "one.pftrace")
    assert read_trace(tmp_path / "one.pftrace").lost_events() == {0: 1718}


@pytest.mark.parametrize("flipped", [8, 16])
def test_flipped_record_header_bytes_are_warned_or_refused(tmp_path: Path, flipped: int) -> None:
    """Eight inverted bytes inside a page never pass silently as a lost-events row."""
    data = bytearray(shared(REAL / "tc_kvm.v6.dat").read_bytes())
    info = read_info(bytes(data), "v6")
    at = info.buffers[0].cpus[1].offset + 10 * info.page_size + flipped
    data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    path = tmp_path / "flip.dat"
    path.write_bytes(bytes(data))
    trace = read_trace(path, salvage=True)
    zero = [c for c in trace.table("lost_events").column("lost").to_pylist() if c == 0]
    assert not zero
    if trace.lost_markers_uncounted() or trace.lost_events():
        assert trace.metadata.warnings
