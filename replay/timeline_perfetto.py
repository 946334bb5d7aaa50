"""A Perfetto timeline of observed and replayed runs, for ui.perfetto.dev.

Per run (``observed``, then each policy) a process-scoped group of tracks:

* one track per vCPU whose slices are its blocked intervals, named by cause (a fault run
  standing for ``count`` faults is one slice ``fault x<count>``; debug annotations carry
  ``count``, ``each_ns`` and ``root``);
* one track per zapping thread (``zapped_by`` of the roots table: workers, invalidating
  tasks, vCPUs) with a ``zap root <n>`` slice from zap start to end;
* one counter track per root with its reference count.

Written with the perfetto package's own generated protobuf classes (``TrackDescriptor`` and
``TrackEvent`` packets on one trusted sequence, no interning), serialised deterministically,
to a temp file renamed when complete.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from parsers.atomic_file import atomic_file

__all__ = ["write_timeline", "timeline_packets", "SEQUENCE_ID"]

#: trusted_packet_sequence_id of every packet.
SEQUENCE_ID: Final = 7
_RUN_STRIDE: Final = 1 << 32


def _pb() -> Any:
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2

    return perfetto_trace_pb2


def write_timeline(runs: Mapping[str, Mapping[str, pa.Table]], path: str | Path) -> Path:
    """Write the timeline of ``runs`` (label → tables ``blocks``, ``refcounts``, ``roots``)
    to ``path`` as a Perfetto protobuf trace."""
    with atomic_file(path) as fh:
        for packet in timeline_packets(runs):
            data = packet.SerializeToString(deterministic=True)
            fh.write(b"\x0a" + _varint(len(data)) + data)  # Trace.packet = field 1
    return Path(path)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def timeline_packets(runs: Mapping[str, Mapping[str, pa.Table]]) -> Iterator[Any]:
    """The ``TracePacket`` s of the timeline, descriptors first, then events per track."""
    pb = _pb()
    first = pb.TracePacket(trusted_packet_sequence_id=SEQUENCE_ID)
    first.sequence_flags = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    yield first
    for i, (label, tables) in enumerate(runs.items()):
        yield from _run_packets(pb, i, label, tables)


def _descriptor(pb: Any, uuid: int, name: str, parent: int | None = None, *,
                pid: int | None = None, counter: bool = False) -> Any:
    packet = pb.TracePacket(trusted_packet_sequence_id=SEQUENCE_ID)
    desc = packet.track_descriptor
    desc.uuid = uuid
    desc.name = name
    if parent is not None:
        desc.parent_uuid = parent
    if pid is not None:
        desc.process.pid = pid
        desc.process.process_name = name
    if counter:
        desc.counter.SetInParent()
    return packet


def _event(pb: Any, ts: int, track: int, kind: int, name: str | None = None,
           args: Mapping[str, int] | None = None, value: int | None = None) -> Any:
    packet = pb.TracePacket(timestamp=ts, trusted_packet_sequence_id=SEQUENCE_ID)
    ev = packet.track_event
    ev.type = kind
    ev.track_uuid = track
    if name is not None:
        ev.name = name
    if value is not None:
        ev.counter_value = value
    for key, val in (args or {}).items():
        ann = ev.debug_annotations.add()
        ann.name = key
        ann.int_value = val
    return packet


def _run_packets(pb: Any, index: int, label: str, tables: Mapping[str, pa.Table]
                 ) -> Iterator[Any]:
    base = (index + 1) * _RUN_STRIDE
    yield _descriptor(pb, base, f"{label}", pid=index + 1)
    begin, end = pb.TrackEvent.TYPE_SLICE_BEGIN, pb.TrackEvent.TYPE_SLICE_END
    blocks = tables["blocks"].to_pylist()
    by_vcpu: dict[int, list[dict[str, Any]]] = {}
    for row in blocks:
        by_vcpu.setdefault(int(row["vcpu"]), []).append(row)
    for v in sorted(by_vcpu):
        track = base + 1 + v
        yield _descriptor(pb, track, f"vcpu {v}", base)
        last = None
        for row in sorted(by_vcpu[v], key=lambda r: (r["start"], r["end"])):
            start = row["start"] if last is None else max(row["start"], last)
            if row["end"] < start:
                continue
            name = str(row["cause"]) + (f" x{row['count']}" if row["count"] > 1 else "")
            args = {"count": int(row["count"]), "each_ns": int(row["each_ns"])}
            if row.get("root") is not None:
                args["root"] = int(row["root"])
            yield _event(pb, int(start), track, begin, name, args)
            yield _event(pb, int(row["end"]), track, end)
            last = row["end"]
    yield from _zap_packets(pb, base, tables, begin, end)
    yield from _counter_packets(pb, base, tables)


def _zap_packets(pb: Any, base: int, tables: Mapping[str, pa.Table], begin: int, end: int
                 ) -> Iterator[Any]:
    roots = tables.get("roots")
    if roots is None:
        return
    zaps: dict[str, list[tuple[int, int, int]]] = {}
    for r in roots.to_pylist():
        if r.get("zap_start") is not None and r.get("zapped_by"):
            stop = r["zap_end"] if r.get("zap_end") is not None else r["zap_start"]
            zaps.setdefault(str(r["zapped_by"]), []).append(
                (int(r["zap_start"]), int(stop), int(r["root"])))
    for k, name in enumerate(sorted(zaps)):
        track = base + (1 << 20) + k
        yield _descriptor(pb, track, f"zapper {name}", base)
        last = None
        for start, stop, root in sorted(zaps[name]):
            start = start if last is None else max(start, last)
            if stop < start:
                continue
            yield _event(pb, start, track, begin, f"zap root {root}", {"root": root})
            yield _event(pb, stop, track, end)
            last = stop


def _counter_packets(pb: Any, base: int, tables: Mapping[str, pa.Table]) -> Iterator[Any]:
    history = tables.get("refcounts")
    if history is None or history.num_rows == 0:
        return
    rows = history.select(["ts", "root", "count"]).to_pylist()
    by_root: dict[int, list[tuple[int, int]]] = {}
    for r in rows:
        by_root.setdefault(int(r["root"]), []).append((int(r["ts"]), int(r["count"])))
    counter = pb.TrackEvent.TYPE_COUNTER
    for root in sorted(by_root):
        track = base + (2 << 20) + root % (1 << 20) + (root >> 20) * (1 << 22)
        yield _descriptor(pb, track, f"root {root} refcount", base, counter=True)
        for ts, count in sorted(by_root[root], key=lambda p: p[0]):
            yield _event(pb, ts, track, counter, value=count)
