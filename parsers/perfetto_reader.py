"""Read Perfetto protobuf traces (``.pftrace``, ``.perfetto-trace``, any name) into a Trace.

Public entry points: :func:`read_perfetto`, :func:`iter_perfetto` (bounded batches) and
:func:`is_perfetto` (content detection). The reader needs no trace_processor binary: it
decodes the wire format itself (:mod:`parsers.perfetto_wire`), with field numbers taken from
the protos bundled in the ``perfetto`` package (:mod:`parsers.perfetto_protos`).

What it reads: ``FtraceEventBundle`` s (per CPU; ``lost_events`` flag; compiled events; both
generic encodings; compact sched), ``compressed_packets``, ``ProcessTree`` and
``TrackDescriptor`` (``comm``/``tgid``), and ``FtraceStats`` (kernel ring-buffer overruns).
Perfetto's compiled ``kvm_entry``/``kvm_exit`` protos are arm64-shaped: on x86 the recorder
keeps no field of them, so their ``vcpu_id`` is recovered from the thread name
(``CPU n/KVM``) or from other events of the same thread, and the metadata says so.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from parsers.errors import TraceParseError, TraceTruncatedError
from parsers.perfetto_assemble import Inference, assemble_batch
from parsers.perfetto_bundles import (
    Bundle,
    CompactEvent,
    GenericDescriptors,
    compact_sched_events,
    walk_bundle,
)
from parsers.perfetto_events import decode_bundles
from parsers.perfetto_packets import Packet, Source, TruncatedPacket, inner_packets, iter_packets
from parsers.perfetto_protos import field_number
from parsers.perfetto_stats import FtraceStatsLog
from parsers.perfetto_threads import ThreadMap
from parsers.perfetto_wire import LEN, WireError, iter_fields, read_varint
from parsers.schema import LOST_EVENTS
from parsers.trace import Trace, TraceBatch, TraceMetadata, TraceStream

__all__ = ["read_perfetto", "iter_perfetto", "is_perfetto", "PerfettoStream", "BATCH_EVENTS"]

#: Events decoded together (memory while streaming is proportional to this).
BATCH_EVENTS = 1 << 17


class PerfettoStream(TraceStream):
    """A :class:`~parsers.trace.TraceStream` that also exposes what the packets said about
    threads (:attr:`threads`) and ring-buffer losses (:attr:`stats`)."""

    def __init__(self, batches: Iterator[TraceBatch], metadata: TraceMetadata,
                 threads: ThreadMap, stats: FtraceStatsLog) -> None:
        super().__init__(batches, metadata)
        self.threads = threads
        self.stats = stats


@dataclass
class _State:
    path: str
    meta: TraceMetadata
    events: frozenset[str] | None
    salvage: bool
    strict: bool
    batch_events: int
    descriptors: GenericDescriptors = field(default_factory=GenericDescriptors)
    threads: ThreadMap = field(default_factory=ThreadMap)
    stats: FtraceStatsLog = field(default_factory=FtraceStatsLog)
    inference: Inference = field(default_factory=Inference)
    pending: list[Bundle] = field(default_factory=list)
    pending_events: int = 0
    seq: int = 0
    last_ts: int | None = None
    running: dict[int | None, int | None] = field(default_factory=dict)
    packets: int = 0


def read_perfetto(
    source: Source, *, events: Collection[str] | None = None, salvage: bool = False,
    strict: bool = False, batch_events: int = BATCH_EVENTS,
) -> Trace:
    """Read a Perfetto trace (a path, or the trace's bytes) into a :class:`~parsers.trace.Trace`.

    Args:
        source: path of the trace, or its bytes.
        events: keep only these event names (loss markers are always kept).
        salvage: on damaged input keep everything decoded before the damage and record a
            warning, instead of raising.
        strict: raise on anything the reader would otherwise count as skipped (events of
            unknown ids, fields of the wrong wire type, values out of range).
        batch_events: events decoded together.

    Raises:
        TraceParseError: the protobuf is corrupt (the message names the byte offset and
            what was expected there); :class:`~parsers.errors.TraceTruncatedError` when it is
            cut short.

    Examples:
        >>> t = read_perfetto("sample_traces/perfetto_kvm_dense.pftrace")
        >>> t.metadata.format, t.table("kvm_mmu_get_page").num_rows > 0
        ('perfetto', True)
    """
    stream = iter_perfetto(source, events=events, salvage=salvage, strict=strict,
                           batch_events=batch_events)
    trace = Trace.from_stream(stream)
    return _lost_counts(_backfill_threads(trace, stream.threads), stream.stats)


def iter_perfetto(
    source: Source, *, events: Collection[str] | None = None, salvage: bool = False,
    strict: bool = False, batch_events: int = BATCH_EVENTS,
) -> PerfettoStream:
    """Stream a Perfetto trace as :class:`~parsers.trace.TraceBatch` es of about
    ``batch_events`` events; arguments as for :func:`read_perfetto`.

    ``comm``/``tgid`` are those known when the batch is decoded (traced_probes writes a new
    thread's ProcessTree entry after the events that revealed it; :func:`read_perfetto` fills
    such gaps from the whole trace).
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    meta = TraceMetadata(source=name, format="perfetto")
    state = _State(name, meta, frozenset(events) if events is not None else None, salvage,
                   strict, batch_events)
    return PerfettoStream(_batches(source, state), meta, state.threads, state.stats)


def _batches(source: Source, state: _State) -> Iterator[TraceBatch]:
    try:
        for packet in iter_packets(source):
            yield from _packet(packet, state, depth=0)
    except (WireError, TruncatedPacket) as exc:
        error = _error(state, exc)
        if not state.salvage:
            raise error from exc
        yield from _flush(state)
        state.meta.warnings.append(f"salvaged the packets before the damage: {error}")
        state.meta.add_variant("salvaged")
    else:
        yield from _flush(state)
    _finish(state)


def _error(state: _State, exc: Exception) -> TraceParseError:
    if isinstance(exc, TruncatedPacket):
        return TraceTruncatedError(state.path, str(exc).split(": ", 1)[1], offset=exc.offset)
    assert isinstance(exc, WireError)
    return TraceParseError(state.path, f"expected {exc.expected}", offset=exc.offset)


def _packet(packet: Packet, state: _State, depth: int) -> Iterator[TraceBatch]:
    """Dispatch one TracePacket's fields."""
    tp = "TracePacket"
    state.packets += 1
    data = packet.data
    try:
        fields = list(iter_fields(data, 0, len(data)))
    except WireError as exc:
        raise _relocate(exc, packet, 0) from exc
    for number, wire, value, at in fields:
        if wire != LEN:
            continue
        if number == field_number(tp, "ftrace_events"):
            yield from _bundle(packet, at, value, state)
        elif number == field_number(tp, "compressed_packets"):
            if depth:
                raise _relocate(WireError(at, "no compressed_packets nested in compressed "
                                              "packets"), packet, 0)
            state.meta.add_variant("compressed_packets")
            for inner in inner_packets(bytes(data[at:at + value]), _file_offset(packet, at)):
                yield from _packet(inner, state, depth + 1)
        elif number in (field_number(tp, "process_tree"), field_number(tp, "track_descriptor"),
                        field_number(tp, "ftrace_stats")):
            yield from _flush(state)
            _side_packet(number, data, at, value, packet, state)


def _file_offset(packet: Packet, rel: int) -> int:
    return packet.offset + rel if packet.inner is None else packet.offset


def _relocate(exc: WireError, packet: Packet, base: int) -> WireError:
    """``exc`` with its offset turned into a file offset (and the inflated offset noted)."""
    if packet.inner is None:
        return WireError(packet.offset + base + exc.offset, exc.expected)
    inner = packet.inner + base + exc.offset
    return WireError(packet.offset, f"{exc.expected} (at byte {inner} of the inflated "
                                    "compressed_packets)")


def _side_packet(number: int, data: bytes, at: int, size: int, packet: Packet,
                 state: _State) -> None:
    tp = "TracePacket"
    try:
        if number == field_number(tp, "process_tree"):
            state.threads.apply_process_tree(data, at, at + size)
            state.meta.add_variant("process-tree")
        elif number == field_number(tp, "track_descriptor"):
            state.threads.apply_track_descriptor(data, at, at + size)
            state.meta.add_variant("track-descriptor")
        else:
            state.stats.apply(data, at, at + size)
            state.meta.add_variant("ftrace-stats")
    except WireError as exc:
        raise _relocate(exc, packet, 0) from exc


def _bundle(packet: Packet, at: int, size: int, state: _State) -> Iterator[TraceBatch]:
    data = bytes(packet.data[at:at + size])
    try:
        bundle = walk_bundle(data, _file_offset(packet, at),
                             None if packet.inner is None else packet.inner + at,
                             state.descriptors)
    except WireError as exc:
        raise _relocate(exc, packet, at) from exc
    state.pending.append(bundle)
    state.pending_events += len(bundle.event_starts)
    if state.pending_events >= state.batch_events:
        yield from _flush(state)


def _flush(state: _State) -> Iterator[TraceBatch]:
    if not state.pending:
        return
    bundles, state.pending, state.pending_events = state.pending, [], 0
    try:
        batch = _decode(bundles, state)
    except WireError as exc:
        bad = _bundle_at(bundles, exc.offset)
        good = bundles[:bad]
        if state.salvage and good:
            yield _decode(good, state)
        b = bundles[bad]
        base = sum(len(x.data) for x in bundles[:bad])
        packet = Packet(b.data, b.origin, b.inner)
        raise _relocate(WireError(exc.offset - base, exc.expected), packet, 0) from exc
    if batch is not None:
        yield batch


def _bundle_at(bundles: list[Bundle], offset: int) -> int:
    sizes = np.cumsum([len(b.data) for b in bundles])
    return int(min(np.searchsorted(sizes, offset, side="right"), len(bundles) - 1))


def _decode(bundles: list[Bundle], state: _State) -> TraceBatch | None:
    dec, _ = decode_bundles(bundles, state.descriptors)
    for reason, count in dec.skipped.items():
        if state.strict:
            raise TraceParseError(state.path, f"{reason} ({count} times)",
                                  offset=bundles[0].origin)
        state.meta.skip(reason, bundles[0].origin, f"{count} in the bundles from this offset",
                        count)
    compact: list[list[CompactEvent]] = []
    for b in bundles:
        evs, state.running[b.cpu] = compact_sched_events(b, state.running.get(b.cpu))
        if evs:
            state.meta.add_variant("compact-sched")
        compact.append(evs)
    if any(b.lost_events for b in bundles):
        state.meta.add_variant("lost-events-flag")
    batch, n = assemble_batch(bundles, dec, compact, state.threads, state.events, state.seq,
                              state.last_ts, state.inference)
    state.seq += n
    if n:
        state.last_ts = int(batch.events.column("ts")[n - 1].as_py())
        return batch
    return None


def _finish(state: _State) -> None:
    meta = state.meta
    meta.cpus = None
    meta.warnings.extend(state.descriptors.conflicts)
    meta.warnings.extend(state.stats.warnings())
    counts = state.inference.counts
    if counts:
        meta.add_variant("kvm_entry/kvm_exit arm64-shaped protos (no vcpu_id)")
        done = {k: v for k, v in counts.items() if k}
        for how, n in sorted(done.items()):
            meta.add_variant(f"vcpu_id-inferred-from-{how}")
        meta.warnings.append(
            "Perfetto's compiled kvm_entry/kvm_exit protos are arm64-shaped and keep no x86 "
            f"field: vcpu_id inferred for {sum(done.values())} rows "
            f"({', '.join(f'{v} from {k}' for k, v in sorted(done.items())) or 'none'}), "
            f"{counts.get('', 0)} rows left null")
    if state.descriptors.by_id:
        meta.add_variant("dense-generic-events")


def _lost_counts(trace: Trace, stats: FtraceStatsLog) -> Trace:
    """Give a CPU's only loss marker the CPU's lost count from ``FtraceStats``."""
    lost = trace.table(LOST_EVENTS)
    per_cpu = stats.lost_per_cpu()
    if not lost.num_rows or not per_cpu:
        return trace
    cpus = lost.column("cpu").to_pylist()
    counts = lost.column("count").to_pylist()
    for i, cpu in enumerate(cpus):
        if counts[i] is None and cpus.count(cpu) == 1 and cpu in per_cpu:
            counts[i] = per_cpu[cpu]
    if counts == lost.column("count").to_pylist():
        return trace
    tables = {n: trace.table(n) for n in trace.names}
    tables[LOST_EVENTS] = lost.set_column(
        lost.schema.get_field_index("count"), "count", pa.array(counts, pa.uint64()))
    trace.metadata.add_variant("lost count from ftrace_stats")
    return Trace(trace.events, tables, trace.metadata)


def _backfill_threads(trace: Trace, threads: ThreadMap) -> Trace:
    """Fill ``comm``/``tgid`` of rows whose pid was described only later in the trace."""
    ev = trace.events
    if not ev.num_rows or not threads.known:
        return trace
    gap = pc.and_(pc.is_valid(ev.column("pid")),
                  pc.and_(pc.is_null(ev.column("comm")), pc.is_null(ev.column("tgid"))))
    if not pc.any(gap).as_py():
        return trace
    pids = ev.column("pid").to_pylist()
    holes = np.flatnonzero(gap.to_numpy(zero_copy_only=False))
    comm = ev.column("comm").cast(pa.string()).to_pylist()
    tgid = ev.column("tgid").to_pylist()
    for i in holes.tolist():
        comm[i], tgid[i] = threads.lookup(pids[i])
    cols = {n: ev.column(n) for n in ev.column_names}
    cols["comm"] = pa.array(comm, pa.string()).dictionary_encode().cast(ev.schema.field("comm").type)
    cols["tgid"] = pa.array(tgid, pa.int32())
    events = pa.table(cols, schema=ev.schema)
    trace.metadata.add_variant("comm/tgid from later process packets")
    return Trace(events, {n: trace.table(n) for n in trace.names}, trace.metadata)


def is_perfetto(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts a Perfetto protobuf trace.

    True when it starts with ``TracePacket`` s whose top-level fields are all valid tags
    with field numbers the bundled ``TracePacket`` proto declares.

    Examples:
        >>> is_perfetto(b"# tracer: nop\\n"), is_perfetto(b"\\x0a\\x02\\x08\\x01")
        (False, True)
    """
    from parsers.perfetto_protos import catalog

    known = {f.number for f in catalog().messages["TracePacket"].values()}
    packet_tag = (field_number("Trace", "packet") << 3) | LEN
    pos, checked = 0, 0
    while pos < len(head) and checked < 4:
        try:
            tag, p = read_varint(head, pos, len(head))
            length, p = read_varint(head, p, len(head))
        except WireError:
            return checked > 0
        if tag != packet_tag:
            return False
        cut = p + length > len(head)
        fields = 0
        try:
            for number, _, _, _ in iter_fields(head, p, min(p + length, len(head))):
                if number not in known:
                    return False
                fields += 1
        except WireError:
            if not cut:
                return False
        if cut:
            return fields > 0 or checked > 0
        checked += 1
        pos = p + length
    return checked > 0
