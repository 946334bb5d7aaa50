"""Pick the reader for a trace from its content (never from its file name)."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from parsers.errors import TraceFormatError
from parsers.perfetto.reader import is_perfetto, iter_perfetto
from parsers.text.grammar import CTX_RE, TAIL_RE
from parsers.text.markers import LineKind, classify_line
from parsers.text.reader import iter_ftrace_text
from parsers.text.source import open_raw, sniff
from parsers.trace import Trace, TraceStream, check_event_filter
from parsers.tracedat.header import is_tracedat
from parsers.tracedat.reader import iter_tracedat

__all__ = ["detect_format", "read_trace", "iter_trace", "FORMATS"]

#: Formats :func:`read_trace` knows, by the name :func:`detect_format` returns.
FORMATS = ("ftrace-text", "trace.dat", "perfetto")

_EVENT_LINE = re.compile(
    r"^(?P<ctx>.*?)(?P<tail> [0-9]+(?:\.[0-9]+)?: .*)$"
)


def _looks_like_text_trace(head: bytes) -> bool:
    text = head.decode("utf-8", "replace")
    lines = text.splitlines()[:-1] if not text.endswith("\n") and "\n" in text else text.splitlines()
    ctx_re, tail_re = re.compile(CTX_RE), re.compile(TAIL_RE)
    known = 0
    for line in lines[:2000]:
        m = _EVENT_LINE.match(line)
        if m and ctx_re.match(m["ctx"]) and tail_re.match(m["tail"]):
            return True
        kind = classify_line(line).kind
        if kind in (LineKind.HEADER, LineKind.PREAMBLE, LineKind.MARKER):
            known += 1
    return known > 0 and known == sum(1 for line in lines[:2000] if line.strip())


def detect_format(source: str | Path) -> str:
    """The format of ``source``, one of :data:`FORMATS`, from its first bytes.

    trace.dat by its magic, Perfetto by a valid ``TracePacket`` prefix, text (after
    decompression) by a line in the ftrace or trace-cmd report grammar.

    Raises:
        TraceFormatError: the file is missing, empty, binary, or text in no known grammar.
    """
    name = str(source)
    raw = _raw_head(name)
    if is_tracedat(raw):
        return "trace.dat"
    if raw and is_perfetto(raw):
        return "perfetto"
    head = sniff(source)
    if not head:
        raise TraceFormatError(name, "empty file: no trace data")
    if b"\x00" in head:
        clean = b"\n".join(ln for ln in head.split(b"\n") if b"\x00" not in ln)
        if not _looks_like_text_trace(clean):
            first = head.index(0)
            raise TraceFormatError(name, "binary data that is not a trace format we read "
                                   f"(a NUL byte at byte {first})")
        return "ftrace-text"  # text with damaged lines: the reader names them
    if _looks_like_text_trace(head):
        return "ftrace-text"
    raise TraceFormatError(
        name, "not a trace: no line in the first 64 KiB matches the ftrace or trace-cmd "
        "report grammar")


def _raw_head(path: str, size: int = 4096) -> bytes:
    with open_raw(path) as f:
        return f.read(size)


_STREAMERS: dict[str, Callable[..., TraceStream]] = {
    "ftrace-text": iter_ftrace_text, "trace.dat": iter_tracedat, "perfetto": iter_perfetto}


#: Bytes of a trace.dat ring-buffer page, for ``batch_bytes`` (the file's own size may differ;
#: the batch then holds as many of its pages).
_PAGE_BYTES = 4096


def _options(fmt: str, strict: bool, salvage: bool, workers: int | None,
             batch_bytes: int | None = None) -> dict[str, Any]:
    """The reading options ``fmt``'s reader takes (trace.dat decodes fields from format
    definitions, so nothing in it is "unknown" for ``strict`` to reject)."""
    options: dict[str, dict[str, Any]] = {
        "ftrace-text": {"strict": strict, "salvage": salvage, "workers": workers},
        "trace.dat": {"salvage": salvage, "workers": workers},
        "perfetto": {"strict": strict, "salvage": salvage}}
    if batch_bytes is not None and fmt == "ftrace-text":
        options[fmt]["chunk_bytes"] = max(1, batch_bytes)
    if batch_bytes is not None and fmt == "trace.dat":
        options[fmt]["window_pages"] = max(1, batch_bytes // _PAGE_BYTES)
    return options[fmt]


def iter_trace(
    source: str | Path, *, events: Collection[str] | None = None, strict: bool = False,
    salvage: bool = False, workers: int | None = None, batch_bytes: int | None = None,
) -> TraceStream:
    """Stream any supported trace as batches; the format is detected from the content.

    Streaming readers give each batch what they know when it is decoded; :func:`read_trace`
    may complete a whole trace afterwards (Perfetto's thread names, loss counts).
    ``workers`` as in :func:`read_trace`. ``batch_bytes``: input bytes decoded per batch
    (text), or per CPU of a trace.dat in 4 KiB pages; smaller batches hold less memory at a
    time, and the rows are the same. None: each reader's default; Perfetto ignores it.
    """
    fmt = detect_format(source)
    return _STREAMERS[fmt](source, events=events,
                           **_options(fmt, strict, salvage, workers, batch_bytes))


def read_trace(
    source: str | Path, *, events: Collection[str] | None = None, strict: bool = False,
    salvage: bool = False, workers: int | None = None,
) -> Trace:
    """Read any supported trace into a :class:`~parsers.trace.Trace`.

    Args:
        source: path of the trace: ftrace or trace-cmd report text (may be gzip, xz, bzip2
            or zstd compressed), trace.dat (v6/v7) or Perfetto protobuf.
        events: keep only these event names; a name that is in neither the trace nor the
            known kvm events raises :class:`~parsers.errors.EventNameError` (a known one
            absent from the trace is a warning in ``metadata.warnings``).
        strict: turn lines (text) or fields (Perfetto) that match nothing we know into
            errors instead of counted skips.
        salvage: on damage keep what reads, with a warning or a count in the metadata,
            instead of raising: binary formats keep the events decoded before the damage;
            text skips lines with a NUL byte or not UTF-8 and keeps the complete lines of a
            truncated compressed file.
        workers: processes decoding an uncompressed text trace or a trace.dat's per-CPU
            sections (the result is the same with any number); None: the machine's cores
            for files over :data:`~parsers.text.workers.PARALLEL_BYTES` (text) or
            :data:`~parsers.tracedat.parallel.MIN_PARALLEL_BYTES` (trace.dat), else one.
            Perfetto and compressed text read in one process.

    Examples:
        >>> trace = read_trace("sample_traces/tracefs_record_tgid.txt")
        >>> trace.info()["format"]
        'ftrace-text'
        >>> read_trace("sample_traces/tc_kvm.head.dat").info()["format"]
        'trace.dat'
    """
    trace = Trace.from_stream(iter_trace(source, events=events, strict=strict, salvage=salvage,
                                         workers=workers))
    trace.metadata.warnings.extend(check_event_filter(trace, events))
    return trace
