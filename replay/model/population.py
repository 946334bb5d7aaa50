"""What a root maps, as counts per extent (never one object per SPTE), and its zap work.

A root's population is a sorted :class:`Population` of non-overlapping :class:`Extent`
(guest-physical byte ranges mapped with one page size; the functions also take a sorted
list). From it follow the counts of kernel-semantics §2.1: leaves per level and page
tables per level (4K-level tables cover 2 MiB, 2M-level tables 1 GiB, 1G-level tables
512 GiB). A zap becomes a short list of :class:`Segment` runs of identical non-yieldable
units, whose size depends on the era's zap granularity (§1.5).
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import reduce
from itertools import chain, takewhile
from operator import attrgetter
from typing import ClassVar

from replay.model.cost import CostModel
from replay.model.ids import PAGE_1G, PAGE_2M, PAGE_4K, PAGE_512G

__all__ = [
    "Extent",
    "Counts",
    "Segment",
    "Granularity",
    "Population",
    "WorkCursor",
    "add_extent",
    "counts_of",
    "zap_segments",
    "split_extents",
    "unmapped_parts",
    "remove_range",
]

_ENTRIES = 512
_start = attrgetter("start")


@dataclass(frozen=True, order=True)
class Extent:
    """``[start, start + size)`` guest-physical bytes mapped by leaves of ``page`` bytes."""

    start: int
    size: int
    page: int

    @property
    def end(self) -> int:
        """First byte after the extent."""
        return self.start + self.size


@dataclass(frozen=True)
class Counts:
    """Leaves and page tables of a population (the root page itself is not counted)."""

    leaves_4k: int = 0
    leaves_2m: int = 0
    leaves_1g: int = 0
    tables_l1: int = 0
    tables_l2: int = 0
    tables_l3: int = 0

    @property
    def leaves(self) -> int:
        """All leaf SPTEs."""
        return self.leaves_4k + self.leaves_2m + self.leaves_1g

    @property
    def tables(self) -> int:
        """All child page tables."""
        return self.tables_l1 + self.tables_l2 + self.tables_l3

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.leaves_4k + other.leaves_4k,
            self.leaves_2m + other.leaves_2m,
            self.leaves_1g + other.leaves_1g,
            self.tables_l1 + other.tables_l1,
            self.tables_l2 + other.tables_l2,
            self.tables_l3 + other.tables_l3,
        )


def _blocks(start: int, end: int, block: int) -> int:
    return 0 if end <= start else (end - 1) // block - start // block + 1


def _extent_counts(e: Extent) -> Counts:
    leaves = e.size // e.page
    return Counts(
        leaves_4k=leaves if e.page == PAGE_4K else 0,
        leaves_2m=leaves if e.page == PAGE_2M else 0,
        leaves_1g=leaves if e.page == PAGE_1G else 0,
        tables_l1=_blocks(e.start, e.end, PAGE_2M) if e.page == PAGE_4K else 0,
        tables_l2=_blocks(e.start, e.end, PAGE_1G) if e.page <= PAGE_2M else 0,
        tables_l3=_blocks(e.start, e.end, PAGE_512G),
    )


def counts_of(extents: Iterable[Extent]) -> Counts:
    """Total counts of a population."""
    parts = map(_extent_counts, extents)
    first = next(parts, None)
    return Counts() if first is None else reduce(Counts.__add__, parts, first)


def _fresh_parts(window: Iterable[Extent], new: Extent) -> list[Extent]:
    """The parts of ``new`` not covered by ``window``: sorted extents, from the last one
    starting at or before ``new.start`` on (the rest of the population cannot overlap)."""
    fresh: list[Extent] = []
    cursor, end = new.start, new.end
    for e in window:
        if e.start >= end:
            break
        if e.end <= cursor:
            continue
        if e.start > cursor:
            fresh.append(Extent(cursor, e.start - cursor, new.page))
        cursor = max(cursor, e.end)
    if cursor < end:
        fresh.append(Extent(cursor, end - cursor, new.page))
    return fresh


def _coalesce(extents: list[Extent]) -> list[Extent]:
    out: list[Extent] = []
    for e in extents:
        if out and out[-1].end == e.start and out[-1].page == e.page:
            last = out.pop()
            e = Extent(last.start, last.size + e.size, e.page)
        out.append(e)
    return out


def _merged(window: list[Extent], fresh: list[Extent]) -> list[Extent]:
    """``window`` (``new``'s predecessor to successor) with ``fresh`` added and coalesced:
    the population is coalesced already, so only extents around the fresh parts can join."""
    return _coalesce(sorted(window + fresh, key=_start))


def _cut(window: Iterable[Extent], start: int, end: int) -> tuple[list[Extent], list[Extent]]:
    """``(kept, gone)``: ``window`` without ``[start, end)`` rounded out to whole leaves."""
    kept: list[Extent] = []
    gone: list[Extent] = []
    for e in window:
        hi_raw = min(e.end, end)
        if hi_raw <= max(e.start, start):
            kept.append(e)
            continue
        lo = e.start + ((max(e.start, start) - e.start) // e.page) * e.page
        hi = e.start + -(-(hi_raw - e.start) // e.page) * e.page
        if lo > e.start:
            kept.append(Extent(e.start, lo - e.start, e.page))
        gone.append(Extent(lo, hi - lo, e.page))
        if hi < e.end:
            kept.append(Extent(hi, e.end - hi, e.page))
    return kept, gone


class Population:
    """The extents a root maps, in address order, non-overlapping, adjacent extents of one
    page size joined; kept as blocks of a few hundred with their starts for bisection, so a
    lookup, insert or removal around one address costs O(log n) plus one block's copy (one
    sorted list rebuilt per fault made n scattered faults cost O(n^2))."""

    #: Extents per block after a split (a block splits beyond twice this).
    LOAD: ClassVar[int] = 256

    __slots__ = ("_blocks", "_starts", "_firsts")

    def __init__(self) -> None:
        self._blocks: list[list[Extent]] = []
        self._starts: list[list[int]] = []
        self._firsts: list[int] = []

    def __iter__(self) -> Iterator[Extent]:
        return chain.from_iterable(self._blocks)

    def __len__(self) -> int:
        return sum(map(len, self._blocks))

    def __bool__(self) -> bool:
        return bool(self._blocks)  # no block is ever left empty

    def clear(self) -> None:
        """Forget every extent (the root was zapped)."""
        self._blocks, self._starts, self._firsts = [], [], []

    def add(self, new: Extent) -> list[Extent]:
        """:func:`add_extent` on this population."""
        if self._insert_apart(new):
            return [new]
        if not self._blocks:
            self._blocks, self._starts, self._firsts = [[]], [[]], [new.start]
        b, lo, hi = self._window(new.start, end := new.end)
        if hi == len(self._starts[b]) and b + 1 < len(self._blocks):
            b, lo, hi = self._window(new.start, end, join=True)  # it may reach later blocks
        block = self._blocks[b]
        fresh = _fresh_parts(block[lo:hi], new)
        if fresh or not 0 < len(block) <= 2 * self.LOAD:  # a new or a joined block: resize
            self._splice(b, lo, hi + 1, _merged(block[lo:hi + 1], fresh))  # with the successor
        return fresh

    def _insert_apart(self, new: Extent) -> bool:
        """Insert ``new`` as an extent of its own when it neither overlaps nor joins its
        neighbours in its block (a scattered fault's common case: no merge or rebuild);
        False, with nothing changed, otherwise."""
        if not self._blocks:
            return False
        start, end, page = new.start, new.start + new.size, new.page
        b = bisect_right(self._firsts, start) - 1
        if b < 0:
            b = 0
        block, starts = self._blocks[b], self._starts[b]
        i = bisect_right(starts, start)
        if i == len(block) and b + 1 < len(self._blocks):
            return False  # the successor is in the next block: the general path
        if i > 0:
            prev = block[i - 1]
            if prev.start + prev.size > start or (prev.start + prev.size == start
                                                  and prev.page == page):
                return False
        if i < len(block):
            succ = block[i]
            if succ.start < end or (succ.start == end and succ.page == page):
                return False
        if len(block) >= 2 * self.LOAD:
            return False  # the general path splits the block
        block.insert(i, new)
        starts.insert(i, start)
        if i == 0:
            self._firsts[b] = start
        return True

    def unmapped(self, new: Extent) -> list[Extent]:
        """:func:`unmapped_parts` of this population."""
        if self._blocks:
            b, lo, hi = self._window(new.start, new.end)
            if hi < len(self._starts[b]) or b + 1 == len(self._blocks):  # all in block b
                return _fresh_parts(self._blocks[b][lo:hi], new)
        return _fresh_parts(self._from(new.start), new)

    def remove(self, start: int, end: int) -> list[Extent]:
        """:func:`remove_range` on this population."""
        if not self._blocks:
            return []
        b, lo, hi = self._window(start, end, join=True)
        kept, gone = _cut(self._blocks[b][lo:hi], start, end)
        self._splice(b, lo, hi, kept)
        return gone

    def touched(self, start: int, end: int) -> list[Extent]:
        """What :meth:`remove` would return, without removing anything."""
        return _cut(takewhile(lambda e: e.start < end, self._from(start)), start, end)[1]

    def _block(self, address: int) -> int:
        """The block holding the last extent starting at or before ``address`` (else 0)."""
        return max(bisect_right(self._firsts, address) - 1, 0)

    def _from(self, address: int) -> Iterator[Extent]:
        """Extents in order from the last one starting at or before ``address``."""
        if not self._blocks:
            return
        b = self._block(address)
        block = self._blocks[b]
        for i in range(max(bisect_right(self._starts[b], address) - 1, 0), len(block)):
            yield block[i]
        for k in range(b + 1, len(self._blocks)):
            yield from self._blocks[k]

    def _window(self, start: int, end: int, join: bool = False) -> tuple[int, int, int]:
        """``(b, lo, hi)``: block ``b`` from the last extent starting at or before ``start``
        (else its first) to the first one starting at or after ``end`` (exclusive), this
        end in block ``b`` when ``join`` (the blocks up to ``end``'s are joined into ``b``)."""
        b = self._block(start)
        last = max(self._block(end), b) if join else b
        if last > b:
            self._blocks[b:last + 1] = [list(chain.from_iterable(self._blocks[b:last + 1]))]
            self._starts[b:last + 1] = [list(chain.from_iterable(self._starts[b:last + 1]))]
            del self._firsts[b + 1:last + 1]
        starts = self._starts[b]
        lo = max(bisect_right(starts, start) - 1, 0)
        return b, lo, max(bisect_left(starts, end, lo), lo)

    def _splice(self, b: int, lo: int, hi: int, items: list[Extent]) -> None:
        """Replace ``[lo, hi)`` of block ``b`` by ``items``; drop or split the block."""
        block, starts = self._blocks[b], self._starts[b]
        block[lo:hi] = items
        starts[lo:hi] = [e.start for e in items]
        if not block:
            del self._blocks[b], self._starts[b], self._firsts[b]
        elif len(block) <= 2 * self.LOAD:
            self._firsts[b] = starts[0]
        else:  # into k blocks of LOAD to 2 * LOAD
            k = len(block) // self.LOAD
            cuts = [len(block) * i // k for i in range(k + 1)]
            self._blocks[b:b + 1] = [block[i:j] for i, j in zip(cuts, cuts[1:], strict=False)]
            self._starts[b:b + 1] = [starts[i:j] for i, j in zip(cuts, cuts[1:], strict=False)]
            self._firsts[b:b + 1] = [starts[i] for i in cuts[:-1]]


def add_extent(extents: list[Extent] | Population, new: Extent) -> list[Extent]:
    """Add ``new`` to the population ``extents`` in place; return the parts not yet mapped.

    ``extents`` is a :class:`Population` or a sorted list of non-overlapping, coalesced
    extents (as this module leaves them). Bytes already mapped (at any page size) are not
    mapped again: a guest touching them takes no fault.
    """
    if isinstance(extents, Population):
        return extents.add(new)
    lo = max(bisect_right(extents, new.start, key=_start) - 1, 0)
    hi = min(bisect_left(extents, new.end, key=_start) + 1, len(extents))
    fresh = _fresh_parts(extents[lo:hi], new)
    if fresh:
        extents[lo:hi] = _merged(extents[lo:hi], fresh)
    return fresh


class Granularity(enum.Enum):
    """Largest non-yieldable unit of a zap (kernel-semantics §1.5)."""

    #: ≤5.17 last put: the entire root, ``can_yield=false``.
    WHOLE_ROOT = "whole-root"
    #: ≤5.17 fast zap: one top-level entry (512 GiB with 4-level paging).
    TOP_LEVEL = "top-level"
    #: 5.18–6.8 two passes: one 1 GiB subtree, then root level (1b6043e8e584).
    GIB = "1GiB"
    #: 6.9+ four passes 4K → 2M → 1G → root: one leaf or one emptied table (8ca983631f3c).
    LEAF = "4KiB"


@dataclass(frozen=True)
class Segment:
    """``count`` consecutive non-yieldable units of ``unit_ns`` each."""

    count: int
    unit_ns: float

    @property
    def total_ns(self) -> int:
        """Duration of the whole run, rounded once."""
        return round(self.count * self.unit_ns)


@dataclass(frozen=True)
class _TableCost:
    leaf: float
    table: float
    frozen: float
    tlb: float

    def removal(self, present_children: float) -> float:
        return self.table + self.tlb + self.frozen * max(0.0, _ENTRIES - present_children)


def zap_segments(
    extents: Iterable[Extent],
    granularity: Granularity,
    cost: CostModel,
    *,
    shared: bool,
    tlb_per_table: bool,
) -> list[Segment]:
    """The zap of a root mapping ``extents`` as runs of non-yieldable units."""
    tc = _TableCost(
        leaf=cost.leaf_ns(shared),
        table=cost.page_table_ns,
        frozen=cost.frozen_entry_ns if shared else 0.0,
        tlb=cost.tlb_flush_ns if tlb_per_table else 0.0,
    )
    root_scan = Segment(1, _ENTRIES * cost.scan_entry_ns)
    if granularity is Granularity.LEAF:
        return _leaf_passes(extents, tc) + [root_scan]
    subtrees: list[Segment] = []
    top: list[Segment] = []
    for e in extents:
        c = _extent_counts(e)
        l1 = c.tables_l1 * tc.removal(c.leaves_4k / c.tables_l1 if c.tables_l1 else 0)
        l2_children = (c.tables_l1 + c.leaves_2m) / c.tables_l2 if c.tables_l2 else 0
        l2 = c.tables_l2 * tc.removal(l2_children)
        below_1g = c.leaves * tc.leaf + l1 + l2
        l3_children = (c.tables_l2 + c.leaves_1g) / c.tables_l3 if c.tables_l3 else 0
        l3 = c.tables_l3 * tc.removal(l3_children)
        if granularity is Granularity.GIB:
            units = c.tables_l2 + c.leaves_1g
            if units:
                subtrees.append(Segment(units, below_1g / units))
            if c.tables_l3:
                top.append(Segment(c.tables_l3, l3 / c.tables_l3))
        elif c.tables_l3:
            top.append(Segment(c.tables_l3, (below_1g + l3) / c.tables_l3))
    if granularity is Granularity.WHOLE_ROOT:
        total = sum(s.count * s.unit_ns for s in subtrees + top) + root_scan.unit_ns
        return [Segment(1, total)]
    return subtrees + top + [root_scan]


def _leaf_passes(extents: Iterable[Extent], tc: _TableCost) -> list[Segment]:
    """6.9+: leaves one by one, then each emptied table level by level."""
    counts = [_extent_counts(e) for e in extents]
    passes: list[Segment] = []
    for c in counts:
        if c.leaves_4k:
            passes.append(Segment(c.leaves_4k, tc.leaf))
    for c in counts:
        if c.leaves_2m:
            passes.append(Segment(c.leaves_2m, tc.leaf))
        if c.tables_l1:
            passes.append(Segment(c.tables_l1, tc.removal(0)))
    for c in counts:
        if c.leaves_1g:
            passes.append(Segment(c.leaves_1g, tc.leaf))
        if c.tables_l2:
            passes.append(Segment(c.tables_l2, tc.removal(0)))
    for c in counts:
        if c.tables_l3:
            passes.append(Segment(c.tables_l3, tc.removal(0)))
    return passes


class WorkCursor:
    """Progress through a list of segments; finds the next unit boundary to yield at."""

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = [s for s in segments if s.count > 0]
        # time and units of segments[i:], so remaining_ns and finish cost O(1)
        self._tail_ns, self._tail_units = [0], [0]
        for s in reversed(self.segments):
            self._tail_ns.append(self._tail_ns[-1] + s.total_ns)
            self._tail_units.append(self._tail_units[-1] + s.count)
        self._tail_ns.reverse()
        self._tail_units.reverse()
        self.total_ns = self._tail_ns[0]
        self.index = 0
        self.done = 0  # units done in the current segment
        self.units_done = 0

    @property
    def finished(self) -> bool:
        """No work left."""
        return self.index >= len(self.segments)

    def remaining_ns(self) -> int:
        """Time to finish all remaining units."""
        if self.finished:
            return 0
        done = round(self.done * self.segments[self.index].unit_ns)
        return self._tail_ns[self.index] - done

    def finish(self) -> None:
        """Mark every unit done."""
        self.units_done += self._tail_units[self.index] - self.done
        self.index = len(self.segments)
        self.done = 0

    def advance(self, elapsed: int) -> int:
        """Advance to the first unit boundary at or after ``elapsed`` ns, after >= 1 unit.

        Returns the time from the current position to that boundary (the kernel yields
        only after forward progress: ``next_last_level_gfn != yielded_gfn``).
        """
        spent = 0
        moved = 0
        while not self.finished:
            s = self.segments[self.index]
            left = s.count - self.done
            want = elapsed - spent
            if s.unit_ns > 0:
                k = math.ceil(max(want, 0) / s.unit_ns)
            else:
                k = left if want > 0 else 0
            k = min(max(k, 1 if moved == 0 else 0), left)
            spent += round((self.done + k) * s.unit_ns) - round(self.done * s.unit_ns)
            self.done += k
            moved += k
            self.units_done += k
            if self.done >= s.count:
                self.index += 1
                self.done = 0
            if spent >= elapsed and moved > 0:
                break
        return spent


def split_extents(extents: list[Extent], leaves: int) -> tuple[list[Extent], list[Extent]]:
    """Split ``extents`` after their first ``leaves`` leaves: ``(head, tail)``."""
    head: list[Extent] = []
    tail: list[Extent] = []
    left = leaves
    for e in extents:
        n = e.size // e.page
        if left >= n:
            head.append(e)
            left -= n
        elif left > 0:
            cut = left * e.page
            head.append(Extent(e.start, cut, e.page))
            tail.append(Extent(e.start + cut, e.size - cut, e.page))
            left = 0
        else:
            tail.append(e)
    return head, tail


def unmapped_parts(extents: list[Extent] | Population, new: Extent) -> list[Extent]:
    """The parts of ``new`` not mapped by ``extents`` (without changing them)."""
    if isinstance(extents, Population):
        return extents.unmapped(new)
    lo = max(bisect_right(extents, new.start, key=_start) - 1, 0)
    return _fresh_parts(extents[lo:bisect_left(extents, new.end, key=_start)], new)


def remove_range(extents: list[Extent] | Population, start: int, end: int) -> list[Extent]:
    """Remove ``[start, end)`` from ``extents`` in place (rounded out to whole leaves).

    Returns the removed extents."""
    if isinstance(extents, Population):
        return extents.remove(start, end)
    lo = max(bisect_right(extents, start, key=_start) - 1, 0)
    hi = max(bisect_left(extents, end, key=_start), lo)
    kept, gone = _cut(extents[lo:hi], start, end)
    extents[lo:hi] = kept
    return gone
