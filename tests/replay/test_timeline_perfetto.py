"""The Perfetto timeline, decoded with the perfetto package's own protobuf classes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace as TraceProto
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import TracePacket, TrackEvent
from report_runs import (
    blocks_table,
    mixed_runs,
    observed_tables,
    random_blocks,
    random_refcounts,
    scenario_runs,
)

from parsers.errors import KvmMmuError, OutputError
from replay.errors import ReplayConfigError
from replay.render.timeline import write_timeline

CLEARED = TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
NEEDS = TracePacket.SEQ_NEEDS_INCREMENTAL_STATE


@dataclass
class Decoded:
    """A decoded timeline, checked for validity as it is read."""

    processes: dict[int, str] = field(default_factory=dict)  # uuid -> label
    tracks: dict[int, tuple[str, int, bool]] = field(default_factory=dict)  # uuid -> (name, parent, counter)
    slices: dict[int, list[tuple[int, int, str, dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(list))
    counters: dict[int, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))

    def by_name(self, label: str) -> dict[str, int]:
        (puuid,) = [u for u, name in self.processes.items() if name == label]
        return {name: u for u, (name, parent, _) in self.tracks.items() if parent == puuid}


def _args(ev: Any) -> dict[str, Any]:
    return {a.name: (a.bool_value if a.HasField("bool_value") else a.int_value)
            for a in ev.debug_annotations}


def decode(data: bytes) -> Decoded:
    """Decode and check: sequences, flags, uuid references, slice nesting, counter order."""
    trace = TraceProto.FromString(data)
    out = Decoded()
    seen_seq: set[int] = set()
    open_slices: dict[int, tuple[int, str, dict[str, Any]]] = {}
    last_ts: dict[int, int] = {}
    events = []
    for p in trace.packet:
        seq = p.trusted_packet_sequence_id
        assert seq > 0
        if seq not in seen_seq:
            assert p.sequence_flags & CLEARED and p.first_packet_on_sequence
            seen_seq.add(seq)
        if p.HasField("track_descriptor"):
            td = p.track_descriptor
            assert td.uuid not in out.processes and td.uuid not in out.tracks
            if td.HasField("process"):
                out.processes[td.uuid] = td.process.process_name
            else:
                assert td.parent_uuid in out.processes
                out.tracks[td.uuid] = (td.name, td.parent_uuid, td.HasField("counter"))
        else:
            assert p.HasField("track_event") and p.sequence_flags == NEEDS
            events.append(p)
    for p in events:
        ev = p.track_event
        name, _, counter = out.tracks[ev.track_uuid]
        assert p.timestamp >= last_ts.get(ev.track_uuid, 0), name
        last_ts[ev.track_uuid] = p.timestamp
        if counter:
            assert ev.type == TrackEvent.TYPE_COUNTER
            out.counters[ev.track_uuid].append((p.timestamp, ev.counter_value))
        elif ev.type == TrackEvent.TYPE_SLICE_BEGIN:
            assert ev.track_uuid not in open_slices, f"{name}: slices overlap"
            open_slices[ev.track_uuid] = (p.timestamp, ev.name, _args(ev))
        else:
            assert ev.type == TrackEvent.TYPE_SLICE_END and ev.track_uuid in open_slices
            start, sname, args = open_slices.pop(ev.track_uuid)
            out.slices[ev.track_uuid].append((start, p.timestamp, sname, args))
    assert not open_slices, "every slice begin has an end"
    return out


def _vcpu_slices(dec: Decoded, label: str) -> Iterator[tuple[int, tuple[int, int, str, dict[str, Any]]]]:
    for name, uuid in dec.by_name(label).items():
        if name.startswith("vcpu "):
            vcpu = int(name.split()[1])
            for s in dec.slices[uuid]:
                yield vcpu, s


def test_structure_matches_the_tables(tmp_path: Path) -> None:
    runs = mixed_runs()
    dec = decode(write_timeline(runs, tmp_path / "t.pftrace").read_bytes())
    assert sorted(dec.processes.values()) == sorted(runs)
    for label, tables in runs.items():
        blocks = tables["blocks"]
        got = sorted((v, s, e, n, a["n_blocks"], a["each_ns"], a.get("root"))
                     for v, (s, e, n, a) in _vcpu_slices(dec, label))
        want = sorted((r["vcpu"], r["start"], r["end"], r["cause"], r["n_blocks"], r["each_ns"],
                       r["root"]) for r in blocks.to_pylist())
        assert got == want
        tracks = dec.by_name(label)
        for r in tables["roots"].to_pylist():
            if r["zap_start"] is None:
                continue
            zaps = dec.slices[tracks[f"zap: {r['zapped_by']}"]]
            assert (r["zap_start"], r["zap_end"], f"zap root {r['root']}") in [z[:3] for z in zaps]
        per_root: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for row in tables["refcounts"].to_pylist():
            per_root[row["root"]].append((row["ts"], row["refcount"]))
        for root, history in per_root.items():
            assert dec.counters[tracks[f"refcount root {root}"]] == sorted(history,
                                                                          key=lambda h: h[0])
    lost = [a["lost"] for _, (_, _, _, a) in _vcpu_slices(dec, "observed")]
    assert sorted(lost) == sorted(observed_tables()["blocks"].column("lost").to_pylist())


def test_overlapping_blocks_go_on_extra_tracks(tmp_path: Path) -> None:
    rows = [dict(vcpu=2, start=0, end=100, cause="exit", n_blocks=1, each_ns=100, root=None),
            dict(vcpu=2, start=50, end=150, cause="preempted", n_blocks=1, each_ns=100, root=None),
            dict(vcpu=2, start=100, end=100, cause="unknown", n_blocks=1, each_ns=0, root=None)]
    dec = decode(write_timeline({"observed": {"blocks": blocks_table(rows)}},
                                tmp_path / "t.pftrace").read_bytes())
    tracks = dec.by_name("observed")
    assert sorted(tracks) == ["vcpu 2", "vcpu 2 #1"]
    assert [s[2] for s in dec.slices[tracks["vcpu 2"]]] == ["exit", "unknown"]
    assert [s[2] for s in dec.slices[tracks["vcpu 2 #1"]]] == ["preempted"]


def test_deterministic_bytes(tmp_path: Path) -> None:
    a = write_timeline(mixed_runs(), tmp_path / "a.pftrace").read_bytes()
    b = write_timeline(mixed_runs(), tmp_path / "b.pftrace").read_bytes()
    assert a == b


def test_failure_mid_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import replay.render.timeline as tp

    real = tp.timeline_packets

    def broken(runs: Any) -> Iterator[bytes]:
        gen = real(runs)
        yield next(gen)
        yield next(gen)
        raise OSError("disk full")

    monkeypatch.setattr(tp, "timeline_packets", broken)
    with pytest.raises(OutputError, match="t.pftrace: cannot write: disk full"):
        write_timeline(mixed_runs(), tmp_path / "t.pftrace")
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    rows = [dict(vcpu=0, start=-5, end=10, cause="exit", n_blocks=1, each_ns=15, root=None)]
    with pytest.raises(ReplayConfigError, match="< 0"):
        write_timeline({"observed": {"blocks": blocks_table(rows)}}, tmp_path / "t.pftrace")
    with pytest.raises(ReplayConfigError, match="no 'blocks'"):
        write_timeline({"sync": {}}, tmp_path / "t.pftrace")
    with pytest.raises(KvmMmuError, match="parent directory"):
        write_timeline(mixed_runs(), tmp_path / "no" / "t.pftrace")
    assert list(tmp_path.iterdir()) == []


def test_one_tib_run(tmp_path: Path) -> None:
    runs = scenario_runs(1 << 40, ("sync", "async", "5.18", "6.4", "6.6", "6.9"))
    path = write_timeline(runs, tmp_path / "t.pftrace")
    assert path.stat().st_size < 2_000_000
    dec = decode(path.read_bytes())
    tracks = dec.by_name("sync")
    (zap,) = dec.slices[tracks["zap: vcpu4"]]
    assert zap[2] == "zap root 0" and zap[3]["leaves_zapped"] > 0


@pytest.mark.slow
def test_sixty_four_tib_run_stays_small(tmp_path: Path) -> None:
    runs = scenario_runs(64 << 40, ("sync", "async", "6.9"))
    path = write_timeline(runs, tmp_path / "t.pftrace")
    assert path.stat().st_size < 10_000_000
    decode(path.read_bytes())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(blocks=random_blocks(), refs=random_refcounts())
def test_random_tables_give_valid_traces(tmp_path: Path, blocks: pa.Table, refs: pa.Table) -> None:
    runs = {"observed": {"blocks": blocks, "refcounts": refs}, "async": {"blocks": blocks}}
    data = write_timeline(runs, tmp_path / "t.pftrace", force=True).read_bytes()
    assert data == write_timeline(runs, tmp_path / "u.pftrace", force=True).read_bytes()
    dec = decode(data)
    assert sum(1 for _ in _vcpu_slices(dec, "observed")) == blocks.num_rows
    assert sum(len(v) for v in dec.counters.values()) == refs.num_rows


def test_chunked_encoding_gives_the_same_bytes(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import replay.render.timeline as tp

    whole = write_timeline(mixed_runs(), tmp_path / "a.pftrace").read_bytes()
    monkeypatch.setattr(tp, "EVENTS_PER_CHUNK", 3)
    assert write_timeline(mixed_runs(), tmp_path / "b.pftrace").read_bytes() == whole
