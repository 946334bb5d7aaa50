"""Readers that turn kvm_mmu traces into Arrow tables with declared schemas.

Every reader has the same shape: ``read_<format>(source) -> Trace`` (ftrace/trace-cmd text,
trace.dat, Perfetto) and ``iter_<format>`` for bounded-memory streaming; :func:`read_trace`
detects the format from the content. :func:`write_perfetto` and :func:`write_tables` write.
See :mod:`parsers.schema` for the tables.
"""

from importlib import metadata as _metadata

from parsers.convert import ConvertReport, convert_trace
from parsers.detect import detect_format, iter_trace, read_trace
from parsers.errors import (
    KvmMmuError,
    MissingExtraError,
    OutputError,
    QueryError,
    RecordError,
    SchemaError,
    SpillError,
    TraceFormatError,
    TraceParseError,
    TraceProcessorError,
    TraceTruncatedError,
    UnknownEventError,
)
from parsers.perfetto.reader import iter_perfetto, read_perfetto
from parsers.perfetto.sql import query_perfetto, query_trace
from parsers.perfetto.writer import write_perfetto
from parsers.recording.record import RecordReport, record
from parsers.schema import EVENTS_SCHEMA, typed_event_names, typed_schema
from parsers.table_files import write_tables
from parsers.text.reader import iter_ftrace_text, read_ftrace_text
from parsers.trace import Trace, TraceBatch, TraceMetadata, TraceStream
from parsers.tracedat.reader import iter_tracedat, read_tracedat

try:
    __version__ = _metadata.version("kvm-mmu-replay")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "ConvertReport",
    "EVENTS_SCHEMA",
    "KvmMmuError",
    "MissingExtraError",
    "OutputError",
    "QueryError",
    "RecordError",
    "RecordReport",
    "SchemaError",
    "SpillError",
    "Trace",
    "TraceBatch",
    "TraceFormatError",
    "TraceMetadata",
    "TraceParseError",
    "TraceProcessorError",
    "TraceStream",
    "TraceTruncatedError",
    "UnknownEventError",
    "convert_trace",
    "detect_format",
    "iter_ftrace_text",
    "iter_perfetto",
    "iter_trace",
    "iter_tracedat",
    "query_perfetto",
    "query_trace",
    "read_ftrace_text",
    "read_perfetto",
    "read_trace",
    "read_tracedat",
    "record",
    "write_perfetto",
    "write_tables",
    "typed_event_names",
    "typed_schema",
]
