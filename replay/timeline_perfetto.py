"""A Perfetto trace of observed and replayed runs, for ui.perfetto.dev.

Each run (``"observed"`` or a policy name) is a process track group named after it, on its
own packet sequence. Under it, in this order:

* ``vcpu N``: one track per vCPU whose slices are its blocked intervals, named by cause,
  with debug args ``count``, ``each_ns``, ``root`` (and ``lost`` when the blocks say);
  intervals that overlap an earlier one of the same vCPU go on ``vcpu N #k`` tracks, so
  every track's slices nest;
* ``zap: <thread>``: one track per zapping thread (the roots' ``zapped_by``) with a slice
  ``zap root N`` from ``zap_start`` to ``zap_end`` (args ``root``, ``leaves_zapped``,
  ``tables_zapped``);
* ``refcount root N``: a counter track per root with its refcount after every change.

Packets are TrackEvent protos encoded by hand with field numbers read from the perfetto
package's bundled descriptors (:mod:`parsers.perfetto_protos`, :mod:`parsers.perfetto_encode`).
Events are written in timestamp order; the bytes depend only on the input.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

import pyarrow as pa

from parsers.atomic_file import atomic_file
from parsers.perfetto_encode import len_field, varint_field
from parsers.perfetto_protos import field_number
from replay.errors import ReplayConfigError
from replay.report_tables import RunTables, check_runs
from replay.timeline_tracks import Slice, TrackPlan, plan_tracks

__all__ = ["write_timeline", "timeline_packets"]

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


def write_timeline(runs: Mapping[str, Mapping[str, pa.Table]], path: str | Path) -> Path:
    """Write ``runs`` to ``path`` as a Perfetto trace (temp file, renamed when complete).

    Args:
        runs: run label (``"observed"`` or a policy name) → tables ``blocks`` (required),
            ``roots`` and ``refcounts`` (optional), as for :func:`replay.report_html.write_report`.
        path: the ``.pftrace`` file to write.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ReplayConfigError: a run lacks ``blocks`` or a column, or has a negative timestamp.
        KvmMmuError: the parent directory of ``path`` does not exist.
    """
    prepared = check_runs(runs)
    for run in prepared:
        if run.span.t0 < 0:
            raise ReplayConfigError(f"run {run.label!r}: timestamp {run.span.t0} < 0; Perfetto"
                                    " timestamps are unsigned")
    pb = _protos()
    with atomic_file(path) as fh:
        for packet in timeline_packets(prepared):
            fh.write(len_field(pb.packet, packet))
    return Path(path)


def timeline_packets(runs: list[RunTables]) -> Iterator[bytes]:
    """The serialised ``TracePacket`` messages of the timeline, run after run."""
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
    yield head + len_field(pb.track_descriptor, varint_field(pb.td_uuid, base)
                           + len_field(pb.td_process, process)
                           + varint_field(pb.td_ordering, pb.explicit))
    tail = varint_field(pb.seq_id, seq)
    for rank, track in enumerate(plan.tracks):
        desc = (varint_field(pb.td_uuid, base + 1 + rank) + varint_field(pb.td_parent, base)
                + len_field(pb.td_name, track.name.encode()) + varint_field(pb.td_rank, rank))
        if track.counter:
            desc += len_field(pb.td_counter, b"")
        yield tail + len_field(pb.track_descriptor, desc)
    events = _events(plan, base)
    flags = tail + varint_field(pb.seq_flags, pb.needs_state)
    for ts, _rank, _i, body in events:
        yield varint_field(pb.timestamp, ts) + flags + len_field(pb.track_event, body)


def _events(plan: TrackPlan, base: int) -> list[tuple[int, int, int, bytes]]:
    """``(ts, track rank, index in track, TrackEvent bytes)`` sorted by time, then track."""
    pb = _protos()
    out: list[tuple[int, int, int, bytes]] = []
    for rank, track in enumerate(plan.tracks):
        uuid = varint_field(pb.ev_track, base + 1 + rank)
        if track.counter:
            ts, values = track.counter_values
            begin = varint_field(pb.ev_type, pb.counter) + uuid
            for i, (t, v) in enumerate(zip(ts.tolist(), values.tolist(), strict=True)):
                out.append((t, rank, i, begin + varint_field(pb.ev_counter, v)))
            continue
        end = varint_field(pb.ev_type, pb.slice_end) + uuid
        for i, sl in enumerate(track.slices):
            out.append((sl.start, rank, 2 * i, _begin(sl, uuid)))
            out.append((sl.end, rank, 2 * i + 1, end))
    out.sort(key=lambda e: (e[0], e[1], e[2]))
    return out


def _begin(sl: Slice, uuid: bytes) -> bytes:
    pb = _protos()
    body = varint_field(pb.ev_type, pb.slice_begin) + uuid + len_field(pb.ev_name, sl.name.encode())
    for name, value in sl.args:
        if isinstance(value, bool):
            val = varint_field(pb.arg_bool, int(value))
        else:
            val = varint_field(pb.arg_int, value)
        body += len_field(pb.ev_args, len_field(pb.arg_name, name.encode()) + val)
    return body
