"""The protobuf wire format, decoded by hand: a scalar walker and a NumPy lockstep scanner.

Perfetto traces hold millions of small messages (one per ftrace event). Python protobuf
message objects cost microseconds each, so the hot path reads the wire format directly:
:func:`scan` walks *all* messages of a batch at once, one field per step ("lockstep"),
with NumPy doing the varint arithmetic for every message in the batch together (a varint
of up to 8 bytes is decoded from the 8 bytes at its position read as one integer). The
protos (:mod:`parsers.perfetto.protos`) only tell which field number means what.

Every bounds problem raises :class:`WireError` with the absolute byte offset and what was
expected there; a length never makes the scanner allocate more than the input it has.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["WireError", "Fields", "read_varint", "iter_fields", "scan", "as_signed", "zigzag",
           "decode_varints", "leading_varints", "words"]

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

VARINT: Final = 0
FIXED64: Final = 1
LEN: Final = 2
FIXED32: Final = 5
_WIRE_NAMES: Final = {0: "varint", 1: "fixed64", 2: "length-delimited", 5: "fixed32"}
_MAX_VARINT: Final = 10
_SHIFTS: Final = (np.arange(_MAX_VARINT, dtype=np.uint64) * np.uint64(7))


class WireError(Exception):
    """Bytes that break the protobuf wire format (internal; readers turn it into a
    :class:`~parsers.errors.TraceParseError`)."""

    def __init__(self, offset: int, expected: str) -> None:
        self.offset = offset
        self.expected = expected
        super().__init__(f"byte {offset}: expected {expected}")


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode one varint at ``pos`` (not past ``end``); returns (value, next position)."""
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise WireError(start, "a varint, found the end of the enclosing message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 7 * _MAX_VARINT:
            raise WireError(start, "a varint of at most 10 bytes")


def iter_fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(number, wire type, value, position)`` for each field of ``buf[pos:end]``.

    For varints and fixed fields ``value`` is the value; for length-delimited fields it is
    the length and ``position`` the start of the payload.
    """
    while pos < end:
        at = pos
        tag, pos = read_varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise WireError(at, "a field tag with a field number above 0")
        if wire == VARINT:
            value, pos = read_varint(buf, pos, end)
            yield number, wire, value, at
        elif wire == LEN:
            length, pos = read_varint(buf, pos, end)
            if length > end - pos:
                raise WireError(at, f"{length} payload bytes of field {number}, "
                                    f"but the enclosing message has {end - pos} left")
            yield number, wire, length, pos
            pos += length
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            if size > end - pos:
                raise WireError(at, f"{size} bytes of fixed field {number}")
            yield number, wire, int.from_bytes(buf[pos:pos + size], "little"), at
            pos += size
        else:
            raise WireError(at, f"a field tag with wire type 0, 1, 2 or 5 (got {wire})")


@dataclass
class Fields:
    """Fields of many messages, flattened: step by step (the first field of every message,
    then the second, ...), so a message's fields appear in order but not contiguously.

    ``value`` is the varint or fixed value, or for length-delimited fields the length, whose
    payload starts at ``start``.
    """

    owner: I64
    number: I64
    wire: I64
    value: U64
    start: I64

    def select(self, mask: npt.NDArray[np.bool_]) -> Fields:
        """The rows where ``mask`` holds."""
        return Fields(self.owner[mask], self.number[mask], self.wire[mask], self.value[mask],
                      self.start[mask])


_HIGH_BITS: Final = np.uint64(0x8080808080808080)
_LOW7: Final = np.uint64(0x7F7F7F7F7F7F7F7F)
#: Masks and shifts that pack the 7-bit groups of 8 little-endian bytes together.
_PACK: Final = ((np.uint64(0x007F007F007F007F), np.uint64(0x7F007F007F007F00), np.uint64(1)),
                (np.uint64(0x00003FFF00003FFF), np.uint64(0x3FFF00003FFF0000), np.uint64(2)),
                (np.uint64(0x000000000FFFFFFF), np.uint64(0x0FFFFFFF00000000), np.uint64(4)))


def words(buf: U8) -> U64:
    """The 8 bytes starting at each offset of ``buf`` as a little-endian uint64 (a view of
    ``buf.size - 7`` items: offsets whose 8 bytes are all inside ``buf``)."""
    view: U64 = np.ndarray((max(buf.size - 7, 0),), np.dtype("<u8"), buf, 0, (1,))
    return view


def _varints(buf: U8, pos: I64, end: I64) -> tuple[U64, I64]:
    """Decode one varint at each ``pos`` (vectorised); returns values and next positions.

    Varints of up to 8 bytes (all but huge or negative values) are decoded from the 8 bytes
    at their position read as one integer; the rest, and those that run past their message,
    byte by byte (:func:`_varints_bytewise`, which names the error).
    """
    if not pos.size:
        return np.zeros(0, np.uint64), pos
    _check_room(pos, end)
    first = buf[pos]
    if (first < 0x80).all():  # lengths and small values: one byte each
        return first.astype(np.uint64), pos + 1
    view = words(buf)
    inside = pos < view.size
    if not inside.all():
        return _varints_bytewise(buf, pos, end)
    w = view[pos]
    stop = ~w & _HIGH_BITS  # the high bit of each byte that ends a varint
    last = stop & (np.uint64(0) - stop)  # the first of them
    length = (np.bitwise_count(last - np.uint64(1)) + np.uint8(1)).astype(np.int64) >> 3
    nxt = pos + length
    odd = (stop == 0) | (nxt > end)
    x = w & ((last << np.uint64(1)) - np.uint64(1)) & _LOW7
    for keep, move, shift in _PACK:
        x = (x & keep) | ((x & move) >> shift)
    if odd.any():
        rows = np.flatnonzero(odd)
        x[rows], nxt[rows] = _varints_bytewise(buf, pos[rows], end[rows])
    return x, nxt


def _check_room(pos: I64, end: I64) -> None:
    """Every varint starts before the end of its message."""
    if (pos >= end).any():
        at = int(pos[pos >= end].min())
        raise WireError(at, "a varint, found the end of the enclosing message")


def _varints_bytewise(buf: U8, pos: I64, end: I64) -> tuple[U64, I64]:
    """Decode one varint at each ``pos`` byte by byte over the varints still running;
    errors name the lowest offset among those failing at the earliest byte step."""
    if not pos.size:
        return np.zeros(0, np.uint64), pos
    _check_room(pos, end)
    b = buf[pos]
    values = (b & 0x7F).astype(np.uint64)
    nxt = pos + 1
    idx = np.flatnonzero(b >= 0x80)
    shift = 7
    while idx.size:
        if shift >= 7 * _MAX_VARINT:
            raise WireError(int(pos[idx].min()), "a varint of at most 10 bytes")
        p = nxt[idx]
        over = p >= end[idx]
        if over.any():
            raise WireError(int(pos[idx][over].min()),
                            "a varint that ends inside the enclosing message")
        b = buf[p]
        values[idx] |= (b & 0x7F).astype(np.uint64) << np.uint64(shift)
        nxt[idx] = p + 1
        idx = idx[b >= 0x80]
        shift += 7
    return values, nxt


def decode_varints(buf: U8, pos: I64, end: I64) -> tuple[U64, I64]:
    """Public name of the vectorised varint decoder (see :func:`_varints`)."""
    return _varints(buf, pos, end)


def _fixed(buf: U8, pos: I64, size: int) -> U64:
    idx = pos[:, None] + np.arange(size, dtype=np.int64)
    raw = buf[idx].astype(np.uint64)
    shifted = raw << (np.arange(size, dtype=np.uint64) * np.uint64(8))
    out: U64 = np.bitwise_or.reduce(shifted, axis=1)
    return out


def scan(buf: U8, starts: I64, ends: I64) -> Fields:
    """Decode the top-level fields of every message ``buf[starts[i]:ends[i]]`` at once.

    Raises:
        WireError: at the lowest offset where any message breaks the wire format.
    """
    pos = starts.astype(np.int64, copy=True)
    ends = ends.astype(np.int64, copy=False)
    active = np.flatnonzero(pos < ends)
    parts: list[tuple[I64, I64, I64, U64, I64]] = []
    while active.size:
        p, e = pos[active], ends[active]
        tag, p = _varints(buf, p, e)
        number = (tag >> np.uint64(3)).astype(np.int64)
        wire = (tag & np.uint64(7)).astype(np.int64)
        value = np.zeros(p.size, np.uint64)
        start = p.copy()
        _check_tags(pos[active], number, wire)
        p = _field_values(buf, p, e, wire, number, value, start, pos[active])
        parts.append((active, number, wire, value, start))
        pos[active] = p
        active = active[p < e]
    if not parts:
        z = np.zeros(0, np.int64)
        return Fields(z, z, z, np.zeros(0, np.uint64), z)
    cols = [np.concatenate([part[k] for part in parts]) for k in range(5)]
    return Fields(cols[0], cols[1], cols[2], cols[3], cols[4])


def _check_tags(at: I64, number: I64, wire: I64) -> None:
    bad = (number == 0) | (wire == 3) | (wire == 4) | (wire > 5)
    if bad.any():
        i = int(np.flatnonzero(bad)[np.argmin(at[bad])])
        raise WireError(int(at[i]), "a field tag with a field number above 0 and wire type "
                                    f"0, 1, 2 or 5 (got field {int(number[i])}, "
                                    f"wire type {int(wire[i])})")


def _field_values(
    buf: U8, p: I64, e: I64, wire: I64, number: I64, value: U64, start: I64, at: I64
) -> I64:
    """Fill ``value``/``start`` for each field by wire type; returns the next positions."""
    is_varint = wire == VARINT
    if is_varint.all():  # the common step inside generic payloads
        value[:], p = _varints(buf, p, e)
        return p
    p = p.copy()
    m = np.flatnonzero(is_varint)
    if m.size:
        value[m], p[m] = _varints(buf, p[m], e[m])
    m = np.flatnonzero(wire == LEN)
    if m.size:
        length, q = _varints(buf, p[m], e[m])
        over = length > (e[m] - q).astype(np.uint64)
        if over.any():
            i = int(np.flatnonzero(over)[np.argmin(at[m][over])])
            raise WireError(int(at[m][i]), f"{int(length[i])} payload bytes of field "
                                           f"{int(number[m][i])}, but the enclosing message "
                                           f"has {int(e[m][i] - q[i])} left")
        value[m], start[m], p[m] = length, q, q + length.astype(np.int64)
    for wt, size in ((FIXED64, 8), (FIXED32, 4)):
        m = np.flatnonzero(wire == wt)
        if not m.size:
            continue
        short = p[m] + size > e[m]
        if short.any():
            raise WireError(int(at[m][short].min()), f"{size} bytes of a fixed field")
        value[m], start[m], p[m] = _fixed(buf, p[m], size), p[m], p[m] + size
    return p


def as_signed(values: U64) -> npt.NDArray[np.int64]:
    """Reinterpret varint values of ``int32``/``int64`` fields (two's complement)."""
    return values.view(np.int64)


def zigzag(values: U64) -> npt.NDArray[np.int64]:
    """Decode ``sint32``/``sint64`` varint values."""
    v = values.view(np.int64)
    return (values >> np.uint64(1)).view(np.int64) ^ -(v & 1)


def leading_varints(buf: U8, starts: I64, ends: I64, tags: list[int]
                    ) -> tuple[list[U64], npt.NDArray[np.bool_], I64]:
    """Fast path for messages that begin with the varint fields ``tags`` (1-byte tags), in
    that order: their values, which messages matched, and where each match stopped.

    Messages that do not match (a field missing, reordered, of another wire type, or a
    varint running past the end) are only flagged; the caller decodes them with :func:`scan`.
    """
    n = starts.size
    ok = starts < ends
    pos = starts.copy()
    values: list[U64] = []
    last = buf.size - 1
    for tag in tags:
        if ok.all() and (pos + 1 < ends).all() and (buf[np.minimum(pos, last)] == tag).all():
            try:  # every message has the field: no subsets
                value, pos = _varints(buf, pos + 1, ends)
            except WireError:
                return [np.zeros(n, np.uint64) for _ in tags], np.zeros(n, bool), starts
            values.append(value)
            continue
        live = np.flatnonzero(ok)
        hit = buf[np.minimum(pos[live], buf.size - 1)] == tag
        ok[live[~hit]] = False
        live = live[hit]
        p = pos[live] + 1
        room = p < ends[live]
        ok[live[~room]] = False
        live = live[room]
        col = np.zeros(n, np.uint64)
        try:
            col[live], pos[live] = _varints(buf, p[room], ends[live])
        except WireError:
            return [np.zeros(n, np.uint64) for _ in tags], np.zeros(n, bool), starts
        values.append(col)
    return values, ok, pos
