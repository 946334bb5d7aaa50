"""Decode the payload text of known events into their typed fields.

Three renderings exist for the same event:

* ``kernel``: the event's ``print fmt`` (``/sys/kernel/tracing/trace``, ``trace_pipe``,
  ``trace-cmd report -N``); e.g. ``sp gen 0 gfn 100 l4 8-byte q0 wux nxe ad root 0 sync new``.
* ``plugin``: libtraceevent's kvm plugin (plugins/plugin_kvm.c) re-renders the shadow-page
  events with an older role decode and drops ``mmu_valid_gen`` (and ``gfn`` except in
  ``get_page``), and ``kvm_exit`` as ``reason X rip 0x.. info A B``.
* ``raw``: ``trace-cmd report -R`` prints ``name=value`` for every field in format order; the
  radix of a value follows the print format (``%llx`` bare hex, ``0x%lx`` prefixed, else
  decimal) and is not marked, so :data:`RAW_HEX` lists the bare-hex fields.

A rendering that does not print a field leaves it null. ``%p`` pointers are hashed by the
kernel and therefore never decoded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from parsers.schema import EVENT_FIELDS, PAGE_EVENTS, ROLE_BITS
from parsers.text.exit_reasons import ISA_SVM, ISA_VMX, SVM_EXIT_REASONS, VMX_EXIT_REASONS
from parsers.text.numbers import auto_radix_to_uint64, dec_to_int, hex_to_uint64

__all__ = ["Rendering", "RENDERINGS", "RAW_HEX", "decode_payloads"]

Extra = Callable[[pa.StructArray], dict[str, pa.Array]]

_H = r"[0-9a-fA-F]+"


@dataclass(frozen=True)
class Rendering:
    """One way an event's payload is printed: an RE2 pattern with groups named after fields.

    Groups starting with ``_`` are not fields; ``extra`` turns them into field columns.
    """

    name: str
    regex: str
    hex: frozenset[str] = frozenset()
    extra: Extra | None = None
    groups: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(re.compile(self.regex).groupindex))


def _flag(col: pa.Array, present: str) -> pa.Array:
    return pc.equal(pc.fill_null(col, ""), present)


def _access(col: pa.Array) -> pa.Array:
    """``wux``-style access string → ACC_* bits (x=1, w=2, u=4; mmu.h ``access_str``)."""
    w = pc.cast(_flag(pc.utf8_slice_codeunits(col, 0, 1), "w"), pa.uint8())
    u = pc.cast(_flag(pc.utf8_slice_codeunits(col, 1, 2), "u"), pa.uint8())
    x = pc.cast(_flag(pc.utf8_slice_codeunits(col, 2, 3), "x"), pa.uint8())
    return pc.add(pc.add(x, pc.multiply(w, 2)), pc.multiply(u, 4))


def _page_common(s: pa.StructArray) -> dict[str, pa.Array]:
    return {
        "direct": _flag(s.field("_direct"), " direct"),
        "access": _access(s.field("_acc")),
        "invalid": _flag(s.field("_invalid"), " invalid"),
        "efer_nx": _flag(s.field("_nx"), ""),
        "unsync": _flag(s.field("_sync"), "unsync"),
    }


def _page_kernel(s: pa.StructArray) -> dict[str, pa.Array]:
    out = _page_common(s)
    out["has_4_byte_gpte"] = _flag(s.field("_gpte"), "4")
    out["ad_disabled"] = _flag(s.field("_ad"), "!")
    if "_created" in s.type.names:
        out["created"] = _flag(s.field("_created"), "new")
    return out


def _page_plugin(s: pa.StructArray) -> dict[str, pa.Array]:
    out = _page_common(s)
    out["has_4_byte_gpte"] = _flag(s.field("_pae"), "")  # bit 4, named cr4_pae by the plugin
    out["cr0_wp"] = _flag(s.field("_wp"), "")
    out["smep_andnot_wp"] = _flag(s.field("_smep"), " smep")
    out["smap_andnot_wp"] = _flag(s.field("_smap"), " smap")
    out["as_id"] = pc.cast(_flag(s.field("_smm"), " smm"), pa.uint8())
    if "_created" in s.type.names:
        out["created"] = _flag(s.field("_created"), "new")
    return out


_ROLE_KERNEL = (
    r"l(?P<level>\d+) (?P<_gpte>\d)-byte q(?P<quadrant>\d)(?P<_direct> direct)? "
    r"(?P<_acc>[-w][-u][-x])(?P<_invalid> invalid)? (?P<_nx>!?)nxe (?P<_ad>!?)ad "
    r"root (?P<root_count>\d+) (?P<_sync>unsync|sync)"
)
_ROLE_PLUGIN = (
    r"(?P<level>\d+) q(?P<quadrant>\d)(?P<_direct> direct)? (?P<_acc>[-w][-u][-x])"
    r"(?P<_invalid> invalid)? (?P<_pae>!?)pae (?P<_nx>!?)nxe (?P<_wp>!?)wp(?P<_smep> smep)?"
    r"(?P<_smap> smap)?(?P<_smm> smm)? root (?P<root_count>\d+) (?P<_sync>unsync|sync)"
)
_PAGE_KERNEL = rf"^sp gen (?P<mmu_valid_gen>\d+) gfn (?P<gfn>{_H}) {_ROLE_KERNEL}"


def _set_spte(s: pa.StructArray) -> dict[str, pa.Array]:
    u = s.field("_u")
    u_val = pc.if_else(pc.equal(u, ""), -1, pc.if_else(pc.equal(u, "u"), 1, 0))
    return {"r": _flag(s.field("_r"), "r"), "x": _flag(s.field("_x"), "x"),
            "u": pc.cast(u_val, pa.int8())}


_PF_BITS = {"P": 0, "W": 1, "U": 2, "RSVD": 3, "F": 4, "PK": 5, "SS": 6, "SGX": 15}


def _pf_flags(col: pa.Array) -> pa.Array:
    """``__print_flags`` text (``P|W|U``, leftover bits as ``0x..``) → the error code."""
    values: list[int | None] = []
    for text in col.to_pylist():
        if text is None:
            values.append(None)
            continue
        code = 0
        for part in filter(None, text.split("|")):
            code |= (1 << _PF_BITS[part]) if part in _PF_BITS else int(part, 16)
        values.append(code)
    return pa.array(values, pa.uint64())


def _fast_page_fault(s: pa.StructArray) -> dict[str, pa.Array]:
    spurious, fixed = _flag(s.field("_spurious"), "1"), _flag(s.field("_fixed"), "1")
    ret = pc.if_else(spurious, 6, pc.if_else(fixed, 5, pa.scalar(None, pa.int32())))
    return {"error_code": _pf_flags(s.field("_flags")), "ret": pc.cast(ret, pa.int32())}


def _kvm_entry(s: pa.StructArray) -> dict[str, pa.Array]:
    has_suffix_era = pc.not_equal(s.field("intr_info"), "")
    imm = _flag(s.field("_imm"), "[immediate exit]")
    return {"immediate_exit": pc.if_else(has_suffix_era, imm, pa.scalar(None, pa.bool_()))}


def _exit_reason(names: list[str | None]) -> tuple[pa.Array, pa.Array]:
    reasons: list[int | None] = []
    isas: list[int | None] = []
    for name in names:
        reason: int | None = None
        isa: int | None = None
        if name is not None:
            base, failed, _ = name.partition(" FAILED_VMENTRY")
            if base in VMX_EXIT_REASONS:
                reason, isa = VMX_EXIT_REASONS[base] | (0x80000000 if failed else 0), ISA_VMX
            elif name in SVM_EXIT_REASONS:
                reason, isa = SVM_EXIT_REASONS[name], ISA_SVM
            elif re.fullmatch(r"0x[0-9a-fA-F]+|\d+", name):
                reason = int(name, 0)
        reasons.append(reason)
        isas.append(isa)
    return pa.array(reasons, pa.uint32()), pa.array(isas, pa.uint32())


def _kvm_exit(s: pa.StructArray) -> dict[str, pa.Array]:
    reason, isa = _exit_reason(s.field("_reason").to_pylist())
    return {"exit_reason": reason, "isa": isa}


def _userspace_exit(s: pa.StructArray) -> dict[str, pa.Array]:
    name, num = s.field("_name"), dec_to_int(s.field("_num"), pa.int64(), digits=True)
    is_restart, is_error = pc.equal(name, "restart"), pc.equal(name, "error")
    err = pc.if_else(is_restart, -4, pc.if_else(is_error, pc.negate(num), None))
    reason = pc.if_else(pc.or_(is_restart, is_error), None, num)
    return {"errno": pc.cast(err, pa.int32()), "reason": pc.cast(reason, pa.uint32())}


def _kernel_renderings() -> dict[str, list[Rendering]]:
    page = {n: [Rendering("kernel", _PAGE_KERNEL, frozenset({"gfn"}), _page_kernel)]
            for n in PAGE_EVENTS}
    page["kvm_mmu_get_page"] = [Rendering(
        "kernel", _PAGE_KERNEL + r" (?P<_created>new|existing)", frozenset({"gfn"}), _page_kernel)]
    plugin_tail = {n: rf"^{_ROLE_PLUGIN}" for n in PAGE_EVENTS}
    plugin_tail["kvm_mmu_get_page"] = (
        rf"^(?P<_created>new|existing) sp gfn (?P<gfn>{_H}) {_ROLE_PLUGIN}")
    for n, rx in plugin_tail.items():
        page[n].append(Rendering("plugin", rx, frozenset({"gfn"}), _page_plugin))
    h = frozenset
    simple: dict[str, list[Rendering]] = {
        "check_mmio_spte": [Rendering(
            "kernel", rf"^spte (?P<spte>{_H}) kvm_gen (?P<kvm_gen>{_H}) "
            rf"spte-gen (?P<spte_gen>{_H}) valid \d", h({"spte", "kvm_gen", "spte_gen"}))],
        "fast_page_fault": [Rendering(
            "kernel", rf"^vcpu (?P<vcpu_id>-?\d+) gva (?P<cr2_or_gpa>{_H}) error_code (?P<_flags>\S*) "
            rf"sptep \S+ old (?P<old_spte>(?:0x)?{_H}) new (?P<new_spte>{_H}) "
            r"spurious (?P<_spurious>\d) fixed (?P<_fixed>\d)",
            h({"cr2_or_gpa", "old_spte", "new_spte"}), _fast_page_fault)],
        "handle_mmio_page_fault": [Rendering(
            "kernel", rf"^addr:(?P<addr>{_H}) gfn (?P<gfn>{_H}) access (?P<access>{_H})",
            h({"addr", "gfn", "access"}))],
        "kvm_mmu_pagetable_walk": [Rendering(
            "kernel", rf"^addr (?P<addr>{_H}) pferr (?P<pferr>{_H})", h({"addr", "pferr"}))],
        "kvm_mmu_paging_element": [Rendering(
            "kernel", rf"^pte (?P<pte>{_H}) level (?P<level>\d+)", h({"pte"}))],
        "kvm_mmu_set_accessed_bit": [Rendering("kernel", rf"^gpa (?P<gpa>{_H})", h({"gpa"}))],
        "kvm_mmu_set_dirty_bit": [Rendering("kernel", rf"^gpa (?P<gpa>{_H})", h({"gpa"}))],
        "kvm_mmu_set_spte": [Rendering(
            "kernel", rf"^gfn (?P<gfn>{_H}) spte (?P<spte>{_H}) \((?P<_r>[r-])[w-](?P<_x>[x-])"
            rf"(?P<_u>[u-]?)\) level (?P<level>\d+) at (?P<sptep>{_H})",
            h({"gfn", "spte", "sptep"}), _set_spte)],
        "kvm_mmu_split_huge_page": [Rendering(
            "kernel", rf"^gfn (?P<gfn>{_H}) spte (?P<spte>{_H}) level (?P<level>-?\d+) "
            r"errno (?P<errno>-?\d+)", h({"gfn", "spte"}))],
        "kvm_mmu_spte_requested": [Rendering(
            "kernel", rf"^gfn (?P<gfn>{_H}) pfn (?P<pfn>{_H}) level (?P<level>\d+)", h({"gfn", "pfn"}))],
        "kvm_mmu_walker_error": [Rendering("kernel", rf"^pferr (?P<pferr>{_H})", h({"pferr"}))],
        "kvm_mmu_zap_all_fast": [Rendering(
            "kernel", rf"^kvm-mmu-valid-gen (?P<mmu_valid_gen>\d+) used_pages (?P<mmu_used_pages>{_H})",
            h({"mmu_used_pages"}))],
        "kvm_tdp_mmu_spte_changed": [Rendering(
            "kernel", rf"^as id (?P<as_id>\d+) gfn (?P<gfn>{_H}) level (?P<level>\d+) "
            rf"old_spte (?P<old_spte>{_H}) new_spte (?P<new_spte>{_H})",
            h({"gfn", "old_spte", "new_spte"}))],
        "mark_mmio_spte": [Rendering(
            "kernel", rf"^sptep:\S+ gfn (?P<gfn>{_H}) access (?P<access>{_H}) gen (?P<gen>{_H})",
            h({"gfn", "access", "gen"}))],
        "kvm_page_fault": [Rendering(
            "kernel", rf"^vcpu (?P<vcpu_id>\d+) rip 0x(?P<guest_rip>{_H}) address "
            rf"0x(?P<fault_address>{_H}) error_code 0x(?P<error_code>{_H})",
            h({"guest_rip", "fault_address", "error_code"}))],
        "kvm_entry": [Rendering(
            "kernel", rf"^vcpu (?P<vcpu_id>\d+), rip 0x(?P<rip>{_H})(?: intr_info 0x(?P<intr_info>{_H}) "
            rf"error_code 0x(?P<error_code>{_H})(?P<_imm>\[immediate exit\])?)?",
            h({"rip", "intr_info", "error_code"}), _kvm_entry)],
        "kvm_exit": [
            Rendering(
                "kernel", rf"^(?:vcpu (?P<vcpu_id>\d+) )?reason (?P<_reason>.+?) rip 0x(?P<guest_rip>{_H}) "
                rf"info1 0x(?P<info1>{_H}) info2 0x(?P<info2>{_H})(?: intr_info 0x(?P<intr_info>{_H}) "
                rf"error_code 0x(?P<error_code>{_H}))?(?: requests 0x(?P<requests>{_H}))?",
                h({"guest_rip", "info1", "info2", "intr_info", "error_code", "requests"}), _kvm_exit),
            Rendering(
                "plugin", rf"^(?:vcpu (?P<vcpu_id>\d+) )?reason (?P<_reason>.+?) rip 0x(?P<guest_rip>{_H}) "
                rf"info (?P<info1>{_H}) (?P<info2>{_H})", h({"guest_rip", "info1", "info2"}), _kvm_exit),
        ],
        "kvm_userspace_exit": [Rendering(
            "kernel", r"^reason (?P<_name>\S+) \((?P<_num>-?\d+)\)", h(), _userspace_exit)],
    }
    return {**page, **simple}


#: Fields that ``trace-cmd report -R`` prints as bare hex (their print format says ``%x``).
RAW_HEX: dict[str, frozenset[str]] = {
    "check_mmio_spte": frozenset({"spte", "kvm_gen", "spte_gen"}),
    "fast_page_fault": frozenset({"cr2_or_gpa", "new_spte"}),
    "handle_mmio_page_fault": frozenset({"addr", "gfn", "access"}),
    "kvm_mmu_pagetable_walk": frozenset({"addr", "pferr"}),
    "kvm_mmu_paging_element": frozenset({"pte"}),
    "kvm_mmu_set_accessed_bit": frozenset({"gpa"}),
    "kvm_mmu_set_dirty_bit": frozenset({"gpa"}),
    "kvm_mmu_set_spte": frozenset({"gfn", "spte", "sptep"}),
    "kvm_mmu_split_huge_page": frozenset({"gfn", "spte"}),
    "kvm_mmu_spte_requested": frozenset({"gfn", "pfn"}),
    "kvm_mmu_walker_error": frozenset({"pferr"}),
    "kvm_mmu_zap_all_fast": frozenset({"mmu_used_pages"}),
    "kvm_tdp_mmu_spte_changed": frozenset({"gfn", "old_spte", "new_spte"}),
    "mark_mmio_spte": frozenset({"gfn", "access", "gen"}),
}


def _raw_rendering(name: str) -> Rendering:
    fields = [f for f, _ in EVENT_FIELDS[name]]
    body = " +".join(rf"{f}=(?P<{f}>\S*)" for f in fields)
    return Rendering("raw", rf"^{body}\s*$", RAW_HEX.get(name, frozenset()))


#: Every rendering we decode, per event, tried in order.
RENDERINGS: dict[str, list[Rendering]] = {
    name: [_raw_rendering(name), *_kernel_renderings().get(name, [])]
    for name in EVENT_FIELDS
    if name != "lost_events"
}

_TYPES = {name: dict(fields) for name, fields in EVENT_FIELDS.items()}
_ROLE_TYPES = {n: t for n, _, _, t in ROLE_BITS}


def _convert(rendering: Rendering, event: str, s: pa.StructArray) -> dict[str, pa.Array]:
    types = {**_TYPES[event], **(_ROLE_TYPES if event in PAGE_EVENTS else {})}
    out: dict[str, pa.Array] = {}
    digits = rendering.name != "raw"  # the other renderings capture numbers as -?\d+
    for g in rendering.groups:
        if g.startswith("_") or g not in types:
            continue
        typ, col = types[g], s.field(g)
        if typ == pa.bool_():
            out[g] = pc.not_equal(dec_to_int(col, pa.int64(), digits=digits), 0)
        elif rendering.name == "raw":
            out[g] = (auto_radix_to_uint64(col, g in rendering.hex)
                      if pa.types.is_unsigned_integer(typ) else dec_to_int(col, typ))
        elif g in rendering.hex:
            out[g] = hex_to_uint64(col)
        else:
            out[g] = dec_to_int(col, typ if pa.types.is_signed_integer(typ) else pa.uint64(),
                                digits=digits)
        out[g] = out[g].cast(typ, safe=False) if pa.types.is_integer(typ) else out[g]
    if rendering.extra is not None:
        out.update(rendering.extra(s))
    return out


def decode_payloads(event: str, payload: pa.Array) -> tuple[dict[str, pa.Array], np.ndarray, list[str]]:
    """Decode ``payload`` (all of one ``event``) with the first rendering each row matches.

    Returns the field columns (null where no rendering matched), a mask of the rows that no
    rendering matched, and the names of the renderings that matched at least one row.
    """
    n = len(payload)
    merged: dict[str, pa.Array] = {}
    left = np.ones(n, dtype=bool)
    used: list[str] = []
    for rendering in RENDERINGS[event]:
        if not left.any():
            break
        idx = np.flatnonzero(left)
        s = pc.extract_regex(payload.take(pa.array(idx)), rendering.regex)
        hit = np.asarray(pc.is_valid(s).to_numpy(zero_copy_only=False))
        if not hit.any():
            continue
        used.append(rendering.name)
        rows = idx[hit]
        cols = _convert(rendering, event, s.filter(pa.array(hit)))
        for name, col in cols.items():
            merged[name] = _scatter(merged.get(name), rows, col, n)
        left[rows] = False
    return merged, left, used


def _scatter(base: pa.Array | None, rows: np.ndarray, values: pa.Array, n: int) -> pa.Array:
    """``base`` (or nulls) with ``values`` placed at ``rows``."""
    if base is None and len(rows) == n:
        return values
    positions = np.full(n, -1, dtype=np.int64)
    positions[rows] = np.arange(len(rows))
    placed = values.take(pa.array(positions, mask=positions < 0))
    return placed if base is None else pc.coalesce(placed, base.cast(values.type))
