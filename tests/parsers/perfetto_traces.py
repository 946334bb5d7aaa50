"""Traces for the Perfetto tests, built two independent ways.

* :func:`synthetic_trace` builds a :class:`~parsers.trace.Trace` directly from Arrow arrays
  (``build_typed_batch`` + ``EVENTS_SCHEMA``), to feed :func:`write_perfetto`.
* :func:`builder_trace` writes Perfetto bytes with the ``perfetto`` package's own
  ``TraceProtoBuilder`` and python-protobuf messages (dense generic payloads through a
  dynamic message class made from the event's ``DescriptorProto``), so the reader is not
  only tested against our writer.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from perfetto.trace_builder.proto_builder import TraceProtoBuilder

from parsers.schema import EVENTS_SCHEMA, LOST_EVENTS
from parsers.trace import Trace, TraceMetadata
from parsers.typed_batch import build_typed_batch

# --------------------------------------------------------------------------- synthetic Trace

#: (seq, ts, cpu, pid, tgid, comm, event, args) of the synthetic trace, in file order.
ROWS: list[tuple[Any, ...]] = [
    (0, 1_000, 0, 200, 200, "qemu-system-x86", "kvm_fpu", "load=1"),
    (1, 1_500, 0, 201, 200, "CPU 0/KVM", "kvm_entry", None),
    (2, 2_000, 0, 201, 200, "CPU 0/KVM", "kvm_mmu_get_page", None),
    (3, 2_000, 1, 202, 200, "CPU 1/KVM", "kvm_page_fault", None),
    (4, 2_100, 1, 202, 200, "CPU 1/KVM", "kvm_mmu_set_spte", None),
    (5, 2_200, 1, None, None, None, LOST_EVENTS, None),
    (6, 2_200, 1, 202, 200, "CPU 1/KVM", "kvm_exit", None),
    (7, 2_300, 0, 201, 200, "CPU 0/KVM", "kvm_mmu_prepare_zap_page", None),
    (8, 2_400, 0, 201, 200, "CPU 0/KVM", "kvm_emulate_insn", "rip=40000001c069 len=2 failed=-1"),
    (9, 2_500, 0, 201, 200, "CPU 0/KVM", "vcpu_match_mmio", "gva 0x4000 gpa 0xd0000000 Write GVA"),
    (10, 2_600, 1, 17, 17, "kdamond.0", "kvm_age_hva", "start=140 end=150"),
    (11, 2_700, 0, 201, 200, "CPU 0/KVM", "kvm_userspace_exit", None),
    (12, 2_800, 0, None, None, None, LOST_EVENTS, None),
    (13, 2_900, 1, 202, 200, "CPU 1/KVM", "kvm_entry", None),
]

_TYPED: dict[str, list[tuple[int, dict[str, Any]]]] = {
    "kvm_entry": [(1, {"vcpu_id": 0}), (13, {"vcpu_id": 1})],
    "kvm_exit": [(6, {"vcpu_id": 1})],
    "kvm_mmu_get_page": [(2, {"mmu_valid_gen": 3, "gfn": 2**64 - 1, "role": 14084,
                              "root_count": 2, "unsync": False, "created": True})],
    "kvm_page_fault": [(3, {"vcpu_id": 1, "guest_rip": 0xFFFF_FFFF_8100_0000,
                            "fault_address": 0xD000_0000, "error_code": 6})],
    "kvm_mmu_set_spte": [(4, {"gfn": 0x11C, "spte": 0x1084B7A25, "sptep": 0x19ED910E0,
                              "level": 1, "r": True, "x": False, "u": -1})],
    "kvm_mmu_prepare_zap_page": [(7, {"mmu_valid_gen": 0, "gfn": 256, "role": None,
                                      "root_count": 0, "unsync": True,
                                      "level": 4, "access": 7, "efer_nx": True})],
    "kvm_userspace_exit": [(11, {"reason": 6})],
    LOST_EVENTS: [(5, {"lost": 16496}), (12, {"lost": None})],
}


def _col(values: list[Any], typ: pa.DataType) -> pa.Array:
    arr = pa.array(values, pa.string() if pa.types.is_dictionary(typ) else typ)
    return arr.dictionary_encode().cast(typ) if pa.types.is_dictionary(typ) else arr


def synthetic_trace() -> Trace:
    """A small x86 KVM trace covering typed, compiled, untyped, free-text and loss rows."""
    names = ("seq", "ts", "cpu", "pid", "tgid", "comm", "event", "args")
    cols = {n: [r[i] for r in ROWS] for i, n in enumerate(names)}
    cols["latency_flags"] = ["....." if r[6] != LOST_EVENTS else None for r in ROWS]
    cols["instance"] = [None] * len(ROWS)
    events = pa.table({f.name: _col(cols[f.name], f.type) for f in EVENTS_SCHEMA},
                      schema=EVENTS_SCHEMA)
    by_seq = {r[0]: r for r in ROWS}
    tables = {}
    for name, rows in _TYPED.items():
        seqs = [s for s, _ in rows]
        keys = {k for _, f in rows for k in f}
        fields = {k: pa.array([f.get(k) for _, f in rows], _field_type(name, k)) for k in keys}
        rb = build_typed_batch(
            name, seq=pa.array(seqs, pa.int64()),
            ts=pa.array([by_seq[s][1] for s in seqs], pa.int64()),
            cpu=pa.array([by_seq[s][2] for s in seqs], pa.int32()),
            pid=pa.array([by_seq[s][3] for s in seqs], pa.int32()),
            fields=fields)
        tables[name] = pa.Table.from_batches([rb])
    return Trace(events, tables, TraceMetadata(source="synthetic", format="test"))


def _field_type(name: str, field: str) -> pa.DataType:
    from parsers.schema import typed_schema

    return typed_schema(name).field(field).type


def renumbered(table: pa.Table) -> pa.Table:
    """``table`` with ``seq`` replaced by its rank (Perfetto keeps order, not numbers)."""
    return table.set_column(0, "seq", pa.array(np.arange(table.num_rows), pa.int64()))


def events_view(trace: Trace, columns: tuple[str, ...]) -> pa.Table:
    """The ``events`` columns compared across a round trip, dictionaries decoded."""
    ev = trace.events.select(list(columns))
    return pa.table({c: ev.column(c).cast(pa.string()) if pa.types.is_dictionary(
        ev.schema.field(c).type) else ev.column(c) for c in columns})


def typed_view(trace: Trace, name: str) -> pa.Table:
    """A typed table with ``seq`` renumbered by the row's rank among all events."""
    seqs = trace.events.column("seq").to_numpy()
    table = trace.table(name)
    rank = np.searchsorted(seqs, table.column("seq").to_numpy())
    return table.set_column(0, "seq", pa.array(rank, pa.int64()))


def free_text_rows(trace: Trace, names: set[str]) -> pa.Array:
    """Mask of events whose name is in ``names``."""
    return pc.is_in(trace.events.column("event").cast(pa.string()), pa.array(sorted(names)))


# --------------------------------------------------------------------------- TraceProtoBuilder

def _dense_classes(event: str, fields: list[tuple[str, int]], field_id: int) -> tuple[Any, Any]:
    """Dynamic message classes: the event payload, and a wrapper holding it at ``field_id``."""
    fdp = descriptor_pb2.FileDescriptorProto(name=f"dense_{event}_{field_id}.proto",
                                             package=f"dense{field_id}")
    msg = fdp.message_type.add(name=event)
    for i, (fname, ftype) in enumerate(fields, start=1):
        msg.field.add(name=fname, number=i, type=ftype,  # type: ignore[arg-type]
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    wrap = fdp.message_type.add(name="Wrapper")
    wrap.field.add(name="payload", number=field_id,
                   type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                   type_name=f".dense{field_id}.{event}",
                   label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName(f"dense{field_id}.{event}")),
            get(pool.FindMessageTypeByName(f"dense{field_id}.Wrapper")))


_U64 = descriptor_pb2.FieldDescriptorProto.TYPE_UINT64
_I64 = descriptor_pb2.FieldDescriptorProto.TYPE_INT64
_STR = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
GET_PAGE_FIELDS = [("mmu_valid_gen", _U64), ("gfn", _U64), ("role", _U64),
                   ("root_count", _U64), ("unsync", _U64), ("created", _U64)]
PAGE_FAULT_FIELDS = [("vcpu_id", _U64), ("guest_rip", _U64), ("fault_address", _U64),
                     ("error_code", _U64)]
GET_PAGE_ID, PAGE_FAULT_ID = 65536 + 7, 65536 + 2  # any ids: the reader must key on descriptors


def _generic(ev: Any, encoding: str, name: str, fields: list[tuple[str, int]],
             field_id: int, values: dict[str, Any]) -> None:
    if encoding == "legacy":
        ev.generic.event_name = name
        for fname, ftype in fields:
            f = ev.generic.field.add(name=fname)
            if fname not in values:
                continue
            if ftype == _STR:
                f.str_value = values[fname]
            elif ftype == _I64:
                f.int_value = values[fname]
            else:
                f.uint_value = values[fname]
        return
    payload_cls, wrapper_cls = _dense_classes(name, fields, field_id)
    wrapper = wrapper_cls()
    wrapper.payload.CopyFrom(payload_cls(**values))
    ev.MergeFromString(wrapper.SerializeToString())


def _descriptor(bundle: Any, name: str, group: str, fields: list[tuple[str, int]],
                field_id: int) -> None:
    desc = descriptor_pb2.DescriptorProto(name=name)
    for i, (fname, ftype) in enumerate(fields, start=1):
        desc.field.add(name=fname, number=i, type=ftype,  # type: ignore[arg-type]
                       label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    bundle.generic_event_descriptors.add(field_id=field_id, group_name=group,
                                         event_descriptor=desc.SerializeToString())


def builder_trace(encoding: str, *, compress: bool = False) -> bytes:
    """An x86 KVM Perfetto trace written with ``TraceProtoBuilder`` (see EXPECTED_* below)."""
    builder = TraceProtoBuilder()
    tree = builder.add_packet().process_tree
    tree.processes.add(pid=100, cmdline=["/usr/bin/qemu-system-x86_64", "-enable-kvm"])
    tree.threads.add(tid=101, tgid=100, name="CPU 0/KVM")
    tree.threads.add(tid=102, tgid=100, name="CPU 1/KVM")
    track = builder.add_packet().track_descriptor
    track.uuid = 7
    track.thread.pid, track.thread.tid, track.thread.thread_name = 100, 103, "CPU 2/KVM"

    stats = builder.add_packet().ftrace_stats
    stats.phase = pb.FtraceStats.Phase.START_OF_TRACE
    stats.cpu_stats.add(cpu=1, overrun=5)

    b0 = builder.add_packet().ftrace_events
    b0.cpu = 0
    ev = b0.event.add(timestamp=1_000, pid=101)
    ev.kvm_entry.SetInParent()
    ev = b0.event.add(timestamp=1_100, pid=101)
    _generic(ev, encoding, "kvm_mmu_get_page", GET_PAGE_FIELDS, GET_PAGE_ID,
             {"mmu_valid_gen": 1, "gfn": 0x100, "role": 14084, "root_count": 3, "unsync": 0,
              "created": 1})
    ev = b0.event.add(timestamp=1_200, pid=101)
    ev.kvm_exit.SetInParent()
    ev = b0.event.add(timestamp=1_300, pid=101)
    ss = ev.sched_switch
    ss.prev_comm, ss.prev_pid, ss.prev_prio, ss.prev_state = "CPU 0/KVM", 101, 120, 1
    ss.next_comm, ss.next_pid, ss.next_prio = "swapper/0", 0, 120
    if encoding == "dense":  # descriptors come after the bundle's events
        _descriptor(b0, "kvm_mmu_get_page", "kvmmmu", GET_PAGE_FIELDS, GET_PAGE_ID)

    b1 = builder.add_packet().ftrace_events
    b1.cpu = 1
    b1.lost_events = True
    ev = b1.event.add(timestamp=1_150, pid=102)
    _generic(ev, encoding, "kvm_page_fault", PAGE_FAULT_FIELDS, PAGE_FAULT_ID,
             {"vcpu_id": 1, "guest_rip": 0xFFFFFFFF81000000, "fault_address": 0xD0000000,
              "error_code": 6})
    ev = b1.event.add(timestamp=1_250, pid=102)
    _generic(ev, encoding, "kvm_mmu_get_page", GET_PAGE_FIELDS, GET_PAGE_ID,
             {"mmu_valid_gen": 1, "gfn": 0x100, "role": 14084, "root_count": 4, "unsync": 0,
              "created": 0})  # no descriptor for this id in this bundle: cached from b0
    ev = b1.event.add(timestamp=1_350, pid=103)
    ev.kvm_exit.esr_ec, ev.kvm_exit.ret, ev.kvm_exit.vcpu_pc = 0x16, 1, 0xFFFF0000  # arm64
    if encoding == "dense":
        _descriptor(b1, "kvm_page_fault", "kvm", PAGE_FAULT_FIELDS, PAGE_FAULT_ID)

    b2 = builder.add_packet().ftrace_events
    b2.cpu = 0
    cs = b2.compact_sched
    cs.intern_table.extend(["CPU 0/KVM", "kworker/0:1"])
    cs.switch_timestamp.extend([2_000, 50])
    cs.switch_prev_state.extend([0, 1])
    cs.switch_next_pid.extend([101, 40])
    cs.switch_next_prio.extend([120, 100])
    cs.switch_next_comm_index.extend([0, 1])
    cs.waking_timestamp.extend([2_010])
    cs.waking_pid.extend([102])
    cs.waking_target_cpu.extend([1])
    cs.waking_prio.extend([120])
    cs.waking_comm_index.extend([0])
    ev = b2.event.add(timestamp=2_020, pid=101)
    ev.kvm_entry.SetInParent()

    stats = builder.add_packet().ftrace_stats
    stats.phase = pb.FtraceStats.Phase.END_OF_TRACE
    stats.cpu_stats.add(cpu=1, overrun=12)
    data = builder.serialize()
    if compress:
        outer = TraceProtoBuilder()
        outer.add_packet().compressed_packets = zlib.compress(data)
        data = outer.serialize()
    return data


#: (ts, cpu, pid, event, comm, tgid) of builder_trace's rows in file order.
EXPECTED_ROWS = [
    (1_000, 0, 101, "kvm_entry", "CPU 0/KVM", 100),
    (1_100, 0, 101, "kvm_mmu_get_page", "CPU 0/KVM", 100),
    (1_200, 0, 101, "kvm_exit", "CPU 0/KVM", 100),
    (1_300, 0, 101, "sched_switch", "CPU 0/KVM", 100),
    (1_150, 1, None, "lost_events", None, None),
    (1_150, 1, 102, "kvm_page_fault", "CPU 1/KVM", 100),
    (1_250, 1, 102, "kvm_mmu_get_page", "CPU 1/KVM", 100),
    (1_350, 1, 103, "kvm_exit", "CPU 2/KVM", 100),
    (2_000, 0, None, "sched_switch", None, None),
    (2_010, 0, None, "sched_waking", None, None),
    (2_020, 0, 101, "kvm_entry", "CPU 0/KVM", 100),
    (2_050, 0, 101, "sched_switch", "CPU 0/KVM", 100),
]
