"""--salvage for text: lines with a NUL byte or not UTF-8 are skipped and counted with their
line numbers, and a truncated compressed file gives its complete lines plus a warning naming
the offset (what `zcat` recovers). Built from the bundled real trace, damaged on purpose."""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import SAMPLES

from parsers import read_trace
from parsers.errors import TraceParseError

REAL = (SAMPLES / "tracefs_record_tgid.txt").read_bytes()
LINES = REAL.split(b"\n")


def _damaged(tmp_path: Path, line: int, at: int, bad: bytes) -> Path:
    """The real trace with ``bad`` put at byte ``at`` of (1-based) line ``line``."""
    lines = list(LINES)
    lines[line - 1] = lines[line - 1][:at] + bad + lines[line - 1][at + len(bad):]
    path = tmp_path / "damaged.txt"
    path.write_bytes(b"\n".join(lines))
    return path


def test_a_nul_byte_names_its_line_and_byte_then_salvage_skips_it(tmp_path: Path) -> None:
    path = _damaged(tmp_path, 101, 20, b"\x00")
    with pytest.raises(TraceParseError) as err:
        read_trace(path)
    byte = sum(len(x) + 1 for x in LINES[:100])
    assert err.value.lineno == 101 and f"byte {byte}" in str(err.value)
    assert "--salvage" in str(err.value)
    whole, kept = read_trace(SAMPLES / "tracefs_record_tgid.txt"), read_trace(path, salvage=True)
    assert kept.metadata.skipped["nul_byte"] == 1
    assert kept.metadata.samples["nul_byte"] == [f"101: line with a NUL byte at byte {byte}"]
    assert kept.events.num_rows == whole.events.num_rows - 1
    assert "blank" not in kept.metadata.skipped


def test_an_undecodable_line_is_skipped_with_salvage(tmp_path: Path) -> None:
    path = _damaged(tmp_path, 201, 10, b"\xff\xfe")
    replaced = read_trace(path)
    assert replaced.metadata.skipped["not_utf8_replaced"] == 1
    kept = read_trace(path, salvage=True)
    assert kept.metadata.skipped["not_utf8"] == 1
    assert kept.metadata.samples["not_utf8"][0].startswith("201: line not UTF-8, at byte ")
    assert kept.events.num_rows == replaced.events.num_rows - 1


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gz": gzip.compress, "xz": lzma.compress,
    "bz2": lambda data: bz2.compress(data, compresslevel=1)}  # 100 kB blocks: one survives


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_a_truncated_compressed_file_gives_its_complete_lines(tmp_path: Path,
                                                              kind: str) -> None:
    packed = COMPRESSORS[kind](REAL)
    cut = tmp_path / f"cut.txt.{kind}"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(TraceParseError, match="cannot decompress"):
        read_trace(cut)
    kept = read_trace(cut, salvage=True)
    warning = [w for w in kept.metadata.warnings if "breaks off" in w]
    assert len(warning) == 1 and "byte" in warning[0]
    # what a streaming decompressor recovers (as zcat does), cut after its last newline
    if kind == "gz":
        recovered = zlib.decompressobj(wbits=31).decompress(packed[: len(packed) // 2])
        complete = recovered[: recovered.rfind(b"\n") + 1]
        plain = tmp_path / "complete.txt"
        plain.write_bytes(complete)
        assert kept.events.num_rows == read_trace(plain).events.num_rows
        n_lines = complete.count(b"\n")
        assert f"kept the {n_lines} complete lines" in warning[0]
    whole = read_trace(SAMPLES / "tracefs_record_tgid.txt")
    assert 0 < kept.events.num_rows < whole.events.num_rows


def test_binary_garbage_is_still_refused_naming_the_nul(tmp_path: Path) -> None:
    from parsers.errors import TraceFormatError

    path = tmp_path / "garbage.bin"
    path.write_bytes(b"\x01\x02garbage\x00" * 100)
    with pytest.raises(TraceFormatError, match="a NUL byte at byte 9"):
        read_trace(path, salvage=True)
