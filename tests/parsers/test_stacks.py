"""Stack records (``options/stacktrace``, ``options/userstacktrace``) as data: the ``stacks``
table from the real recording of ``sample_traces/stacks_*`` in every rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pytest
from conftest import GOLDEN, SAMPLES, check_golden
from hypothesis import given
from hypothesis import strategies as st

from parsers import read_trace
from parsers.stacks import STACKS_SCHEMA, function_name
from parsers.text.stacks import parse_frame
from parsers.trace import Trace

TEXT = SAMPLES / "stacks_teardown.txt"
DAT = SAMPLES / "stacks_teardown.dat"
REPORT = SAMPLES / "stacks_teardown.report.txt"


def _records(trace: Trace) -> list[tuple[object, ...]]:
    """Per frame, independent of seq numbering and timestamp precision: the CPU, the owning
    event's name, the record's name, depth, and the frame (kernel) or address (user)."""
    ev = trace.events.select(["seq", "event"]).to_pydict()
    name = dict(zip(ev["seq"], (str(e) for e in ev["event"]), strict=True))
    rows = trace.stacks.to_pylist()
    return [(r["cpu"], name.get(r["event_seq"]), name[r["seq"]], r["depth"],
             r["frame"] if r["kind"] == "kernel" else r["address"]) for r in rows]


def test_text_trace_dat_and_report_give_the_same_stacks() -> None:
    text, dat, report = read_trace(TEXT), read_trace(DAT), read_trace(REPORT)
    assert text.stacks.schema.equals(STACKS_SCHEMA)
    assert text.stacks.num_rows == 1223
    assert _records(text) == _records(dat) == _records(report)
    assert text.event_counts() == dat.event_counts() == report.event_counts()
    assert text.event_counts()["kernel_stack"] == 91


def test_golden_stacks_table(update_golden: bool) -> None:
    df = read_trace(TEXT).stacks.slice(0, 60).to_pandas()
    check_golden(GOLDEN / "stacks_teardown.stacks.csv", df.to_csv(index=False), update_golden)


def test_info_counts_stack_records_as_events_not_skipped_lines() -> None:
    info = read_trace(TEXT).info()
    assert info["skipped_lines"] == {}
    assert info["event_counts"]["kernel_stack"] == 91
    assert info["event_counts"]["user_stack"] == 91
    assert info["events"] == 273
    assert info["stack_frames"] == 1223
    json.dumps(info)


def test_trace_dat_frames_carry_addresses_and_kallsyms_names() -> None:
    stacks = read_trace(DAT).stacks
    assert stacks.column("address").null_count == 0
    kernel = stacks.filter(pc.equal(stacks.column("kind").cast("string"), "kernel"))
    assert kernel.column("frame").null_count == 0
    assert "kvm_mmu_notifier_release" in set(kernel.column("frame").to_pylist())


def test_owner_is_the_previous_event_on_the_same_cpu() -> None:
    """The recording interleaves CPUs: the kvm_mmu_zap_all_fast on CPU 1 is followed by a
    CPU 0 stack; its own stack comes 75 lines later, after CPU 0's records."""
    t = read_trace(SAMPLES / "stacks_interleaved.txt")
    ev = t.events.to_pandas()
    fast = int(ev.loc[ev["event"] == "kvm_mmu_zap_all_fast", "seq"].iloc[0])
    stacks = t.stacks.to_pandas()
    mine = stacks[stacks["event_seq"] == fast]
    assert list(mine.loc[mine["kind"] == "kernel", "frame"])[:3] == [
        "trace_event_raw_event_kvm_mmu_zap_all_fast", "kvm_mmu_zap_all_fast", "kvm_set_memslot"]
    assert (mine["cpu"] == 1).all() and int(mine["seq"].min()) - fast > 70
    cpu0_next = stacks[stacks["seq"] == fast + 1]
    assert (cpu0_next["cpu"] == 0).all() and (cpu0_next["event_seq"] < fast).all()
    assert t.metadata.skipped == {}
    assert stacks["event_seq"].notna().all()


@pytest.mark.parametrize("chunk", [64, 300, 4096])
def test_frames_that_run_across_chunks_keep_their_record(chunk: int) -> None:
    whole = read_trace(TEXT)
    from parsers import read_ftrace_text

    small = read_ftrace_text(TEXT, chunk_bytes=chunk)
    assert small.stacks.equals(whole.stacks)
    assert small.metadata.skipped == whole.metadata.skipped


def test_event_filter_drops_the_frames_of_dropped_records() -> None:
    t = read_trace(TEXT, events=["kvm_mmu_zap_all_fast"])
    assert t.stacks.num_rows == 0
    assert set(t.event_counts()) == {"kvm_mmu_zap_all_fast"}


def test_whole_recording_text_equals_its_frame_lines() -> None:
    t = read_trace(SAMPLES / "stacks_full.txt.gz")
    assert t.metadata.skipped == {"header": 12}
    assert t.stacks.num_rows == 154899  # grep -c ' => ' of the recording
    assert t.info()["events"] == 33426  # entries-in-buffer of its header
    assert t.stacks.column("event_seq").null_count == 0


def test_frame_line_without_a_record_is_counted() -> None:
    lines = (TEXT.read_text().splitlines(keepends=True))
    orphan = [" => kvm_set_memslot\n", *lines]
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.txt"
        p.write_text("".join(orphan))
        t = read_trace(p)
    assert t.metadata.skipped == {"stack_frame_orphan": 1}
    assert t.stacks.num_rows == 1223


_SYMBOL = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,30}", fullmatch=True).filter(
    lambda s: not all(c in "0123456789abcdefABCDEF" for c in s))


@given(_SYMBOL, st.integers(0, 2**64 - 1), st.sampled_from(["", "+0x1c/0x40"]))
def test_parse_frame_round_trips_the_kernel_renderings(sym: str, addr: int, off: str) -> None:
    assert parse_frame(f" {sym}{off}") == (sym + off, None)
    assert parse_frame(f" {sym}{off} <{addr:016x}>") == (sym + off, addr)  # sym-addr
    assert parse_frame(f" {sym} ({addr:x})") == (sym, addr)  # trace-cmd report
    assert parse_frame(f"  <{addr:016x}>") == (None, addr)  # user frame
    assert function_name(sym + off) == sym


def _same_stacks(a: Trace, b: Trace) -> None:
    assert a.events.equals(b.events)
    assert a.stacks.equals(b.stacks)
    assert a.metadata == b.metadata


@pytest.mark.parametrize("name", ["stacks_teardown.txt", "stacks_teardown.report.txt",
                                  "stacks_interleaved.txt"])
@pytest.mark.parametrize("chunk", [64, 300, 1500])
def test_workers_give_the_same_stacks_with_chunks_inside_frame_runs(name: str,
                                                                    chunk: int) -> None:
    """Chunks (and worker ranges) this small start inside runs of frame lines, and records
    whose owner is in an earlier chunk or range: one process and two give the same table."""
    from parsers import read_ftrace_text
    from parsers.text.source import iter_line_chunks

    path = SAMPLES / name
    starts = [c.lines[0].as_py() for c in iter_line_chunks(path, chunk_bytes=chunk)]
    assert any(s.lstrip().startswith("=>") for s in starts)  # frame runs cut by chunks
    one = read_ftrace_text(path, chunk_bytes=chunk, workers=1)
    assert one.stacks.num_rows and one.stacks.column("event_seq").null_count == 0
    _same_stacks(one, read_ftrace_text(path, chunk_bytes=chunk, workers=2))
    _same_stacks(one, read_trace(path))


def test_orphan_frames_at_a_range_start_are_counted_the_same(tmp_path: Path) -> None:
    """Frame lines after a line that is no record, where a chunk starts, in both paths."""
    from parsers import read_ftrace_text

    lines = TEXT.read_text().splitlines(keepends=True)
    at = next(i for i, ln in enumerate(lines)
              if i > 400 and ": kvm_mmu" in ln and "=>" not in ln)
    lines[at + 1:at + 1] = [" => orphan_frame\n"] * 30
    path = tmp_path / "orphans.txt"
    path.write_text("".join(lines))
    one = read_ftrace_text(path, chunk_bytes=200, workers=1)
    assert one.metadata.skipped == {"stack_frame_orphan": 30}
    _same_stacks(one, read_ftrace_text(path, chunk_bytes=200, workers=2))


def test_trace_dat_stack_windows_decoded_in_worker_processes() -> None:
    """The bundled excerpt has one compressed window, so ``read_trace(workers=2)`` decodes
    it here; feed it to the worker pool anyway: the caller words come back over Arrow IPC
    and name the same frames."""
    from parsers.tracedat import parallel
    from parsers.tracedat.header import read_info
    from parsers.tracedat.source import make_decoder, open_mapped
    from parsers.tracedat.stream import decode_span, plan_spans

    path = str(DAT)
    data = open_mapped(path)
    info = read_info(data, path)
    dec = make_decoder(path, info, None, False, 16)
    buf = info.buffers[0]
    spans = plan_spans(dec, data, buf, buf.cpus[0])
    assert spans
    pool = parallel._Pool(dec, [parallel._Task(0, 0, s) for s in spans], 2)
    try:
        there = list(parallel._stream(dec, data, pool, 0, 0, spans))
        assert pool.exe is not None  # the windows did go to the workers
    finally:
        pool.close()
    here = list(decode_span(make_decoder(path, info, None, False, 16), data, 0, buf,
                            buf.cpus[0], spans[0]))
    for name in ("kernel_stack", "user_stack"):
        got = [w for b in there for w in b.typed[name][1]["caller"].tolist()]
        want = [w for b in here for w in b.typed[name][1]["caller"].tolist()]
        assert got == want and len(got) == 91


def test_damaged_kernel_stack_record_is_a_warning_with_its_frames_kept() -> None:
    """A ``kernel_stack`` whose ``size`` counts more words than the record holds (the
    recording's own format: ``int size`` at 8, ``caller[]`` at 16) keeps the words it has
    and warns through the decoder, as every other trace.dat damage does."""
    import numpy as np

    from parsers.tracedat import stream
    from parsers.tracedat.header import read_info
    from parsers.tracedat.pages import PageRecords
    from parsers.tracedat.source import make_decoder, open_mapped
    from parsers.tracedat.stacks import words

    path = str(DAT)
    dec = make_decoder(path, read_info(open_mapped(path), path), None, False, 16)
    ev = next(e for e in dec.formats.values() if e.name == "kernel_stack")
    head = np.array([ev.id, 0, 0], "<u2").tobytes() + b"\0\0"  # type, flags, pid 0
    good = head + np.array([2], "<i4").tobytes() + b"\0" * 4 + np.array(
        [0xFFFFFFFF81000010, 0xFFFFFFFF81000020], "<u8").tobytes()
    bad = head + np.array([9], "<i4").tobytes() + b"\0" * 4 + np.array(
        [0xFFFFFFFF81000030, 0xFFFFFFFF81000040, 0xFFFFFFFF81000050], "<u8").tobytes()
    buf = np.frombuffer(good + bad, np.uint8)
    n = np.array([0, len(good)], np.int64)
    recs = PageRecords(n, np.array([len(good), len(bad)], np.int64), np.zeros(2, np.uint64),
                       np.zeros(2, np.int64), np.zeros(1, bool), np.zeros(1, np.int64),
                       np.zeros(1, np.uint64), None)
    typed: stream.Typed = {}
    stream._stack_event(dec, ev, buf, recs, np.arange(2), typed, (3, 4096))
    rows, cols = typed["kernel_stack"]
    assert [words(w) for w in cols["caller"]] == [
        [0xFFFFFFFF81000010, 0xFFFFFFFF81000020],
        [0xFFFFFFFF81000030, 0xFFFFFFFF81000040, 0xFFFFFFFF81000050]]
    assert dec.warnings == [
        f"CPU 3: 1 kernel_stack records shorter than the frames they declare (damaged?), "
        f"their frames kept as far as they go; the first one's data at byte {4096 + len(good)}"]
