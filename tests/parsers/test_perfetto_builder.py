"""The reader on traces written by the perfetto package's own TraceProtoBuilder."""

from __future__ import annotations

import pyarrow as pa
import pytest
from perfetto_traces import EXPECTED_ROWS, builder_trace

from parsers.perfetto.reader import is_perfetto, iter_perfetto, read_perfetto

ENCODINGS = ["dense", "legacy"]


def _rows(trace):  # type: ignore[no-untyped-def]
    ev = trace.events
    cols = [ev.column(c).to_pylist() for c in ("ts", "cpu", "pid")]
    names = ev.column("event").cast(pa.string()).to_pylist()
    comm = ev.column("comm").cast(pa.string()).to_pylist()
    tgid = ev.column("tgid").to_pylist()
    return list(zip(cols[0], cols[1], cols[2], names, comm, tgid, strict=True))


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_rows_in_file_order(encoding: str, compress: bool) -> None:
    trace = read_perfetto(builder_trace(encoding, compress=compress))
    assert _rows(trace) == EXPECTED_ROWS
    assert trace.events.column("seq").to_pylist() == list(range(len(EXPECTED_ROWS)))
    assert ("compressed_packets" in trace.metadata.variants) == compress


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_generic_events_fill_typed_tables(encoding: str) -> None:
    trace = read_perfetto(builder_trace(encoding))
    get_page = trace.table("kvm_mmu_get_page").to_pylist()
    assert [r["root_count"] for r in get_page] == [3, 4]
    assert [r["created"] for r in get_page] == [True, False]
    assert get_page[0]["gfn"] == 0x100 and get_page[0]["role"] == 14084
    # role bits decoded from the role word (level 4, access wux, cr0_wp)
    assert (get_page[0]["level"], get_page[0]["access"], get_page[0]["cr0_wp"]) == (4, 7, True)
    fault = trace.table("kvm_page_fault").to_pylist()
    assert fault == [{"seq": 5, "ts": 1_150, "cpu": 1, "pid": 102, "vcpu_id": 1,
                      "guest_rip": 0xFFFFFFFF81000000, "fault_address": 0xD0000000,
                      "error_code": 6}]
    args = trace.events.column("args").to_pylist()
    assert args[1] is None and args[5] is None  # typed events keep no args text


def test_dense_ids_come_from_descriptors_not_constants() -> None:
    trace = read_perfetto(builder_trace("dense"))
    assert "dense-generic-events" in trace.metadata.variants
    assert trace.metadata.skipped == {}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_kvm_entry_exit_vcpu_inferred_from_thread_names(encoding: str) -> None:
    trace = read_perfetto(builder_trace(encoding))
    entry = trace.table("kvm_entry").to_pylist()
    assert [(r["pid"], r["vcpu_id"], r["rip"]) for r in entry] == [(101, 0, None), (101, 0, None)]
    exits = trace.table("kvm_exit")
    assert exits.column("vcpu_id").to_pylist() == [0, 2]
    assert exits.column("exit_reason").null_count == 2
    warnings = " ".join(trace.metadata.warnings)
    assert "arm64-shaped" in warnings and "inferred for 4 rows" in warnings
    assert "vcpu_id-inferred-from-thread-name" in trace.metadata.variants
    # arm64 fields of a compiled kvm_exit are kept as args, not dropped
    assert trace.events.column("args").to_pylist()[7] == "esr_ec=22 ret=1 vcpu_pc=4294901760"


def test_compiled_and_compact_sched_render_fields_in_proto_order() -> None:
    args = read_perfetto(builder_trace("dense")).events.column("args").to_pylist()
    assert args[3] == ("prev_comm=CPU 0/KVM prev_pid=101 prev_prio=120 prev_state=1 "
                       "next_comm=swapper/0 next_pid=0 next_prio=120")
    assert args[8] == "prev_state=0 next_comm=CPU 0/KVM next_pid=101 next_prio=120"
    assert args[9] == "comm=CPU 0/KVM pid=102 prio=120 target_cpu=1"
    assert args[11] == "prev_state=1 next_comm=kworker/0:1 next_pid=40 next_prio=100"


def test_lost_events_and_ftrace_stats() -> None:
    trace = read_perfetto(builder_trace("dense"))
    assert trace.lost_events() == {1: 7}  # one flag on CPU 1; stats say 12 - 5 overruns
    assert "ftrace_stats: CPU 1 lost 7 events (ring buffer overrun)" in trace.metadata.warnings
    stream = iter_perfetto(builder_trace("dense"))
    lost = [b.typed["lost_events"] for b in stream if "lost_events" in b.typed]
    assert lost[0].column("lost").to_pylist() == [None]  # streaming: count not known yet


def test_event_filter_keeps_markers() -> None:
    trace = read_perfetto(builder_trace("legacy"), events={"kvm_mmu_get_page"})
    assert trace.event_counts() == {"kvm_mmu_get_page": 2}
    assert trace.events.num_rows == 3


def test_streaming_batches_concatenate_to_the_whole() -> None:
    data = builder_trace("dense")
    whole = read_perfetto(data)
    batches = list(iter_perfetto(data, batch_events=1))
    assert len(batches) > 1
    seqs = [s for b in batches for s in b.events.column("seq").to_pylist()]
    assert seqs == whole.events.column("seq").to_pylist()


def test_is_perfetto_on_builder_bytes() -> None:
    data = builder_trace("dense")
    assert is_perfetto(data[:64]) and is_perfetto(data)
    assert is_perfetto(builder_trace("legacy", compress=True)[:16])
