"""Observers of a replay; each turns what it saw into one Arrow table.

Pass them as ``run(..., recorders=[BlockLatency(), RefcountHistory()])``. A recorder
overrides the hooks it needs (all no-ops in :class:`Recorder`) and returns its table from
:meth:`Recorder.table`. Hooks are called in simulated-time order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Final

import pyarrow as pa

from replay.model.ids import ActorId, Nanos, RootId
from replay.model.population import Extent, Granularity, Segment
from replay.model.records import Anomaly, BlockInterval, RefChange, Root

__all__ = [
    "Recorder",
    "ZapShape",
    "BlockLatency",
    "RefcountHistory",
    "RootLifecycle",
    "Anomalies",
    "BLOCKS_SCHEMA",
    "REFCOUNT_SCHEMA",
    "ROOTS_SCHEMA",
    "ANOMALIES_SCHEMA",
]

_CAUSE = pa.dictionary(pa.int8(), pa.string())

BLOCKS_SCHEMA: Final = pa.schema(
    [
        ("vcpu", pa.int32()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("cause", _CAUSE),
        ("n_blocks", pa.int64()),
        ("each_ns", pa.int64()),
        ("root", pa.int64()),
    ]
)
REFCOUNT_SCHEMA: Final = pa.schema(
    [
        ("ts", pa.int64()),
        ("root", pa.int64()),
        ("refcount", pa.int32()),
        ("delta", pa.int32()),
        ("holder", pa.string()),
        ("reason", pa.string()),
    ]
)
ROOTS_SCHEMA: Final = pa.schema(
    [
        ("root", pa.int64()),
        ("role", pa.uint32()),
        ("created", pa.int64()),
        ("created_by", pa.string()),
        ("invalidated", pa.int64()),
        ("zap_start", pa.int64()),
        ("zap_end", pa.int64()),
        ("zapped_by", pa.string()),
        ("leaves_zapped", pa.int64()),
        ("tables_zapped", pa.int64()),
        ("unlinked", pa.int64()),
        ("freed", pa.int64()),
    ]
)
ANOMALIES_SCHEMA: Final = pa.schema(
    [
        ("ts", pa.int64()),
        ("root", pa.int64()),
        ("holder", pa.string()),
        ("invariant", pa.int32()),
        ("reason", pa.string()),
    ]
)


@dataclass(frozen=True)
class ZapShape:
    """How one root's zap is done: the era's ``granularity``, ``shared`` (``mmu_lock`` held
    for read) or exclusive, ≤5.17 per-table TLB flushes, and the cursor's ``segments``."""

    granularity: Granularity
    shared: bool
    tlb_per_table: bool
    segments: tuple[Segment, ...]


class Recorder:
    """Base observer: every hook is a no-op; :meth:`table` returns the recorder's table."""

    #: Name of the table in :class:`replay.result.ReplayResult`.
    name: ClassVar[str] = "recorder"

    def block(self, interval: BlockInterval) -> None:
        """A vCPU was blocked (out of its guest) for ``interval``."""

    def refcount(self, change: RefChange) -> None:
        """A root's refcount changed."""

    def root_created(self, ts: Nanos, root: RootId, role: int, actor: ActorId) -> None:
        """A root was allocated (``kvm_mmu_get_page`` new)."""

    def fast_zap(self, ts: Nanos, actor: ActorId, generation: int) -> None:
        """``kvm_mmu_zap_all_fast`` entered its write-locked section."""

    def populated(
        self, start: Nanos, end: Nanos, actor: ActorId, root: RootId, extents: list[Extent]
    ) -> None:
        """``actor`` faulted ``extents`` into ``root`` between ``start`` and ``end``."""

    def zapped(
        self, start: Nanos, end: Nanos, actor: ActorId, root: RootId, extents: Iterable[Extent],
        done_from: float, done_to: float, *, shape: ZapShape | None = None,
    ) -> None:
        """``actor`` zapped ``root`` (mapping ``extents``) in one uninterrupted stretch, from
        fraction ``done_from`` to ``done_to`` of the root's zap work; ``shape`` says how the
        whole zap was cut into units (its passes, lock mode and segments)."""

    def work(self, ts: Nanos, actor: ActorId, what: str, root: RootId, queue: str) -> None:
        """Workqueue activity: ``what`` in {"queue", "start", "end"}."""

    def faults(
        self, start: Nanos, actor: ActorId, root: RootId, faulted: list[Extent],
        installed: list[Extent], each_ns: int,
    ) -> None:
        """``actor`` took one fault per leaf of ``faulted`` back to back from ``start``, each
        ``each_ns`` long; ``installed`` are the leaves that were not mapped yet (the rest were
        spurious: another vCPU installed them meanwhile)."""

    def fault_retry(self, ts: Nanos, actor: ActorId, root: RootId, leaf: Extent) -> None:
        """A fault on ``leaf`` requested at ``ts`` found its root obsolete once it held
        ``mmu_lock``: nothing installed, the vCPU reloads and faults again."""

    def walked(self, start: Nanos, end: Nanos, actor: ActorId, root: RootId,
               extents: list[Extent], removed: bool) -> None:
        """A range walk by ``actor`` zapped (``removed``) or write-protected the leaves of
        ``extents`` in ``root`` between ``start`` and ``end``."""

    def enter_guest(self, ts: Nanos, actor: ActorId, reload: bool) -> None:
        """vCPU ``actor`` is about to enter its guest (``vcpu_enter_guest``); ``reload``:
        ``kvm_mmu_reload`` has work to do first (a request, or no valid root)."""

    def rendezvous(self, ts: Nanos, actor: ActorId, name: str) -> None:
        """``actor`` arrives at barrier ``name`` (a vCPU leaves ``KVM_RUN`` to wait)."""

    def ioctl(self, ts: Nanos, actor: ActorId, name: str, phase: str) -> None:
        """Thread ``actor`` enters (``phase`` "enter") or leaves ("exit") the ioctl or system
        call ``name`` (``KVM_SET_SREGS``, ``KVM_SET_USER_MEMORY_REGION``, ``exit_group``...)."""

    def root_final(self, root: Root) -> None:
        """End of the run: the lifecycle of one root."""

    def anomaly(self, anomaly: Anomaly) -> None:
        """An invariant violation was recorded instead of raised."""

    def table(self) -> pa.Table:
        """The recorder's Arrow table."""
        raise NotImplementedError


class BlockLatency(Recorder):
    """Per-vCPU block intervals: ``vcpu, start, end, cause, n_blocks, each_ns, root``."""

    name = "blocks"

    def __init__(self) -> None:
        self.intervals: list[BlockInterval] = []

    def block(self, interval: BlockInterval) -> None:
        self.intervals.append(interval)

    def table(self) -> pa.Table:
        iv = self.intervals
        return pa.Table.from_arrays(
            [
                pa.array([b.vcpu for b in iv], pa.int32()),
                pa.array([b.start for b in iv], pa.int64()),
                pa.array([b.end for b in iv], pa.int64()),
                pa.array([b.cause for b in iv], pa.string()).dictionary_encode().cast(_CAUSE),
                pa.array([b.count for b in iv], pa.int64()),
                pa.array([b.each_ns for b in iv], pa.int64()),
                pa.array([b.root for b in iv], pa.int64()),
            ],
            schema=BLOCKS_SCHEMA,
        )


class RefcountHistory(Recorder):
    """Per-root refcount history: ``ts, root, refcount, delta, holder, reason``."""

    name = "refcounts"

    def __init__(self) -> None:
        self.changes: list[RefChange] = []

    def refcount(self, change: RefChange) -> None:
        self.changes.append(change)

    def table(self) -> pa.Table:
        ch = self.changes
        return pa.Table.from_arrays(
            [
                pa.array([c.ts for c in ch], pa.int64()),
                pa.array([c.root for c in ch], pa.int64()),
                pa.array([c.count for c in ch], pa.int32()),
                pa.array([c.delta for c in ch], pa.int32()),
                pa.array([c.holder for c in ch], pa.string()),
                pa.array([c.reason for c in ch], pa.string()),
            ],
            schema=REFCOUNT_SCHEMA,
        )


class RootLifecycle(Recorder):
    """One row per root: created, invalidated, zap start/end, zapped by, unlinked, freed."""

    name = "roots"

    def __init__(self) -> None:
        self.roots: list[Root] = []

    def root_final(self, root: Root) -> None:
        self.roots.append(root)

    def table(self) -> pa.Table:
        cols = {name: [getattr(r, name) for r in self.roots] for name in ROOTS_SCHEMA.names}
        return pa.Table.from_pydict(cols, schema=ROOTS_SCHEMA)


class Anomalies(Recorder):
    """Invariant violations recorded with ``on_violation="record"``."""

    name = "anomalies"

    def __init__(self) -> None:
        self.items: list[Anomaly] = []

    def anomaly(self, anomaly: Anomaly) -> None:
        self.items.append(anomaly)

    def table(self) -> pa.Table:
        cols = {name: [getattr(a, name) for a in self.items] for name in ANOMALIES_SCHEMA.names}
        return pa.Table.from_pydict(cols, schema=ANOMALIES_SCHEMA)
