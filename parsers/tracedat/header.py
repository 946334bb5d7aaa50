"""The trace.dat file header, metadata sections and options (file versions 6 and 7).

Layout: trace-cmd's ``Documentation/trace-cmd/trace-cmd.dat.v6.5.txt`` and
``trace-cmd.dat.v7.5.txt``; what the options mean to a reader: ``read_options`` in
trace-cmd's ``lib/trace-cmd/trace-input.c``. This module only locates things: the page data
itself is walked by :mod:`parsers.tracedat.pages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parsers.errors import TraceFormatError, TraceParseError
from parsers.tracedat.binary import Cursor, decompress

__all__ = ["MAGIC", "is_tracedat", "CpuData", "BufferInfo", "TraceDatInfo", "read_info",
           "read_kallsyms"]

#: First bytes of every trace.dat file.
MAGIC = b"\x17\x08\x44tracing"

# Option ids (trace-cmd include/trace-cmd/trace-cmd.h, enum tracecmd_file_options).
_DONE, _DATE, _BUFFER, _TRACECLOCK, _UNAME, _OFFSET, _CPUCOUNT, _VERSION = 0, 1, 3, 4, 5, 7, 8, 9
_TIME_SHIFT, _GUEST, _TSC2NSEC = 12, 13, 14
_HEADER_INFO, _FTRACE_EVENTS, _EVENT_FORMATS, _CMDLINES, _BUFFER_TEXT = 16, 17, 18, 21, 22
_KALLSYMS = 19
#: gpuvis' trace-cmd fork stores the kernel's ``saved_tgids`` under this id.
_SAVED_TGIDS = 32
_SECTION_FLAG_COMPRESSED = 1


def is_tracedat(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts like a trace.dat file.

    Examples:
        >>> is_tracedat(b"\\x17\\x08Dtracing6\\x00")
        True
        >>> is_tracedat(b"# tracer: nop")
        False
    """
    return head.startswith(MAGIC)


@dataclass(frozen=True)
class CpuData:
    """Where one CPU's ring-buffer pages are in the file."""

    cpu: int
    offset: int
    size: int


@dataclass(frozen=True)
class BufferInfo:
    """One buffer instance's per-CPU data (``name`` is ``""`` for the top instance)."""

    name: str
    clock: str | None
    page_size: int
    cpus: tuple[CpuData, ...]
    compressed: bool


@dataclass
class TraceDatInfo:
    """Everything the header, sections and options of a trace.dat file say."""

    path: str
    version: int
    big_endian: bool
    long_size: int
    page_size: int
    compression: str | None = None
    header_page: str = ""
    ftrace_formats: list[str] = field(default_factory=list)
    event_formats: list[tuple[str, str]] = field(default_factory=list)
    cmdlines: str = ""
    cpus: int | None = None
    buffers: list[BufferInfo] = field(default_factory=list)
    trace_clock: str | None = None
    ts_offset: int = 0
    tsc2nsec: tuple[int, int, int] | None = None
    tgids: dict[int, int] = field(default_factory=dict)
    latency: bool = False
    warnings: list[str] = field(default_factory=list)
    #: ``/proc/kallsyms`` as saved (v6), or where its section is (v7): read on demand by
    #: :func:`read_kallsyms`, for the frames of stack records.
    kallsyms: bytes = b""
    kallsyms_section: int | None = None


def read_info(data: Any, path: str, *, salvage: bool = False) -> TraceDatInfo:
    """Parse the header, metadata and options of the trace.dat bytes ``data``.

    With ``salvage``, a damaged later options section (v7) ends the option chain with a
    warning instead of an error.

    Raises:
        TraceFormatError: not a trace.dat file, or a file version we do not read.
        TraceParseError, TraceTruncatedError: the metadata is corrupt or cut short.
    """
    cur = Cursor(data, path)
    if not is_tracedat(bytes(data[:len(MAGIC)])):
        raise TraceFormatError(path, "not a trace.dat file (no \\x17\\x08Dtracing magic)")
    cur.pos = len(MAGIC)
    text = cur.cstr("the file version string", limit=16)
    if not text.isdigit() or int(text) not in (6, 7):
        raise TraceFormatError(path, f"trace.dat version {text!r} is not supported (6 or 7 is)")
    endian = cur.take(1, "the endianness byte")[0]
    long_size = cur.take(1, "the long size byte")[0]
    cur.set_endian(endian != 0)
    page_size = cur.u32("the page size")
    if long_size not in (4, 8) or not 0 < page_size <= 1 << 24:
        raise TraceParseError(
            path, f"implausible header: long size {long_size}, page size {page_size}",
            offset=cur.where())
    info = TraceDatInfo(path, int(text), endian != 0, long_size, page_size)
    if info.version == 6:
        _read_v6(cur, info)
    else:
        _read_v7(cur, info, salvage)
    return info


def read_kallsyms(data: Any, info: TraceDatInfo) -> bytes:
    """The file's saved ``/proc/kallsyms`` text (empty when it has none).

    Raises:
        TraceParseError, TraceTruncatedError: the kallsyms section is damaged.
    """
    if info.kallsyms or info.kallsyms_section is None:
        return info.kallsyms
    cur = Cursor(data, info.path, big_endian=info.big_endian)
    body, _ = _section(cur, info, info.kallsyms_section, expect_id=_KALLSYMS)
    info.kallsyms = body.sized(4, "the kallsyms block")
    return info.kallsyms


# --- version 6: everything in file order --------------------------------------------------


def _read_v6(cur: Cursor, info: TraceDatInfo) -> None:
    _read_headers(cur, info)
    _read_ftrace(cur, info)
    _read_events(cur, info)
    info.kallsyms = cur.sized(4, "the kallsyms block")
    cur.sized(4, "the printk formats block")
    info.cmdlines = cur.sized(8, "the saved cmdlines").decode("utf-8", "replace")
    info.cpus = cur.u32("the CPU count")
    kind = cur.take(10, "'options', 'latency' or 'flyrecord'")
    v6_buffers: list[tuple[int, str]] = []
    if kind == b"options  \0":
        _read_options(cur, info, v6_buffers, sectioned=False)
        kind = cur.take(10, "'latency' or 'flyrecord'")
    if kind == b"latency  \0":
        info.latency = True
        return
    if kind != b"flyrecord\0":
        raise TraceParseError(
            info.path, f"expected 'flyrecord' or 'latency', found {kind!r}",
            offset=cur.where() - 10)
    info.buffers.append(_v6_flyrecord(cur, info, "", info.cpus))
    for offset, name in v6_buffers:
        cur.seek(offset, f"the BUFFER option of instance {name!r}")
        if bytes(cur.data[cur.pos:cur.pos + 10]) == b"flyrecord\0":
            cur.pos += 10
        info.buffers.append(_v6_flyrecord(cur, info, name, info.cpus))


def _v6_flyrecord(cur: Cursor, info: TraceDatInfo, name: str, cpus: int) -> BufferInfo:
    cur.need(16 * cpus, f"{cpus} per-CPU (offset, size) pairs")
    pairs = tuple(
        CpuData(cpu, cur.u64("a CPU data offset"), cur.u64("a CPU data size"))
        for cpu in range(cpus))
    clock = None
    if cur.end - cur.pos >= 8:
        size = cur.u64("the trace clock size")
        if 0 < size <= min(4096, cur.end - cur.pos):
            clock = _selected_clock(cur.take(size, "the trace clock").decode("utf-8", "replace"))
    if name == "" and clock and info.trace_clock is None:
        info.trace_clock = clock
    return BufferInfo(name, clock or info.trace_clock, info.page_size, pairs, False)


# --- version 7: sections located by options ------------------------------------------------


def _read_v7(cur: Cursor, info: TraceDatInfo, salvage: bool) -> None:
    algo = cur.cstr("the compression name", limit=64)
    cur.cstr("the compression version", limit=64)
    info.compression = None if algo == "none" else algo
    if info.compression not in (None, "zlib", "zstd"):
        raise TraceFormatError(info.path, f"unknown trace.dat compression {algo!r}")
    offset = cur.u64("the offset of the first options section")
    seen: set[int] = set()
    sections: dict[int, int] = {}
    raw_buffers: list[tuple[int, str, str | None, int, tuple[CpuData, ...]]] = []
    while offset and offset not in seen:
        seen.add(offset)
        try:
            body, _ = _section(cur, info, offset, expect_id=0)
            offset = _read_options(body, info, [], sectioned=True, sections=sections,
                                   v7_buffers=raw_buffers)
        except TraceParseError as exc:
            if not salvage or len(seen) == 1:
                raise
            info.warnings.append(f"salvaged: options section lost: {exc}")
            break
    for sec_id, reader in ((_HEADER_INFO, _read_headers), (_FTRACE_EVENTS, _read_ftrace),
                           (_EVENT_FORMATS, _read_events)):
        if sec_id in sections:
            body, _ = _section(cur, info, sections[sec_id], expect_id=sec_id)
            reader(body, info)
    info.kallsyms_section = sections.get(_KALLSYMS)
    if _CMDLINES in sections:
        body, _ = _section(cur, info, sections[_CMDLINES], expect_id=_CMDLINES)
        info.cmdlines = body.sized(8, "the saved cmdlines").decode("utf-8", "replace")
    for sec_offset, name, clock, page_size, cpus in raw_buffers:
        cur.seek(sec_offset, f"the BUFFER section of instance {name!r}")
        flags = _section_header(cur, info, expect_id=_BUFFER)[1]
        compressed = bool(flags & _SECTION_FLAG_COMPRESSED)
        info.buffers.append(BufferInfo(name, clock, page_size, cpus, compressed))
        if name == "" and clock and info.trace_clock is None:
            info.trace_clock = clock


def _section_header(cur: Cursor, info: TraceDatInfo, expect_id: int) -> tuple[int, int, int]:
    start = cur.where()
    sec_id = cur.u16("a section id")
    flags = cur.u16("section flags")
    cur.u32("a section string id")
    size = cur.u64("a section size")
    if sec_id != expect_id:
        raise TraceParseError(
            info.path, f"expected section {expect_id}, found section id {sec_id}", offset=start)
    cur.need(size, f"the {size}-byte body of section {sec_id}")
    return sec_id, flags, size


def _section(cur: Cursor, info: TraceDatInfo, offset: int, expect_id: int) -> tuple[Cursor, int]:
    cur.seek(offset, f"section {expect_id}")
    _, flags, size = _section_header(cur, info, expect_id)
    start = cur.pos
    if flags & _SECTION_FLAG_COMPRESSED:
        if info.compression is None:
            raise TraceParseError(
                info.path, "compressed section in a file without compression", offset=offset)
        csize = cur.u32("a compressed section size")
        usize = cur.u32("an uncompressed section size")
        blob = cur.take(csize, "the compressed section data")
        data = decompress(info.compression, blob, usize, path=info.path, offset=start)
        body = Cursor(data, info.path, big_endian=info.big_endian, base=None, origin=offset,
                      what=f"section {expect_id}")
    else:
        body = Cursor(cur.data, info.path, big_endian=info.big_endian, pos=start)
        body.end = start + size
    cur.pos = start + size
    return body, flags


# --- parts shared by both versions ---------------------------------------------------------


def _read_headers(cur: Cursor, info: TraceDatInfo) -> None:
    if cur.take(12, "'header_page'") != b"header_page\0":
        raise TraceParseError(info.path, "expected 'header_page'", offset=cur.where() - 12)
    info.header_page = cur.sized(8, "the header_page format").decode("utf-8", "replace")
    if cur.take(13, "'header_event'") != b"header_event\0":
        raise TraceParseError(info.path, "expected 'header_event'", offset=cur.where() - 13)
    cur.sized(8, "the header_event format")


def _read_ftrace(cur: Cursor, info: TraceDatInfo) -> None:
    count = cur.u32("the ftrace format count")
    cur.need(8 * count, f"{count} ftrace formats")
    info.ftrace_formats = [
        cur.sized(8, "an ftrace format").decode("utf-8", "replace") for _ in range(count)]


def _read_events(cur: Cursor, info: TraceDatInfo) -> None:
    systems = cur.u32("the event system count")
    for _ in range(systems):
        name = cur.cstr("an event system name", limit=256)
        count = cur.u32(f"the event count of system {name!r}")
        cur.need(8 * count, f"{count} formats of system {name!r}")
        for _ in range(count):
            text = cur.sized(8, f"a format of system {name!r}").decode("utf-8", "replace")
            info.event_formats.append((name, text))


def _read_options(
    cur: Cursor, info: TraceDatInfo, v6_buffers: list[tuple[int, str]], *, sectioned: bool,
    sections: dict[int, int] | None = None,
    v7_buffers: list[tuple[int, str, str | None, int, tuple[CpuData, ...]]] | None = None,
) -> int:
    """Read options until DONE; return the next options section offset (v7) or 0."""
    while True:
        opt = cur.u16("an option id")
        if opt == _DONE and not sectioned:
            return 0
        size = cur.u32(f"the size of option {opt}")
        body = Cursor(cur.take(size, f"the {size}-byte data of option {opt}"), info.path,
                      big_endian=info.big_endian, base=None, origin=cur.where() - size,
                      what=f"option {opt}")
        if opt == _DONE:
            return body.u64("the next options section offset")
        _apply_option(opt, body, info, v6_buffers, sections, v7_buffers)


def _apply_option(
    opt: int, body: Cursor, info: TraceDatInfo, v6_buffers: list[tuple[int, str]],
    sections: dict[int, int] | None,
    v7_buffers: list[tuple[int, str, str | None, int, tuple[CpuData, ...]]] | None,
) -> None:
    text = bytes(body.data).split(b"\0", 1)[0].decode("utf-8", "replace")
    if opt == _TRACECLOCK:
        info.trace_clock = _selected_clock(text)
    elif opt == _OFFSET:
        info.ts_offset += _strtoll(text)
    elif opt == _CPUCOUNT and body.end == 4:
        info.cpus = body.u32("the CPU count")
    elif opt == _TSC2NSEC and body.end >= 16:
        info.tsc2nsec = (body.u32("TSC2NSEC mult"), body.u32("TSC2NSEC shift"),
                         body.u64("TSC2NSEC offset"))
    elif opt == _SAVED_TGIDS:
        info.tgids.update(_pairs(text))
    elif opt in (_HEADER_INFO, _FTRACE_EVENTS, _EVENT_FORMATS, _CMDLINES, _KALLSYMS) \
            and sections is not None:
        sections[opt] = body.u64(f"the offset in option {opt}")
    elif opt == _BUFFER and v7_buffers is not None:
        v7_buffers.append(_v7_buffer(body, info))
    elif opt == _BUFFER:
        offset = body.u64("the BUFFER offset")
        v6_buffers.append((offset, body.cstr("the BUFFER name")))
    elif opt == _BUFFER_TEXT:
        info.latency = True
    elif opt == _TIME_SHIFT:
        info.warnings.append("TIME_SHIFT option (guest clock sync) present but not applied")


def _v7_buffer(
    body: Cursor, info: TraceDatInfo
) -> tuple[int, str, str | None, int, tuple[CpuData, ...]]:
    offset = body.u64("the BUFFER section offset")
    name = body.cstr("the BUFFER name")
    clock = body.cstr("the BUFFER clock") or None
    page_size = body.u32("the BUFFER page size")
    count = body.u32("the BUFFER CPU count")
    body.need(20 * count, f"{count} BUFFER CPU entries")
    cpus = tuple(CpuData(body.u32("a CPU id"), body.u64("a CPU data offset"),
                         body.u64("a CPU data size")) for _ in range(count))
    if not 0 < page_size <= 1 << 24:
        raise TraceParseError(info.path, f"BUFFER {name!r} has page size {page_size}",
                              offset=body.origin)
    return offset, name, clock, page_size, cpus


def _selected_clock(text: str) -> str | None:
    """The bracketed clock of a ``trace_clock`` file text (or the text itself)."""
    if "[" in text and "]" in text:
        return text[text.index("[") + 1:text.index("]")]
    words = text.split()
    return words[0] if words else None


def _strtoll(text: str) -> int:
    """``strtoll(text, NULL, 0)``: decimal, 0x hex or 0 octal; 0 when nothing parses."""
    t = text.strip()
    sign = -1 if t.startswith("-") else 1
    t = t.lstrip("+-")
    for base, prefix in ((16, ("0x", "0X")), (8, ("0",))):
        if t.startswith(prefix) and len(t) > 1:
            try:
                return sign * int(t, base)
            except ValueError:
                return 0
    digits = "".join(c for c in t[:20] if c.isdigit()) if t[:1].isdigit() else ""
    return sign * int(digits) if digits else 0


def _pairs(text: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            out[int(parts[0])] = int(parts[1])
    return out
