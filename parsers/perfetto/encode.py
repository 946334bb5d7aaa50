"""Encode ftrace events the way traced_probes does: compiled protos or generic events.

:class:`EventEncoder` turns one event (its name and ``(field, value)`` pairs) into the bytes
of an ``FtraceEvent`` message:

* a compiled proto when ``FtraceEvent`` has a field named after the event, keeping only the
  proto fields whose names the event has (``MergeFields`` in traced_probes'
  ``proto_translation_table.cc``: on x86 ``kvm_entry``/``kvm_exit`` keep none);
* otherwise a generic event: dense (a nested message at a per-trace field id >= 65536,
  fields numbered 1, 2, ... in format order, described once per bundle by a
  ``GenericEventDescriptor``) or legacy (``GenericFtraceEvent`` with every field's name).

Value types follow ``ToGenericProtoField``: unsigned and bool -> ``uint64``, signed ->
``int64`` (plain varint, two's complement), strings -> ``string``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from google.protobuf import descriptor_pb2

from parsers.perfetto.bytecols import Joined, Piece, constant, join, varints
from parsers.perfetto.protos import GENERIC_FIRST_ID, CompiledEvent, catalog, field_number
from parsers.perfetto.wire import LEN, VARINT

__all__ = ["varint", "key", "len_field", "varint_field", "EventEncoder", "GenericLayout",
           "Encoding", "Value", "encode_group", "GroupField"]

Encoding = Literal["dense", "legacy"]
#: A field value: ``("uint", n)``, ``("int", n)`` or ``("string", text)``.
Value = tuple[str, int | str]

_SMALL: Final = [bytes([i]) for i in range(128)]
_KVM_GROUP_EXTRA: Final = frozenset({"vcpu_match_mmio"})


def varint(value: int) -> bytes:
    """The varint encoding of ``value`` (negative values as 64-bit two's complement)."""
    if 0 <= value < 128:
        return _SMALL[value]
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(number: int, wire: int) -> bytes:
    """A field tag."""
    return varint((number << 3) | wire)


def len_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return key(number, LEN) + varint(len(payload)) + payload


def varint_field(number: int, value: int) -> bytes:
    """A varint field."""
    return key(number, VARINT) + varint(value)


def group_of(name: str) -> str:
    """The tracefs group of a kvm event name (``kvmmmu`` for the MMU tracepoints)."""
    if name.startswith(("kvm_mmu_", "kvm_tdp_mmu_")) or name in (
        "check_mmio_spte", "fast_page_fault", "handle_mmio_page_fault", "mark_mmio_spte"
    ):
        return "kvmmmu"
    if name.startswith("kvm") or name in _KVM_GROUP_EXTRA:
        return "kvm"
    return "ftrace"


@dataclass
class GenericLayout:
    """A dense generic event's id, field order and types (fixed for the whole trace)."""

    field_id: int
    name: str
    fields: tuple[tuple[str, str], ...]  # (name, "uint" | "int" | "string")

    def descriptor(self) -> bytes:
        """The bundle's ``GenericEventDescriptor`` for this event."""
        proto = descriptor_pb2.DescriptorProto(name=self.name)
        fdp = descriptor_pb2.FieldDescriptorProto
        types = {"uint": fdp.TYPE_UINT64, "int": fdp.TYPE_INT64, "string": fdp.TYPE_STRING}
        for i, (fname, kind) in enumerate(self.fields, start=1):
            proto.field.add(name=fname, number=i, type=types[kind], label=fdp.LABEL_OPTIONAL)
        d = "FtraceEventBundle.GenericEventDescriptor"
        return (varint_field(field_number(d, "field_id"), self.field_id)
                + len_field(field_number(d, "event_descriptor"), proto.SerializeToString())
                + len_field(field_number(d, "group_name"), group_of(self.name).encode()))


@dataclass
class EventEncoder:
    """Encodes events for one trace; assigns dense ids in order of first use."""

    encoding: Encoding
    layouts: dict[str, GenericLayout] = field(default_factory=dict)

    def declare(self, name: str, fields: tuple[tuple[str, str], ...]) -> None:
        """Fix the field order and types of generic event ``name`` before encoding it."""
        if name not in self.layouts:
            self.layouts[name] = GenericLayout(GENERIC_FIRST_ID + len(self.layouts), name, fields)

    def compiled(self, name: str) -> CompiledEvent | None:
        """The compiled proto Perfetto has for event ``name``, if any."""
        return catalog().compiled_by_name.get(name)

    def encode(self, name: str, ts: int, pid: int | None, values: dict[str, Value | None],
               use_compiled: bool) -> tuple[bytes, GenericLayout | None]:
        """The ``FtraceEvent`` bytes, and the dense layout used (for the bundle's descriptors)."""
        ev = "FtraceEvent"
        head = varint_field(field_number(ev, "timestamp"), ts)
        if pid is not None:
            head += varint_field(field_number(ev, "pid"), pid)
        compiled = self.compiled(name) if use_compiled else None
        if compiled is not None:
            return head + len_field(compiled.number, _compiled_body(compiled, values)), None
        if self.encoding == "legacy":
            return head + len_field(catalog().generic_legacy_id, _legacy_body(name, values)), None
        layout = self.layouts[name]
        return head + len_field(layout.field_id, _dense_body(layout, values)), layout


def _scalar(number: int, value: Value) -> bytes:
    kind, v = value
    if kind == "string":
        return len_field(number, str(v).encode())
    return varint_field(number, int(v))


def _compiled_body(compiled: CompiledEvent, values: dict[str, Value | None]) -> bytes:
    out = b""
    for f in compiled.fields:
        v = values.get(f.name)
        if v is None:
            continue
        if f.kind == "string" and v[0] == "string":
            out += _scalar(f.number, v)
        elif f.kind in ("uint", "int", "bool") and v[0] != "string":
            out += _scalar(f.number, v)
    return out


def _dense_body(layout: GenericLayout, values: dict[str, Value | None]) -> bytes:
    out = b""
    for i, (fname, _) in enumerate(layout.fields, start=1):
        v = values.get(fname)
        if v is not None:
            out += _scalar(i, v)
    return out


def _legacy_body(name: str, values: dict[str, Value | None]) -> bytes:
    g, f = "GenericFtraceEvent", "GenericFtraceEvent.Field"
    slot = {"string": field_number(f, "str_value"), "int": field_number(f, "int_value"),
            "uint": field_number(f, "uint_value")}
    out = len_field(field_number(g, "event_name"), name.encode())
    for fname, v in values.items():
        body = len_field(field_number(f, "name"), fname.encode())
        if v is not None:
            body += _scalar(slot[v[0]], v)
            out += len_field(field_number(g, "field"), body)
    return out


#: One field of a group of events: name, kind ("uint"/"int"), raw 64-bit values, presence.
GroupField = tuple[str, str, "npt.NDArray[np.uint64]", "npt.NDArray[np.bool_]"]


def encode_group(encoder: EventEncoder, name: str, ts: npt.NDArray[np.int64],
                 pid: npt.NDArray[np.int64], pid_ok: npt.NDArray[np.bool_],
                 fields: list[GroupField], use_compiled: bool
                 ) -> tuple[Joined, GenericLayout | None]:
    """Encode many events of one kind at once (integer fields only): the FtraceEvent bytes of
    each, and the dense layout used. Same bytes as :meth:`EventEncoder.encode` per event."""
    n = ts.size
    every = np.ones(n, bool)
    ev = "FtraceEvent"
    head: list[Piece] = [constant(key(field_number(ev, "timestamp"), VARINT), every),
                         varints(ts.view(np.uint64), every),
                         constant(key(field_number(ev, "pid"), VARINT), pid_ok),
                         varints(pid.astype(np.uint64), pid_ok)]
    by_name = {f[0]: f for f in fields}
    compiled = encoder.compiled(name) if use_compiled else None
    layout: GenericLayout | None = None
    pieces: list[Piece] = []
    if compiled is not None:
        number = compiled.number
        for pf in compiled.fields:
            got = by_name.get(pf.name)
            if got is not None and pf.kind in ("uint", "int", "bool"):
                pieces += [constant(key(pf.number, VARINT), got[3]), varints(got[2], got[3])]
    elif encoder.encoding == "legacy":
        number = catalog().generic_legacy_id
        pieces.append(constant(len_field(field_number("GenericFtraceEvent", "event_name"),
                                         name.encode()), every))
        pieces += [p for f in fields for p in _legacy_field(f)]
    else:
        layout = encoder.layouts[name]
        number = layout.field_id
        for i, (fname, _) in enumerate(layout.fields, start=1):
            got = by_name.get(fname)
            if got is not None:
                pieces += [constant(key(i, VARINT), got[3]), varints(got[2], got[3])]
    body = join(pieces) if pieces else Joined((), np.zeros(n, np.int64))
    event = join([*head, constant(key(number, LEN), every),
                    varints(body.lengths.astype(np.uint64), every), body])
    return event, layout


def _legacy_field(f: GroupField) -> list[Piece]:
    fname, kind, values, present = f
    g, fl = "GenericFtraceEvent", "GenericFtraceEvent.Field"
    slot = field_number(fl, "int_value" if kind == "int" else "uint_value")
    inner = join([constant(len_field(field_number(fl, "name"), fname.encode()), present),
                    constant(key(slot, VARINT), present), varints(values, present)])
    return [constant(key(field_number(g, "field"), LEN), present),
            varints(inner.lengths.astype(np.uint64), present), inner]
