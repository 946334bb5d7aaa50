"""The fuzzing campaigns' findings (``benchmarks/fuzz.py``), each pinned at the function it
was in; the crashing inputs themselves are replayed by ``test_fuzz_regressions.py``."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from parsers.detect import read_trace
from parsers.errors import TraceFormatError, TraceParseError
from parsers.text.fixed import FIXED_PLAIN_RE, FIXED_TGID_RE
from parsers.text.grammar import EventLines
from parsers.text.numbers import NumberTextError, dec_to_int, hex_to_uint64
from parsers.text.reader import _split_prefix, read_ftrace_text

LINE = ("       CPU 0/KVM-6001    (   6000) [001] {flags}   {ts}: kvm_entry: vcpu 0, rip 0x1001\n")


def test_hex_of_non_ascii_text_is_not_hex() -> None:
    # utf8_lpad pads to 16 characters: 'é' made a row of more than 16 bytes (a reshape error)
    got = hex_to_uint64(pa.array(["0xé1", "ffé", "ff", None, "é" * 18])).to_pylist()
    assert got == [None, None, 255, None, None]
    with pytest.raises(NumberTextError):
        hex_to_uint64(pa.array(["ffé"]), strict=True)


def test_decimal_out_of_range_is_null_or_strict_error() -> None:
    # pyarrow's cast raised ArrowInvalid on a value beyond int64 (or beyond the column type)
    assert dec_to_int(pa.array(["1" * 40, "12", None, "-5"])).to_pylist() == [None, 12, None, -5]
    assert dec_to_int(pa.array(["3000000000", "7"]), pa.int32()).to_pylist() == [None, 7]
    assert dec_to_int(pa.array(["18446744073709551615"]), pa.uint64()).to_pylist() == [2**64 - 1]
    with pytest.raises(NumberTextError) as err:
        dec_to_int(pa.array(["1" * 40, "12"]), strict=True)
    assert err.value.bad.tolist() == [True, False]


def test_fast_path_flags_are_ascii() -> None:
    import re

    line = LINE.format(flags="d..1\u00e9", ts="200.000150").rstrip("\n")
    assert not re.match(FIXED_TGID_RE, line) and not re.match(FIXED_PLAIN_RE, line)
    assert re.match(FIXED_TGID_RE, LINE.format(flags="d..1.", ts="200.000150"))


def test_numbers_that_do_not_fit_make_the_line_unparsed(tmp_path: Path) -> None:
    good = LINE.format(flags="d..1.", ts="200.000151")
    bad = [LINE.format(flags="d..1.", ts="99999999999999999999.000152"),  # ns overflow
           LINE.format(flags="d..1.", ts="9300000000.000153"),  # just past int64 ns
           LINE.format(flags="d..1.", ts="200.0001530000000000"),  # >9 fraction digits
           LINE.replace("KVM-6001", "KVM-99999999999").format(flags="d..1.", ts="200.2")]
    path = tmp_path / "t.txt"
    path.write_text("# tracer: nop\n" + good + "".join(bad)
                    + LINE.format(flags="d..1.", ts="9200000000.000153"))
    trace = read_ftrace_text(path)
    assert trace.events["ts"].to_pylist() == [200_000_151_000, 9_200_000_000_000_153_000]
    assert trace.metadata.skipped["unparsed"] == len(bad)


def test_record_tgid_dashes_still_read(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("# tracer: nop\n" + LINE.replace("(   6000)", "(-------)").format(
        flags="d..1.", ts="200.000150"))
    trace = read_ftrace_text(path)
    assert trace.events["tgid"].to_pylist() == [None]
    assert trace.events["pid"].to_pylist() == [6001]


def test_instance_prefix_split_with_unprefixed_rows() -> None:
    # list_element(list_slice(parts, 1, 2), 0) failed on any row without a "name: " prefix
    comm = pa.array(["vm1: CPU 0/KVM", "kworker/0:1", None])
    n = len(comm)
    ev = EventLines(rows=np.arange(n), comm=comm, pid=pa.nulls(n, pa.int32()),
                    tgid=pa.nulls(n, pa.int32()), cpu=pa.nulls(n, pa.int32()),
                    flags=pa.nulls(n, pa.string()), sec=pa.nulls(n, pa.string()),
                    frac_digits=np.zeros(n, np.int64), ts=np.zeros(n, np.int64),
                    event=pa.nulls(n, pa.string()), payload=pa.nulls(n, pa.string()))
    out = _split_prefix(ev)
    assert out.comm.to_pylist() == ["CPU 0/KVM", "kworker/0:1", None]
    assert out.instance is not None and out.instance.to_pylist() == ["vm1", None, None]


def test_corrupt_gzip_is_a_parse_error(tmp_path: Path) -> None:
    # gzip raised zlib.error (not an OSError) on a corrupt deflate stream
    clean = gzip.compress(("# tracer: nop\n" + LINE.format(
        flags="d..1.", ts="200.000150") * 200).encode(), mtime=0)
    data = bytearray(clean)
    for at in range(12, len(clean) - 8):  # the first flip that corrupts the deflate data
        data[at] = clean[at] ^ 0xFF
        try:
            zlib.decompressobj(-zlib.MAX_WBITS).decompress(bytes(data[10:]))
        except zlib.error:
            break
        data[at] = clean[at]
    else:
        pytest.fail("no byte flip corrupted the deflate stream")
    path = tmp_path / "t.txt.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(TraceParseError, match="cannot decompress"):
        read_ftrace_text(path)
    assert read_ftrace_text(path, salvage=True).metadata.warnings
    with pytest.raises(TraceFormatError, match="cannot decompress"):  # detection: no text
        read_trace(path)
