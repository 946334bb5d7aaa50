"""The mutable state of one TDP MMU root inside a replay (kernel-semantics §1.1).

Only :class:`replay.model.lifecycle.Replay` mutates it; results expose frozen
:class:`replay.model.records.Root` snapshots.
"""

from __future__ import annotations

from collections import Counter

from replay.model.engine import Signal
from replay.model.ids import ActorId, Nanos, RootId
from replay.model.population import Population, WorkCursor
from replay.model.records import Root

__all__ = ["RootState"]


class RootState:
    """``struct kvm_mmu_page`` of a root, reduced to what the lifecycle needs.

    Attributes:
        refcount: ``tdp_mmu_root_count``.
        holders: who holds the references (``vcpu3``, ``tdp_mmu``, ``zap_work``, ...).
        invalid: ``role.invalid`` (monotonic).
        scheduled_to_zap: ``tdp_mmu_scheduled_root_to_zap`` (6.6+).
        queued: a zap work item was created for it (5.18–6.5, at most once).
        linked: on ``kvm->arch.tdp_mmu_roots``.
        population: what it maps (sorted extents).
        zap: progress of the zap in flight (shared by every zapper of this root).
        zap_active: a zapper is running on ``zap`` right now (holding ``mmu_lock``).
        zap_changed: fires when the active zapper parks or finishes.
    """

    __slots__ = (
        "id",
        "role",
        "refcount",
        "holders",
        "invalid",
        "scheduled_to_zap",
        "queued",
        "linked",
        "population",
        "zap",
        "zap_active",
        "zap_changed",
        "created",
        "created_by",
        "invalidated",
        "zap_start",
        "zap_end",
        "zapped_by",
        "leaves_zapped",
        "tables_zapped",
        "unlinked",
        "freed",
    )

    def __init__(self, rid: RootId, role: int, now: Nanos, actor: ActorId) -> None:
        self.id = rid
        self.role = role
        self.refcount = 0
        self.holders: Counter[str] = Counter()
        self.invalid = False
        self.scheduled_to_zap = False
        self.queued = False
        self.linked = True
        self.population = Population()
        self.zap: WorkCursor | None = None
        self.zap_active = False
        self.zap_changed: Signal | None = None
        self.created = now
        self.created_by = actor
        self.invalidated: Nanos | None = None
        self.zap_start: Nanos | None = None
        self.zap_end: Nanos | None = None
        self.zapped_by: ActorId | None = None
        self.leaves_zapped = 0
        self.tables_zapped = 0
        self.unlinked: Nanos | None = None
        self.freed: Nanos | None = None

    @property
    def role_word(self) -> int:
        """The role word with ``invalid`` (bit 11) applied."""
        return self.role | (1 << 11) if self.invalid else self.role

    def snapshot(self) -> Root:
        """A frozen copy for the lifecycle table."""
        return Root(
            root=self.id,
            role=self.role_word,
            created=self.created,
            created_by=self.created_by,
            invalidated=self.invalidated,
            zap_start=self.zap_start,
            zap_end=self.zap_end,
            zapped_by=self.zapped_by,
            leaves_zapped=self.leaves_zapped,
            tables_zapped=self.tables_zapped,
            unlinked=self.unlinked,
            freed=self.freed,
        )
