"""Columns of byte strings built with NumPy: protobuf encoding of many events at once.

A :class:`ByteColumn` holds one byte string per row, back to back in ``flat`` with
``lengths``. :func:`varints` encodes an integer column, :func:`constant` repeats a tag, and
:func:`concat` joins columns row by row, so a whole group of events of one kind is encoded
with a handful of array operations instead of Python calls per field. :func:`take` gathers
rows (e.g. the encodings of a few distinct payloads, once per row that has them) and
:func:`place` puts groups of rows back into file order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["ByteColumn", "Constant", "Varints", "Joined", "Piece", "varints", "constant", "join",
           "concat", "take", "place", "from_bytes", "varint_lengths"]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ByteColumn:
    """``lengths[i]`` bytes per row, stored back to back in ``flat``."""

    flat: npt.NDArray[np.uint8]
    lengths: I64

    def offsets(self) -> I64:
        """Start of each row in ``flat``."""
        return _starts(self.lengths)

    def write(self, out: npt.NDArray[np.uint8], dest: I64) -> None:
        """Copy row ``i`` to ``out[dest[i]:]``."""
        total = int(self.lengths.sum())
        if total:
            idx = np.repeat(dest - self.offsets(), self.lengths)
            idx += np.arange(total, dtype=np.int64)
            out[idx] = self.flat


@dataclass(frozen=True)
class Constant:
    """``data`` on every present row (written straight into the joined output)."""

    data: bytes
    present: Bools
    lengths: I64

    def write(self, out: npt.NDArray[np.uint8], dest: I64) -> None:
        """Write ``data`` at ``out[dest[i]:]`` for each present row ``i``."""
        at = dest[self.present]
        if at.size and self.data:
            idx = at[:, None] + np.arange(len(self.data), dtype=np.int64)
            out[idx] = np.frombuffer(self.data, np.uint8)


@dataclass(frozen=True)
class Varints:
    """The varint encoding of each present value (absent rows are empty)."""

    values: U64
    lengths: I64

    def write(self, out: npt.NDArray[np.uint8], dest: I64) -> None:
        """Write each present row's varint at ``out[dest[i]:]``."""
        sel = np.flatnonzero(self.lengths)
        v = self.values[sel]
        d = dest[sel]
        size = self.lengths[sel]
        for k in range(10):
            if not sel.size:
                break
            byte = (v & np.uint64(0x7F)).astype(np.uint8)
            more = size > k + 1
            out[d + k] = byte | (more.astype(np.uint8) << np.uint8(7))
            v, d, size = v[more] >> np.uint64(7), d[more], size[more]
            sel = sel[more]


@dataclass(frozen=True)
class Joined:
    """Row ``i`` of every piece, joined in order; written only when the whole output is
    (:meth:`materialise`), so nested messages cost one copy."""

    pieces: tuple[Piece, ...]
    lengths: I64

    def write(self, out: npt.NDArray[np.uint8], dest: I64) -> None:
        """Write row ``i`` of each piece after the previous one, from ``out[dest[i]:]``."""
        at = dest.copy()
        for p in self.pieces:
            p.write(out, at)
            at += p.lengths

    def materialise(self) -> ByteColumn:
        """The joined rows as a :class:`ByteColumn`."""
        flat = np.empty(int(self.lengths.sum()), np.uint8)
        self.write(flat, _starts(self.lengths))
        return ByteColumn(flat, self.lengths)


Piece = ByteColumn | Constant | Varints | Joined


def varint_lengths(values: U64) -> I64:
    """Bytes of the varint encoding of each value."""
    lengths = np.ones(values.size, np.int64)
    top = int(values.max()) if values.size else 0
    for k in range(1, 10):
        if top >> (7 * k) == 0:
            break
        lengths += (values >> np.uint64(7 * k)) != 0
    return lengths


def varints(values: npt.NDArray[np.uint64], present: Bools) -> Varints:
    """The varint encoding of each present value (absent rows are empty)."""
    v = values.astype(np.uint64, copy=False)
    return Varints(v, np.where(present, varint_lengths(v), 0))


def constant(data: bytes, present: Bools) -> Constant:
    """``data`` on every present row."""
    return Constant(data, present, np.where(present, len(data), 0).astype(np.int64))


def join(pieces: list[Piece]) -> Joined:
    """Row ``i`` of the result is row ``i`` of every piece, joined in order (not yet
    written: see :class:`Joined`)."""
    lengths = np.sum([p.lengths for p in pieces], axis=0).astype(np.int64)
    return Joined(tuple(pieces), lengths)


def concat(pieces: list[Piece]) -> ByteColumn:
    """Row ``i`` of the result is row ``i`` of every piece, joined in order."""
    return join(pieces).materialise()


def _starts(lengths: I64) -> I64:
    out = np.zeros(lengths.size, np.int64)
    np.cumsum(lengths[:-1], out=out[1:])
    return out


def from_bytes(rows: list[bytes]) -> ByteColumn:
    """A column holding ``rows``."""
    lengths = np.fromiter(map(len, rows), np.int64, len(rows))
    return ByteColumn(np.frombuffer(b"".join(rows), np.uint8), lengths)


def take(column: ByteColumn, rows: I64) -> ByteColumn:
    """Row ``i`` of the result is row ``rows[i]`` of ``column`` (rows may repeat)."""
    lengths = column.lengths[rows]
    total = int(lengths.sum())
    idx = np.repeat(column.offsets()[rows] - _starts(lengths), lengths)
    idx += np.arange(total, dtype=np.int64)
    return ByteColumn(column.flat[idx], lengths)


def place(n: int, parts: list[tuple[I64, Piece]]) -> ByteColumn:
    """A column of ``n`` rows where rows ``rows`` come from ``piece`` for each
    ``(rows, piece)`` of ``parts`` (row sets disjoint); other rows are empty."""
    lengths = np.zeros(n, np.int64)
    for rows, piece in parts:
        lengths[rows] = piece.lengths
    out_off = _starts(lengths)
    flat = np.empty(int(lengths.sum()), np.uint8)
    for rows, piece in parts:
        piece.write(flat, out_off[rows])
    return ByteColumn(flat, lengths)
