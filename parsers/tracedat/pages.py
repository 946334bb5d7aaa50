"""Walk ring-buffer pages (kbuffer format) into record offsets and raw timestamps.

Record layout: libtraceevent ``src/kbuffer-parse.c`` (``translate_data``,
``kbuffer_load_subbuffer``) and the kernel's ``kernel/trace/ring_buffer.c``. The walk within
one page is sequential, so instead of a Python loop per record it steps *all pages at once*:
each NumPy step reads the next record header of every page still active, so the number of
Python iterations is the largest record count of one page, not the number of records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from parsers.tracedat.formats import PageLayout

__all__ = ["PageRecords", "PageDamage", "walk_pages"]

_COMMIT_MASK = (1 << 27) - 1
_MISSING_EVENTS = 1 << 31
_MISSING_STORED = 1 << 30
_TS_MSB = np.uint64(0xF8 << 56)
_PADDING, _TIME_EXTEND, _TIME_STAMP = 29, 30, 31

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class PageDamage:
    """The first record (in per-CPU order) that does not fit its page."""

    page: int
    pos: int  # byte offset inside the page
    reason: str


@dataclass
class PageRecords:
    """Data records of a run of pages, in per-CPU order.

    ``offset`` is the byte index of each record's payload in the page buffer, ``length`` its
    size, ``ts`` the raw timestamp (page base plus deltas), ``page`` its page index.
    Per page: ``missed`` (events lost before the page), ``lost`` (their count, -1 unknown),
    ``base_ts`` (the page header timestamp).
    """

    offset: I64
    length: I64
    ts: U64
    page: I64
    missed: npt.NDArray[np.bool_]
    lost: I64
    base_ts: U64
    damage: PageDamage | None = None


def walk_pages(
    buf: npt.NDArray[np.uint8], page_size: int, layout: PageLayout, big_endian: bool
) -> PageRecords:
    """All data records of the whole pages in ``buf``.

    A record that would end beyond its page's commit size stops the walk of that page; the
    first such record is reported in :attr:`PageRecords.damage` (records after it, in per-CPU
    order, are dropped so the caller can raise or salvage).
    """
    n_pages = len(buf) // page_size
    end = np.dtype(">u4" if big_endian else "<u4")
    words = buf[: n_pages * page_size].view(end)
    base = np.arange(n_pages, dtype=np.int64) * page_size
    base_ts, commit = _page_headers(buf, n_pages, page_size, layout, big_endian)
    size = (commit & _COMMIT_MASK).astype(np.int64)
    room = page_size - layout.data_offset
    damage = None
    too_big = np.flatnonzero(size > room)
    if too_big.size:
        damage = PageDamage(int(too_big[0]), layout.commit_offset,
                            f"page commit size {int(size[too_big[0]])} exceeds the page")
        size = np.minimum(size, room)
    missed = (commit & _MISSING_EVENTS) != 0
    lost = _lost_counts(buf, base, size, missed, (commit & _MISSING_STORED) != 0, room,
                        layout, big_endian)
    data0 = base + layout.data_offset
    out = _step_all(words, data0, size, base_ts, big_endian, layout.data_offset)
    offset, length, ts, page, bad_page, bad_pos = out
    if bad_page.size:
        first = int(np.lexsort((bad_pos, bad_page))[0])
        bp, bpos = int(bad_page[first]), int(bad_pos[first])
        if damage is None or bp < damage.page:
            damage = PageDamage(bp, bpos, "a record runs past the page's commit size")
    if damage is not None:
        cut = (page < damage.page) | ((page == damage.page)
                                      & (offset - base[np.minimum(page, n_pages - 1)]
                                         < damage.pos))
        offset, length, ts, page = offset[cut], length[cut], ts[cut], page[cut]
    return PageRecords(offset, length, ts, page, missed, lost, base_ts, damage)


def _page_headers(
    buf: npt.NDArray[np.uint8], n_pages: int, page_size: int, layout: PageLayout, big: bool
) -> tuple[U64, U64]:
    pages = buf[: n_pages * page_size].reshape(n_pages, page_size)
    e = ">" if big else "<"
    ts = np.ascontiguousarray(pages[:, layout.ts_offset:layout.ts_offset + 8]).view(e + "u8")
    cs = layout.commit_size
    raw = np.ascontiguousarray(pages[:, layout.commit_offset:layout.commit_offset + cs])
    commit = raw.view(f"{e}u{cs}").astype(np.uint64)
    return ts.reshape(-1).astype(np.uint64), commit.reshape(-1)


def _lost_counts(
    buf: npt.NDArray[np.uint8], base: I64, size: I64, missed: npt.NDArray[np.bool_],
    stored: npt.NDArray[np.bool_], room: int, layout: PageLayout, big: bool,
) -> I64:
    lost = np.full(len(base), -1, dtype=np.int64)
    cs = layout.commit_size
    has = np.flatnonzero(missed & stored & (size + cs <= room))
    if has.size:
        at = base[has] + layout.data_offset + size[has]
        raw = buf[at[:, None] + np.arange(cs)]
        lost[has] = raw.view(f"{'>' if big else '<'}u{cs}").reshape(-1).astype(np.int64)
    lost[~missed] = 0
    return lost


def _step_all(
    words: npt.NDArray[np.uint32], data0: I64, size: I64, base_ts: U64, big: bool,
    data_offset: int,
) -> tuple[I64, I64, U64, I64, I64, I64]:
    """Advance every page one record per iteration; collect data records."""
    active = np.flatnonzero(size > 0)
    cur = np.zeros(active.size, dtype=np.int64)
    ts = base_ts[active].copy()
    last_word = len(words) - 1
    outs: list[tuple[I64, I64, U64, I64, I64]] = []
    count = np.zeros(len(size), dtype=np.int64)
    bad_pages: list[I64] = []
    bad_pos: list[I64] = []
    while active.size:
        widx = (data0[active] + cur) >> 2
        w = words[widx].astype(np.uint64)
        a0 = words[np.minimum(widx + 1, last_word)].astype(np.int64)
        if big:
            tl, delta = (w >> np.uint64(27)).astype(np.int64), w & np.uint64(_COMMIT_MASK)
        else:
            tl, delta = (w & np.uint64(31)).astype(np.int64), w >> np.uint64(5)
        is_data = tl <= 28
        ext = tl == _TIME_EXTEND
        absolute = tl == _TIME_STAMP
        hi = a0.astype(np.uint64) << np.uint64(27)
        ts = np.where(absolute, (hi | delta) | (ts & _TS_MSB),
                      ts + np.where(ext, hi + delta, delta))
        hdr = np.where(tl == 0, 8, 4)
        dlen = np.where(tl == 0, (a0 - 4 + 3) & ~3, tl * 4)
        step = np.where(is_data, hdr + dlen, np.where(tl == _PADDING, 4 + a0, 8))
        page_size_left = size[active]
        bad = is_data & ((cur + hdr + dlen > page_size_left) | ((tl == 0) & (a0 < 4)))
        if bad.any():
            bad_pages.append(active[bad])
            bad_pos.append(cur[bad] + data_offset)
        good = is_data & ~bad
        if good.any():
            pg = active[good]
            outs.append((data0[pg] + cur[good] + hdr[good], dlen[good], ts[good], pg, count[pg]))
            count[pg] += 1
        cur = cur + step
        keep = ~bad & (cur < page_size_left) & (step > 0)
        active, cur, ts = active[keep], cur[keep], ts[keep]
    return _concat(outs, bad_pages, bad_pos, count)


def _concat(
    outs: list[tuple[I64, I64, U64, I64, I64]], bad_pages: list[I64], bad_pos: list[I64],
    count: I64,
) -> tuple[I64, I64, U64, I64, I64, I64]:
    """Scatter the per-step records into per-CPU order (page, then position in page)."""
    if outs:
        first = np.cumsum(count) - count
        where = np.concatenate([first[o[3]] + o[4] for o in outs])
        n = int(count.sum())
        offset = np.empty(n, np.int64)
        length = np.empty(n, np.int64)
        ts = np.empty(n, np.uint64)
        page = np.empty(n, np.int64)
        for dst, k in ((offset, 0), (length, 1), (ts, 2), (page, 3)):
            dst[where] = np.concatenate([o[k] for o in outs])
    else:
        offset = length = page = np.zeros(0, np.int64)
        ts = np.zeros(0, np.uint64)
    bp = np.concatenate(bad_pages) if bad_pages else np.zeros(0, np.int64)
    bpos = np.concatenate(bad_pos) if bad_pos else np.zeros(0, np.int64)
    return offset, length, ts, page, bp, bpos
