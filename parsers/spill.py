"""Tables built on disk as batches stream in, then memory-mapped: one contiguous chunk per
column whose buffers are file pages, not the process's own memory.

A trace's tables concatenated in memory hold every event at once: a few dozen bytes per
event even slimmed to what the replay reads, so a trace of a few hundred million events
does not fit a worker. :class:`SpillTable` appends each batch's buffers to one file per
buffer (validity bitmap, values, string offsets and bytes) and :meth:`SpillTable.finish`
maps them back as Arrow buffers: readers of the table (NumPy views included) read the page
cache, which the kernel evicts and re-reads under memory pressure instead of failing.

The files are unlinked as soon as they are mapped: the mapping keeps them alive, and
nothing is left behind however the process ends after that.
"""

from __future__ import annotations

import tempfile
import weakref
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
import pyarrow as pa

from parsers.errors import SpillError

__all__ = ["SpillTable", "spill_types_supported"]


#: Bytes per value of the fixed-width types a spilled column may hold.
_FIXED: Final = {pa.int8(): 1, pa.int16(): 2, pa.int32(): 4, pa.int64(): 8, pa.uint8(): 1,
                 pa.uint16(): 2, pa.uint32(): 4, pa.uint64(): 8, pa.float32(): 4,
                 pa.float64(): 8}
#: String offsets are written as int64 and narrowed when the column's bytes fit int32.
_INT32_MAX: Final = (1 << 31) - 1
#: Values per piece when a file is rewritten (offsets narrowed): bounded memory.
_PIECE: Final = 1 << 20


def spill_types_supported(schema: pa.Schema) -> bool:
    """True when every column of ``schema`` is a type :class:`SpillTable` writes."""
    return all(_supported(f.type) for f in schema)


def _supported(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return bool(t.index_type == pa.int32() and pa.types.is_string(t.value_type))
    return t in _FIXED or pa.types.is_boolean(t) or pa.types.is_string(t)


class _Bits:
    """An append-only bitmap file (LSB first, Arrow's order), with the last partial byte
    held until more bits come."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.pending = np.zeros(0, dtype=bool)

    def append(self, bits: np.ndarray) -> None:
        if self.pending.size:
            bits = np.concatenate([self.pending, bits])
        whole = bits.size - bits.size % 8
        if whole:
            self.file.write(np.packbits(bits[:whole], bitorder="little").tobytes())
        self.pending = bits[whole:].copy()

    def close(self) -> None:
        if self.pending.size:
            self.file.write(np.packbits(self.pending, bitorder="little").tobytes())
            self.pending = np.zeros(0, dtype=bool)


def _bits_of(buffer: pa.Buffer | None, offset: int, length: int) -> np.ndarray:
    """``length`` bits of ``buffer`` from bit ``offset`` as booleans (all set if None)."""
    if buffer is None:
        return np.ones(length, dtype=bool)
    raw = np.frombuffer(buffer, dtype=np.uint8)
    first = offset // 8
    raw = raw[first:first + (offset % 8 + length + 7) // 8]
    return np.unpackbits(raw, bitorder="little")[offset % 8:offset % 8 + length].astype(bool)


class _Column:
    """The files of one column."""

    def __init__(self, field: pa.Field, directory: Path, index: int) -> None:
        self.field = field
        self.type = field.type
        self.paths: dict[str, Path] = {}
        self.files: dict[str, BinaryIO] = {}
        for part in self._parts():
            path = directory / f"c{index}.{part}"
            self.paths[part] = path
            self.files[part] = path.open("wb")
        self.valid = _Bits(self.files["valid"])
        self.bools = _Bits(self.files["values"]) if pa.types.is_boolean(self.type) else None
        self.length = 0
        self.nulls = 0
        self.data_bytes = 0  # string bytes written so far
        if pa.types.is_string(self.type):
            self.files["offsets"].write(np.zeros(1, dtype=np.int64).tobytes())
        self.words: dict[str, int] = {}  # a dictionary column's values, in first-seen order

    def _parts(self) -> tuple[str, ...]:
        if pa.types.is_string(self.type):
            return ("valid", "offsets", "values")
        return ("valid", "values")

    def append(self, array: pa.Array) -> None:
        n = len(array)
        if not n:
            return
        buffers = array.buffers()
        valid = _bits_of(buffers[0], array.offset, n)
        self.valid.append(valid)
        self.nulls += array.null_count
        t = self.type
        if pa.types.is_dictionary(t):
            assert isinstance(array, pa.DictionaryArray)
            codes = np.array([self.words.setdefault(w, len(self.words))
                              for w in array.dictionary.to_pylist()] or [0], dtype=np.int32)
            indices = np.frombuffer(buffers[1], dtype=np.int32)[array.offset:array.offset + n]
            # null slots may hold any index: map them to 0, never out of range
            self.files["values"].write(np.where(valid, codes[np.where(valid, indices, 0)],
                                                0).astype(np.int32).tobytes())
        elif pa.types.is_boolean(t):
            assert self.bools is not None
            self.bools.append(_bits_of(buffers[1], array.offset, n))
        elif pa.types.is_string(t):
            offsets = np.frombuffer(buffers[1], dtype=np.int32)[array.offset:array.offset + n + 1]
            lo, hi = int(offsets[0]), int(offsets[-1])
            self.files["offsets"].write(
                (offsets[1:].astype(np.int64) - lo + self.data_bytes).tobytes())
            if hi > lo and buffers[2] is not None:
                self.files["values"].write(memoryview(buffers[2])[lo:hi])
            self.data_bytes += hi - lo
        else:
            width = _FIXED[t]
            raw = memoryview(buffers[1])[array.offset * width:(array.offset + n) * width]
            self.files["values"].write(raw)
        self.length += n

    def finish(self, directory: Path) -> pa.Array:
        self.valid.close()
        if self.bools is not None:
            self.bools.close()
        for f in self.files.values():
            f.close()
        t = self.type
        validity = _map(self.paths["valid"]) if self.nulls else None
        if pa.types.is_dictionary(t):
            indices = pa.Array.from_buffers(pa.int32(), self.length,
                                            [validity, _map(self.paths["values"])],
                                            null_count=self.nulls)
            out: pa.Array = pa.DictionaryArray.from_arrays(
                indices, pa.array(list(self.words), pa.string()))
        elif pa.types.is_string(t):
            wide = self.data_bytes > _INT32_MAX
            offsets = _map(self.paths["offsets"]) if wide else _narrowed(
                self.paths["offsets"], directory / (self.paths["offsets"].name + "32"))
            out = pa.Array.from_buffers(pa.large_string() if wide else pa.string(), self.length,
                                        [validity, offsets, _map(self.paths["values"])],
                                        null_count=self.nulls)
        else:
            out = pa.Array.from_buffers(t, self.length, [validity, _map(self.paths["values"])],
                                        null_count=self.nulls)
        for path in self.paths.values():
            path.unlink(missing_ok=True)
        return out


def _map(path: Path) -> pa.Buffer:
    """The whole file at ``path``, memory-mapped read-only (an empty buffer if empty)."""
    if not path.stat().st_size:
        return pa.py_buffer(b"")
    with pa.memory_map(str(path), "r") as mapped:
        return mapped.read_buffer()


def _narrowed(wide: Path, narrow: Path) -> pa.Buffer:
    """The int64 offsets file ``wide`` as int32 (values known to fit), in pieces."""
    with wide.open("rb") as src, narrow.open("wb") as dst:
        while chunk := src.read(_PIECE * 8):
            dst.write(np.frombuffer(chunk, dtype=np.int64).astype(np.int32).tobytes())
    out = _map(narrow)
    narrow.unlink()
    return out


class SpillTable:
    """Batches of one ``schema`` appended to files under ``directory`` (a new temporary
    directory inside it), and the table they make, mapped from those files.

    Examples:
        >>> import pyarrow as pa
        >>> s = SpillTable(pa.schema([("x", pa.int64()), ("s", pa.string())]))
        >>> s.append(pa.record_batch([pa.array([1, None]), pa.array(["a", "bc"])],
        ...                          names=["x", "s"]))
        >>> s.finish().to_pydict()
        {'x': [1, None], 's': ['a', 'bc']}
    """

    def __init__(self, schema: pa.Schema, directory: str | Path | None = None) -> None:
        if not spill_types_supported(schema):
            raise TypeError(f"cannot spill a column of {schema}")
        self.schema = schema
        parent = Path(directory) if directory is not None else Path(tempfile.gettempdir())
        try:
            self.directory = Path(tempfile.mkdtemp(prefix="kvm-mmu-spill-", dir=parent))
        except OSError as e:
            raise SpillError(parent, e.strerror or str(e)) from e
        # a table dropped unfinished (its caller raised) takes its files with it
        self._cleanup = weakref.finalize(self, _remove, self.directory)
        try:
            self.columns = [_Column(f, self.directory, i) for i, f in enumerate(schema)]
        except OSError as e:
            self._cleanup()
            raise SpillError(parent, e.strerror or str(e)) from e
        self.num_rows = 0

    def append(self, batch: pa.RecordBatch) -> None:
        """Write ``batch`` (of :attr:`schema`) to the files.

        Raises:
            SpillError: a file could not be written (the disk is full).
        """
        try:
            for column, array in zip(self.columns, batch.columns, strict=True):
                column.append(array)
        except OSError as e:
            self.discard()
            raise SpillError(self.directory, e.strerror or str(e)) from e
        self.num_rows += batch.num_rows

    def finish(self) -> pa.Table:
        """The table of every batch appended: one chunk per column, on mapped files (a
        string column whose bytes pass 2 GiB becomes ``large_string``)."""
        try:
            arrays = [c.finish(self.directory) for c in self.columns]
        except OSError as e:
            self.discard()
            raise SpillError(self.directory, e.strerror or str(e)) from e
        self._cleanup()
        fields = [f.with_type(a.type) for f, a in zip(self.schema, arrays, strict=True)]
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields, self.schema.metadata))

    def discard(self) -> None:
        """Close and remove the files (after an error)."""
        for column in self.columns:
            for f in column.files.values():
                f.close()
        self._cleanup()


def _remove(directory: Path) -> None:
    """Remove a spill directory and the files left in it (none once mapped)."""
    if directory.is_dir():
        for path in directory.glob("*"):
            path.unlink(missing_ok=True)
        directory.rmdir()
