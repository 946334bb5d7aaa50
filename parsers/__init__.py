"""Readers that turn kvm_mmu traces into Arrow tables with declared schemas.

Every reader has the same shape: ``read_<format>(source) -> Trace``; :func:`read_trace`
detects the format from the content. See :mod:`parsers.schema` for the tables.
"""

from parsers.detect import detect_format, iter_trace, read_trace
from parsers.errors import (
    KvmMmuError,
    MissingExtraError,
    SchemaError,
    TraceFormatError,
    TraceParseError,
    TraceTruncatedError,
    UnknownEventError,
)
from parsers.ftrace_text import iter_ftrace_text, read_ftrace_text
from parsers.schema import EVENTS_SCHEMA, typed_event_names, typed_schema
from parsers.table_files import write_tables
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
    "detect_format",
    "iter_ftrace_text",
    "iter_trace",
    "read_ftrace_text",
    "read_trace",
    "write_tables",
    "typed_event_names",
    "typed_schema",
]
