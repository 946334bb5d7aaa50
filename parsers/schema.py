"""Declared Arrow schemas: the only contract between ``parsers/`` and ``replay/``.

A trace is a set of Arrow tables:

* ``events``: one row per event line or record, in source order, with the columns of
  :data:`EVENTS_SCHEMA`. ``args`` holds the raw payload text of events that have no typed
  table (or whose payload could not be decoded), so nothing is lost.
* one typed table per known event (every ``kvmmmu`` event plus ``kvm_entry``, ``kvm_exit``,
  ``kvm_page_fault`` and ``kvm_userspace_exit``), plus ``lost_events``. Each typed table
  repeats ``seq``, ``ts``, ``cpu`` and ``pid`` of its event (``seq`` is the join key) and then
  the event's fields, named and typed as in the kernel's ``format`` files
  (``/sys/kernel/tracing/events/<group>/<event>/format`` of Linux 6.18). The 32-bit
  ``role`` of the shadow-page events is also decoded into its bit fields (layout of
  ``union kvm_mmu_page_role`` in ``arch/x86/include/asm/kvm_host.h``).

Timestamps are int64: nanoseconds for clocks that count ns; raw ticks for ``counter``,
``uptime`` and ``x86-tsc``. The unit is in the metadata (:data:`TS_UNIT_KEY`).
A field a rendering does not print (the trace-cmd kvm plugin drops some) is null, never 0.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

__all__ = [
    "EVENTS_SCHEMA",
    "EVENT_FIELDS",
    "ROLE_BITS",
    "PAGE_EVENTS",
    "LOST_EVENTS",
    "BUFFER_STARTED",
    "TYPED_PREFIX",
    "METADATA_KEY",
    "typed_schema",
    "typed_event_names",
    "decode_role_bits",
]

#: Key under which :class:`parsers.trace.TraceMetadata` is stored (as JSON) in schema metadata.
METADATA_KEY: Final = b"kvm_mmu_replay"
TS_UNIT_KEY: Final = b"ts_unit"

#: Pseudo-events recorded in ``events`` for markers of the trace itself.
LOST_EVENTS: Final = "lost_events"
BUFFER_STARTED: Final = "buffer_started"

_DICT = pa.dictionary(pa.int32(), pa.string())

EVENTS_SCHEMA: Final = pa.schema(
    [
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("cpu", pa.int32()),
        pa.field("pid", pa.int32()),
        pa.field("tgid", pa.int32()),
        pa.field("comm", _DICT),
        pa.field("event", _DICT, nullable=False),
        pa.field("latency_flags", _DICT),
        pa.field("instance", _DICT),
        pa.field("args", pa.string()),
    ]
)

#: Columns every typed table starts with.
TYPED_PREFIX: Final = (
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("ts", pa.int64(), nullable=False),
    pa.field("cpu", pa.int32()),
    pa.field("pid", pa.int32()),
)

_U8, _U32, _U64 = pa.uint8(), pa.uint32(), pa.uint64()
_I8, _I32, _B = pa.int8(), pa.int32(), pa.bool_()

_PAGE_FIELDS: Final = (
    ("mmu_valid_gen", _U8),
    ("gfn", _U64),
    ("role", _U32),
    ("root_count", _U32),
    ("unsync", _B),
)

#: Fields of each known event, in ``format`` file order (Linux 6.18, arch/x86/kvm/mmu/mmutrace.h
#: and arch/x86/kvm/trace.h). ``unsigned long`` and pointers are 64-bit on x86_64.
EVENT_FIELDS: Final[dict[str, tuple[tuple[str, pa.DataType], ...]]] = {
    "check_mmio_spte": (("kvm_gen", _U32), ("spte_gen", _U32), ("spte", _U64)),
    "fast_page_fault": (
        ("vcpu_id", _I32),
        ("cr2_or_gpa", _U64),
        ("error_code", _U64),
        ("sptep", _U64),
        ("old_spte", _U64),
        ("new_spte", _U64),
        ("ret", _I32),
    ),
    "handle_mmio_page_fault": (("addr", _U64), ("gfn", _U64), ("access", _U32)),
    "kvm_mmu_get_page": _PAGE_FIELDS + (("created", _B),),
    "kvm_mmu_pagetable_walk": (("addr", _U64), ("pferr", _U32)),
    "kvm_mmu_paging_element": (("pte", _U64), ("level", _U32)),
    "kvm_mmu_prepare_zap_page": _PAGE_FIELDS,
    "kvm_mmu_set_accessed_bit": (("gpa", _U64),),
    "kvm_mmu_set_dirty_bit": (("gpa", _U64),),
    "kvm_mmu_set_spte": (
        ("gfn", _U64),
        ("spte", _U64),
        ("sptep", _U64),
        ("level", _U8),
        ("r", _B),
        ("x", _B),
        ("u", _I8),
    ),
    "kvm_mmu_split_huge_page": (("gfn", _U64), ("spte", _U64), ("level", _I32), ("errno", _I32)),
    "kvm_mmu_spte_requested": (("gfn", _U64), ("pfn", _U64), ("level", _U8)),
    "kvm_mmu_sync_page": _PAGE_FIELDS,
    "kvm_mmu_unsync_page": _PAGE_FIELDS,
    "kvm_mmu_walker_error": (("pferr", _U32),),
    "kvm_mmu_zap_all_fast": (("mmu_valid_gen", _U8), ("mmu_used_pages", _U32)),
    "kvm_tdp_mmu_spte_changed": (
        ("gfn", _U64),
        ("old_spte", _U64),
        ("new_spte", _U64),
        ("level", _U8),
        ("as_id", _U8),
    ),
    "mark_mmio_spte": (("sptep", _U64), ("gfn", _U64), ("access", _U32), ("gen", _U32)),
    "kvm_page_fault": (
        ("vcpu_id", _U32),
        ("guest_rip", _U64),
        ("fault_address", _U64),
        ("error_code", _U64),
    ),
    "kvm_entry": (
        ("vcpu_id", _U32),
        ("rip", _U64),
        ("immediate_exit", _B),
        ("intr_info", _U32),
        ("error_code", _U32),
    ),
    "kvm_exit": (
        ("exit_reason", _U32),
        ("guest_rip", _U64),
        ("isa", _U32),
        ("info1", _U64),
        ("info2", _U64),
        ("intr_info", _U32),
        ("error_code", _U32),
        ("vcpu_id", _U32),
        ("requests", _U64),
    ),
    "kvm_userspace_exit": (("reason", _U32), ("errno", _I32)),
    LOST_EVENTS: (("lost", _U64),),
}

#: ``union kvm_mmu_page_role`` bit fields (host BTF of Linux 6.18): name, bit offset, width, type.
#: ``as_id`` is the ``smm`` byte (the address-space id).
ROLE_BITS: Final[tuple[tuple[str, int, int, pa.DataType], ...]] = (
    ("level", 0, 4, _U8),
    ("has_4_byte_gpte", 4, 1, _B),
    ("quadrant", 5, 2, _U8),
    ("direct", 7, 1, _B),
    ("access", 8, 3, _U8),
    ("invalid", 11, 1, _B),
    ("efer_nx", 12, 1, _B),
    ("cr0_wp", 13, 1, _B),
    ("smep_andnot_wp", 14, 1, _B),
    ("smap_andnot_wp", 15, 1, _B),
    ("ad_disabled", 16, 1, _B),
    ("guest_mode", 17, 1, _B),
    ("passthrough", 18, 1, _B),
    ("is_mirror", 19, 1, _B),
    ("as_id", 24, 8, _U8),
)

#: Events whose ``role`` word is decoded into :data:`ROLE_BITS` columns.
PAGE_EVENTS: Final = frozenset(
    {"kvm_mmu_get_page", "kvm_mmu_prepare_zap_page", "kvm_mmu_sync_page", "kvm_mmu_unsync_page"}
)


def typed_event_names() -> list[str]:
    """Names of every event that has a typed table, sorted."""
    return sorted(EVENT_FIELDS)


def typed_schema(name: str) -> pa.Schema:
    """The declared schema of the typed table for event ``name``.

    Raises:
        UnknownEventError: ``name`` has no typed table.

    Examples:
        >>> typed_schema("kvm_mmu_zap_all_fast").names
        ['seq', 'ts', 'cpu', 'pid', 'mmu_valid_gen', 'mmu_used_pages']
    """
    fields = EVENT_FIELDS.get(name)
    if fields is None:
        from parsers.errors import UnknownEventError

        raise UnknownEventError(name, list(EVENT_FIELDS))
    cols = list(TYPED_PREFIX) + [pa.field(n, t) for n, t in fields]
    if name in PAGE_EVENTS:
        cols += [pa.field(n, t) for n, _, _, t in ROLE_BITS]
    return pa.schema(cols)


def decode_role_bits(role: pa.Array) -> dict[str, pa.Array]:
    """Split a uint32 ``role`` column into its bit-field columns (nulls stay null).

    Examples:
        >>> bits = decode_role_bits(pa.array([14084], pa.uint32()))
        >>> bits["level"].to_pylist(), bits["access"].to_pylist(), bits["cr0_wp"].to_pylist()
        ([4], [7], [True])
    """
    import pyarrow.compute as pc

    word = role.cast(pa.uint32())
    out: dict[str, pa.Array] = {}
    if isinstance(word, pa.Array) and word.null_count == 0:  # the usual case, in NumPy
        data = word.to_numpy(zero_copy_only=False)
        for name, shift, width, typ in ROLE_BITS:
            bits = (data >> shift) & ((1 << width) - 1)
            out[name] = pa.array(bits != 0) if typ == pa.bool_() else pa.array(
                bits.astype(typ.to_pandas_dtype()), typ)
        return out
    for name, shift, width, typ in ROLE_BITS:
        value = pc.bit_wise_and(pc.shift_right(word, shift), (1 << width) - 1)
        out[name] = pc.not_equal(value, 0) if typ == pa.bool_() else value.cast(typ)
    return out
