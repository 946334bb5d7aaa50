"""Turn scanned protobuf field values into Arrow columns: typed fields and ``args`` text.

A :class:`FieldColumn` holds one proto field over a group of events (raw varint/fixed values
or string spans plus a presence mask). :func:`typed_array` casts it to a typed-table column
(out-of-range values become null and are counted, never wrapped); :func:`render_args` joins
the fields as ``name=value`` pairs separated by single spaces, in proto field order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from parsers.perfetto.wire import U8, U64, Fields, as_signed, zigzag

__all__ = ["FieldColumn", "gather_strings", "column_of", "typed_array", "render_args", "to_text"]

_TEXT_KINDS = frozenset({"string", "bytes"})


@dataclass
class FieldColumn:
    """One proto field across ``n`` events: ``values`` (varint/fixed kinds) or ``strings``."""

    name: str
    kind: str
    present: npt.NDArray[np.bool_]
    values: U64 | None = None
    strings: pa.Array | None = None

    def signed(self) -> npt.NDArray[np.int64]:
        """Values as signed 64-bit integers, decoded according to :attr:`kind`."""
        assert self.values is not None
        if self.kind == "sint":
            return zigzag(self.values)
        return as_signed(self.values)


def gather_strings(buf: U8, start: npt.NDArray[np.int64], length: U64) -> pa.Array:
    """The byte spans ``buf[start[i]:start[i]+length[i]]`` as an Arrow binary array."""
    n = start.size
    lengths = length.astype(np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    idx = np.repeat(start - offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
    data = buf[idx].tobytes()
    return pa.Array.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)])


def to_text(binary: pa.Array) -> tuple[pa.Array, int]:
    """Binary spans as UTF-8 strings; invalid UTF-8 is replaced (count returned)."""
    try:
        return binary.cast(pa.large_string()).cast(pa.string()), 0
    except pa.ArrowInvalid:
        values = [None if b is None else b.decode("utf-8", "replace") for b in binary.to_pylist()]
        bad = sum(1 for b in binary.to_pylist() if b is not None and _invalid_utf8(b))
        return pa.array(values, pa.string()), bad


def _invalid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def column_of(
    fields: Fields, n: int, number: int, name: str, kind: str, buf: U8, wire_ok: int
) -> tuple[FieldColumn, int]:
    """Collect field ``number`` (wire type ``wire_ok``) of ``n`` messages into a column.

    Returns the column and how many occurrences had the wrong wire type (ignored).
    """
    rows = np.flatnonzero(fields.number == number)
    wrong = rows[fields.wire[rows] != wire_ok]
    rows = rows[fields.wire[rows] == wire_ok]
    present = np.zeros(n, bool)
    owner = fields.owner[rows]
    present[owner] = True
    if kind in _TEXT_KINDS:
        last = np.zeros(n, np.int64) - 1
        last[owner] = np.arange(owner.size)  # the last occurrence wins
        have = last >= 0
        picked = rows[last[have]]
        spans = gather_strings(buf, fields.start[picked], fields.value[picked])
        if have.all():
            return FieldColumn(name, kind, present, strings=spans), int(wrong.size)
        if not have.any():
            return FieldColumn(name, kind, present, strings=pa.nulls(n, pa.large_binary())), int(
                wrong.size)
        idx = np.cumsum(have) - 1
        full = spans.take(pa.array(np.where(have, idx, 0)))
        full = pc.if_else(pa.array(have), full, pa.scalar(None, pa.large_binary()))
        return FieldColumn(name, kind, present, strings=full), int(wrong.size)
    values = np.zeros(n, np.uint64)
    values[owner] = fields.value[rows]
    return FieldColumn(name, kind, present, values=values), int(wrong.size)


_UNSIGNED_MAX = {
    pa.uint8(): 0xFF, pa.uint16(): 0xFFFF, pa.uint32(): 0xFFFFFFFF, pa.uint64(): 2**64 - 1,
}
_SIGNED_RANGE = {
    pa.int8(): (-(2**7), 2**7 - 1), pa.int16(): (-(2**15), 2**15 - 1),
    pa.int32(): (-(2**31), 2**31 - 1), pa.int64(): (-(2**63), 2**63 - 1),
}


def typed_array(col: FieldColumn, target: pa.DataType) -> tuple[pa.Array, int]:
    """``col`` as an array of ``target``; returns it and how many values did not fit (null)."""
    n = col.present.size
    if col.values is None:
        return pa.nulls(n, target), int(col.present.sum())
    ok = col.present.copy()
    if target == pa.bool_():
        return pa.array(col.values != 0, pa.bool_(), mask=~ok), 0
    if target in _UNSIGNED_MAX:
        if col.kind in ("int", "sint"):
            signed = col.signed()
            ok &= signed >= 0
            values = signed.astype(np.uint64)
        else:
            values = col.values
        ok &= values <= np.uint64(_UNSIGNED_MAX[target])
        arr = pa.array(np.where(ok, values, 0).astype(target.to_pandas_dtype()), mask=~ok)
        return arr, int(col.present.sum() - ok.sum())
    lo, hi = _SIGNED_RANGE.get(target, (-(2**63), 2**63 - 1))
    if col.kind in ("int", "sint"):
        signed = col.signed()
    else:
        ok &= col.values <= np.uint64(2**63 - 1)
        signed = col.values.view(np.int64)
    ok &= (signed >= lo) & (signed <= hi)
    arr = pa.array(np.where(ok, signed, 0).astype(target.to_pandas_dtype()), mask=~ok)
    return arr, int(col.present.sum() - ok.sum())


def _text_of(col: FieldColumn) -> tuple[pa.Array, int]:
    """The column rendered as text (null where absent); returns the bad-UTF-8 count."""
    mask = ~col.present
    if col.strings is not None:
        if col.kind == "bytes":
            return pa.array([None if b is None else b.hex() for b in col.strings.to_pylist()],
                            pa.string()), 0
        return to_text(col.strings)
    assert col.values is not None
    if col.kind in ("int", "sint", "sfixed32", "sfixed64"):
        nums: npt.NDArray[np.generic] = col.signed()
    elif col.kind == "double":
        nums = col.values.view(np.float64)
    elif col.kind == "float":
        nums = col.values.astype(np.uint32).view(np.float32)
    else:
        nums = col.values
    return pa.array(nums, mask=mask).cast(pa.string()), 0


def render_args(cols: Sequence[FieldColumn], n: int) -> tuple[pa.Array, int]:
    """``name=value`` pairs of the present fields, space-separated, in the given order."""
    if not cols:
        return pa.array(np.full(n, "", dtype=object), pa.string()), 0
    pieces: list[pa.Array] = []
    bad = 0
    for col in cols:
        text, b = _text_of(col)
        bad += b
        pieces.append(pc.binary_join_element_wise(pa.scalar(f"{col.name}="), text, ""))
    acc = pieces[0]
    for piece in pieces[1:]:
        both = pc.binary_join_element_wise(acc, piece, " ")
        acc = pc.coalesce(both, acc, piece)
    return pc.fill_null(acc, "").cast(pa.string()), bad
