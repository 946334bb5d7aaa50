"""Field numbers and types of Perfetto's trace protos, learnt from the ``perfetto`` package.

The ``perfetto`` PyPI package bundles the compiled descriptor of
``protos/perfetto/trace/perfetto_trace.proto`` (module
``perfetto.protos.perfetto.trace.perfetto_trace_pb2``). The readers and the writer never
hard-code a field number of Perfetto's protos: they ask this module, which reads the
descriptors once. Dense generic ftrace events (field ids 65536 and up) are described per
trace by the bundle's ``generic_event_descriptors``; :func:`generic_event_fields` decodes
one of those into the same :class:`ProtoField` tuples.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from google.protobuf import descriptor_pb2

__all__ = [
    "FTRACE_CLOCKS",
    "FTRACE_CLOCK_UNKNOWN",
    "ftrace_clock_value",
    "ProtoField",
    "CompiledEvent",
    "Catalog",
    "catalog",
    "field_number",
    "generic_event_fields",
    "GENERIC_FIRST_ID",
    "VARINT_KINDS",
]

#: ``FtraceEventBundle.FtraceClock`` values that name a trace clock (ftrace_event_bundle.proto).
FTRACE_CLOCKS: Final = {2: "global", 3: "local", 4: "mono_raw"}
#: ``FTRACE_CLOCK_UNKNOWN``: a clock Perfetto has no name for.
FTRACE_CLOCK_UNKNOWN: Final = 1


def ftrace_clock_value(clock: str | None) -> int | None:
    """The ``ftrace_clock`` to write for a trace clock: its enum value, ``UNKNOWN`` for a
    clock Perfetto does not name, ``None`` (unset) when the clock is not known.

    Examples:
        >>> ftrace_clock_value("global"), ftrace_clock_value("x86-tsc"), ftrace_clock_value(None)
        (2, 1, None)
    """
    if clock is None:
        return None
    return {v: k for k, v in FTRACE_CLOCKS.items()}.get(clock, FTRACE_CLOCK_UNKNOWN)


#: First ``FtraceEvent`` field id traced_probes hands to a dense generic event
#: (``kGenericEvtProtoMinPbFieldId`` in ``src/traced/probes/ftrace/proto_translation_table.h``).
GENERIC_FIRST_ID: Final = 65536

# google.protobuf FieldDescriptor.TYPE_* numbers -> our decoding kinds.
_KINDS: Final = {
    1: "double", 2: "float", 3: "int", 4: "uint", 5: "int", 6: "fixed64", 7: "fixed32",
    8: "bool", 9: "string", 10: "group", 11: "message", 12: "bytes", 13: "uint", 14: "int",
    15: "sfixed32", 16: "sfixed64", 17: "sint", 18: "sint",
}

#: Kinds whose values travel as varints (wire type 0).
VARINT_KINDS: Final = frozenset({"int", "uint", "bool", "sint"})


@dataclass(frozen=True)
class ProtoField:
    """One field of a message: its number, name, decoding kind and whether it repeats."""

    number: int
    name: str
    kind: str
    repeated: bool = False


@dataclass(frozen=True)
class CompiledEvent:
    """An ftrace event Perfetto has a compiled proto for (a field of ``FtraceEvent``)."""

    number: int
    name: str
    fields: tuple[ProtoField, ...]

    def by_name(self) -> dict[str, ProtoField]:
        """The fields keyed by name."""
        return {f.name: f for f in self.fields}


@dataclass(frozen=True)
class Catalog:
    """Everything the reader and the writer need to know about Perfetto's compiled protos."""

    compiled: dict[int, CompiledEvent]
    compiled_by_name: dict[str, CompiledEvent]
    generic_legacy_id: int
    messages: dict[str, dict[str, ProtoField]]


def _fields(desc: Any) -> tuple[ProtoField, ...]:
    return tuple(
        ProtoField(f.number, f.name, _KINDS.get(f.type, "unknown"), bool(f.is_repeated))
        for f in desc.fields
    )


_MESSAGES: Final = (
    "Trace", "TracePacket", "FtraceEventBundle", "FtraceEventBundle.CompactSched",
    "FtraceEventBundle.GenericEventDescriptor", "FtraceEvent", "GenericFtraceEvent",
    "GenericFtraceEvent.Field", "FtraceStats", "FtraceCpuStats", "ProcessTree",
    "ProcessTree.Process", "ProcessTree.Thread", "TrackDescriptor", "ThreadDescriptor",
    "ProcessDescriptor", "SchedSwitchFtraceEvent", "SchedWakingFtraceEvent",
    "TrackEvent", "CounterDescriptor", "DebugAnnotation",
)


def _message(pool_file: Any, dotted: str) -> Any:
    parts = dotted.split(".")
    desc = pool_file.message_types_by_name[parts[0]]
    for part in parts[1:]:
        desc = desc.nested_types_by_name[part]
    return desc


@cache
def catalog() -> Catalog:
    """The descriptor facts of the bundled ``perfetto_trace.proto`` (computed once).

    Examples:
        >>> cat = catalog()
        >>> cat.compiled_by_name["kvm_entry"].name, cat.generic_legacy_id
        ('kvm_entry', 327)
    """
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2

    pool_file = perfetto_trace_pb2.DESCRIPTOR
    messages = {
        name: {f.name: f for f in _fields(_message(pool_file, name))} for name in _MESSAGES
    }
    ftrace_event = _message(pool_file, "FtraceEvent")
    compiled: dict[int, CompiledEvent] = {}
    generic_id = -1
    for f in ftrace_event.fields:
        if f.message_type is None:
            continue
        if f.message_type.full_name == "perfetto.protos.GenericFtraceEvent":
            generic_id = f.number
            continue
        compiled[f.number] = CompiledEvent(f.number, f.name, _fields(f.message_type))
    by_name = {ev.name: ev for ev in compiled.values()}
    return Catalog(compiled, by_name, generic_id, messages)


def field_number(message: str, name: str) -> int:
    """The field number of ``message.name`` in the bundled protos.

    Examples:
        >>> field_number("TracePacket", "ftrace_events"), field_number("Trace", "packet")
        (1, 1)
    """
    return catalog().messages[message][name].number


def generic_event_fields(event_descriptor: bytes) -> tuple[str, tuple[ProtoField, ...]]:
    """Decode a bundle's serialised ``DescriptorProto`` into the event name and its fields.

    Raises:
        google.protobuf.message.DecodeError: the bytes are not a ``DescriptorProto``.
    """
    desc = descriptor_pb2.DescriptorProto.FromString(event_descriptor)
    fields = tuple(
        ProtoField(
            f.number, _text(f.name), _KINDS.get(f.type, "unknown"),
            f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
        )
        for f in desc.field
    )
    return _text(desc.name), fields


def _text(value: str | bytes) -> str:
    """python-protobuf hands back ``bytes`` for string fields that are not valid UTF-8."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
