"""Decode the ``FtraceEvent`` s of a batch of bundles into per-event columns and groups.

Every event is ``FtraceEvent { timestamp = 1; pid = 2; oneof event { ... } }``. The oneof
field number says which event it is:

* a compiled event (``sched_switch``, ``kvm_entry``, ...): its fields come from the bundled
  ``FtraceEvent`` descriptor;
* ``generic`` (field 327, ``GenericFtraceEvent``): the legacy self-describing form, where
  each event repeats its name and every field name;
* 65536 and up: the dense form, described by the trace's ``generic_event_descriptors``
  (looked up by id in :class:`~parsers.perfetto.bundles.GenericDescriptors`).

Events of the same kind are decoded together with :func:`parsers.perfetto.wire.scan`
(compiled and dense events whose payload holds every field in order: with
:func:`~parsers.perfetto.wire.leading_varints`); legacy events by the template of each name
(:mod:`parsers.perfetto.legacy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from parsers.perfetto.bundles import BundleRun, GenericDescriptors
from parsers.perfetto.columns import FieldColumn, column_of, render_args, typed_array
from parsers.perfetto.legacy import legacy_groups
from parsers.perfetto.protos import (
    GENERIC_FIRST_ID,
    VARINT_KINDS,
    ProtoField,
    catalog,
    field_number,
)
from parsers.perfetto.wire import (
    FIXED32,
    FIXED64,
    I64,
    LEN,
    U8,
    U64,
    VARINT,
    WireError,
    decode_varints,
    leading_varints,
    scan,
)
from parsers.schema import EVENT_FIELDS, LOST_EVENTS, typed_schema

__all__ = ["EventGroup", "DecodedEvents", "decode_bundles"]

_WIRE_OF_KIND = {"string": LEN, "bytes": LEN, "message": LEN, "double": FIXED64,
                 "fixed64": FIXED64, "sfixed64": FIXED64, "float": FIXED32,
                 "fixed32": FIXED32, "sfixed32": FIXED32}


@dataclass
class EventGroup:
    """Events of one name within a batch: their rows, typed columns and ``args`` text."""

    name: str
    rows: I64
    typed: dict[str, pa.Array] | None
    args: pa.Array | None
    compiled: bool


@dataclass
class DecodedEvents:
    """The events of a batch of bundles, in file order."""

    ts: I64
    pid: I64
    pid_ok: npt.NDArray[np.bool_]
    bundle: I64
    groups: list[EventGroup] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    dropped: npt.NDArray[np.bool_] | None = None

    def skip(self, reason: str, count: int) -> None:
        """Count ``count`` inputs not turned into rows."""
        if count:
            self.skipped[reason] = self.skipped.get(reason, 0) + count


@dataclass
class _Headers:
    """Per event: timestamp, pid, and the span and field number of its event payload."""

    ts: I64
    ts_ok: npt.NDArray[np.bool_]
    pid: I64
    pid_ok: npt.NDArray[np.bool_]
    kind: I64
    pstart: I64
    plen: I64

    @classmethod
    def empty(cls, n: int) -> _Headers:
        z = np.zeros(n, np.int64)
        return cls(z.copy(), np.zeros(n, bool), z.copy(), np.zeros(n, bool),
                   np.full(n, -1, np.int64), z.copy(), z.copy())


def decode_bundles(run: BundleRun, cache: GenericDescriptors) -> DecodedEvents:
    """Decode every event of the bundles in ``run``.

    Raises:
        WireError: offsets are positions in ``run.buf``.
    """
    buf = np.frombuffer(run.buf, np.uint8)
    starts = np.frombuffer(run.ev_start, np.int64).copy()  # a copy: the run may be cut later
    ends = np.frombuffer(run.ev_end, np.int64).copy()
    counts = np.diff(np.array([*run.first_event, len(run.ev_start)], np.int64)).astype(np.int64)
    owner = np.repeat(np.arange(len(run), dtype=np.int64), counts)
    h = _Headers.empty(starts.size)
    slow = _fast_headers(buf, starts, ends, h)
    if slow.size:
        _slow_headers(buf, starts[slow], ends[slow], slow, h)
    out = DecodedEvents(h.ts, h.pid, h.pid_ok, owner)
    out.dropped = ~h.ts_ok
    out.skip("ftrace event without a timestamp", int(out.dropped.sum()))
    no_payload = (h.kind == -1) & ~out.dropped
    out.skip("ftrace event without an event payload", int(no_payload.sum()))
    out.dropped |= no_payload
    kinds = h.kind
    for kind in np.unique(kinds[~out.dropped]).tolist():
        rows = np.flatnonzero((kinds == kind) & ~out.dropped)
        _decode_kind(int(kind), rows, buf, h.pstart[rows], h.pstart[rows] + h.plen[rows],
                     cache, out)
    return out


def _scalar_numbers() -> tuple[int, int, set[int]]:
    ev = "FtraceEvent"
    ts_no, pid_no = field_number(ev, "timestamp"), field_number(ev, "pid")
    return ts_no, pid_no, {ts_no, pid_no, field_number(ev, "common_flags")}


def _fast_headers(buf: U8, starts: I64, ends: I64, h: _Headers) -> I64:
    """Events laid out as ``timestamp, pid, payload`` (what traced_probes writes); returns
    the indices of the others."""
    ts_no, pid_no, scalars = _scalar_numbers()
    (ts, pid), ok, pos = leading_varints(buf, starts, ends, [ts_no << 3, pid_no << 3])
    live = np.flatnonzero(ok)
    try:
        tag, q = _varints_checked(buf, pos[live], ends[live])
        wire, number = (tag & np.uint64(7)).astype(np.int64), (tag >> np.uint64(3)).astype(np.int64)
        good = (wire == LEN) & ~np.isin(number, list(scalars))
        live, q, number = live[good], q[good], number[good]
        length, q = _varints_checked(buf, q, ends[live])
    except WireError:
        return np.arange(starts.size, dtype=np.int64)
    exact = q + length.astype(np.int64) == ends[live]
    rows = live[exact]
    h.ts[rows], h.ts_ok[rows] = ts[rows].view(np.int64), True
    h.pid[rows], h.pid_ok[rows] = pid[rows].astype(np.int64), True
    h.kind[rows], h.pstart[rows] = number[exact], q[exact]
    h.plen[rows] = length[exact].astype(np.int64)
    done = np.zeros(starts.size, bool)
    done[rows] = True
    return np.flatnonzero(~done)


def _varints_checked(buf: U8, pos: I64, end: I64) -> tuple[U64, I64]:
    return decode_varints(buf, pos, end) if pos.size else (np.zeros(0, np.uint64), pos)


def _slow_headers(buf: U8, starts: I64, ends: I64, rows: I64, h: _Headers) -> None:
    """Any field order: a full scan of the events ``rows``."""
    ts_no, pid_no, scalars = _scalar_numbers()
    n = starts.size
    fields = scan(buf, starts, ends)
    ts_col, _ = column_of(fields, n, ts_no, "ts", "uint", buf, VARINT)
    pid_col, _ = column_of(fields, n, pid_no, "pid", "uint", buf, VARINT)
    assert ts_col.values is not None and pid_col.values is not None
    h.ts[rows], h.ts_ok[rows] = ts_col.values.view(np.int64), ts_col.present
    h.pid[rows], h.pid_ok[rows] = pid_col.values.astype(np.int64), pid_col.present
    payload = (fields.wire == LEN) & ~np.isin(fields.number, list(scalars))
    pf = fields.select(payload)
    first = _first_per_owner(pf.owner)
    h.kind[rows[pf.owner[first]]] = pf.number[first]
    h.pstart[rows[pf.owner[first]]] = pf.start[first]
    h.plen[rows[pf.owner[first]]] = pf.value[first].astype(np.int64)


def _first_per_owner(owner: I64) -> I64:
    """Row of each owner's first field (rows come step by step, see :class:`Fields`)."""
    if not owner.size:
        return owner
    _, first = np.unique(owner, return_index=True)
    return first


def _decode_kind(
    kind: int, rows: I64, buf: U8, start: I64, end: I64, cache: GenericDescriptors,
    out: DecodedEvents,
) -> None:
    cat = catalog()
    if kind == cat.generic_legacy_id:
        _decode_legacy(rows, buf, start, end, out)
        return
    compiled = cat.compiled.get(kind)
    if compiled is not None:
        name, protofields = compiled.name, compiled.fields
    elif kind >= GENERIC_FIRST_ID and kind in cache.by_id:
        desc = cache.by_id[kind]
        name, protofields = desc.name, desc.fields
    else:
        what = "dense generic event id" if kind >= GENERIC_FIRST_ID else "FtraceEvent field"
        out.skip(f"{what} {kind} with no descriptor", rows.size)
        assert out.dropped is not None
        out.dropped[rows] = True
        return
    cols = _columns_of_kind(name, protofields, buf, start, end, out)
    out.groups.append(_group(name, rows, cols, compiled is not None, out))


def _columns_of_kind(name: str, protofields: tuple[ProtoField, ...], buf: U8, start: I64,
                     end: I64, out: DecodedEvents) -> list[FieldColumn]:
    """One column per declared field: a fast path for payloads holding every (varint) field
    in field-number order, a full scan for the rest."""
    n = start.size
    order = sorted(protofields, key=lambda f: f.number)
    fast = np.zeros(n, bool)
    values: list[U64] = []
    if order and all(f.kind in VARINT_KINDS and f.number < 16 for f in order):
        values, ok, pos = leading_varints(buf, start, end, [f.number << 3 for f in order])
        fast = ok & (pos == end)
    slow = np.flatnonzero(~fast)
    slow_cols: dict[str, FieldColumn] = {}
    if slow.size:
        sub = scan(buf, start[slow], end[slow])
        known = np.isin(sub.number, [f.number for f in protofields])
        out.skip(f"{name}: proto fields not in its descriptor", int((~known).sum()))
        for f in protofields:
            col, wrong = column_of(sub, slow.size, f.number, f.name, f.kind, buf,
                                   _WIRE_OF_KIND.get(f.kind, VARINT))
            out.skip(f"{name}.{f.name}: wrong wire type", wrong)
            slow_cols[f.name] = col
    if not fast.any():
        return [slow_cols[f.name] for f in protofields]
    by_name = {f.name: v for f, v in zip(order, values, strict=True)}
    cols = []
    for f in protofields:
        present = fast.copy()
        vals = np.where(fast, by_name[f.name], np.uint64(0)).astype(np.uint64)
        if slow.size:
            sc = slow_cols[f.name]
            assert sc.values is not None
            present[slow] = sc.present
            vals[slow] = sc.values
        cols.append(FieldColumn(f.name, f.kind, present, values=vals))
    return cols


def _group(
    name: str, rows: I64, cols: list[FieldColumn], compiled: bool, out: DecodedEvents
) -> EventGroup:
    """Typed columns for events with a typed table, ``args`` text for the rest."""
    n = rows.size
    if name not in EVENT_FIELDS or name == LOST_EVENTS:
        args, bad = render_args(cols, n)
        out.skip(f"{name}: invalid UTF-8 replaced", bad)
        return EventGroup(name, rows, None, args, compiled)
    declared = {f.name: f.type for f in typed_schema(name)}
    for prefix in ("seq", "ts", "cpu", "pid"):
        declared.pop(prefix)
    typed: dict[str, pa.Array] = {}
    extra: list[FieldColumn] = []
    for col in cols:
        target = declared.get(col.name)
        if target is None:
            extra.append(col)
            continue
        arr, unfit = typed_array(col, target)
        out.skip(f"{name}.{col.name}: value out of range for {target}", unfit)
        typed[col.name] = arr if col.name not in typed else pc.coalesce(typed[col.name], arr)
    args = None
    if any(c.present.any() for c in extra):
        text, _ = render_args([c for c in extra if c.present.any()], n)
        args = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    return EventGroup(name, rows, typed, args, compiled)


def _decode_legacy(rows: I64, buf: U8, start: I64, end: I64, out: DecodedEvents) -> None:
    """``GenericFtraceEvent { event_name = 1; repeated Field field = 2; }`` events, grouped
    by name (see :mod:`parsers.perfetto.legacy`)."""
    groups, unnamed = legacy_groups(buf, start, end)
    for g in groups:
        out.groups.append(_group(g.name, rows[g.local], g.cols, False, out))
    if unnamed.size:
        out.skip("generic event without event_name", unnamed.size)
        assert out.dropped is not None
        out.dropped[rows[unnamed]] = True
