"""The block-structured :class:`~replay.population.Population` (and the bisecting list forms
of the population functions) against the list algorithm they replaced, kept here verbatim as
the reference: the same extents, counts, zap segments and returned parts after any sequence
of faults (unmapped parts, split, added as ``_Driver._fault`` does), removals and range
walks. Blocks are made tiny so that sequences of a few dozen steps split and join them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replay.model.cost import DEFAULT_COST
from replay.model.ids import PAGE_1G, PAGE_2M, PAGE_4K
from replay.model.population import (
    Extent,
    Granularity,
    Population,
    Segment,
    WorkCursor,
    add_extent,
    counts_of,
    remove_range,
    split_extents,
    unmapped_parts,
    zap_segments,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- the reference (the old lists)
def ref_add(extents: list[Extent], new: Extent) -> list[Extent]:
    fresh: list[Extent] = []
    cursor = new.start
    for e in extents:
        if e.end <= cursor or e.start >= new.end:
            continue
        if e.start > cursor:
            fresh.append(Extent(cursor, e.start - cursor, new.page))
        cursor = max(cursor, e.end)
    if cursor < new.end:
        fresh.append(Extent(cursor, new.end - cursor, new.page))
    if fresh:
        merged = sorted(extents + fresh)
        extents[:] = ref_coalesce(merged)
    return fresh


def ref_coalesce(extents: list[Extent]) -> list[Extent]:
    out: list[Extent] = []
    for e in extents:
        if out and out[-1].end == e.start and out[-1].page == e.page:
            last = out.pop()
            e = Extent(last.start, last.size + e.size, e.page)
        out.append(e)
    return out


def ref_remove(extents: list[Extent], start: int, end: int) -> list[Extent]:
    kept: list[Extent] = []
    gone: list[Extent] = []
    for e in extents:
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
    extents[:] = kept
    return gone


def ref_counts(extents: list[Extent]) -> tuple[int, ...]:
    total = [0] * 6
    for e in extents:
        c = counts_of([e])
        for i, v in enumerate((c.leaves_4k, c.leaves_2m, c.leaves_1g, c.tables_l1,
                               c.tables_l2, c.tables_l3)):
            total[i] += v
    return tuple(total)


@dataclass
class RefCursor:
    """WorkCursor before its suffix sums (remaining_ns and finish walked the segments)."""

    segments: list[Segment]
    index: int = 0
    done: int = 0
    units_done: int = 0

    def remaining_ns(self) -> int:
        total = 0
        for i in range(self.index, len(self.segments)):
            s = self.segments[i]
            done = self.done if i == self.index else 0
            total += round(s.count * s.unit_ns) - round(done * s.unit_ns)
        return total

    def finish(self) -> None:
        for i in range(self.index, len(self.segments)):
            self.units_done += self.segments[i].count - (self.done if i == self.index else 0)
        self.index = len(self.segments)
        self.done = 0


# ---------------------------------------------------------------- the structures under test
class Tiny(Population):
    """Blocks of two (split beyond four), so a few dozen extents span many blocks."""

    LOAD = 2


class Small(Population):
    LOAD = 3


class States:
    """The reference list, the same list through the bisecting functions, a Population."""

    def __init__(self, cls: type[Population]) -> None:
        self.ref: list[Extent] = []
        self.lst: list[Extent] = []
        self.pop = cls()

    def check(self) -> None:
        assert self.lst == self.ref
        assert list(self.pop) == self.ref
        assert len(self.pop) == len(self.ref) and bool(self.pop) == bool(self.ref)
        assert counts_of(self.pop) == counts_of(self.lst) == counts_of(self.ref)
        c = counts_of(self.pop)
        assert (c.leaves_4k, c.leaves_2m, c.leaves_1g, c.tables_l1, c.tables_l2,
                c.tables_l3) == ref_counts(self.ref)
        for g in Granularity:
            for shared, tlb in ((True, False), (False, True)):
                assert zap_segments(self.pop, g, DEFAULT_COST, shared=shared,
                                    tlb_per_table=tlb) == \
                    zap_segments(self.ref, g, DEFAULT_COST, shared=shared, tlb_per_table=tlb)
        blocks = self.pop._blocks  # the layout: no empty or oversized block, keys in step
        assert all(0 < len(b) <= 2 * self.pop.LOAD for b in blocks)
        assert self.pop._starts == [[e.start for e in b] for b in blocks]
        assert self.pop._firsts == [b[0].start for b in blocks]


# ---------------------------------------------------------------- operations
PAGES = st.sampled_from([PAGE_4K] * 6 + [PAGE_2M] * 3 + [PAGE_1G])


@st.composite
def extents(draw: st.DrawFn) -> Extent:
    """A Populate-shaped range: page-aligned, mostly 4K pages crowded into 8 MiB."""
    page = draw(PAGES)
    limit = {PAGE_4K: 2048, PAGE_2M: 8, PAGE_1G: 2}[page]
    start = draw(st.integers(0, limit)) * page
    return Extent(start, page * draw(st.sampled_from([1, 1, 1, 2, 3, 7, 300])), page)


ranges = st.tuples(st.integers(0, 10 << 20), st.integers(-4096, 4 << 20)).map(
    lambda t: (t[0], t[0] + t[1]))
ops = st.one_of(
    st.tuples(st.just("fault"), extents(), st.integers(0, 600)),
    st.tuples(st.just("add"), extents()),
    st.tuples(st.just("remove"), ranges),
    st.tuples(st.just("walk"), ranges),
    st.tuples(st.just("clear")),
)


def fault(s: States, new: Extent, leaves: int) -> None:
    """``_Driver.populate`` + one stretch of ``_fault``: the unmapped parts, split after
    ``leaves``, the head added piece by piece."""
    fresh = ref_add(list(s.ref), new)
    assert unmapped_parts(s.lst, new) == fresh
    assert unmapped_parts(s.pop, new) == s.pop.unmapped(new) == fresh
    head, _ = split_extents(fresh, leaves)
    for e in head:
        want = ref_add(s.ref, e)
        assert add_extent(s.lst, e) == want
        assert add_extent(s.pop, e) == want


Op = tuple  # ("fault", Extent, leaves) | ("add", Extent) | ("remove"|"walk", (start, end)) | ("clear",)


def apply(s: States, op: Op) -> None:
    if op[0] == "fault":
        fault(s, op[1], op[2])
    elif op[0] == "add":
        want = ref_add(s.ref, op[1])
        assert add_extent(s.lst, op[1]) == want
        assert s.pop.add(op[1]) == want
    elif op[0] == "remove":
        want = ref_remove(s.ref, *op[1])
        assert remove_range(s.lst, *op[1]) == want
        assert remove_range(s.pop, *op[1]) == want
    elif op[0] == "walk":  # write protection: what a removal would touch, nothing removed
        want = ref_remove(list(s.ref), *op[1])
        assert s.pop.touched(*op[1]) == want
        assert remove_range(list(s.lst), *op[1]) == want
    else:  # a zap done
        s.ref.clear()
        s.lst.clear()
        s.pop.clear()


@pytest.mark.parametrize("cls", [Tiny, Small, Population])
@SETTINGS
@given(st.lists(ops, max_size=60))
def test_population_matches_the_list_algorithm(cls: type[Population], steps: list[Op]) -> None:
    s = States(cls)
    for op in steps:
        apply(s, op)
        s.check()


@SETTINGS
@given(st.lists(st.integers(0, 4096).map(lambda p: p * PAGE_4K), min_size=1, max_size=400,
                unique=True))
def test_scattered_faults_coalesce_like_the_list(pages: list[int]) -> None:
    """Many single pages (the scattered-fault shape) across many tiny blocks."""
    s = States(Tiny)
    for start in pages:
        fault(s, Extent(start, PAGE_4K, PAGE_4K), 1)
    s.check()
    for start in pages[::3]:
        apply(s, ("remove", (start, start + 1)))
    s.check()


def test_adding_mapped_bytes_across_blocks_keeps_them_small() -> None:
    """Adjacent extents of alternating page sizes (never joined) over many blocks, then an
    add of bytes all mapped already: the blocks joined to look at it are split again."""
    s = States(Tiny)
    for i in range(16):
        page = PAGE_2M if i % 2 else PAGE_4K
        apply(s, ("add", Extent(i * PAGE_2M, PAGE_2M, page)))
    s.check()
    apply(s, ("add", Extent(0, 16 * PAGE_2M, PAGE_4K)))
    apply(s, ("fault", Extent(PAGE_2M - PAGE_4K, 4 * PAGE_4K, PAGE_4K), 4))
    s.check()


segments = st.lists(st.builds(Segment, st.integers(0, 6), st.sampled_from(
    [0.0, 1.0, 2.5, 3.3333, 10.0, 52.39])), max_size=8)


@SETTINGS
@given(segments, st.lists(st.one_of(st.integers(-5, 200), st.none()), max_size=12))
def test_work_cursor_matches_the_walk(segs: list[Segment], steps: list[int | None]) -> None:
    """remaining_ns and finish from suffix sums equal the walk over the segments."""
    cur = WorkCursor(segs)
    ref = RefCursor([s for s in segs if s.count > 0])
    assert cur.total_ns == sum(s.total_ns for s in ref.segments)
    for elapsed in steps:
        assert cur.remaining_ns() == ref.remaining_ns()
        if elapsed is None:
            cur.finish()
            ref.finish()
        else:
            cur.advance(elapsed)
            ref.index, ref.done, ref.units_done = cur.index, cur.done, cur.units_done
        assert (cur.index, cur.done, cur.units_done) == (ref.index, ref.done, ref.units_done)
    assert cur.remaining_ns() == ref.remaining_ns()
    assert cur.finished == (ref.index >= len(ref.segments))


def test_first_of_leaves_no_hook_on_the_signals_that_did_not_fire() -> None:
    """A fault waits on first_of(timeout, mmu_lock.contended()); while the lock is never
    contended, a hook left per wait on that one signal would pile up for the whole run."""
    from replay.model.engine import Signal, Sim

    sim = Sim()
    lasting = Signal(sim)
    outs = [sim.first_of(sim.timeout(10 + i), lasting) for i in range(100)]
    sim.run()
    assert all(o.fired and o.value == (0, None) for o in outs)
    assert lasting._callbacks == []
    fired = Signal(sim)
    fired.fire("now")
    assert sim.first_of(lasting, fired).value == (1, "now") and lasting._callbacks == []
