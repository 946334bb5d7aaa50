"""Decode legacy generic events (``GenericFtraceEvent``) into per-name field columns.

The legacy encoding repeats the event name and every field name in each event::

    GenericFtraceEvent { event_name = 1; repeated Field field = 2; }
    Field { name = 1; oneof value { str_value = 3; int_value = 4; uint_value = 5; } }

In practice every event of a name carries the same fields, named and typed alike, in the
same order (the kernel's format fixes them). :func:`legacy_groups` takes that *template*
from the first event of each name and checks it for all the name's events at once, a field
at a time: a Field's tag, name and value tag compared as 8-byte words with NumPy, its value
read with the vectorised varint decoder straight into the column. Events are grouped by
name from the words that cover the names, without copying them. A name whose events do not
all match (a field missing or added, another order or type, a broken message) is decoded by
:func:`reference_groups`, the general decoder, which gives the same columns for matching
events; the two are compared in ``tests/parsers/test_perfetto_read_fast_paths.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from parsers.perfetto.columns import FieldColumn, column_of, gather_strings, to_text
from parsers.perfetto.protos import field_number
from parsers.perfetto.wire import (
    I64,
    LEN,
    U8,
    VARINT,
    WireError,
    decode_varints,
    iter_fields,
    scan,
    words,
)

__all__ = ["LegacyGroup", "legacy_groups", "reference_groups"]

_G: Final = "GenericFtraceEvent"
_F: Final = "GenericFtraceEvent.Field"

_ALL_ONES: Final = np.uint64(2**64 - 1)
#: Odd multipliers that mix a name's words into one key (any collision is detected).
_MIX: Final = tuple(np.uint64(m) for m in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F,
                                           0x165667B19E3779F9, 0xD6E8FEB86659FD93))


def _value_numbers() -> dict[str, tuple[int, int]]:
    """Column kind -> (Field number, wire type) of its value."""
    return {"string": (field_number(_F, "str_value"), LEN),
            "int": (field_number(_F, "int_value"), VARINT),
            "uint": (field_number(_F, "uint_value"), VARINT)}


@dataclass
class LegacyGroup:
    """The events of one name: ``local`` indexes the events given (ascending), ``cols`` one
    column per (field name, value kind) in first-seen order."""

    name: str
    local: I64
    cols: list[FieldColumn]


@dataclass(frozen=True)
class _TemplateField:
    name: str
    raw: bytes  # the name's UTF-8 bytes
    kind: str | None  # value kind, None: the Field has only its name

    @cached_property
    def head(self) -> U8:
        """The Field's bytes after its length that every event repeats: the name's tag,
        length and bytes, then the value's tag."""
        tail = b""
        if self.kind is not None:
            number, wire = _value_numbers()[self.kind]
            tail = bytes([(number << 3) | wire])
        name_tag = (field_number(_F, "name") << 3) | LEN
        return np.frombuffer(bytes([name_tag, len(self.raw)]) + self.raw + tail, np.uint8)

    @cached_property
    def words(self) -> list[tuple[int, np.uint64, np.uint64]]:
        """The whole Field but its (one-byte) length as 8-byte words: ``(offset, mask,
        expected)``, the last word overlapping the one before it."""
        tag = (field_number(_G, "field") << 3) | LEN
        pattern = bytes([tag, 0]) + self.head.tobytes()
        care = b"\xff\x00" + b"\xff" * self.head.size
        out = []
        for off in range(0, len(pattern), 8):
            o = max(min(off, len(pattern) - 8), 0)
            mask = int.from_bytes(care[o:o + 8], "little")
            out.append((o, np.uint64(mask),
                        np.uint64(int.from_bytes(pattern[o:o + 8], "little") & mask)))
        return out


def legacy_groups(buf: U8, start: I64, end: I64) -> tuple[list[LegacyGroup], I64]:
    """Group the events ``buf[start[i]:end[i]]`` by name and decode their fields.

    Returns the groups in order of each name's first event, and the events without a name.

    Raises:
        WireError: an event breaks the wire format (offset into ``buf``).
    """
    lead = _leading_names(buf, start, end)
    if lead is None:
        return reference_groups(buf, start, end)
    codes, after, name_start, name_len = lead
    small = codes.astype(np.int16) if codes.max() < 1 << 15 else codes  # radix sort
    by_code = np.argsort(small, kind="stable")
    bounds = np.searchsorted(codes[by_code], np.arange(int(codes.max()) + 2))
    try:
        names = [buf[name_start[i]:name_start[i] + name_len[i]].tobytes().decode("utf-8")
                 for i in by_code[bounds[:-1]].tolist()]
    except UnicodeDecodeError:
        return reference_groups(buf, start, end)
    fast: list[LegacyGroup] = []
    failed: list[I64] = []
    for code, name in enumerate(names):
        local = by_code[bounds[code]:bounds[code + 1]]
        cols = _template_columns(buf, after[local], end[local])
        if cols is None:
            failed.append(local)
        else:
            fast.append(LegacyGroup(name, local, cols))
    if not failed:
        return fast, np.zeros(0, np.int64)
    rest = np.sort(np.concatenate(failed))
    slow, unnamed = reference_groups(buf, start[rest], end[rest])
    if {g.name for g in slow} & {g.name for g in fast}:  # a repeated event_name renames
        return reference_groups(buf, start, end)
    groups = fast + [LegacyGroup(g.name, rest[g.local], g.cols) for g in slow]
    groups.sort(key=lambda g: int(g.local[0]))
    return groups, rest[unnamed]


def _leading_names(buf: U8, start: I64, end: I64) -> tuple[I64, I64, I64, I64] | None:
    """For events that all begin with an ``event_name``: a code per distinct name (in order
    of first use), where each event's name ends, starts and its length; None when some event
    does not begin with one."""
    tag = (field_number(_G, "event_name") << 3) | LEN
    if not start.size or (start >= end).any():
        return None
    if (buf[start] != tag).any():
        return None
    try:
        length, q = decode_varints(buf, start + 1, end)
    except WireError:
        return None
    n_bytes = length.astype(np.int64)
    after = q + n_bytes
    if (after > end).any():
        return None
    codes = _name_codes(buf, q, n_bytes)
    if codes is None:
        names = gather_strings(buf, q, length)
        codes = pc.dictionary_encode(names).indices.to_numpy(zero_copy_only=False)
    return codes.astype(np.int64), after, q, n_bytes


def _name_codes(buf: U8, q: I64, length: I64) -> I64 | None:
    """Codes of the names ``buf[q[i]:q[i]+length[i]]`` (equal names, equal codes; in order of
    first use) from the 8-byte words that cover names of up to 32 bytes, without copying
    them; None for longer names or names too close to the end of ``buf``."""
    view = words(buf)
    if not q.size or (length > 32).any() or (q >= view.size).any():
        return None
    tail = np.maximum(length - 8, 0)
    bits = (np.minimum(length, 8) * 8).astype(np.uint64)
    low = np.where(length >= 8, _ALL_ONES, (np.uint64(1) << np.minimum(bits, 63)) - 1)
    keys = [length.astype(np.uint64), view[q] & low]
    for k in (8, 16, tail):
        keys.append(np.where(length > 8, view[q + np.minimum(k, tail)], np.uint64(0)))
    mixed = keys[0]
    for key, odd in zip(keys[1:], _MIX, strict=True):
        mixed = mixed ^ (key * odd)
    codes = pc.dictionary_encode(pa.array(mixed)).indices.to_numpy(zero_copy_only=False)
    member = np.zeros(int(codes.max()) + 1, np.int64)
    member[codes] = np.arange(codes.size)  # some event of each code
    rep = member[codes]
    if not all(np.array_equal(key, key[rep]) for key in keys):
        return None  # two names mixed to the same word: let the exact path group them
    return np.asarray(codes, np.int64)


def _template(data: bytes) -> list[_TemplateField] | None:
    """The fields of one event after its name (``data``), or None if they do not make a template
    (something else than Fields, a Field not ``name`` then at most one value, a name
    repeated, longer than 127 bytes or not UTF-8)."""
    field_tag = field_number(_G, "field")
    name_no = field_number(_F, "name")
    kind_of = {v: k for k, v in _value_numbers().items()}
    out: list[_TemplateField] = []
    try:
        for number, wire, length, at in iter_fields(data, 0, len(data)):
            if number != field_tag or wire != LEN:
                return None
            inner = list(iter_fields(data, at, at + length))
            if not inner or inner[0][:2] != (name_no, LEN) or len(inner) > 2:
                return None
            _, _, nlen, nat = inner[0]
            raw = data[nat:nat + nlen]
            kind = None
            if len(inner) == 2:
                kind = kind_of.get(inner[1][:2])
                if kind is None:
                    return None
            out.append(_TemplateField(raw.decode("utf-8"), raw, kind))
    except (WireError, UnicodeDecodeError):
        return None
    if len({f.raw for f in out}) != len(out) or any(len(f.raw) > 127 for f in out):
        return None
    return out


def _template_columns(buf: U8, pos: I64, end: I64) -> list[FieldColumn] | None:
    """The columns of events that all follow the first one's template, else None."""
    template = _template(buf[int(pos[0]):int(end[0])].tobytes())
    if template is None:
        return None
    n = pos.size
    present = np.ones(n, bool)
    cols: list[FieldColumn] = []
    try:
        for f in template:
            col, pos = _template_field(buf, pos, end, f, present)
            if col is None:
                return None
            cols.append(col)
    except WireError:
        return None
    if not np.array_equal(pos, end):
        return None
    return cols


def _template_field(buf: U8, pos: I64, end: I64, f: _TemplateField, present: np.ndarray
                    ) -> tuple[FieldColumn | None, I64]:
    """Check one Field of the template at ``pos`` in every event; its column and the
    positions after it (None when an event differs)."""
    head = f.head
    if (pos + 2 >= end).any():
        return None, pos
    short = buf[pos + 1]
    if (short < 0x80).all() and _same_words(buf, pos, f.words):
        q = pos + 2
        fend = q + short
    else:
        if (buf[pos] != (field_number(_G, "field") << 3) | LEN).any():
            return None, pos
        length, q = decode_varints(buf, pos + 1, end)
        fend = q + length.astype(np.int64)
        if (fend > end).any() or (q + head.size > fend).any():
            return None, pos
        if not (buf[q[:, None] + np.arange(head.size)] == head).all():
            return None, pos
    v = q + head.size
    if (fend > end).any() or (v > fend).any():
        return None, pos
    if f.kind is None:
        if not np.array_equal(v, fend):
            return None, pos
        empty = pa.array(np.full(pos.size, b"", object), pa.large_binary())
        return FieldColumn(f.name, "string", present.copy(), strings=empty), fend
    value, after = decode_varints(buf, v, fend)
    if f.kind != "string":
        if not np.array_equal(after, fend):
            return None, pos
        return FieldColumn(f.name, f.kind, present.copy(), values=value), fend
    if not np.array_equal(after + value.astype(np.int64), fend):
        return None, pos
    return FieldColumn(f.name, f.kind, present.copy(),
                       strings=gather_strings(buf, after, value)), fend


def _same_words(buf: U8, pos: I64, chunks: list[tuple[int, np.uint64, np.uint64]]) -> bool:
    """Whether every ``pos`` starts the bytes ``chunks`` describe (False also when some
    word would run past ``buf``: the caller then compares byte by byte)."""
    view = words(buf)
    if not chunks or (pos + chunks[-1][0] >= view.size).any():
        return False
    return all(((view[pos + o] & mask) == expected).all() for o, mask, expected in chunks)


def reference_groups(buf: U8, start: I64, end: I64) -> tuple[list[LegacyGroup], I64]:
    """The general decoder: any field order, repeated or missing fields, several values.

    Raises:
        WireError: an event breaks the wire format (offset into ``buf``).
    """
    n = start.size
    sub = scan(buf, start, end)
    names, _ = column_of(sub, n, field_number(_G, "event_name"), "event_name", "string",
                         buf, LEN)
    fmask = (sub.number == field_number(_G, "field")) & (sub.wire == LEN)
    fspans = sub.select(fmask)
    fsub = scan(buf, fspans.start, fspans.start + fspans.value.astype(np.int64))
    m = fspans.owner.size
    fname, _ = column_of(fsub, m, field_number(_F, "name"), "name", "string", buf, LEN)
    values = {kind: column_of(fsub, m, number, "", kind, buf, wire)[0]
              for kind, (number, wire) in _value_numbers().items()}
    ev_names = _texts(names)
    field_names = _texts(fname)
    encoded = pc.dictionary_encode(ev_names)
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    groups = []
    for code, name in enumerate(encoded.dictionary.to_pylist()):
        local = np.flatnonzero(codes == code)
        groups.append(LegacyGroup(str(name), local,
                                  _legacy_columns(local, fspans.owner, field_names, values)))
    unnamed = np.flatnonzero(pc.is_null(ev_names).to_numpy(zero_copy_only=False))
    return groups, unnamed


def _texts(col: FieldColumn) -> pa.Array:
    assert col.strings is not None
    text, _ = to_text(col.strings)
    return pc.if_else(pa.array(col.present), text, pa.scalar(None, pa.string()))


def _legacy_columns(
    local: I64, field_owner: I64, field_names: pa.Array, values: dict[str, FieldColumn]
) -> list[FieldColumn]:
    """One column per (field name, value kind) of the events ``local``, in first-seen order."""
    n = local.size
    pos = np.full(int(field_owner.max(initial=-1)) + 2 + int(local.max(initial=0)), -1, np.int64)
    pos[local] = np.arange(n)
    fsel = np.flatnonzero(pos[field_owner] >= 0) if field_owner.size else field_owner
    cols: list[FieldColumn] = []
    if not fsel.size:
        return cols
    sel_names = field_names.take(pa.array(fsel))
    encoded = pc.dictionary_encode(sel_names)
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    for code, fname in enumerate(encoded.dictionary.to_pylist()):
        hits = fsel[codes == code]
        owners = pos[field_owner[hits]]
        any_kind = False
        for kind, vals in values.items():
            have = hits[vals.present[hits]]
            if not have.size:
                continue
            any_kind = True
            cols.append(_legacy_column(str(fname), kind, n, pos[field_owner[have]], vals, have))
        if not any_kind:
            cols.append(FieldColumn(str(fname), "string", np.isin(np.arange(n), owners),
                                    strings=pa.array([b"" if o else None for o in
                                                      np.isin(np.arange(n), owners)],
                                                     pa.large_binary())))
    return cols


def _legacy_column(
    name: str, kind: str, n: int, owners: I64, vals: FieldColumn, hits: I64
) -> FieldColumn:
    present = np.zeros(n, bool)
    present[owners] = True
    if vals.strings is not None:
        full: list[bytes | None] = [None] * n
        for o, s in zip(owners.tolist(), vals.strings.take(pa.array(hits)).to_pylist(),
                        strict=True):
            full[o] = s
        return FieldColumn(name, kind, present, strings=pa.array(full, pa.large_binary()))
    assert vals.values is not None
    values = np.zeros(n, np.uint64)
    values[owners] = vals.values[hits]
    return FieldColumn(name, kind, present, values=values)
