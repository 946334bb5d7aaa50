"""Trace -> write_perfetto -> read_perfetto keeps every column Perfetto keeps."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from perfetto_traces import events_view, synthetic_trace, typed_view

from parsers.perfetto.reader import read_perfetto
from parsers.perfetto.values import PAYLOAD_FIELD
from parsers.perfetto.writer import LOSSY_COLUMNS, write_perfetto
from parsers.schema import EVENTS_SCHEMA, LOST_EVENTS
from parsers.trace import Trace, TraceMetadata
from parsers.typed_batch import build_typed_batch

KEPT = ("ts", "cpu", "pid", "tgid", "comm", "event")
FORMS = [("dense", False), ("legacy", False), ("dense", True), ("legacy", True)]


def _trip(trace: Trace, tmp_path: Path, encoding: str, compress: bool) -> Trace:
    out = tmp_path / f"t_{encoding}_{compress}.pftrace"
    write_perfetto(trace, out, encoding=encoding, compress=compress,  # type: ignore[arg-type]
                   force=True)
    return read_perfetto(out)


def _assert_same(original: Trace, back: Trace, free_text: set[str]) -> None:
    assert events_view(back, KEPT).equals(events_view(original, KEPT))
    assert back.events.column("seq").to_pylist() == list(range(original.events.num_rows))
    names = original.events.column("event").cast(pa.string())
    exact = pc.invert(pc.is_in(names, pa.array(sorted(free_text), pa.string())))
    assert back.events.filter(exact).column("args").equals(
        original.events.filter(exact).column("args"))
    for name in original.names:
        want, got = typed_view(original, name), typed_view(back, name)
        if name == LOST_EVENTS:
            want, got = want.drop_columns(["lost"]), got.drop_columns(["lost"])
        if name in ("kvm_entry", "kvm_exit"):
            keep = ["seq", "ts", "cpu", "pid", "vcpu_id"]
            want, got = want.select(keep), got.select(keep)
        if name == "kvm_userspace_exit":
            want, got = want.drop_columns(["errno"]), got.drop_columns(["errno"])
        assert got.equals(want), name


@pytest.mark.parametrize(("encoding", "compress"), FORMS)
def test_synthetic_round_trip(tmp_path: Path, encoding: str, compress: bool) -> None:
    original = synthetic_trace()
    back = _trip(original, tmp_path, encoding, compress)
    _assert_same(original, back, {"vcpu_match_mmio", "kvm_age_hva"})
    args = back.events.column("args").to_pylist()
    assert args[10] == "end=150 start=140"  # compiled KvmAgeHvaFtraceEvent: proto field order
    assert args[9] == f"{PAYLOAD_FIELD}=gva 0x4000 gpa 0xd0000000 Write GVA"  # free text
    assert args[0] == "load=1"  # compiled KvmFpuFtraceEvent
    assert args[8] == "rip=40000001c069 len=2 failed=-1"
    assert back.lost_events() == {0: None, 1: 16496}
    assert back.table("kvm_mmu_get_page").column("gfn").to_pylist() == [2**64 - 1]
    assert back.table("kvm_mmu_set_spte").column("u").to_pylist() == [-1]
    assert back.events.column("latency_flags").null_count == back.events.num_rows  # lossy
    assert "latency_flags" in " ".join(LOSSY_COLUMNS)


def test_writer_is_deterministic_and_atomic(tmp_path: Path) -> None:
    trace = synthetic_trace()
    a, b = tmp_path / "a.pftrace", tmp_path / "b.pftrace"
    write_perfetto(trace, a)
    write_perfetto(trace, b)
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pftrace", "b.pftrace"]
    with pytest.raises(ValueError, match="encoding"):
        write_perfetto(trace, tmp_path / "c.pftrace", encoding="json")  # type: ignore[arg-type]
    assert not (tmp_path / "c.pftrace").exists()


def test_compiled_kvm_events_keep_only_what_perfetto_keeps(tmp_path: Path) -> None:
    back = _trip(synthetic_trace(), tmp_path, "dense", False)
    entry = back.table("kvm_entry")
    assert entry.column("vcpu_id").to_pylist() == [0, 1]  # from "CPU n/KVM" names
    assert entry.column("rip").null_count == entry.num_rows
    assert back.table("kvm_userspace_exit").column("errno").to_pylist() == [None]
    assert any("arm64-shaped" in w for w in back.metadata.warnings)


def test_perfetto_round_trip_is_a_fixed_point(tmp_path: Path) -> None:
    once = _trip(synthetic_trace(), tmp_path, "dense", False)
    twice = _trip(once, tmp_path, "legacy", True)
    cols = tuple(once.events.column_names)
    assert events_view(twice, cols).equals(events_view(once, cols))
    for name in once.names:
        assert twice.table(name).equals(once.table(name)), name


@pytest.mark.parametrize("sample", ["tracefs_record_tgid.txt", "trace_pipe_lost_events.txt"])
@pytest.mark.parametrize("encoding", ["dense", "legacy"])
def test_real_text_trace_round_trip(tmp_path: Path, sample: str, encoding: str) -> None:
    from parsers import read_trace

    original = read_trace(SAMPLES / sample)
    back = _trip(original, tmp_path, encoding, False)
    free = {n for n in original.event_counts() if n not in original.names}
    _assert_same(original, back, free)
    assert back.event_counts() == original.event_counts()
    if "lost" in sample:  # one marker per CPU: counts come back from FtraceStats
        assert back.lost_events() == original.lost_events()


_U64 = st.integers(0, 2**64 - 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gfn=_U64, role=st.integers(0, 2**32 - 1), gen=st.integers(0, 255),
       u=st.integers(-128, 127), ts=st.integers(0, 2**63 - 1),
       pid=st.one_of(st.none(), st.integers(0, 2**31 - 1)),
       encoding=st.sampled_from(["dense", "legacy"]))
def test_typed_values_round_trip(tmp_path: Path, gfn: int, role: int, gen: int, u: int, ts: int,
                                 pid: int | None, encoding: str) -> None:
    events = pa.table({
        "ts": pa.array([ts, ts], pa.int64()), "seq": pa.array([0, 1], pa.int64()),
        "cpu": pa.array([3, 3], pa.int32()), "pid": pa.array([pid, pid], pa.int32()),
        "tgid": pa.nulls(2, pa.int32()), "comm": pa.nulls(2, pa.string()),
        "event": pa.array(["kvm_mmu_get_page", "kvm_mmu_set_spte"]),
        "latency_flags": pa.nulls(2, pa.string()), "instance": pa.nulls(2, pa.string()),
        "args": pa.nulls(2, pa.string())})
    events = pa.table([events.column(f.name).cast(f.type) for f in EVENTS_SCHEMA],
                      schema=EVENTS_SCHEMA)
    one = {"seq": pa.array([0]), "ts": pa.array([ts]), "cpu": pa.array([3], pa.int32()),
           "pid": pa.array([pid], pa.int32())}
    page = build_typed_batch("kvm_mmu_get_page", **one, fields={
        "gfn": pa.array([gfn], pa.uint64()), "role": pa.array([role], pa.uint32()),
        "mmu_valid_gen": pa.array([gen], pa.uint8())})
    one["seq"] = pa.array([1])
    spte = build_typed_batch("kvm_mmu_set_spte", **one, fields={"u": pa.array([u], pa.int8())})
    trace = Trace(events, {"kvm_mmu_get_page": pa.Table.from_batches([page]),
                           "kvm_mmu_set_spte": pa.Table.from_batches([spte])},
                  TraceMetadata(source="h", format="test"))
    back = _trip(trace, tmp_path, encoding, False)
    assert back.table("kvm_mmu_get_page").equals(trace.table("kvm_mmu_get_page"))
    assert back.table("kvm_mmu_set_spte").equals(trace.table("kvm_mmu_set_spte"))
    assert back.events.select(list(KEPT)).equals(trace.events.select(list(KEPT)))


@pytest.mark.parametrize(("clock", "named"), [("global", True), ("local", True),
                                              ("mono_raw", True), ("x86-tsc", False)])
def test_the_clock_survives_or_is_a_note(tmp_path: Path, clock: str, named: bool) -> None:
    """Perfetto's bundles carry global/local/mono_raw in ``ftrace_clock``; other clocks and
    tick units cannot be carried, and the writer says so."""
    from dataclasses import replace

    from parsers import read_trace

    src = read_trace(SAMPLES / "tracefs_record_tgid.txt")
    meta = replace(src.metadata, clock=clock, ts_unit="ns" if named else "ticks")
    written = write_perfetto(Trace(src.events, {n: src.table(n) for n in src.names}, meta),
                             tmp_path / "t.pftrace")
    back = read_trace(tmp_path / "t.pftrace")
    if named:
        assert back.metadata.clock == clock and written.notes == []
    else:
        assert back.metadata.clock is None
        assert any("no name for the x86-tsc clock" in n for n in written.notes)
        assert any("ticks of the x86-tsc clock" in n for n in written.notes)
        assert any("FTRACE_CLOCK_UNKNOWN" in w for w in back.metadata.warnings)
