"""Columns of byte strings built with NumPy: protobuf encoding of many events at once.

A :class:`ByteColumn` holds one byte string per row, back to back in ``flat`` with
``lengths``. :func:`varints` encodes an integer column, :func:`constant` repeats a tag, and
:func:`concat` joins columns row by row, so a whole group of events of one kind is encoded
with a handful of array operations instead of Python calls per field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["ByteColumn", "varints", "constant", "concat", "rows_as_bytes"]

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ByteColumn:
    """``lengths[i]`` bytes per row, stored back to back in ``flat``."""

    flat: npt.NDArray[np.uint8]
    lengths: I64

    def offsets(self) -> I64:
        """Start of each row in ``flat``."""
        out = np.zeros(self.lengths.size, np.int64)
        np.cumsum(self.lengths[:-1], out=out[1:])
        return out


def varints(values: npt.NDArray[np.uint64], present: npt.NDArray[np.bool_]) -> ByteColumn:
    """The varint encoding of each present value (absent rows are empty)."""
    v = values.astype(np.uint64)
    lengths = np.ones(v.size, np.int64)
    for k in range(1, 10):
        lengths += (v >> np.uint64(7 * k)) != 0
    lengths = np.where(present, lengths, 0)
    offsets = np.zeros(v.size, np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    flat = np.zeros(int(lengths.sum()), np.uint8)
    for k in range(10):
        sel = np.flatnonzero(lengths > k)
        if not sel.size:
            break
        byte = (v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = lengths[sel] > k + 1
        flat[offsets[sel] + k] = (byte | np.where(more, np.uint64(0x80), np.uint64(0))).astype(
            np.uint8)
    return ByteColumn(flat, lengths)


def constant(data: bytes, present: npt.NDArray[np.bool_]) -> ByteColumn:
    """``data`` on every present row."""
    n = int(present.sum())
    flat = np.tile(np.frombuffer(data, np.uint8), n) if n else np.zeros(0, np.uint8)
    return ByteColumn(flat, np.where(present, len(data), 0).astype(np.int64))


def concat(columns: list[ByteColumn]) -> ByteColumn:
    """Row ``i`` of the result is row ``i`` of every column, joined in order."""
    lengths = np.sum([c.lengths for c in columns], axis=0).astype(np.int64)
    out_off = np.zeros(lengths.size, np.int64)
    np.cumsum(lengths[:-1], out=out_off[1:])
    flat = np.empty(int(lengths.sum()), np.uint8)
    prefix = out_off.copy()
    for c in columns:
        total = int(c.lengths.sum())
        if total:
            src_off = c.offsets()
            idx = np.repeat(prefix - src_off, c.lengths) + np.arange(total, dtype=np.int64)
            flat[idx] = c.flat
        prefix += c.lengths
    return ByteColumn(flat, lengths)


def rows_as_bytes(column: ByteColumn) -> list[bytes]:
    """One ``bytes`` object per row."""
    data = column.flat.tobytes()
    ends = np.cumsum(column.lengths).tolist()
    starts = [0, *ends[:-1]]
    return [data[s:e] for s, e in zip(starts, ends, strict=True)]
