"""Read Perfetto protobuf traces (``.pftrace``, ``.perfetto-trace``, any name) into a Trace.

Public entry points: :func:`read_perfetto`, :func:`iter_perfetto` (bounded batches) and
:func:`is_perfetto` (content detection). The reader needs no trace_processor binary: it
decodes the wire format itself (:mod:`parsers.perfetto.wire`), with field numbers taken from
the protos bundled in the ``perfetto`` package (:mod:`parsers.perfetto.protos`).

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
from parsers.perfetto.assemble import Inference, assemble_batch
from parsers.perfetto.bundles import (
    BundleRun,
    CompactEvent,
    GenericDescriptors,
    compact_sched_events,
    walk_bundles,
)
from parsers.perfetto.events import decode_bundles
from parsers.perfetto.packets import Block, Source, TruncatedPacket, inner_packets, iter_blocks
from parsers.perfetto.protos import FTRACE_CLOCK_UNKNOWN, FTRACE_CLOCKS, field_number
from parsers.perfetto.side_packets import FtraceStatsLog, ThreadMap
from parsers.perfetto.wire import LEN, WireError, iter_fields, read_varint
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

    def complete(self, trace: Trace) -> Trace:
        """Fill ``comm``/``tgid`` from thread descriptors written after their events, and
        loss counts from the ftrace stats."""
        return _lost_counts(_backfill_threads(trace, self.threads), self.stats)


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
    seq: int = 0
    last_ts: int | None = None
    running: dict[int | None, int | None] = field(default_factory=dict)
    run: BundleRun = field(default_factory=BundleRun)
    packets: int = 0
    clocks: set[int] = field(default_factory=set)


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
    return Trace.from_stream(stream)


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
        for block in iter_blocks(source):
            yield from _block(block, state, depth=0)
        yield from _flush(state)
    except (WireError, TruncatedPacket) as exc:
        error = _error(state, exc)
        if not state.salvage:
            raise error from exc
        try:
            yield from _flush(state)
        except WireError:  # the damaged bundle itself; those before it were yielded
            pass
        state.meta.warnings.append(f"salvaged the packets before the damage: {error}")
        state.meta.add_variant("salvaged")
    _finish(state)


def _error(state: _State, exc: Exception) -> TraceParseError:
    if isinstance(exc, TruncatedPacket):
        return TraceTruncatedError(state.path, str(exc).split(": ", 1)[1], offset=exc.offset)
    assert isinstance(exc, WireError)
    return TraceParseError(state.path, f"expected {exc.expected}", offset=exc.offset)


class _Located(WireError):
    """A :class:`WireError` whose offset is already a file offset."""


def _located(exc: WireError, block: Block) -> WireError:
    """``exc`` (offset into ``block.buf``) with a file offset (inflated offset noted)."""
    if isinstance(exc, _Located):
        return exc
    if not block.inflated:
        return _Located(block.base + exc.offset, exc.expected)
    return _Located(block.base, f"{exc.expected} (at byte {exc.offset} of the inflated "
                                "compressed_packets)")


def _block(block: Block, state: _State, depth: int) -> Iterator[TraceBatch]:
    """Walk a block's packets: bundles are collected, other packets applied in order."""
    buf = block.buf
    ftrace_tag = (field_number("TracePacket", "ftrace_events") << 3) | LEN
    pending: list[tuple[int, int]] = []
    try:
        for s, e in block.spans:
            state.packets += 1
            if buf[s] == ftrace_tag:
                length, q = read_varint(buf, s + 1, e)
                if q + length == e:
                    pending.append((q, e))
                    continue
            yield from _add_bundles(state, block, pending)
            pending = []
            yield from _flush(state)
            yield from _packet(block, s, e, state, depth)
        yield from _add_bundles(state, block, pending)
    except WireError as exc:
        raise _located(exc, block) from exc


def _add_bundles(state: _State, block: Block, spans: list[tuple[int, int]]
                 ) -> Iterator[TraceBatch]:
    """Append bundles to the pending run; decode whole read cycles once it is big enough."""
    if not spans:
        return
    run = state.run

    def where(start: int) -> tuple[int, int | None]:
        return (block.base, start) if block.inflated else (block.base + start, None)

    for span in spans:
        walk_bundles(run, block.buf, [span], where, state.descriptors)
        n = len(run)
        if n > 1 and run.cycle[-1] != run.cycle[-2] and run.first_event[-1] >= state.batch_events:
            # the bundle starts a new read cycle and the cycles before it fill a batch
            state.run = run.split_at(n - 1)
            yield from _decoded(run, state)
            run = state.run


def _packet(block: Block, start: int, end: int, state: _State, depth: int
            ) -> Iterator[TraceBatch]:
    """A packet that is not a lone bundle: dispatch each of its fields."""
    tp = "TracePacket"
    data = block.buf
    for number, wire, value, at in list(iter_fields(data, start, end)):
        if wire != LEN:
            continue
        if number == field_number(tp, "ftrace_events"):
            yield from _add_bundles(state, block, [(at, at + value)])
            yield from _flush(state)
        elif number == field_number(tp, "compressed_packets"):
            if depth:
                raise WireError(at, "no compressed_packets nested in compressed packets")
            state.meta.add_variant("compressed_packets")
            try:
                inner = inner_packets(bytes(data[at:at + value]), block.base + at)
            except WireError as exc:
                raise _Located(exc.offset, exc.expected) from exc
            yield from _block(inner, state, depth + 1)
        elif number == field_number(tp, "process_tree"):
            state.threads.apply_process_tree(data, at, at + value)
            state.meta.add_variant("process-tree")
        elif number == field_number(tp, "track_descriptor"):
            state.threads.apply_track_descriptor(data, at, at + value)
            state.meta.add_variant("track-descriptor")
        elif number == field_number(tp, "ftrace_stats"):
            state.stats.apply(data, at, at + value)
            state.meta.add_variant("ftrace-stats")


def _flush(state: _State) -> Iterator[TraceBatch]:
    """Decode the collected bundles."""
    run, state.run = state.run, BundleRun()
    yield from _decoded(run, state)


def _decoded(run: BundleRun, state: _State) -> Iterator[TraceBatch]:
    """Decode ``run`` (on damage with ``salvage``: the bundles before it, then raise)."""
    state.clocks |= run.clocks
    if not len(run):
        return
    try:
        batch = _decode(run, state)
    except WireError as exc:
        bad, offset, inner = run.where(exc.offset)
        if state.salvage:
            run.truncate(bad)
            if len(run):
                good = _decode(run, state)
                if good is not None:
                    yield good
        where = "" if inner is None else f" (at byte {inner} of the inflated compressed_packets)"
        raise _Located(offset, exc.expected + where) from exc
    if batch is not None:
        yield batch


def _decode(run: BundleRun, state: _State) -> TraceBatch | None:
    dec = decode_bundles(run, state.descriptors)
    where = run.origin[0]
    for reason, count in dec.skipped.items():
        if state.strict:
            raise TraceParseError(state.path, f"{reason} ({count} times)", offset=where)
        state.meta.skip(reason, where, f"{count} in the bundles from this offset", count)
    compact: list[list[CompactEvent]] = []
    for i, cpu in enumerate(run.cpu):
        evs, state.running[cpu] = compact_sched_events(run, i, state.running.get(cpu))
        if evs:
            state.meta.add_variant("compact-sched")
        compact.append(evs)
    if any(run.lost):
        state.meta.add_variant("lost-events-flag")
    batch, n = assemble_batch(run, dec, compact, state.threads, state.events, state.seq,
                              state.last_ts, state.inference)
    state.seq += n
    if n:
        state.last_ts = int(batch.events.column("ts")[n - 1].as_py())
        return batch
    return None


def _finish(state: _State) -> None:
    meta = state.meta
    meta.cpus = None
    _clock(state)
    meta.warnings.extend(state.descriptors.conflicts)
    meta.warnings.extend(state.stats.warnings())
    counts = state.inference.counts
    if counts:
        meta.add_variant("kvm_entry/kvm_exit arm64-shaped protos (no vcpu_id)")
        done = {k: v for k, v in counts.items() if k}
        for how in sorted(done):
            meta.add_variant(f"vcpu_id-inferred-from-{how}")
        meta.warnings.append(
            "Perfetto's compiled kvm_entry/kvm_exit protos are arm64-shaped and keep no x86 "
            f"field: vcpu_id inferred for {sum(done.values())} rows "
            f"({', '.join(f'{v} from {k}' for k, v in sorted(done.items())) or 'none'}), "
            f"{counts.get('', 0)} rows left null")
    if state.descriptors.by_id:
        meta.add_variant("dense-generic-events")


def _clock(state: _State) -> None:
    """The trace clock from the bundles' ``ftrace_clock`` (the writer sets it; traced_probes
    leaves it unset for the default boot clock)."""
    names = {FTRACE_CLOCKS[c] for c in state.clocks if c in FTRACE_CLOCKS}
    if len(names) == 1:
        state.meta.clock = names.pop()
        state.meta.add_variant("ftrace_clock")
    elif FTRACE_CLOCK_UNKNOWN in state.clocks:
        state.meta.warnings.append(
            "the bundles say FTRACE_CLOCK_UNKNOWN: the trace clock is not one Perfetto names "
            "(global, local, mono_raw); timestamps are taken as ns")


def _lost_counts(trace: Trace, stats: FtraceStatsLog) -> Trace:
    """Give a CPU's only loss marker the CPU's lost count from ``FtraceStats``."""
    lost = trace.table(LOST_EVENTS)
    per_cpu = stats.lost_per_cpu()
    if not lost.num_rows or not per_cpu:
        return trace
    cpus = lost.column("cpu").to_pylist()
    counts = lost.column("lost").to_pylist()
    for i, cpu in enumerate(cpus):
        if counts[i] is None and cpus.count(cpu) == 1 and cpu in per_cpu:
            counts[i] = per_cpu[cpu]
    if counts == lost.column("lost").to_pylist():
        return trace
    tables = {n: trace.table(n) for n in trace.names}
    tables[LOST_EVENTS] = lost.set_column(
        lost.schema.get_field_index("lost"), "lost", pa.array(counts, pa.uint64()))
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

    True when it starts with ``TracePacket`` s whose top-level field tags (as far as ``head``
    reaches) are valid and name fields the bundled ``TracePacket`` proto declares.

    Examples:
        >>> is_perfetto(b"# tracer: nop\\n"), is_perfetto(b"\\x0a\\x02\\x08\\x01")
        (False, True)
    """
    from parsers.perfetto.protos import catalog

    known = {f.number for f in catalog().messages["TracePacket"].values()}
    packet_tag = (field_number("Trace", "packet") << 3) | LEN
    pos, tags = 0, 0
    while pos < len(head) and tags < 16:
        try:
            tag, p = read_varint(head, pos, len(head))
            length, p = read_varint(head, p, len(head))
        except WireError:
            return tags > 0
        if tag != packet_tag:
            return False
        end = p + length
        while p < min(end, len(head)):
            try:
                ftag, q = read_varint(head, p, len(head))
            except WireError:
                return tags > 0
            if (ftag >> 3) not in known or (ftag & 7) not in (0, 1, 2, 5):
                return False
            tags += 1
            try:
                p = _skip(head, q, ftag & 7)
            except WireError:
                return True
        if p > end:
            return False
        pos = end
    return tags > 0


def _skip(head: bytes, pos: int, wire: int) -> int:
    if wire == 0:
        return read_varint(head, pos, len(head))[1]
    if wire == 2:
        length, p = read_varint(head, pos, len(head))
        return p + length
    return pos + (8 if wire == 1 else 4)
