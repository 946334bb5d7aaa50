"""A Trace collected from large batches keeps them as chunks; from small ones, one chunk.

Either way the tables are the same, every dictionary column has one dictionary across its
chunks (an Arrow IPC file cannot change a dictionary between batches), and the tables
write to every table format and read back equal.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

import parsers.trace as trace_module
from parsers import read_trace
from parsers.table_files import write_tables
from parsers.text.reader import iter_ftrace_text
from parsers.trace import Trace
from tests.conftest import SAMPLES

SAMPLE = SAMPLES / "tracefs_record_tgid.txt"


def _collect(monkeypatch: pytest.MonkeyPatch, keep_rows: int) -> Trace:
    monkeypatch.setattr(trace_module, "KEEP_CHUNK_ROWS", keep_rows)
    stream = iter_ftrace_text(SAMPLE, chunk_bytes=256 << 10)  # several real batches
    return stream.complete(Trace.from_batches(stream, stream.metadata))


def _read(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if path.suffix == ".feather":
        return feather.read_table(path)
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def _one_dictionary(table: pa.Table) -> None:
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_dictionary(field.type) and column.num_chunks > 1:
            first = column.chunk(0).dictionary
            assert all(c.dictionary.equals(first) for c in column.chunks), field.name


@pytest.mark.parametrize(("keep_rows", "chunked"), [(1, True), (1 << 40, False)])
def test_tables_are_the_same_kept_as_chunks_or_combined(
        monkeypatch: pytest.MonkeyPatch, keep_rows: int, chunked: bool) -> None:
    whole = read_trace(SAMPLE)
    got = _collect(monkeypatch, keep_rows)
    assert (got.events.column("event").num_chunks > 1) is chunked
    assert got.events.equals(whole.events)
    assert got.names == whole.names
    for name in got.names:
        assert got.table(name).equals(whole.table(name)), name
        _one_dictionary(got.table(name))
    _one_dictionary(got.events)


@pytest.mark.parametrize("suffix", [".parquet", ".feather", ".arrow"])
def test_chunked_tables_write_and_read_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            suffix: str) -> None:
    got = _collect(monkeypatch, 1)
    paths = write_tables(got, tmp_path / f"out{suffix}")
    back = {p.stem: _read(p) for p in paths}
    assert back["events"].select(got.events.column_names).equals(got.events)
    for name in got.names:
        assert back[name].select(got.table(name).column_names).equals(got.table(name)), name


def test_contiguous_gives_one_chunk_per_column(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace_module, "KEEP_CHUNK_ROWS", 1)
    stream = iter_ftrace_text(SAMPLE, chunk_bytes=256 << 10)
    got = Trace.from_batches(stream, stream.metadata, contiguous=True)
    assert got.events.equals(read_trace(SAMPLE).events)
    for table in [got.events, *(got.table(n) for n in got.names)]:
        assert all(column.num_chunks == 1 for column in table.columns)
