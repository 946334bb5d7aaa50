"""Pick the reader for a trace from its content (never from its file name)."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from pathlib import Path

from parsers.errors import TraceFormatError
from parsers.ftrace_text import iter_ftrace_text
from parsers.text_grammar import CTX_RE, TAIL_RE
from parsers.text_markers import LineKind, classify_line
from parsers.text_source import sniff
from parsers.trace import Trace, TraceStream

__all__ = ["detect_format", "read_trace", "iter_trace", "FORMATS"]

#: Formats :func:`read_trace` knows, by the name :func:`detect_format` returns.
FORMATS = ("ftrace-text",)

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
    """The format of ``source``, one of :data:`FORMATS`.

    Raises:
        TraceFormatError: the file is missing, empty, binary, or text in no known grammar.
    """
    head = sniff(source)
    name = str(source)
    if not head:
        raise TraceFormatError(name, "empty file: no trace data")
    if b"\x00" in head:
        raise TraceFormatError(name, "binary data that is not a trace format we read")
    if _looks_like_text_trace(head):
        return "ftrace-text"
    raise TraceFormatError(
        name, "not a trace: no line in the first 64 KiB matches the ftrace or trace-cmd "
        "report grammar")


_STREAMERS: dict[str, Callable[..., TraceStream]] = {"ftrace-text": iter_ftrace_text}


def iter_trace(
    source: str | Path, *, events: Collection[str] | None = None, strict: bool = False
) -> TraceStream:
    """Stream any supported trace as batches; the format is detected from the content."""
    return _STREAMERS[detect_format(source)](source, events=events, strict=strict)


def read_trace(
    source: str | Path, *, events: Collection[str] | None = None, strict: bool = False
) -> Trace:
    """Read any supported trace into a :class:`~parsers.trace.Trace`.

    Args:
        source: path of the trace (text may be gzip, xz, bzip2 or zstd compressed).
        events: keep only these event names.
        strict: turn lines that match no grammar into errors instead of counted skips.

    Examples:
        >>> trace = read_trace("sample_traces/tracefs_record_tgid.txt")
        >>> trace.info()["format"]
        'ftrace-text'
    """
    return Trace.from_stream(iter_trace(source, events=events, strict=strict))
