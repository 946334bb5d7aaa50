"""One ``FtraceEventBundle``: where its events are, its flags, descriptors and compact sched.

:func:`walk_bundle` reads a bundle's top-level fields in one pass and records the byte span
of every ``FtraceEvent`` without decoding it (that is done for a whole batch of bundles by
:mod:`parsers.perfetto_events`). The dense generic-event descriptors a bundle carries are
written *after* its events (``Bundler::WriteGenericEventDescriptors`` in traced_probes), so a
bundle is always walked completely before any of its events is decoded; the descriptors
are kept in a :class:`GenericDescriptors` cache for the bundles that follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from parsers.perfetto_protos import ProtoField, field_number, generic_event_fields
from parsers.perfetto_wire import LEN, VARINT, WireError, iter_fields, read_varint

__all__ = ["Bundle", "GenericDescriptor", "GenericDescriptors", "walk_bundle",
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

    def add(self, desc: GenericDescriptor) -> None:
        """Remember ``desc``; a different event under a known id replaces it (noted)."""
        old = self.by_id.get(desc.field_id)
        if old is not None and old != desc:
            self.conflicts.append(
                f"generic event id {desc.field_id} redefined from {old.group}/{old.name} "
                f"to {desc.group}/{desc.name}")
        self.by_id[desc.field_id] = desc


@dataclass
class Bundle:
    """A walked bundle: ``data`` holds the bundle bytes; spans index into it.

    ``origin`` is the file offset of ``data`` (for bundles inflated from
    ``compressed_packets``: of the compressed payload, with ``inner`` the offset of ``data``
    inside the inflated bytes).
    """

    data: bytes
    origin: int
    inner: int | None = None
    cpu: int | None = None
    lost_events: bool = False
    ftrace_timestamp: int | None = None
    event_starts: list[int] = field(default_factory=list)
    event_ends: list[int] = field(default_factory=list)
    compact: tuple[int, int] | None = None


@dataclass(frozen=True)
class _BundleFields:
    cpu: int
    event: int
    lost: int
    compact: int
    ftrace_ts: int
    descriptors: int

    @classmethod
    def load(cls) -> _BundleFields:
        b = "FtraceEventBundle"
        return cls(field_number(b, "cpu"), field_number(b, "event"),
                   field_number(b, "lost_events"), field_number(b, "compact_sched"),
                   field_number(b, "ftrace_timestamp"),
                   field_number(b, "generic_event_descriptors"))


def walk_bundle(
    data: bytes, origin: int, inner: int | None, cache: GenericDescriptors
) -> Bundle:
    """Walk the top level of one bundle; descriptors go into ``cache`` before anything else.

    Raises:
        WireError: the bundle breaks the wire format (offset relative to ``data``).
    """
    nums = _BundleFields.load()
    out = Bundle(data, origin, inner)
    starts, ends = out.event_starts, out.event_ends
    event_tag = (nums.event << 3) | LEN
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == event_tag and pos + 1 < end and data[pos + 1] < 0x80:
            s = pos + 2
            pos = s + data[pos + 1]
            if pos > end:
                raise WireError(s - 2, f"{pos - s} bytes of an FtraceEvent inside its bundle")
            starts.append(s)
            ends.append(pos)
            continue
        pos = _other_field(data, pos, end, out, nums, cache)
    return out


def _other_field(
    data: bytes, pos: int, end: int, out: Bundle, nums: _BundleFields, cache: GenericDescriptors
) -> int:
    """Decode one bundle field at ``pos`` the slow way; returns the next position."""
    number, wire, value, at = next(iter_fields(data, pos, end))
    nxt = (at + value) if wire == LEN else _after(data, pos, end)
    if number == nums.event and wire == LEN:
        out.event_starts.append(at)
        out.event_ends.append(at + value)
    elif number == nums.cpu and wire == VARINT:
        out.cpu = value
    elif number == nums.lost and wire == VARINT:
        out.lost_events = out.lost_events or bool(value)
    elif number == nums.ftrace_ts and wire == VARINT:
        out.ftrace_timestamp = value - (1 << 64) if value >= 1 << 63 else value
    elif number == nums.compact and wire == LEN:
        out.compact = (at, at + value)
    elif number == nums.descriptors and wire == LEN:
        cache.add(_descriptor(data, at, at + value))
    return nxt


def _after(data: bytes, pos: int, end: int) -> int:
    """Position after the (non length-delimited) field at ``pos``."""
    tag, p = read_varint(data, pos, end)
    wire = tag & 7
    if wire == VARINT:
        return read_varint(data, p, end)[1]
    return p + (8 if wire == 1 else 4)


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


def _repeated(data: bytes, start: int, end: int) -> dict[int, list[int] | list[str]]:
    """Every repeated field of a CompactSched message: packed or not, ints or strings."""
    out: dict[int, list[int] | list[str]] = {}
    intern = field_number("FtraceEventBundle.CompactSched", "intern_table")
    for number, wire, value, at in iter_fields(data, start, end):
        if number == intern and wire == LEN:
            out.setdefault(number, []).append(  # type: ignore[arg-type]
                bytes(data[at:at + value]).decode("utf-8", "replace"))
        elif wire == LEN:
            p, stop = at, at + value
            ints = out.setdefault(number, [])
            while p < stop:
                v, p = read_varint(data, p, stop)
                ints.append(v)  # type: ignore[arg-type]
        elif wire == VARINT:
            out.setdefault(number, []).append(value)  # type: ignore[arg-type]
    return out


def compact_sched_events(bundle: Bundle, prev_pid: int | None) -> tuple[list[CompactEvent], int | None]:
    """Decode the bundle's compact sched arrays into events (timestamps are delta-coded).

    ``prev_pid`` is the task running on this CPU before the bundle (the previous switch's
    ``next_pid``); returns the events and the task running after them.
    """
    if bundle.compact is None:
        return [], prev_pid
    c = "FtraceEventBundle.CompactSched"
    arr = _repeated(bundle.data, *bundle.compact)

    def col(name: str) -> list[int]:
        return arr.get(field_number(c, name), [])  # type: ignore[return-value]

    intern: list[str] = arr.get(field_number(c, "intern_table"), [])  # type: ignore[assignment]
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
