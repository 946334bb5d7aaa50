"""``kvm->mmu_lock`` as a fair reader/writer lock (the kernel's qrwlock) in simulated time.

* A reader gets the lock at once only if no writer holds it **and nobody waits** (a waiting
  writer blocks new readers: qrwlock is fair).
* A writer gets it when nobody holds it and nobody is ahead of it in the queue.
* Waiters are served in FIFO order; consecutive readers at the head enter together.
* Holders that may yield (``tdp_mmu_iter_cond_resched`` → ``rwlock_needbreak``) ask for
  :meth:`RwLock.contended`, a signal that fires as soon as somebody waits.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Literal

from replay.model.engine import Signal, Sim

__all__ = ["RwLock", "Mode", "READ", "WRITE"]

Mode = Literal["read", "write"]
READ: Final[Mode] = "read"
WRITE: Final[Mode] = "write"


class RwLock:
    """A fair reader/writer lock whose grants are signals."""

    def __init__(self, sim: Sim, name: str = "mmu_lock") -> None:
        self.sim = sim
        self.name = name
        self.readers: dict[str, int] = {}
        self.writer: str | None = None
        self._queue: deque[tuple[Mode, str, Signal]] = deque()
        self._contended = Signal(sim)

    @property
    def waiting(self) -> int:
        """How many acquirers are queued."""
        return len(self._queue)

    def holders(self) -> list[str]:
        """Current holders (writer, or readers sorted by name)."""
        if self.writer is not None:
            return [self.writer]
        return sorted(self.readers)

    def acquire(self, mode: Mode, holder: str) -> Signal:
        """A signal that fires (value ``True`` if the acquirer had to wait) once granted."""
        sig = Signal(self.sim)
        if not self._queue and self._can_enter(mode):
            self._enter(mode, holder)
            sig.fire(False)
            return sig
        self._queue.append((mode, holder, sig))
        contended, self._contended = self._contended, Signal(self.sim)
        contended.fire(None)
        return sig

    def release(self, mode: Mode, holder: str) -> None:
        """Release a hold taken with :meth:`acquire` and admit waiters."""
        if mode == WRITE:
            if self.writer != holder:
                raise RuntimeError(f"{holder} releases {self.name} write held by {self.writer}")
            self.writer = None
        else:
            n = self.readers.get(holder, 0)
            if n <= 0:
                raise RuntimeError(f"{holder} releases {self.name} read it does not hold")
            if n == 1:
                del self.readers[holder]
            else:
                self.readers[holder] = n - 1
        self._admit()

    def contended(self) -> Signal:
        """Fires when somebody is (or starts) waiting for the lock."""
        if self._queue:
            sig = Signal(self.sim)
            sig.fire(None)
            return sig
        return self._contended

    def _can_enter(self, mode: Mode) -> bool:
        if self.writer is not None:
            return False
        return mode == READ or not self.readers

    def _enter(self, mode: Mode, holder: str) -> None:
        if mode == WRITE:
            self.writer = holder
        else:
            self.readers[holder] = self.readers.get(holder, 0) + 1

    def _admit(self) -> None:
        while self._queue:
            mode, holder, sig = self._queue[0]
            if not self._can_enter(mode):
                return
            self._queue.popleft()
            self._enter(mode, holder)
            sig.fire(True)
            if mode == WRITE:
                return
