"""Workqueues in simulated time: FIFO items, bounded concurrency, ``flush_workqueue``.

Two are used: the system workqueue (``system_wq``, name ``events``: era B's defunct-root
zaps, v3 22/28) and the per-VM unbound ``kvm`` queue (``tdp_mmu_zap_wq``, 5.18–6.5,
22b94c4b63eb). Concurrency is the number of host CPUs in both cases; one work item per
root, so several roots can be zapped in parallel (0df9dab891ff's changelog).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from replay.model.engine import Signal, Sim, Wait

__all__ = ["Workqueue", "WorkItem"]

#: A work function: a process body run by the worker named by its argument.
WorkItem = Callable[[str], Wait]


class Workqueue:
    """A workqueue with ``concurrency`` workers named ``<prefix><n>``."""

    def __init__(self, sim: Sim, name: str, concurrency: int, worker_prefix: str) -> None:
        self.sim = sim
        self.name = name
        self.concurrency = concurrency
        self.worker_prefix = worker_prefix
        self._items: deque[tuple[int, WorkItem]] = deque()
        self._pending: set[int] = set()
        self._flushes: list[tuple[int, Signal]] = []
        self._seq = 0
        self._idle: list[int] = list(range(concurrency - 1, -1, -1))
        self.queued_total = 0

    def queue(self, item: WorkItem) -> int:
        """Queue ``item``; returns its sequence number."""
        self._seq += 1
        self.queued_total += 1
        self._items.append((self._seq, item))
        self._pending.add(self._seq)
        self._dispatch()
        return self._seq

    def flush(self) -> Signal:
        """Fires when every item queued so far has completed (``flush_workqueue``)."""
        sig = Signal(self.sim)
        target = self._seq
        if not any(s <= target for s in self._pending):
            sig.fire(None)
        else:
            self._flushes.append((target, sig))
        return sig

    @property
    def busy(self) -> bool:
        """Items queued or running."""
        return bool(self._pending)

    def _dispatch(self) -> None:
        while self._items and self._idle:
            slot = self._idle.pop()
            seq, item = self._items.popleft()
            name = f"{self.worker_prefix}{slot}"
            proc = self.sim.process(item(name), name)
            proc.done.on_fire(self._on_done(seq, slot))

    def _on_done(self, seq: int, slot: int) -> Callable[[object], None]:
        return lambda _value: self._finished(seq, slot)

    def _finished(self, seq: int, slot: int) -> None:
        self._pending.discard(seq)
        self._idle.append(slot)
        self._idle.sort(reverse=True)
        oldest = min(self._pending) if self._pending else None
        keep: list[tuple[int, Signal]] = []
        for target, sig in self._flushes:
            if oldest is None or oldest > target:
                sig.fire(None)
            else:
                keep.append((target, sig))
        self._flushes = keep
        self._dispatch()
