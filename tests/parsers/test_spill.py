"""Spilled tables (parsers/spill.py): batches written to files and mapped back are the
batches' concatenation, whatever their types, nulls, slices and dictionaries; nothing is
left on disk; a directory that cannot be written is a :class:`SpillError`.

The composition with real readers: a trace collected with ``spill`` equals the same
trace collected in memory, for the text, trace.dat and Perfetto readers' own batches.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import parsers.spill as spill_module
from parsers.detect import iter_trace
from parsers.errors import SpillError
from parsers.spill import SpillTable
from parsers.trace import Trace
from tests.conftest import SAMPLES

_TYPES = [pa.int8(), pa.int32(), pa.int64(), pa.uint8(), pa.uint32(), pa.uint64(),
          pa.float64(), pa.bool_(), pa.string(), pa.dictionary(pa.int32(), pa.string())]
_WORDS = ["kvm_entry", "kvm_exit", "", "CPU 0/KVM", "é"]


def _values(t: pa.DataType, n: int, draw: st.DrawFn) -> list[object]:
    if pa.types.is_boolean(t):
        base: st.SearchStrategy[object] = st.booleans()
    elif pa.types.is_string(t) or pa.types.is_dictionary(t):
        base = st.sampled_from(_WORDS) if pa.types.is_dictionary(t) else st.text(max_size=6)
    elif pa.types.is_floating(t):
        base = st.floats(allow_nan=False)
    else:
        width = t.bit_width
        lo, hi = (0, 2 ** width - 1) if pa.types.is_unsigned_integer(t) else \
            (-(2 ** (width - 1)), 2 ** (width - 1) - 1)
        base = st.integers(lo, hi)
    return draw(st.lists(st.one_of(st.none(), base), min_size=n, max_size=n))


@st.composite
def _batches(draw: st.DrawFn) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    types = draw(st.lists(st.sampled_from(_TYPES), min_size=1, max_size=4))
    schema = pa.schema([(f"c{i}", t) for i, t in enumerate(types)])
    batches = []
    for _ in range(draw(st.integers(0, 5))):
        n = draw(st.integers(0, 21))
        skip = draw(st.integers(0, 3))  # a slice: arrays with an offset
        arrays = []
        for t in types:
            values = _values(t, n + skip, draw)
            if pa.types.is_dictionary(t):
                # each batch with its own dictionary, in its own order
                array: pa.Array = pa.array(values, pa.string()).dictionary_encode()
            else:
                array = pa.array(values, t)
            arrays.append(array.slice(skip))
        batches.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
    return schema, batches


def _decoded(table: pa.Table) -> dict[str, list[object]]:
    out = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        out[name] = column.to_pylist()
    return out


@settings(max_examples=150, deadline=None)
@given(_batches())
def test_spilled_table_is_the_batches_concatenated(
        case: tuple[pa.Schema, list[pa.RecordBatch]]) -> None:
    schema, batches = case
    spilled = SpillTable(schema)
    for batch in batches:
        spilled.append(batch)
    got = spilled.finish()
    expected = pa.Table.from_batches(batches, schema=schema)
    assert got.schema.equals(schema)
    assert got.num_rows == expected.num_rows
    assert all(column.num_chunks == 1 for column in got.columns)
    assert _decoded(got) == _decoded(expected)
    got.validate(full=True)
    assert not spilled.directory.exists()


def test_string_bytes_past_int32_become_large_string(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spill_module, "_INT32_MAX", 5)
    spilled = SpillTable(pa.schema([("s", pa.string())]))
    spilled.append(pa.record_batch([pa.array(["abc", None, "defg"])], names=["s"]))
    got = spilled.finish()
    assert got.schema.field("s").type == pa.large_string()
    assert got.column("s").to_pylist() == ["abc", None, "defg"]


def test_nothing_is_left_on_disk(tmp_path: Path) -> None:
    spilled = SpillTable(pa.schema([("x", pa.int64())]), tmp_path)
    spilled.append(pa.record_batch([pa.array(range(1000))], names=["x"]))
    assert any(tmp_path.iterdir())
    table = spilled.finish()
    assert list(tmp_path.iterdir()) == []
    assert table.column("x").to_pylist() == list(range(1000))  # still mapped


def test_discarded_spill_removes_its_files(tmp_path: Path) -> None:
    spilled = SpillTable(pa.schema([("x", pa.int64())]), tmp_path)
    spilled.append(pa.record_batch([pa.array(range(10))], names=["x"]))
    spilled.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_missing_directory_is_a_spill_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(SpillError) as caught:
        SpillTable(pa.schema([("x", pa.int64())]), missing)
    assert str(missing) in str(caught.value)


def test_an_unsupported_column_type_is_refused() -> None:
    with pytest.raises(TypeError):
        SpillTable(pa.schema([("x", pa.list_(pa.int64()))]))


@pytest.mark.parametrize("name", ["tracefs_record_tgid.txt", "tc_kvm.head.dat",
                                  "perfetto_kvm_dense.pftrace", "stacks_teardown.dat",
                                  "trace_pipe_lost_events.txt"])
def test_a_spilled_trace_equals_the_trace_in_memory(name: str, tmp_path: Path) -> None:
    def collect(spill: Path | None) -> Trace:
        stream = iter_trace(SAMPLES / name, batch_bytes=64 << 10)  # several real batches
        return stream.complete(Trace.from_batches(stream, stream.metadata, contiguous=True,
                                                  spill=spill))

    memory, spilled = collect(None), collect(tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert spilled.names == memory.names
    assert spilled.metadata == memory.metadata
    for table in ("events", *memory.names, *(["stacks"] if memory.stacks is not None else [])):
        got, want = spilled.table(table), memory.table(table)
        assert got.schema.equals(want.schema), table
        assert _decoded(got) == _decoded(want), table


def test_a_table_dropped_unfinished_removes_its_files(tmp_path: Path) -> None:
    spilled = SpillTable(pa.schema([("x", pa.int64())]), tmp_path)
    spilled.append(pa.record_batch([pa.array(range(10))], names=["x"]))
    assert any(tmp_path.iterdir())
    del spilled  # a caller that raised between append and finish
    import gc

    gc.collect()
    assert list(tmp_path.iterdir()) == []
