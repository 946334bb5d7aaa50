"""Per-CPU streams of decoded rows: pages of one (instance, CPU) → :class:`Block` windows.

Each window of pages is walked (:mod:`parsers.tracedat.pages`), its common fields and event
fields decoded per event id in one vectorised pass (:mod:`parsers.tracedat.fields`), lost-event
markers inserted before the first record of a page flagged with missed events, and timestamps
converted (TSC2NSEC multiplier/shift, then the OFFSET option, as trace-cmd's
``timestamp_calc`` in ``lib/trace-cmd/trace-input.c`` does).
"""

from __future__ import annotations

import mmap
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from parsers.errors import TraceParseError, TraceTruncatedError
from parsers.schema import EVENT_FIELDS, LOST_EVENTS
from parsers.stacks import STACK_EVENTS
from parsers.tracedat.binary import Cursor, decompress
from parsers.tracedat.fields import gather, int_column, render_args
from parsers.tracedat.formats import EventFormat, Field, PageLayout
from parsers.tracedat.header import BufferInfo, CpuData, TraceDatInfo
from parsers.tracedat.pages import PageRecords, walk_pages
from parsers.tracedat.stacks import CALLERS, callers

__all__ = ["Block", "Decoder", "Named", "Span", "iter_blocks", "keyed", "decode_span", "plan_spans"]

I64 = npt.NDArray[np.int64]
Typed = dict[str, tuple[I64, dict[str, npt.NDArray[Any]]]]


@dataclass
class Block:
    """Decoded rows of one stream, in per-CPU order (``key``: running max of ``ts``)."""

    inst: int
    cpu: int
    ts: I64
    key: I64
    pid: I64  # -1 on lost-event markers
    code: npt.NDArray[np.int32]  # index into Decoder.names
    flag: npt.NDArray[np.int32]  # common_flags << 8 | preempt_count; -1 on markers
    lost: I64  # marker counts (-1 unknown); 0 elsewhere
    keep: npt.NDArray[np.bool_]
    args: npt.NDArray[np.int32]  # index into ``texts`` (-1: no args text)
    texts: list[str] = field(default_factory=list)
    typed: Typed = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ts)

    def split(self, n: int) -> tuple[Block, Block]:
        """The first ``n`` rows and the rest."""
        return self._slice(0, n), self._slice(n, len(self))

    def _slice(self, lo: int, hi: int) -> Block:
        typed: Typed = {}
        for name, (rows, cols) in self.typed.items():
            sel = (rows >= lo) & (rows < hi)
            if sel.any():
                typed[name] = (rows[sel] - lo, {k: v[sel] for k, v in cols.items()})
        return Block(self.inst, self.cpu, self.ts[lo:hi], self.key[lo:hi], self.pid[lo:hi],
                     self.code[lo:hi], self.flag[lo:hi], self.lost[lo:hi], self.keep[lo:hi],
                     self.args[lo:hi], self.texts, typed)


@dataclass(frozen=True)
class Named:
    """A journal entry: the decoder looked event ``name`` up (see :meth:`Decoder.code`)."""

    name: str


@dataclass
class Decoder:
    """What every stream of one file shares: formats, options, filters and warnings."""

    path: str
    info: TraceDatInfo
    layout: PageLayout
    formats: dict[int, EventFormat]
    wanted: frozenset[str] | None
    salvage: bool
    window_pages: int = 256
    names: list[str] = field(default_factory=lambda: [LOST_EVENTS])
    warnings: list[str] = field(default_factory=list)
    #: In a worker process: every warning (``str``), name lookup (:class:`Named`) and
    #: failure (the exception) in the order they happen, for the parent to replay.
    journal: list[str | Named | TraceParseError] | None = None

    def code(self, name: str) -> int:
        """The index of event ``name`` in :attr:`names` (added when new)."""
        if self.journal is not None:
            self.journal.append(Named(name))
        try:
            return self.names.index(name)
        except ValueError:
            self.names.append(name)
            return len(self.names) - 1

    def warn(self, text: str) -> None:
        """Record a warning."""
        if self.journal is not None:
            self.journal.append(text)
        else:
            self.warnings.append(text)

    def fail(self, exc: TraceParseError) -> None:
        """Raise ``exc``, or record it as a warning when salvaging (journal it in a worker:
        the parent then decodes that window itself)."""
        if self.journal is not None:
            self.journal.append(exc)
            return
        if not self.salvage:
            raise exc
        self.warnings.append(f"salvaged: {exc}")

    def convert_ts(self, raw: npt.NDArray[np.uint64]) -> I64:
        """Raw ring-buffer timestamps to the reported clock (TSC2NSEC, then OFFSET)."""
        ts = raw
        if self.info.tsc2nsec is not None and self.info.tsc2nsec[0]:
            mult, shift = np.uint64(self.info.tsc2nsec[0]), self.info.tsc2nsec[1]
            hi, lo = (ts >> np.uint64(32)) * mult, (ts & np.uint64(0xFFFFFFFF)) * mult
            if shift <= 32:
                ts = (hi << np.uint64(32 - shift)) + (lo >> np.uint64(shift))
            else:
                ts = (hi + (lo >> np.uint64(32))) >> np.uint64(shift - 32)
        return ts.astype(np.int64) + np.int64(self.info.ts_offset)


@dataclass(frozen=True)
class Span:
    """One window of a stream, decodable on its own: ``count`` pages of plain data from page
    ``first``, or ``count`` compressed chunks from the chunk header at file byte ``first``.
    ``head``: the stream's first window (the stream-wide checks run with it)."""

    first: int
    count: int
    head: bool


def iter_blocks(
    dec: Decoder, data: Any, inst: int, buf: BufferInfo, cpu: CpuData
) -> Iterator[Block]:
    """Decoded windows of one CPU of one instance, in per-CPU order."""
    yield from keyed(decode_span(dec, data, inst, buf, cpu, None), [np.iinfo(np.int64).min])


def keyed(blocks: Generator[Block, None, bool], carry: list[int]) -> Generator[Block, None, bool]:
    """The non-empty ``blocks`` with their ``key`` (the running maximum of ``ts``, continued
    from ``carry[0]``, which is updated); returns what ``blocks`` returns."""
    while True:
        try:
            block = next(blocks)
        except StopIteration as stop:
            return bool(stop.value)
        if len(block):
            block.key = np.maximum(np.maximum.accumulate(block.ts), carry[0])
            carry[0] = int(block.key[-1])
            yield block


def decode_span(
    dec: Decoder, data: Any, inst: int, buf: BufferInfo, cpu: CpuData, span: Span | None
) -> Generator[Block, None, bool]:
    """Decoded windows of ``span`` (the whole stream when ``None``), empty ones included;
    returns whether the stream ends here (damage: nothing after it is read)."""
    windows = (_compressed_windows(dec, data, buf, cpu, span) if buf.compressed
               else _plain_windows(dec, data, buf, cpu, span))
    while True:
        try:
            pages, where = next(windows)
        except StopIteration as stop:
            return bool(stop.value)
        block, damaged = _decode_window(dec, pages, where, inst, cpu.cpu, buf.page_size)
        yield block
        if damaged:
            return True


def plan_spans(dec: Decoder, data: Any, buf: BufferInfo, cpu: CpuData) -> list[Span] | None:
    """The windows of one stream as :class:`Span` s, or ``None`` when the stream is better
    decoded whole in one process (truncated, a damaged chunk layout, or no data)."""
    page, step = buf.page_size, dec.window_pages
    if not buf.compressed:
        if cpu.offset + cpu.size > len(data):
            return None
        pages = cpu.size // page
        return [Span(s, min(step, pages - s), s == 0) for s in range(0, pages, step)] or None
    cur = Cursor(data, dec.path, big_endian=dec.info.big_endian)
    spans: list[Span] = []
    try:
        cur.seek(cpu.offset, "CPU data")
        cur.end = min(len(data), cpu.offset + 4 + cpu.size)
        count = cur.u32("the chunk count")
        cur.need(8 * count, "chunk headers")
        first, n, total = 0, 0, 0
        for _ in range(count):
            at = cur.where()
            csize, usize = cur.u32("a chunk size"), cur.u32("a chunk's uncompressed size")
            cur.need(csize, "compressed chunk data")
            cur.seek(cur.pos + csize, "the next chunk")
            first, n, total = (at if n == 0 else first), n + 1, total + usize
            if total >= step * page:
                spans.append(Span(first, n, not spans))
                n, total = 0, 0
        if n:
            spans.append(Span(first, n, not spans))
    except TraceParseError:
        return None
    return spans or None


def _plain_windows(
    dec: Decoder, data: Any, buf: BufferInfo, cpu: CpuData, span: Span | None
) -> Generator[tuple[npt.NDArray[np.uint8], int], None, bool]:
    size, page = cpu.size, buf.page_size
    have = max(0, min(size, len(data) - cpu.offset))
    if have < size and (span is None or span.head):
        dec.fail(TraceTruncatedError(
            dec.path, f"expected {size} bytes of CPU {cpu.cpu} data (instance "
            f"{buf.name or 'top'!r}) from byte {cpu.offset}, the file ends first",
            offset=min(len(data), cpu.offset + have)))
    pages = have // page
    lo, hi = (0, pages) if span is None else (span.first, min(pages, span.first + span.count))
    step = dec.window_pages
    for start in range(lo, hi, step):
        count = min(step, hi - start) * page
        where = cpu.offset + start * page
        yield np.frombuffer(data, np.uint8, count, where), where
        _drop_pages(data, where, count)
    return False


def _drop_pages(data: Any, where: int, count: int) -> None:
    """Unmap a decoded window's pages of a mapped file from this process (the page cache
    keeps them; a later read faults them back in). Read once, they would otherwise stay in
    the process's RSS until the whole file is read: as much as the file's size."""
    if not isinstance(data, mmap.mmap):
        return
    lo = where // mmap.PAGESIZE * mmap.PAGESIZE
    try:
        data.madvise(mmap.MADV_DONTNEED, lo, where + count - lo)
    except (OSError, ValueError, AttributeError):
        pass  # a platform without madvise: the pages stay mapped, nothing else changes


def _compressed_windows(
    dec: Decoder, data: Any, buf: BufferInfo, cpu: CpuData, span: Span | None
) -> Generator[tuple[npt.NDArray[np.uint8], int], None, bool]:
    algo = dec.info.compression or "none"
    cur = Cursor(data, dec.path, big_endian=dec.info.big_endian)
    pending: list[bytes] = []
    pending_at = cpu.offset
    stopped = False
    try:
        # trace-cmd 3.1 counts the size from after the u32 chunk count
        end = min(len(data), cpu.offset + 4 + cpu.size)
        if span is None:
            cur.seek(cpu.offset, f"CPU {cpu.cpu} data")
            cur.end = end
            count = cur.u32("the chunk count")
            cur.need(8 * count, f"{count} compressed chunk headers")
        else:
            cur.seek(span.first, f"CPU {cpu.cpu} data")
            cur.end, count = end, span.count
        for _ in range(count):
            at = cur.where()
            csize, usize = cur.u32("a chunk size"), cur.u32("a chunk's uncompressed size")
            blob = cur.take(csize, "compressed chunk data")
            if not pending:
                pending_at = at
            pending.append(decompress(algo, blob, usize, path=dec.path, offset=at))
            if sum(map(len, pending)) >= dec.window_pages * buf.page_size:
                yield np.frombuffer(b"".join(pending), np.uint8), -pending_at - 1
                pending = []
    except TraceParseError as exc:
        dec.fail(exc)
        stopped = True
    if pending:
        yield np.frombuffer(b"".join(pending), np.uint8), -pending_at - 1
    return stopped


def _decode_window(
    dec: Decoder, pages: npt.NDArray[np.uint8], where: int, inst: int, cpu: int, page: int
) -> tuple[Block, bool]:
    """Decode one window; ``where`` is its file offset (``-1 - offset`` when decompressed)."""
    recs = walk_pages(pages, page, dec.layout, dec.info.big_endian)
    _check_lost_counts(dec, recs, where, cpu, page)
    damaged = recs.damage is not None
    if recs.damage is not None:
        d = recs.damage
        dec.fail(TraceParseError(dec.path, _place(d.reason, d.page * page + d.pos, where, cpu),
                                 offset=_file_offset(where, d.page * page + d.pos)))
    short = _common_short(dec, recs)
    if short is not None:
        damaged = True
        dec.fail(TraceParseError(
            dec.path, _place("record shorter than the common fields", int(
                recs.offset[short]), where, cpu), offset=_file_offset(where, int(
                recs.offset[short]))))
        recs = _cut(recs, short)
    return _rows(dec, pages, recs, inst, cpu, where), damaged


def _check_lost_counts(dec: Decoder, recs: PageRecords, where: int, cpu: int, page: int) -> None:
    """A page flagged with a stored lost-event count of 0 is damaged (the kernel stores the
    count only when events were lost): the count becomes unknown, with a warning."""
    bad = np.flatnonzero(recs.missed & (recs.lost == 0))
    if bad.size:
        recs.lost[bad] = -1
        dec.warn(
            f"CPU {cpu}: {bad.size} page(s) flag lost events with a stored count of 0 (a "
            f"damaged page header?), first at {_at(where, int(bad[0]) * page)}; their lost-"
            "event markers have an unknown count")


def _at(where: int, pos: int) -> str:
    """Where ``pos`` of a window is, for a message: a file byte, or a byte of a chunk."""
    if where < 0:
        return f"byte {pos} of the chunk decompressed from byte {-where - 1}"
    return f"byte {where + pos}"


def _place(reason: str, pos: int, where: int, cpu: int) -> str:
    if where < 0:
        return f"CPU {cpu}: {reason} (byte {pos} of the chunk decompressed from byte {-where - 1})"
    return f"CPU {cpu}: {reason}"


def _file_offset(where: int, pos: int) -> int:
    return -where - 1 if where < 0 else where + pos


def _common_field(dec: Decoder, name: str) -> Field | None:
    for ev in dec.formats.values():
        f = ev.find(name)
        if f is not None:
            return f
    return None


def _common_short(dec: Decoder, recs: PageRecords) -> int | None:
    bad = np.flatnonzero(recs.length < 8)
    return int(bad[0]) if bad.size else None


def _cut(recs: PageRecords, n: int) -> PageRecords:
    return PageRecords(recs.offset[:n], recs.length[:n], recs.ts[:n], recs.page[:n], recs.missed,
                       recs.lost, recs.base_ts, recs.damage)


def _rows(
    dec: Decoder, buf: npt.NDArray[np.uint8], recs: PageRecords, inst: int, cpu: int,
    where: int = 0,
) -> Block:
    big = dec.info.big_endian
    n = len(recs.ts)
    common = gather(buf, recs.offset, 8)
    etype = _common_int(dec, common, "common_type", 0, 2, False, big)
    flags = _common_int(dec, common, "common_flags", 2, 1, False, big)
    pc = _common_int(dec, common, "common_preempt_count", 3, 1, False, big)
    pid = _common_int(dec, common, "common_pid", 4, 4, True, big)
    code = np.zeros(n, np.int32)
    keep = np.ones(n, np.bool_)
    args = np.full(n, -1, np.int32)
    texts: list[str] = []
    typed: Typed = {}
    for ident in np.flatnonzero(np.bincount(etype & 0xFFFF)).tolist():
        rows = np.flatnonzero(etype == ident)
        _decode_event(dec, buf, recs, ident, rows, code, keep, (args, texts), typed,
                      (cpu, where))
    block = Block(inst, cpu, dec.convert_ts(recs.ts), np.zeros(n, np.int64), pid,
                  code, (flags << 8 | pc).astype(np.int32), np.zeros(n, np.int64), keep,
                  args, texts, typed)
    return _with_markers(dec, block, recs)


def _common_int(dec: Decoder, rec: npt.NDArray[np.uint8], name: str, off: int, size: int,
                signed: bool, big: bool) -> I64:
    f = _common_field(dec, name) or Field(name, "int", off, size, signed)
    col = int_column(rec, f, big)
    return np.zeros(len(rec), np.int64) if col is None else col.astype(np.int64)


def _decode_event(
    dec: Decoder, buf: npt.NDArray[np.uint8], recs: PageRecords, ident: int, rows: I64,
    code: npt.NDArray[np.int32], keep: npt.NDArray[np.bool_],
    args: tuple[npt.NDArray[np.int32], list[str]],
    typed: Typed, place: tuple[int, int] = (0, 0),
) -> None:
    ev = dec.formats.get(ident)
    if ev is None:
        code[rows] = dec.code(f"unknown_event_{ident}")
        cpu, where = place
        dec.warn(
            f"CPU {cpu}: {len(rows)} records of event id {ident}, which has no format (damaged "
            f"records?), the first one's data at {_at(where, int(recs.offset[rows[0]]))}")
        return
    code[rows] = dec.code(ev.name)
    if dec.wanted is not None and ev.name not in dec.wanted:
        keep[rows] = False
        return
    if ev.name in STACK_EVENTS:  # variable length: frames kept (parsers.tracedat.stacks)
        _stack_event(dec, ev, buf, recs, rows, typed, place)
        return
    short = recs.length[rows] < ev.fixed_size
    if short.any():
        dec.fail(TraceParseError(
            dec.path, f"{int(short.sum())} {ev.name} records shorter than its format "
            f"({ev.fixed_size} bytes)"))
        keep[rows[short]] = False
        rows = rows[~short]
    offsets = recs.offset[rows]
    if ev.name in EVENT_FIELDS:
        wanted = {n for n, _ in EVENT_FIELDS[ev.name]}
        rec = gather(buf, offsets, ev.fixed_size)
        cols = {}
        for f in ev.fields:
            col = int_column(rec, f, dec.info.big_endian) if f.name in wanted else None
            if col is not None:
                cols[f.name] = col
        typed[ev.name] = (rows, cols)
    else:
        texts, index = render_args(ev, buf, offsets, recs.length[rows], dec.info.big_endian)
        args[0][rows] = index + len(args[1])
        args[1].extend(texts)


def _stack_event(dec: Decoder, ev: EventFormat, buf: npt.NDArray[np.uint8], recs: PageRecords,
                 rows: I64, typed: Typed, place: tuple[int, int]) -> None:
    """Keep the caller words of stack records; a damaged one is a warning (its words kept)."""
    packed, bad = callers(ev, buf, recs.offset[rows], recs.length[rows], dec.info.long_size,
                          dec.info.big_endian)
    typed[ev.name] = (rows, {CALLERS: packed})
    if bad.any():
        cpu, where = place
        dec.warn(f"CPU {cpu}: {int(bad.sum())} {ev.name} records shorter than the frames "
                 f"they declare (damaged?), their frames kept as far as they go; the first "
                 f"one's data at {_at(where, int(recs.offset[rows[int(np.argmax(bad))]]))}")


def _with_markers(dec: Decoder, block: Block, recs: PageRecords) -> Block:
    pages = np.flatnonzero(recs.missed)
    if pages.size == 0:
        return block
    at = np.searchsorted(recs.page, pages, side="left")
    n = len(block)
    ts = np.where(at < n, block.ts[np.minimum(at, max(n - 1, 0))] if n else 0,
                  dec.convert_ts(recs.base_ts[pages]))
    lost_code = dec.code(LOST_EVENTS)
    shift = np.searchsorted(at, np.arange(n), side="right")
    typed = {k: (rows + shift[rows], cols) for k, (rows, cols) in block.typed.items()}
    m = len(pages)
    return Block(
        block.inst, block.cpu, np.insert(block.ts, at, ts), np.zeros(n + m, np.int64),
        np.insert(block.pid, at, -1), np.insert(block.code, at, lost_code),
        np.insert(block.flag, at, -1), np.insert(block.lost, at, recs.lost[pages]),
        np.insert(block.keep, at, True),
        np.insert(block.args, at, -1), block.texts, typed)
