"""A Perfetto trace of observed and replayed runs, for ui.perfetto.dev.

Each run (``"observed"`` or a policy name) is a process track group named after it, on its
own packet sequence. Under it, in this order:

* ``vcpu N``: one track per vCPU whose slices are its blocked intervals, named by cause,
  with debug args ``n_blocks``, ``each_ns``, ``root`` (and ``lost`` when the blocks say);
  intervals that overlap an earlier one of the same vCPU go on ``vcpu N #k`` tracks, so
  every track's slices nest;
* ``zap: <thread>``: one track per zapping thread (the roots' ``zapped_by``) with a slice
  ``zap root N`` from ``zap_start`` to ``zap_end`` (args ``root``, ``leaves_zapped``,
  ``tables_zapped``);
* ``refcount root N``: a counter track per root with its refcount after every change.

Packets are TrackEvent protos encoded by hand with field numbers read from the perfetto
package's bundled descriptors (:mod:`parsers.perfetto.protos`, :mod:`parsers.perfetto.encode`).
Events are written in timestamp order; the bytes depend only on the input.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from parsers.output import output_file
from parsers.perfetto.bytecols import ByteColumn, concat, constant, varints
from parsers.perfetto.encode import key, len_field, varint_field
from parsers.perfetto.protos import field_number
from parsers.perfetto.wire import LEN, VARINT
from replay.errors import ReplayConfigError
from replay.render.tables import RunTables, check_runs
from replay.render.tracks import Arg, TrackPlan, plan_tracks

__all__ = ["write_timeline", "timeline_packets"]

Bools = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]
#: Events encoded at once (bounds the memory of the NumPy encoding).
EVENTS_PER_CHUNK: Final = 1 << 16
_PID_BASE: Final = 1000
_UUID_SHIFT: Final = 32


@dataclass(frozen=True)
class _Protos:
    """Field numbers and enum values of the protos the timeline writes."""

    packet: int
    timestamp: int
    seq_id: int
    seq_flags: int
    first_on_seq: int
    track_event: int
    track_descriptor: int
    state_cleared: int
    needs_state: int
    ev_type: int
    ev_track: int
    ev_name: int
    ev_args: int
    ev_counter: int
    slice_begin: int
    slice_end: int
    counter: int
    arg_name: int
    arg_int: int
    arg_bool: int
    td_uuid: int
    td_parent: int
    td_name: int
    td_process: int
    td_counter: int
    td_ordering: int
    td_rank: int
    explicit: int
    pd_pid: int
    pd_name: int


@cache
def _protos() -> _Protos:
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    def enum(message: str, enum_name: str, value: str) -> int:
        desc = pb.DESCRIPTOR.message_types_by_name[message].enum_types_by_name[enum_name]
        return int(desc.values_by_name[value].number)

    te, td, tp, da = "TrackEvent", "TrackDescriptor", "TracePacket", "DebugAnnotation"
    return _Protos(
        field_number("Trace", "packet"), field_number(tp, "timestamp"),
        field_number(tp, "trusted_packet_sequence_id"), field_number(tp, "sequence_flags"),
        field_number(tp, "first_packet_on_sequence"), field_number(tp, "track_event"),
        field_number(tp, "track_descriptor"),
        enum(tp, "SequenceFlags", "SEQ_INCREMENTAL_STATE_CLEARED"),
        enum(tp, "SequenceFlags", "SEQ_NEEDS_INCREMENTAL_STATE"),
        field_number(te, "type"), field_number(te, "track_uuid"), field_number(te, "name"),
        field_number(te, "debug_annotations"), field_number(te, "counter_value"),
        enum(te, "Type", "TYPE_SLICE_BEGIN"), enum(te, "Type", "TYPE_SLICE_END"),
        enum(te, "Type", "TYPE_COUNTER"),
        field_number(da, "name"), field_number(da, "int_value"), field_number(da, "bool_value"),
        field_number(td, "uuid"), field_number(td, "parent_uuid"), field_number(td, "name"),
        field_number(td, "process"), field_number(td, "counter"),
        field_number(td, "child_ordering"), field_number(td, "sibling_order_rank"),
        enum(td, "ChildTracksOrdering", "EXPLICIT"),
        field_number("ProcessDescriptor", "pid"), field_number("ProcessDescriptor", "process_name"),
    )


def write_timeline(runs: Mapping[str, Mapping[str, pa.Table]], path: str | Path, *,
                   force: bool = False) -> Path:
    """Write ``runs`` to ``path`` as a Perfetto trace, by the output policy of
    :func:`parsers.output.output_file` (an existing file is replaced only with ``force``).

    Args:
        runs: run label (``"observed"`` or a policy name) → tables ``blocks`` (required),
            ``roots`` and ``refcounts`` (optional), as for :func:`replay.render.html.write_report`.
        path: the ``.pftrace`` file to write.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ReplayConfigError: a run lacks ``blocks`` or a column, or has a negative timestamp.
        OutputError: the output policy (:mod:`parsers.output`) refuses ``path``.
    """
    prepared = check_runs(runs)
    for run in prepared:
        if run.span.t0 < 0:
            raise ReplayConfigError(f"run {run.label!r}: timestamp {run.span.t0} < 0; Perfetto"
                                    " timestamps are unsigned")
    with output_file(path, force=force) as fh:
        for chunk in timeline_packets(prepared):
            fh.write(chunk)
    return Path(path)


def timeline_packets(runs: list[RunTables]) -> Iterator[bytes]:
    """The bytes of the trace in chunks: each run's track descriptors one ``packet`` field
    at a time, then its events :data:`EVENTS_PER_CHUNK` at a time (NumPy-encoded)."""
    for index, run in enumerate(runs):
        yield from _run_packets(index, run)


def _run_packets(index: int, run: RunTables) -> Iterator[bytes]:
    pb = _protos()
    seq = index + 1
    base = (index + 1) << _UUID_SHIFT
    plan = plan_tracks(run)
    head = (varint_field(pb.seq_id, seq) + varint_field(pb.seq_flags, pb.state_cleared)
            + varint_field(pb.first_on_seq, 1))
    process = (varint_field(pb.pd_pid, _PID_BASE + index)
               + len_field(pb.pd_name, run.label.encode()))
    yield len_field(pb.packet, head + len_field(
        pb.track_descriptor, varint_field(pb.td_uuid, base) + len_field(pb.td_process, process)
        + varint_field(pb.td_ordering, pb.explicit)))
    tail = varint_field(pb.seq_id, seq)
    for rank, spec in enumerate(plan.tracks):
        desc = (varint_field(pb.td_uuid, base + 1 + rank) + varint_field(pb.td_parent, base)
                + len_field(pb.td_name, spec.name.encode()) + varint_field(pb.td_rank, rank))
        if spec.counter:
            desc += len_field(pb.td_counter, b"")
        yield len_field(pb.packet, tail + len_field(pb.track_descriptor, desc))
    sequence = tail + varint_field(pb.seq_flags, pb.needs_state)
    ts, track, kind, ref = _event_order(plan)
    for lo in range(0, ts.size, EVENTS_PER_CHUNK):
        hi = lo + EVENTS_PER_CHUNK
        chunk = _event_packets(plan, base, sequence, ts[lo:hi], track[lo:hi], kind[lo:hi],
                               ref[lo:hi])
        yield chunk.flat.tobytes()


def _event_order(plan: TrackPlan) -> tuple[I64, I64, I64, I64]:
    """``(ts, track, kind, ref)`` of every event sorted by time, then track, then position
    on the track; kind 0/1/2 = slice begin/end/counter, ref = index of the slice/counter."""
    sl, co = plan.slices, plan.counters
    n_s, n_c = sl.start.size, co.ts.size
    ts = np.r_[sl.start, sl.end, co.ts]
    track = np.r_[sl.track, sl.track, co.track]
    kind = np.r_[np.zeros(n_s, np.int64), np.ones(n_s, np.int64), np.full(n_c, 2, np.int64)]
    sub = np.r_[2 * np.arange(n_s), 2 * np.arange(n_s) + 1, np.arange(n_c)]
    ref = np.r_[np.arange(n_s), np.arange(n_s), np.arange(n_c)]
    order = np.lexsort((sub, track, ts))
    return ts[order], track[order], kind[order], ref[order]


def _event_packets(plan: TrackPlan, base: int, sequence: bytes, ts: I64, track: I64,
                   kind: I64, ref: I64) -> ByteColumn:
    """Events (from :func:`_event_order`) as ``TracePacket`` fields of a ``Trace`` (tag and
    length included), encoded with NumPy byte columns."""
    pb = _protos()
    sl, co = plan.slices, plan.counters
    begin, end, counter = kind == 0, kind == 1, kind == 2
    every = np.ones(ts.size, bool)
    body = concat([
        constant(varint_field(pb.ev_type, pb.slice_begin), begin),
        constant(varint_field(pb.ev_type, pb.slice_end), end),
        constant(varint_field(pb.ev_type, pb.counter), counter),
        _varint_field(pb.ev_track, base + 1 + track, every),
        _choose([len_field(pb.ev_name, n.encode()) for n in sl.names],
                _take(sl.name, ref, begin), begin),
        *(_arg(arg, ref, begin) for arg in sl.args),
        _varint_field(pb.ev_counter, _take(co.value, ref, counter), counter),
    ])
    packet = concat([_varint_field(pb.timestamp, ts, every), constant(sequence, every),
                     _len_prefixed(pb.track_event, body, every)])
    return _len_prefixed(pb.packet, packet, every)


def _varint_field(number: int, values: npt.NDArray[np.int64], present: Bools) -> ByteColumn:
    return concat([constant(key(number, VARINT), present),
                   varints(values.astype(np.uint64), present)])


def _len_prefixed(number: int, payload: ByteColumn, present: Bools) -> ByteColumn:
    return concat([constant(key(number, LEN), present),
                   varints(payload.lengths.astype(np.uint64), present), payload])


def _arg(arg: Arg, ref: npt.NDArray[np.int64], begin: Bools) -> ByteColumn:
    """A ``debug_annotations`` entry on the begin events whose slice has the argument."""
    pb = _protos()
    present = begin & (_take(arg.present.astype(np.int64), ref, begin) > 0)
    values = _take(arg.values, ref, present)
    inner = concat([constant(len_field(pb.arg_name, arg.name.encode()), present),
                    _varint_field(pb.arg_bool if arg.is_bool else pb.arg_int, values, present)])
    return _len_prefixed(pb.ev_args, inner, present)


def _take(values: npt.NDArray[np.int64], ref: npt.NDArray[np.int64],
          present: Bools) -> npt.NDArray[np.int64]:
    """``values[ref[i]]`` on present rows, 0 elsewhere."""
    out = np.zeros(ref.size, np.int64)
    out[present] = values[ref[present]]
    return out


def _choose(table: list[bytes], codes: npt.NDArray[np.int64], present: Bools) -> ByteColumn:
    """``table[codes[i]]`` on every present row."""
    sizes = np.array([len(b) for b in table] or [0], np.int64)
    starts = np.zeros(sizes.size, np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    flat_table = np.frombuffer(b"".join(table) or b"\0", np.uint8)
    lengths = np.where(present, sizes[codes], 0)
    total = int(lengths.sum())
    out_start = np.zeros(lengths.size, np.int64)
    np.cumsum(lengths[:-1], out=out_start[1:])
    idx = np.repeat(starts[codes] - out_start, lengths) + np.arange(total, dtype=np.int64)
    return ByteColumn(flat_table[idx].copy(), lengths.astype(np.int64))
