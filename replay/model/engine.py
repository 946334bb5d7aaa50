"""A small deterministic discrete-event core, shaped like SimPy's (heap, signals, processes).

Time is integer nanoseconds. Every scheduled callback sits in one heap ordered by
``(time, priority, insertion sequence)``, so the same input always runs the same way.
Processes are generators that yield :class:`Signal` objects and are resumed with the
signal's value when it fires. Nothing here knows about KVM; see :mod:`replay.model.lifecycle`.

Why not SimPy itself: the model needs two things SimPy lacks out of the box (a fair
reader/writer lock whose holders learn about contention, and cancel-free "first of"
waits), the core is ~150 lines, and it avoids a dependency.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator
from typing import Any, Final

__all__ = ["Sim", "Signal", "Wakeup", "Process", "Wait", "URGENT", "NORMAL", "LATE"]

#: Priorities: lower runs first among callbacks scheduled for the same time.
URGENT: Final = 0
NORMAL: Final = 1
LATE: Final = 2

#: What a process generator yields, and what it returns.
Wait = Generator["Signal | Wakeup", Any, Any]


class Signal:
    """A one-shot event: callbacks run (in registration order) when it fires."""

    __slots__ = ("sim", "fired", "value", "_callbacks")

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.fired = False
        self.value: Any = None
        self._callbacks: list[Callable[[Any], None]] = []

    def fire(self, value: Any = None) -> None:
        """Fire now (idempotent: a second fire is ignored)."""
        if self.fired:
            return
        self.fired = True
        self.value = value
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(value)

    def on_fire(self, cb: Callable[[Any], None]) -> None:
        """Run ``cb(value)`` when the signal fires (at once if it already has)."""
        if self.fired:
            cb(self.value)
        else:
            self._callbacks.append(cb)


class Wakeup:
    """Yielded by a process instead of a fresh :class:`Signal` that only it waits for and
    that fires ``delay`` ns from now at ``priority``: the process resumes (with None) exactly
    where it would have, with one heap entry instead of two.

    Equivalent because the plain form (a signal scheduled at ``(now + delay, priority)``,
    whose firing schedules the resume at the same time with priority :data:`URGENT`) has
    nothing run between the two: every entry due at that time with priority URGENT is
    already in the heap and sorts before the signal. The engine counts both steps."""

    __slots__ = ("delay", "priority")

    def __init__(self, delay: int, priority: int) -> None:
        self.delay = delay
        self.priority = priority


class Process:
    """Runs a generator; each yielded :class:`Signal` suspends it until that signal fires
    (a :class:`Wakeup`, until its time)."""

    __slots__ = ("sim", "gen", "done", "name", "_wake")

    def __init__(self, sim: Sim, gen: Wait, name: str) -> None:
        self.sim = sim
        self.gen = gen
        self.name = name
        self.done = Signal(sim)
        self._wake: Callable[[], None] = lambda: self._step(None)
        sim.schedule(0, self._wake, URGENT)

    def _step(self, value: Any) -> None:
        try:
            sig = self.gen.send(value)
        except StopIteration as stop:
            self.done.fire(stop.value)
            return
        if type(sig) is Wakeup:
            self.sim.steps += 1  # the plain form's signal firing, a step of its own
            self.sim.schedule(sig.delay, self._wake, sig.priority)
            return
        assert isinstance(sig, Signal)
        if sig.fired:
            v = sig.value
            self.sim.schedule(0, lambda: self._step(v), URGENT)
        else:
            sig.on_fire(self._resume)

    def _resume(self, value: Any) -> None:
        # Resume through the heap so that firing a signal never re-enters a generator.
        self.sim.schedule(0, lambda: self._step(value), URGENT)


class Sim:
    """The event loop: a clock and a heap of ``(time, priority, seq, callback)``."""

    def __init__(self) -> None:
        self.now = 0
        self._heap: list[tuple[int, int, int, Callable[[], None]]] = []
        self._seq = 0
        self.steps = 0

    def schedule(self, delay: int, fn: Callable[[], None], priority: int = NORMAL) -> None:
        """Run ``fn`` ``delay`` ns from now."""
        if delay < 0:
            raise ValueError(f"negative delay {delay}")
        self._seq += 1
        heapq.heappush(self._heap, (self.now + delay, priority, self._seq, fn))

    def timeout(self, delay: int, priority: int = NORMAL) -> Signal:
        """A signal that fires ``delay`` ns from now (after the callbacks of lower
        ``priority`` due at the same time)."""
        sig = Signal(self)
        if delay <= 0:
            sig.fired = True
            return sig
        self.schedule(delay, sig.fire, priority)
        return sig

    def first_of(self, *signals: Signal) -> Signal:
        """A signal firing with ``(index, value)`` of the first of ``signals`` to fire.

        Once it fired, its hooks leave the signals that have not: a long-lived one
        (``mmu_lock``'s contention, a vCPU's kick) would otherwise keep a dead hook per
        wait, one per fault of a long replay (they could only fire a fired signal)."""
        out = Signal(self)
        hooks: list[tuple[Signal, Callable[[Any], None]]] = []

        def forward(index: int) -> Callable[[Any], None]:
            return lambda value: out.fire((index, value))

        def unhook(_: Any) -> None:
            for sig, hook in hooks:
                if not sig.fired:
                    sig._callbacks.remove(hook)

        for i, sig in enumerate(signals):
            hooks.append((sig, forward(i)))
            sig.on_fire(hooks[-1][1])
        out.on_fire(unhook)
        return out

    def quiet_until(self, t: int, priority: int) -> bool:
        """True when no scheduled callback sorts before one scheduled now for time ``t``
        at ``priority``: until then nothing but the caller can run (a process may then
        advance :attr:`now` to ``t`` itself, adding the steps the heap would have taken)."""
        heap = self._heap
        return not heap or heap[0][0] > t or (heap[0][0] == t and heap[0][1] > priority)

    def process(self, gen: Wait, name: str) -> Process:
        """Start a process at the current time."""
        return Process(self, gen, name)

    def run(self) -> None:
        """Run until the heap is empty."""
        heap = self._heap
        pop = heapq.heappop
        while heap:
            t, _, _, fn = pop(heap)
            self.now = t
            self.steps += 1
            fn()
