"""One process or several: a trace.dat file reads to the same tables, order, seq, warnings
and errors (issue 13 item 2). Small windows make even the bundled samples span many tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
from tracedat_support import REAL, ROOT, shared

from parsers.errors import TraceParseError
from parsers.trace import Trace
from parsers.tracedat.header import read_info
from parsers.tracedat.reader import iter_tracedat, read_tracedat

FILES = sorted(ROOT.glob("sample_traces/*.dat")) + sorted(REAL.glob("*.dat"))
WINDOW = 16  # pages per window: a few hundred tasks per file


def _read(path: Path, workers: int, *, salvage: bool = False, window: int = WINDOW) -> object:
    """Everything a read yields: each streamed batch's tables, then the warnings (or the
    error's text and offset)."""
    try:
        stream = iter_tracedat(path, salvage=salvage, window_pages=window, workers=workers)
        batches = [(b.events, sorted(b.typed.items()), b.stacks) for b in stream]
        return batches, stream.metadata.warnings
    except TraceParseError as exc:
        return str(exc), exc.offset


def _same(a: object, b: object) -> None:
    if isinstance(a, tuple) and isinstance(a[0], list):
        assert isinstance(b, tuple)
        assert len(a[0]) == len(b[0])
        for (ev_a, typed_a, st_a), (ev_b, typed_b, st_b) in zip(a[0], b[0], strict=True):
            assert ev_a.equals(ev_b) and ev_a.schema.equals(ev_b.schema)
            assert (st_a is None and st_b is None) or (st_a is not None and st_a.equals(st_b))
            assert [n for n, _ in typed_a] == [n for n, _ in typed_b]
            assert all(x.equals(y) for (_, x), (_, y) in zip(typed_a, typed_b, strict=True))
        assert a[1] == b[1]
    else:
        assert a == b


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_workers_match_one_process(path: Path) -> None:
    one = _read(path, 1)
    assert isinstance(one, tuple) and one[0], "the file reads"
    _same(one, _read(path, 2))
    _same(one, _read(path, 3))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_default_windows_whole_trace(path: Path) -> None:
    one = read_tracedat(path, workers=1)
    two = Trace.from_stream(iter_tracedat(path, window_pages=64, workers=2))
    assert one.events.equals(two.events)
    assert one.names == two.names
    assert all(one.table(n).equals(two.table(n)) for n in one.names)
    assert one.stacks.equals(two.stacks)
    assert one.metadata.warnings == two.metadata.warnings


@pytest.mark.parametrize("salvage", [False, True])
def test_damaged_page_same_error_or_salvage(salvage: bool, tmp_path: Path) -> None:
    data = bytearray(shared(REAL / "tc_kvm.v6.dat").read_bytes())
    info = read_info(bytes(data), "v6")
    cpu1 = info.buffers[0].cpus[1]
    page = cpu1.offset + 40 * info.page_size
    data[page + 8:page + 12] = (4000).to_bytes(4, "little")  # commit larger than the page
    path = tmp_path / "damaged.dat"
    path.write_bytes(bytes(data))
    one = _read(path, 1, salvage=salvage)
    if salvage:
        assert isinstance(one, tuple) and any("salvaged" in w for w in one[1])
    else:
        assert isinstance(one[0], str) and "CPU 1" in one[0]
    _same(one, _read(path, 2, salvage=salvage))


@pytest.mark.parametrize("salvage", [False, True])
def test_corrupt_zstd_chunk_same_error_or_salvage(salvage: bool, tmp_path: Path) -> None:
    src = shared(REAL / "tc_kvm.dat")
    data = bytearray(src.read_bytes())
    cpu0 = read_info(bytes(data), "v7").buffers[0].cpus[0]
    at = cpu0.offset + 4 + 8  # inside the first chunk's data, after its two sizes
    first = int.from_bytes(data[cpu0.offset + 4:cpu0.offset + 8], "little")
    for k in range(first // 2, first // 2 + 16):  # corrupt the middle of the first chunk
        data[at + k] ^= 0x5A
    path = tmp_path / "corrupt.dat"
    path.write_bytes(bytes(data))
    one = _read(path, 1, salvage=salvage, window=4)
    if salvage:
        assert isinstance(one, tuple) and any("corrupt zstd" in w for w in one[1])
    else:
        assert isinstance(one[0], str) and "corrupt zstd" in one[0]
    _same(one, _read(path, 2, salvage=salvage, window=4))

