"""Stack records (``options/stacktrace``, ``options/userstacktrace``) as data: the ``stacks``
table from the real recording of ``sample_traces/stacks_*`` in every rendering."""

from __future__ import annotations

import json

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
