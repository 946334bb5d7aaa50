"""Errors of the replay model, all subclasses of :class:`parsers.errors.KvmMmuError`."""

from __future__ import annotations

from parsers.errors import KvmMmuError

__all__ = ["ReplayInvariantError", "ReplayConfigError", "WorkloadError"]


class ReplayInvariantError(KvmMmuError):
    """A property of kernel-semantics §5 was violated while the model ran.

    Carries the evidence: simulated time ``ts`` (ns), the ``root`` concerned (or ``None``),
    the ``holder`` (actor or reference holder) that acted, the invariant's number in §5 and
    a human-readable ``reason``.
    """

    def __init__(
        self,
        ts: int,
        root: int | None,
        holder: str | None,
        reason: str,
        *,
        invariant: int | None = None,
    ) -> None:
        self.ts = ts
        self.root = root
        self.holder = holder
        self.reason = reason
        self.invariant = invariant
        where = f"t={ts}ns"
        if root is not None:
            where += f" root={root}"
        if holder is not None:
            where += f" holder={holder}"
        tag = f" (invariant {invariant})" if invariant is not None else ""
        super().__init__(f"replay invariant violated{tag} at {where}: {reason}")


class ReplayConfigError(KvmMmuError):
    """A cost model, policy name or scenario parameter is invalid (names the key and value)."""


class WorkloadError(KvmMmuError):
    """A workload operation cannot be executed (names the operation index and actor)."""

    def __init__(self, index: int, actor: str, reason: str) -> None:
        self.index = index
        self.actor = actor
        self.reason = reason
        super().__init__(f"workload operation #{index} ({actor}): {reason}")
