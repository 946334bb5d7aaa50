"""Open a trace.dat file and build the :class:`~parsers.tracedat.stream.Decoder` its streams
share, the same way in the reading process and in each worker process."""

from __future__ import annotations

import mmap
from collections.abc import Collection
from typing import Any

from parsers.errors import TraceFormatError
from parsers.tracedat.formats import EventFormat, parse_format, parse_header_page
from parsers.tracedat.header import TraceDatInfo, is_tracedat
from parsers.tracedat.stream import Decoder

__all__ = ["open_mapped", "make_decoder"]


def open_mapped(path: str) -> Any:
    """The file mapped read-only, once its magic is checked."""
    try:
        with open(path, "rb") as fh:
            if not is_tracedat(fh.read(10)):
                raise TraceFormatError(path, "not a trace.dat file (no \\x17\\x08Dtracing magic)")
            fh.seek(0, 2)
            if fh.tell() == 0:
                raise TraceFormatError(path, "empty file")
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise TraceFormatError(path, f"cannot read: {exc.strerror}") from None


def make_decoder(
    path: str, info: TraceDatInfo, events: Collection[str] | None, salvage: bool,
    window_pages: int,
) -> Decoder:
    """The decoder of every stream of the file ``info`` describes."""
    return Decoder(path, info, parse_header_page(info.header_page, info.long_size),
                   _formats(info), None if events is None else frozenset(events), salvage,
                   window_pages=max(1, window_pages))


def _formats(info: TraceDatInfo) -> dict[int, EventFormat]:
    out: dict[int, EventFormat] = {}
    for text in info.ftrace_formats:
        ev = parse_format(text, "ftrace")
        if ev is not None:
            out[ev.id] = ev
    for system, text in info.event_formats:
        ev = parse_format(text, system)
        if ev is not None:
            out[ev.id] = ev
    return out
