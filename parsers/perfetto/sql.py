"""Optional: Perfetto's own SQL over a trace, with a trace_processor_shell the user supplies.

:func:`query_perfetto` runs ``perfetto.trace_processor.TraceProcessor`` with
``TraceProcessorConfig(bin_path=...)``. It never lets the ``perfetto`` package download a
binary (its default when no ``bin_path`` is given): the path is required and checked
first. This is an extra view for Perfetto users; the project's readers never need it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa

from parsers.errors import TraceProcessorError

__all__ = ["query_perfetto", "query_trace", "TraceProcessorError"]  # error re-exported


def query_perfetto(source: str | Path, sql: str, *, trace_processor: str | Path,
                   load_timeout: int = 30) -> pa.Table:
    """Run Perfetto SQL on ``source`` with the ``trace_processor_shell`` at ``trace_processor``.

    Args:
        source: a trace Perfetto's trace processor can load.
        sql: the PerfettoSQL query, e.g. ``"select ts, name from ftrace_event"``.
        trace_processor: path of a ``trace_processor_shell`` binary (never downloaded).
        load_timeout: seconds to wait for the shell to load the trace.

    Raises:
        TraceProcessorError: the binary is missing or not executable, or the shell failed
            to start, load the trace or run the query.
    """
    binary = str(trace_processor)
    if not Path(binary).is_file():
        raise TraceProcessorError(binary, "no such file (pass the path of a "
                                          "trace_processor_shell you have; none is downloaded)")
    if not os.access(binary, os.X_OK):
        raise TraceProcessorError(binary, "not executable")
    from perfetto.trace_processor import TraceProcessor, TraceProcessorConfig

    config = TraceProcessorConfig(bin_path=binary, load_timeout=load_timeout)
    try:
        with TraceProcessor(trace=str(source), config=config) as tp:
            frame = tp.query(sql).as_pandas_dataframe()
    except Exception as exc:  # the perfetto package raises bare Exception subclasses
        raise TraceProcessorError(binary, _one_line(exc)) from exc
    return pa.Table.from_pandas(frame, preserve_index=False)


def _one_line(exc: Exception) -> str:
    """The perfetto package's multi-line message as one line, without its network hints."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "failed to start" in first:
        return ("did not start serving queries (is it a trace_processor_shell binary? run it "
                "with --version to check)")
    return first


def query_trace(source: str | Path, sql: str, *, trace_processor: str | Path,
                load_timeout: int = 30, strict: bool = False, salvage: bool = False
                ) -> pa.Table:
    """:func:`query_perfetto` over a trace of any format we read.

    A Perfetto trace is handed to the trace processor as it is; text and trace.dat inputs
    are first read (``strict``, ``salvage`` as for :func:`~parsers.detect.read_trace`) and
    converted with :func:`~parsers.perfetto.writer.write_perfetto` (dense encoding) into a
    temporary file, removed afterwards.
    """
    from parsers.detect import detect_format, read_trace
    from parsers.perfetto.writer import write_perfetto

    if detect_format(source) == "perfetto":
        return query_perfetto(source, sql, trace_processor=trace_processor,
                              load_timeout=load_timeout)
    with tempfile.TemporaryDirectory(prefix="kvm-mmu-replay-sql.") as tmp:
        converted = Path(tmp) / "trace.pftrace"
        write_perfetto(read_trace(source, strict=strict, salvage=salvage), converted)
        return query_perfetto(converted, sql, trace_processor=trace_processor,
                              load_timeout=load_timeout)
