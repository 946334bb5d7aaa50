"""The Perfetto writer's and reader's fast paths against their references.

* The writer places most rows in bundles many at a time (``_Writer.plain_rows``); with
  ``one_by_one`` every row goes through the row-by-row state machine (``_Writer.event``).
  Both must write the same bytes, on every bundled sample and on hypothesis-made traces
  (CPU switches, timestamps that tie or go back, comm changes, loss markers, full bundles).
* What is written must parse with the perfetto package's own protos, and the events that
  python-protobuf finds there (timestamp, pid, event name) must be the rows of the trace and
  what :func:`read_perfetto` returns; the same for the bundled Perfetto samples.
"""

from __future__ import annotations

import functools
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import SAMPLES
from google.protobuf import descriptor_pb2
from google.protobuf.unknown_fields import UnknownFieldSet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from perfetto_traces import _TYPED, ROWS, _col, _field_type

import parsers.perfetto.writer as writer_module
from parsers import read_trace
from parsers.perfetto.reader import read_perfetto
from parsers.perfetto.writer import write_perfetto
from parsers.schema import BUFFER_STARTED, EVENTS_SCHEMA, LOST_EVENTS
from parsers.trace import Trace, TraceMetadata
from parsers.typed_batch import build_typed_batch

Event = tuple[int, int | None, str]
_SKIP = {".md", ".json", ".log", ".sh", ".c"}
TRACES = sorted(p for p in SAMPLES.rglob("*") if p.is_file() and p.suffix not in _SKIP
                and p.name != "Makefile")


def _write(trace: Trace, path: Path, encoding: str, bundle_events: int, one_by_one: bool,
           monkeypatch: pytest.MonkeyPatch, compress: bool = False) -> bytes:
    if one_by_one:
        monkeypatch.setattr(writer_module, "_write_rows", functools.partial(
            writer_module._write_rows, one_by_one=True))
    try:
        write_perfetto(trace, path, encoding=encoding,  # type: ignore[arg-type]
                       bundle_events=bundle_events, compress=compress, force=True)
    finally:
        monkeypatch.undo()
    return path.read_bytes()


def _assert_fast_is_reference(trace: Trace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              encoding: str, bundle_events: int) -> bytes:
    fast = _write(trace, tmp_path / "fast.pftrace", encoding, bundle_events, False, monkeypatch)
    ref = _write(trace, tmp_path / "ref.pftrace", encoding, bundle_events, True, monkeypatch)
    assert fast == ref
    return fast


def _dense_names(bundle: Any, names: dict[int, str]) -> None:
    for desc in bundle.generic_event_descriptors:
        proto = descriptor_pb2.DescriptorProto.FromString(desc.event_descriptor)
        names[desc.field_id] = proto.name


def _compact(bundle: Any, running: dict[int, int | None], out: list[Event]) -> None:
    """Events of the bundle's compact sched arrays (delta-coded timestamps; a switch's pid
    is the task its CPU ran before, the previous switch's next_pid)."""
    if not bundle.HasField("compact_sched"):
        return
    cs = bundle.compact_sched
    ts = 0
    for delta, next_pid in zip(cs.switch_timestamp, cs.switch_next_pid, strict=True):
        ts += delta
        out.append((ts, running.get(bundle.cpu), "sched_switch"))
        running[bundle.cpu] = next_pid
    ts = 0
    for delta in cs.waking_timestamp:
        ts += delta
        out.append((ts, None, "sched_waking"))


def protobuf_events(data: bytes) -> list[Event]:
    """``(ts, pid, name)`` of every ftrace event, as python-protobuf parses the trace."""
    out: list[Event] = []
    names: dict[int, str] = {}
    running: dict[int, int | None] = {}
    packets = list(pb.Trace.FromString(data).packet)
    while packets:
        packet = packets.pop(0)
        if packet.HasField("compressed_packets"):
            inner = pb.Trace.FromString(zlib.decompress(packet.compressed_packets)).packet
            packets[:0] = list(inner)
            continue
        if not packet.HasField("ftrace_events"):
            continue
        bundle = packet.ftrace_events
        _dense_names(bundle, names)
        _compact(bundle, running, out)
        for ev in bundle.event:
            kind = ev.WhichOneof("event")
            if kind == "generic":
                name = ev.generic.event_name
            elif kind is not None:
                name = kind
            else:
                ids = [f.field_number for f in UnknownFieldSet(ev)]
                name = names[ids[0]]
            out.append((ev.timestamp, ev.pid if ev.HasField("pid") else None, name))
    return out


def _rows(trace: Trace, skip: set[str]) -> list[Event]:
    ev = trace.events
    return [(t, p, n) for t, p, n in zip(ev.column("ts").to_pylist(), ev.column("pid").to_pylist(),
                                         ev.column("event").cast(pa.string()).to_pylist(),
                                         strict=True) if n not in skip]


def _assert_protobuf_agrees(data: bytes, trace: Trace, back: Trace) -> None:
    found = Counter(protobuf_events(data))
    assert found == Counter(_rows(trace, {LOST_EVENTS, BUFFER_STARTED}))
    assert found == Counter(_rows(back, {LOST_EVENTS}))


@pytest.mark.parametrize("encoding", ["dense", "legacy"])
@pytest.mark.parametrize("sample", TRACES, ids=lambda p: str(p.relative_to(SAMPLES)))
def test_fast_writer_matches_reference_on_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  sample: Path, encoding: str) -> None:
    trace = read_trace(sample)
    for bundle_events in (1, 3, 1024) if trace.events.num_rows < 2000 else (1024,):
        data = _assert_fast_is_reference(trace, tmp_path, monkeypatch, encoding, bundle_events)
    _assert_protobuf_agrees(data, trace, read_perfetto(tmp_path / "fast.pftrace"))


@pytest.mark.parametrize("sample", sorted(SAMPLES.glob("*.pftrace")), ids=lambda p: p.name)
def test_reader_matches_protobuf_on_perfetto_samples(sample: Path) -> None:
    back = read_perfetto(sample)
    assert Counter(protobuf_events(sample.read_bytes())) == Counter(_rows(back, {LOST_EVENTS}))


def test_compressed_output_parses_with_perfetto_protos(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    trace = read_trace(SAMPLES / "trace_pipe_lost_events.txt")
    for encoding in ("dense", "legacy"):
        data = _write(trace, tmp_path / "c.pftrace", encoding, 64, False, monkeypatch, True)
        assert data == _write(trace, tmp_path / "r.pftrace", encoding, 64, True, monkeypatch,
                              True)
        _assert_protobuf_agrees(data, trace, read_perfetto(tmp_path / "c.pftrace"))


_ROW = st.tuples(st.integers(0, len(ROWS) - 1), st.sampled_from([0, 1, 2, None]),
                 st.sampled_from([0, 0, 1, 7, 100, -3]), st.booleans())


def generated_trace(picks: list[tuple[int, int | None, int, bool]]) -> Trace:
    """Rows copied from the synthetic trace's templates, with another CPU, a timestamp
    step (ties and steps back included) and sometimes another comm."""
    names = ("seq", "ts", "cpu", "pid", "tgid", "comm", "event", "args")
    rows: list[list[Any]] = []
    typed: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    templates = {name: dict(entries) for name, entries in _TYPED.items()}
    ts = 10_000
    for seq, (k, cpu, step, renamed) in enumerate(picks):
        row = list(ROWS[k])
        ts += step
        row[0], row[1], row[2] = seq, ts, cpu
        if renamed and row[5] is not None:
            row[5] = f"{row[5]}~"
        rows.append(row)
        if row[6] in templates and ROWS[k][0] in templates[row[6]]:
            typed.setdefault(row[6], []).append((seq, templates[row[6]][ROWS[k][0]]))
    cols = {n: [r[i] for r in rows] for i, n in enumerate(names)}
    cols["latency_flags"] = [None] * len(rows)
    cols["instance"] = [None] * len(rows)
    events = pa.table({f.name: _col(cols[f.name], f.type) for f in EVENTS_SCHEMA},
                      schema=EVENTS_SCHEMA)
    tables = {}
    for name, entries in typed.items():
        seqs = [s for s, _ in entries]
        keys = {key for _, f in entries for key in f}
        rb = build_typed_batch(
            name, seq=pa.array(seqs, pa.int64()), ts=pa.array([rows[s][1] for s in seqs]),
            cpu=pa.array([rows[s][2] for s in seqs], pa.int32()),
            pid=pa.array([rows[s][3] for s in seqs], pa.int32()),
            fields={key: pa.array([f.get(key) for _, f in entries], _field_type(name, key))
                    for key in keys})
        tables[name] = pa.Table.from_batches([rb])
    return Trace(events, tables, TraceMetadata(source="hypothesis", format="test"))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(_ROW, min_size=1, max_size=80),
       encoding=st.sampled_from(["dense", "legacy"]), bundle_events=st.sampled_from([1, 2, 5, 1024]))
def test_fast_writer_matches_reference_on_generated_traces(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        picks: list[tuple[int, int | None, int, bool]], encoding: str, bundle_events: int) -> None:
    trace = generated_trace(picks)
    data = _assert_fast_is_reference(trace, tmp_path, monkeypatch, encoding, bundle_events)
    _assert_protobuf_agrees(data, trace, read_perfetto(tmp_path / "fast.pftrace"))
