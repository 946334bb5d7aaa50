"""Bad input: clear errors naming the file and line, counted skips, never a traceback."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import pytest
from conftest import SAMPLES

from parsers import TraceFormatError, TraceParseError, read_trace

GOOD = (" kvm_root_worklo-17487   [001] d..1.  1806.029258: kvm_mmu_zap_all_fast: "
        "kvm-mmu-valid-gen 0 used_pages d\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="no such file"):
        read_trace(tmp_path / "nope.txt")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="directory"):
        read_trace(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(TraceFormatError, match="empty"):
        read_trace(tmp_path / "e.txt")


def test_binary_garbage(tmp_path: Path) -> None:
    (tmp_path / "g.bin").write_bytes(bytes(range(256)) * 10)
    with pytest.raises(TraceFormatError, match="binary"):
        read_trace(tmp_path / "g.bin")


def test_unknown_text_format(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(TraceFormatError, match="not a trace"):
        read_trace(tmp_path / "x.csv")


def test_garbage_lines_counted_and_sampled(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text(GOOD + "this is not a trace line\n" + GOOD)
    trace = read_trace(path)
    assert trace.events.num_rows == 2
    assert trace.metadata.skipped == {"unparsed": 1}
    assert trace.metadata.samples["unparsed"] == ["2: this is not a trace line"]


def test_strict_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text(GOOD + "this is not a trace line\n")
    with pytest.raises(TraceParseError) as err:
        read_trace(path, strict=True)
    assert f"{path}:2:" in str(err.value) and err.value.lineno == 2


def test_undecodable_payload_is_kept_as_args(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text(GOOD.replace("kvm-mmu-valid-gen 0 used_pages d", "mangled"))
    trace = read_trace(path)
    assert trace.events.column("args").to_pylist() == ["mangled"]
    assert trace.table("kvm_mmu_zap_all_fast").num_rows == 0
    assert any("match no known rendering" in w for w in trace.metadata.warnings)


def test_out_of_order_timestamps_warn_with_line(tmp_path: Path) -> None:
    later = GOOD.replace("1806.029258", "1807.000000")
    path = tmp_path / "t.txt"
    path.write_text(later + GOOD)
    trace = read_trace(path)
    assert trace.events.num_rows == 2
    assert any(f"{path}:2: timestamp goes backwards on CPU 1" in w
               for w in trace.metadata.warnings)


def test_invalid_utf8_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(GOOD.encode() + b"\xff\xfe broken\n" + GOOD.encode())
    trace = read_trace(path)
    assert trace.events.num_rows == 2
    assert trace.metadata.skipped["not_utf8_replaced"] == 1


def test_truncated_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text(GOOD + GOOD.rstrip("\n"))
    assert read_trace(path).events.num_rows == 2


@pytest.mark.parametrize("opener,suffix", [(gzip.open, ".gz"), (lzma.open, ".xz")])
def test_compressed_text_is_read_by_content(tmp_path: Path, opener: object,
                                            suffix: str) -> None:
    data = (SAMPLES / "trace_pipe_lost_events.txt").read_bytes()
    path = tmp_path / f"trace{suffix}.data"  # the name says nothing
    with opener(path, "wb") as f:  # type: ignore[operator]
        f.write(data)
    assert read_trace(path).info()["events"] == 1277


def test_zstd_text(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard", reason="zstd extra not installed")
    data = (SAMPLES / "trace_pipe_lost_events.txt").read_bytes()
    path = tmp_path / "t.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(data))
    assert read_trace(path).info()["events"] == 1277


def test_corrupt_gzip_names_file(tmp_path: Path) -> None:
    data = gzip.compress((SAMPLES / "trace_pipe_lost_events.txt").read_bytes())
    path = tmp_path / "t.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises((TraceParseError, TraceFormatError), match=str(path)):
        read_trace(path)


def test_events_filter_keeps_markers() -> None:
    trace = read_trace(SAMPLES / "trace_pipe_lost_events.txt", events=["kvm_fpu"])
    assert set(trace.event_counts()) == {"kvm_fpu"}
    assert trace.lost_events() == {0: 16496, 1: 15154}
