"""Readers that turn kvm_mmu traces into Arrow tables with declared schemas.

Every reader has the same shape: ``read_<format>(source) -> Trace``; :func:`read_trace`
detects the format from the content. See :mod:`parsers.schema` for the tables.
"""

from parsers.errors import (
    KvmMmuError,
    MissingExtraError,
    SchemaError,
    TraceFormatError,
    TraceParseError,
    TraceTruncatedError,
    UnknownEventError,
)
from parsers.schema import EVENTS_SCHEMA, typed_event_names, typed_schema
from parsers.trace import Trace, TraceBatch, TraceMetadata, TraceStream

__all__ = [
    "EVENTS_SCHEMA",
    "KvmMmuError",
    "MissingExtraError",
    "SchemaError",
    "Trace",
    "TraceBatch",
    "TraceFormatError",
    "TraceMetadata",
    "TraceParseError",
    "TraceStream",
    "TraceTruncatedError",
    "UnknownEventError",
    "typed_event_names",
    "typed_schema",
]
