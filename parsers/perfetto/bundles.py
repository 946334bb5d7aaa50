"""One ``FtraceEventBundle``: where its events are, its flags, descriptors and compact sched.

:func:`walk_bundles` splits each bundle into its ``FtraceEvent`` payloads (python-protobuf's
C parser does the splitting through a raw-bytes view of the bundle; a hand walker takes over
to name the offset when a bundle is damaged) without decoding them (that is done for a whole
batch of bundles by :mod:`parsers.perfetto.events`). The dense generic-event descriptors a bundle carries are
written *after* its events (``Bundler::WriteGenericEventDescriptors`` in traced_probes), so a
bundle is always walked completely before any of its events is decoded; the descriptors
are kept in a :class:`GenericDescriptors` cache for the bundles that follow.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from parsers.perfetto.protos import ProtoField, field_number, generic_event_fields
from parsers.perfetto.wire import LEN, VARINT, WireError, iter_fields, read_varint

__all__ = ["BundleRun", "GenericDescriptor", "GenericDescriptors", "walk_bundles",
           "CompactEvent", "compact_sched_events"]


@dataclass(frozen=True)
class GenericDescriptor:
    """A dense generic event: its ``FtraceEvent`` field id, name, group and fields."""

    field_id: int
    name: str
    group: str
    fields: tuple[ProtoField, ...]


@dataclass
class GenericDescriptors:
    """Descriptors seen so far in a trace, by field id (ids are only stable in one trace)."""

    by_id: dict[int, GenericDescriptor] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    raw_seen: set[bytes] = field(default_factory=set)

    def add(self, desc: GenericDescriptor) -> None:
        """Remember ``desc``; a different event under a known id replaces it (noted)."""
        old = self.by_id.get(desc.field_id)
        if old is not None and old != desc:
            self.conflicts.append(
                f"generic event id {desc.field_id} redefined from {old.group}/{old.name} "
                f"to {desc.group}/{desc.name}")
        self.by_id[desc.field_id] = desc

    def add_raw(self, data: bytes, start: int, end: int) -> None:
        """Decode and remember the descriptor at ``data[start:end]`` unless seen verbatim."""
        raw = bytes(data[start:end])
        if raw in self.raw_seen:
            return
        self.add(_descriptor(raw, 0, len(raw)))
        self.raw_seen.add(raw)


@dataclass
class BundleRun:
    """Bundles waiting to be decoded together, their bytes copied into :attr:`buf`.

    Positions index ``buf``. Per bundle: ``origin`` is the file offset of the bundle (for a
    bundle inflated from ``compressed_packets``: of the compressed payload, with ``inner`` its
    offset in the inflated bytes), and ``cycle`` numbers the read cycle it belongs to: a
    new cycle starts with a bundle whose CPU already has a bundle in the current cycle, or
    that has its ``lost_events`` flag set (traced_probes writes one bundle per CPU per read).
    """

    buf: bytearray = field(default_factory=bytearray)
    cpu: list[int | None] = field(default_factory=list)
    lost: list[bool] = field(default_factory=list)
    ftrace_ts: list[int | None] = field(default_factory=list)
    compact: list[tuple[int, int] | None] = field(default_factory=list)
    start: list[int] = field(default_factory=list)
    origin: list[int] = field(default_factory=list)
    inner: list[int | None] = field(default_factory=list)
    cycle: list[int] = field(default_factory=list)
    first_event: list[int] = field(default_factory=list)
    #: Events' payload spans in :attr:`buf` (int64 arrays: they go to NumPy in one copy).
    ev_start: array[int] = field(default_factory=lambda: array("q"))
    ev_end: array[int] = field(default_factory=lambda: array("q"))
    #: Bundles stored as their events' payloads only: the original bytes and span, to map a
    #: position back to the file (``None``: the bundle's bytes were copied whole).
    packed: list[tuple[bytes, int, int] | None] = field(default_factory=list)
    #: ``FtraceClock`` values the bundles name (shared with the runs split from this one).
    clocks: set[int] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.cpu)

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` bundles."""
        cut = self.first_event[n] if n < len(self.first_event) else len(self.ev_start)
        for name in ("cpu", "lost", "ftrace_ts", "compact", "start", "origin", "inner", "cycle",
                     "first_event", "packed"):
            del getattr(self, name)[n:]
        del self.ev_start[cut:], self.ev_end[cut:]

    def where(self, pos: int) -> tuple[int, int, int | None]:
        """The bundle holding ``buf[pos]``: its index, file offset and inflated offset."""
        i = max(bisect.bisect_right(self.start, pos) - 1, 0)
        rel = pos - self.start[i]
        packed = self.packed[i]
        if packed is not None:
            rel = _unpacked(packed, self, i, pos)
        inner = self.inner[i]
        if inner is None:
            return i, self.origin[i] + rel, None
        return i, self.origin[i], inner + rel

    def split_at(self, i: int) -> BundleRun:
        """Move bundles ``i`` and later into a new run (bundle ``i`` starts a read cycle)."""
        s = self.start[i]
        first = self.first_event[i]
        out = BundleRun(bytearray(self.buf[s:]), clocks=self.clocks)
        out.cpu, out.lost, out.ftrace_ts = self.cpu[i:], self.lost[i:], self.ftrace_ts[i:]
        out.compact = [None if c is None else (c[0] - s, c[1] - s) for c in self.compact[i:]]
        out.start = [x - s for x in self.start[i:]]
        out.origin, out.inner = self.origin[i:], self.inner[i:]
        out.packed = self.packed[i:]
        out.cycle = [c - self.cycle[i] for c in self.cycle[i:]]
        out.first_event = [x - first for x in self.first_event[i:]]
        out.ev_start = _shifted(self.ev_start[first:], -s)
        out.ev_end = _shifted(self.ev_end[first:], -s)
        self.truncate(i)
        del self.buf[s:]
        return out


def _shifted(values: array[int], by: int) -> array[int]:
    """``values`` (int64) plus ``by``."""
    return array("q", (np.frombuffer(values, np.int64) + by).tobytes())


@dataclass(frozen=True)
class _Tags:
    cpu: int
    event: int
    lost: int
    compact: int
    ftrace_ts: int
    descriptors: int
    clock: int

    @staticmethod
    @cache
    def load() -> _Tags:
        b = "FtraceEventBundle"
        return _Tags(field_number(b, "cpu"), field_number(b, "event"),
                   field_number(b, "lost_events"), field_number(b, "compact_sched"),
                   field_number(b, "ftrace_timestamp"),
                   field_number(b, "generic_event_descriptors"), field_number(b, "ftrace_clock"))


def walk_bundles(run: BundleRun, src: bytes, spans: list[tuple[int, int]],
                 where: Callable[[int], tuple[int, int | None]],
                 cache: GenericDescriptors) -> None:
    """Copy the bundles ``src[start:end]`` into ``run`` and record their event spans, flags
    and compact sched; their descriptors go into ``cache`` before any event is decoded.
    ``where(start)`` gives a bundle's file offset and inflated offset. Each bundle's read
    cycle is recorded in ``run.cycle`` (see :class:`BundleRun`).

    Raises:
        WireError: a bundle breaks the wire format (offset into ``src``).
    """
    tags = _Tags.load()
    event_tag = (tags.event << 3) | LEN
    for a, b in spans:
        if _packed_bundle(run, src, a, b, where(a), cache):
            _new_cycle(run)
            continue
        found: list[int] = []
        others: list[int] = []
        pos = _event_tags(src, a, b, event_tag, found, others)
        if pos != b:
            raise WireError(found[-1], f"{pos - found[-1] - 2} bytes of an FtraceEvent inside "
                                       "its bundle")
        fields = [next(iter_fields(src, p, b)) for p in others]
        for number, wire, value, at in fields:
            if number == tags.descriptors and wire == LEN:
                cache.add_raw(src, at, at + value)
        shift = len(run.buf) - a
        run.buf += src[a:b]
        run.packed.append(None)
        _append(run, tags, fields, found, shift, a + shift, where(a), src)
        _new_cycle(run)


@cache
def _bundle_class() -> Any:
    """A message class for ``FtraceEventBundle`` that keeps each event as raw bytes, so
    python-protobuf's C parser (upb) splits a bundle into its events."""
    b = "FtraceEventBundle"
    fdp = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="kvm_mmu_replay_raw_bundle.proto",
                                               package="kvm_mmu_replay_raw")
    msg = proto.message_type.add(name="RawBundle")
    for name, typ, label in (
        ("cpu", fdp.TYPE_UINT64, fdp.LABEL_OPTIONAL), ("event", fdp.TYPE_BYTES, fdp.LABEL_REPEATED),
        ("lost_events", fdp.TYPE_UINT64, fdp.LABEL_OPTIONAL),
        ("compact_sched", fdp.TYPE_BYTES, fdp.LABEL_OPTIONAL),
        ("ftrace_timestamp", fdp.TYPE_INT64, fdp.LABEL_OPTIONAL),
        ("ftrace_clock", fdp.TYPE_INT32, fdp.LABEL_OPTIONAL),
        ("generic_event_descriptors", fdp.TYPE_BYTES, fdp.LABEL_REPEATED),
    ):
        field_proto = msg.field.add(name=name, number=field_number(b, name), type=typ, label=label)
        if label == fdp.LABEL_OPTIONAL:
            field_proto.proto3_optional = True
            msg.oneof_decl.add(name=f"_{name}")
            field_proto.oneof_index = len(msg.oneof_decl) - 1
    proto.syntax = "proto3"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("kvm_mmu_replay_raw.RawBundle"))


def _packed_bundle(run: BundleRun, src: bytes, a: int, b: int, where: tuple[int, int | None],
                   cache: GenericDescriptors) -> bool:
    """Split the bundle with upb; store its events' payloads back to back in ``run.buf``.

    Returns False (nothing changed) when upb rejects the bytes: the caller then walks the
    bundle by hand, which names the offset of the damage.
    """
    try:
        msg = _bundle_class().FromString(src[a:b])
    except DecodeError:
        return False
    for raw in msg.generic_event_descriptors:
        cache.add_raw(raw, 0, len(raw))
    events = list(msg.event)
    lengths = np.fromiter(map(len, events), np.int64, len(events))
    base = len(run.buf)
    run.start.append(base)
    run.buf += b"".join(events)
    ends = base + np.cumsum(lengths)
    run.first_event.append(len(run.ev_start))
    run.ev_start.frombytes((ends - lengths).tobytes())
    run.ev_end.frombytes(ends.tobytes())
    compact = None
    if msg.HasField("compact_sched"):
        at = len(run.buf)
        run.buf += msg.compact_sched
        compact = (at, len(run.buf))
    run.cpu.append(msg.cpu if msg.HasField("cpu") else None)
    run.lost.append(bool(msg.lost_events))
    run.ftrace_ts.append(msg.ftrace_timestamp if msg.HasField("ftrace_timestamp") else None)
    if msg.HasField("ftrace_clock"):
        run.clocks.add(msg.ftrace_clock)
    run.compact.append(compact)
    run.origin.append(where[0])
    run.inner.append(where[1])
    run.packed.append((src, a, b))
    return True


def _unpacked(packed: tuple[bytes, int, int], run: BundleRun, i: int, pos: int) -> int:
    """Offset inside the original bundle of ``run.buf[pos]`` (a packed bundle's payloads)."""
    src, a, b = packed
    first = run.first_event[i]
    last = run.first_event[i + 1] if i + 1 < len(run) else len(run.ev_start)
    k = max(bisect.bisect_right(run.ev_start, pos, first, last) - 1, first)
    found: list[int] = []
    _event_tags(src, a, b, (_Tags.load().event << 3) | LEN, found, [])
    spans = sorted([_short_span(src, p) for p in found] + [
        (at, at + value) for number, wire, value, at in
        (next(iter_fields(src, p, b)) for p in _others(src, a, b))
        if number == _Tags.load().event and wire == LEN])
    start = spans[k - first][0] if k - first < len(spans) else a
    return start + (pos - run.ev_start[k]) - a


def _others(src: bytes, a: int, b: int) -> list[int]:
    others: list[int] = []
    _event_tags(src, a, b, (_Tags.load().event << 3) | LEN, [], others)
    return others


def _event_tags(src: bytes, pos: int, end: int, event_tag: int, found: list[int],
                others: list[int]) -> int:
    """Positions of the bundle's events with a 1-byte length (``found``) and of its other
    fields (``others``); returns where the walk stopped (``end`` unless damaged)."""
    try:
        while pos < end:
            if src[pos] == event_tag:
                length = src[pos + 1]
                if length < 0x80:
                    found.append(pos)
                    pos += 2 + length
                    continue
                high = src[pos + 2]
                if high < 0x80:
                    found.append(pos)
                    pos += 3 + ((length & 0x7F) | (high << 7))
                    continue
            others.append(pos)
            number, wire, value, at = next(iter_fields(src, pos, end))
            pos = at + value if wire == LEN else _after(src, pos, end)
    except IndexError:
        raise WireError(pos, "an FtraceEvent length inside the trace") from None
    return pos


def _short_span(src: bytes, p: int) -> tuple[int, int]:
    """Payload span of an event whose length takes one or two bytes."""
    low = src[p + 1]
    if low < 0x80:
        return p + 2, p + 2 + low
    return p + 3, p + 3 + ((low & 0x7F) | (src[p + 2] << 7))


def _after(data: bytes, pos: int, end: int) -> int:
    """Position after the (non length-delimited) field at ``pos``."""
    tag, p = read_varint(data, pos, end)
    if tag & 7 == VARINT:
        return read_varint(data, p, end)[1]
    return p + (8 if tag & 7 == 1 else 4)


def _append(run: BundleRun, tags: _Tags, fields: list[tuple[int, int, int, int]],
            found: list[int], shift: int, start: int, where: tuple[int, int | None],
            src: bytes) -> None:
    origin, inner = where
    cpu = lost = read_ts = compact = None
    long_events: list[tuple[int, int]] = []
    for number, wire, value, at in fields:
        if number == tags.event and wire == LEN:
            long_events.append((at, at + value))
        elif number == tags.cpu and wire == VARINT:
            cpu = value
        elif number == tags.lost and wire == VARINT:
            lost = bool(value) or bool(lost)
        elif number == tags.ftrace_ts and wire == VARINT:
            read_ts = value - (1 << 64) if value >= 1 << 63 else value
        elif number == tags.compact and wire == LEN:
            compact = (at + shift, at + value + shift)
        elif number == tags.clock and wire == VARINT:
            run.clocks.add(value)
    run.cpu.append(cpu)
    run.lost.append(bool(lost))
    run.ftrace_ts.append(read_ts)
    run.compact.append(compact)
    run.start.append(start)
    run.origin.append(origin)
    run.inner.append(inner)
    run.first_event.append(len(run.ev_start))
    if long_events:  # rare: keep file order of short and long events
        spans = sorted([_short_span(src, p) for p in found] + long_events)
        run.ev_start.extend(s + shift for s, _ in spans)
        run.ev_end.extend(e + shift for _, e in spans)
        return
    pos = np.array(found, np.int64)
    raw = np.frombuffer(src, np.uint8)
    low = raw[pos + 1].astype(np.int64) if pos.size else pos
    two = low >= 0x80
    high = raw[np.minimum(pos + 2, raw.size - 1)].astype(np.int64) if pos.size else pos
    starts = pos + 2 + two
    lengths = np.where(two, (low & 0x7F) | (high << 7), low)
    run.ev_start.frombytes((starts + shift).astype(np.int64).tobytes())
    run.ev_end.frombytes((starts + lengths + shift).astype(np.int64).tobytes())


def _new_cycle(run: BundleRun) -> bool:
    i = len(run) - 1
    cycle = run.cycle[-1] if run.cycle else 0
    fresh = i == 0 or run.lost[i]
    if not fresh:
        first = len(run.cycle) - 1
        while first > 0 and run.cycle[first - 1] == cycle:
            first -= 1
        fresh = run.cpu[i] in run.cpu[first:i]
    run.cycle.append(cycle + 1 if fresh and i else cycle)
    return fresh


def _descriptor(data: bytes, start: int, end: int) -> GenericDescriptor:
    field_id, group, raw = None, "", b""
    d = "FtraceEventBundle.GenericEventDescriptor"
    for number, wire, value, at in iter_fields(data, start, end):
        if number == field_number(d, "field_id") and wire == VARINT:
            field_id = value - (1 << 64) if value >= 1 << 63 else value
        elif number == field_number(d, "group_name") and wire == LEN:
            group = bytes(data[at:at + value]).decode("utf-8", "replace")
        elif number == field_number(d, "event_descriptor") and wire == LEN:
            raw = bytes(data[at:at + value])
    if field_id is None:
        raise WireError(start, "a GenericEventDescriptor with a field_id")
    try:
        name, fields = generic_event_fields(raw)
    except DecodeError as exc:
        raise WireError(start, f"a serialised DescriptorProto in the generic event descriptor "
                               f"of field id {field_id} ({exc})") from exc
    if not name:
        raise WireError(start, f"a named event in the descriptor of field id {field_id}")
    return GenericDescriptor(field_id, name, group, fields)


@dataclass(frozen=True)
class CompactEvent:
    """A ``sched_switch`` or ``sched_waking`` decoded from a bundle's compact sched arrays."""

    ts: int
    pid: int | None
    name: str
    args: str


def _repeated(data: bytes, start: int, end: int) -> tuple[dict[int, list[int]], list[str]]:
    """The repeated fields of a CompactSched message (packed or not) and its intern table."""
    ints: dict[int, list[int]] = {}
    strings: list[str] = []
    intern = field_number("FtraceEventBundle.CompactSched", "intern_table")
    for number, wire, value, at in iter_fields(data, start, end):
        if number == intern and wire == LEN:
            strings.append(bytes(data[at:at + value]).decode("utf-8", "replace"))
        elif wire == LEN:
            p, stop = at, at + value
            column = ints.setdefault(number, [])
            while p < stop:
                v, p = read_varint(data, p, stop)
                column.append(v)
        elif wire == VARINT:
            ints.setdefault(number, []).append(value)
    return ints, strings


def compact_sched_events(
    run: BundleRun, i: int, prev_pid: int | None
) -> tuple[list[CompactEvent], int | None]:
    """Decode the bundle's compact sched arrays into events (timestamps are delta-coded).

    ``prev_pid`` is the task running on this CPU before the bundle (the previous switch's
    ``next_pid``); returns the events and the task running after them.
    """
    span = run.compact[i]
    if span is None:
        return [], prev_pid
    c = "FtraceEventBundle.CompactSched"
    arr, intern = _repeated(bytes(run.buf[span[0]:span[1]]), 0, span[1] - span[0])

    def col(name: str) -> list[int]:
        return arr.get(field_number(c, name), [])
    out: list[CompactEvent] = []
    ts = 0
    for i, delta in enumerate(col("switch_timestamp")):
        ts += delta
        nxt = _s32(_at(col("switch_next_pid"), i))
        comm = _interned(intern, _at(col("switch_next_comm_index"), i))
        args = (f"prev_state={_s64(_at(col('switch_prev_state'), i))} next_comm={comm} "
                f"next_pid={nxt} next_prio={_s32(_at(col('switch_next_prio'), i))}")
        out.append(CompactEvent(ts, prev_pid, "sched_switch", args))
        prev_pid = nxt
    ts = 0
    for i, delta in enumerate(col("waking_timestamp")):
        ts += delta
        comm = _interned(intern, _at(col("waking_comm_index"), i))
        args = (f"comm={comm} pid={_s32(_at(col('waking_pid'), i))} "
                f"prio={_s32(_at(col('waking_prio'), i))} "
                f"target_cpu={_s32(_at(col('waking_target_cpu'), i))}")
        out.append(CompactEvent(ts, None, "sched_waking", args))
    out.sort(key=lambda e: e.ts)
    return out, prev_pid


def _at(values: list[int], i: int) -> int:
    return values[i] if i < len(values) else 0


def _interned(table: list[str], i: int) -> str:
    return table[i] if 0 <= i < len(table) else ""


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _s64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v
