"""The event core, the fair rwlock, work cursors and extents."""

from __future__ import annotations

from replay.model.engine import Sim, Wait
from replay.model.ids import PAGE_2M, PAGE_4K
from replay.model.lock import READ, WRITE, RwLock
from replay.model.population import Extent, Segment, WorkCursor, add_extent, remove_range, split_extents


def test_ties_break_by_priority_then_insertion() -> None:
    sim, log = Sim(), []
    sim.schedule(5, lambda: log.append("b"), priority=1)
    sim.schedule(5, lambda: log.append("c"), priority=1)
    sim.schedule(5, lambda: log.append("a"), priority=0)
    sim.run()
    assert log == ["a", "b", "c"] and sim.now == 5


def test_waiting_writer_blocks_new_readers_and_holders_see_contention() -> None:
    sim = Sim()
    lock = RwLock(sim)
    log: list[tuple[int, str]] = []

    def reader(name: str, hold: int, delay: int) -> Wait:
        yield sim.timeout(delay)
        yield lock.acquire(READ, name)
        log.append((sim.now, f"{name} in"))
        which, _ = yield sim.first_of(sim.timeout(hold), lock.contended())
        log.append((sim.now, f"{name} {'done' if which == 0 else 'contended'}"))
        lock.release(READ, name)

    def writer() -> Wait:
        yield sim.timeout(10)
        yield lock.acquire(WRITE, "w")
        log.append((sim.now, "w in"))
        yield sim.timeout(5)
        lock.release(WRITE, "w")

    sim.process(reader("r1", 100, 0), "r1")
    sim.process(writer(), "w")
    sim.process(reader("r2", 1, 12), "r2")  # arrives after the writer queued: must wait
    sim.run()
    assert log == [(0, "r1 in"), (10, "r1 contended"), (10, "w in"), (15, "r2 in"),
                   (16, "r2 done")]


def test_cursor_yields_at_the_next_unit_boundary_after_progress() -> None:
    cur = WorkCursor([Segment(3, 10.0), Segment(2, 100.0)])
    assert cur.remaining_ns() == 230
    assert cur.advance(0) == 10  # at least one unit
    assert cur.advance(15) == 20  # boundary at/after 15 ns from here
    assert cur.advance(1) == 100  # the first unit of the next segment
    assert cur.remaining_ns() == 100 and not cur.finished
    cur.finish()
    assert cur.finished and cur.units_done == 5


def test_extents_add_split_remove() -> None:
    pop: list[Extent] = []
    assert add_extent(pop, Extent(0, 4 * PAGE_2M, PAGE_4K)) == [Extent(0, 4 * PAGE_2M, PAGE_4K)]
    fresh = add_extent(pop, Extent(2 * PAGE_2M, 4 * PAGE_2M, PAGE_4K))
    assert fresh == [Extent(4 * PAGE_2M, 2 * PAGE_2M, PAGE_4K)]
    assert pop == [Extent(0, 6 * PAGE_2M, PAGE_4K)]
    head, tail = split_extents(fresh, 512)
    assert head == [Extent(4 * PAGE_2M, PAGE_2M, PAGE_4K)]
    assert tail == [Extent(5 * PAGE_2M, PAGE_2M, PAGE_4K)]
    gone = remove_range(pop, PAGE_2M, 2 * PAGE_2M)
    assert gone == [Extent(PAGE_2M, PAGE_2M, PAGE_4K)]
    assert pop == [Extent(0, PAGE_2M, PAGE_4K), Extent(2 * PAGE_2M, 4 * PAGE_2M, PAGE_4K)]
