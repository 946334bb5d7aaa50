"""Values the model reports to recorders (frozen; one vocabulary with the Arrow tables)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from replay.model.ids import ActorId, Nanos, RootId, VcpuId

__all__ = ["BlockInterval", "fault_run", "BlockCause", "BLOCK_CAUSES", "Root", "RefChange", "Anomaly"]

BlockCause = Literal["zap", "lock_wait", "root_alloc", "root_put", "fault"]
#: Why a vCPU was out of its guest (kvm_exit → kvm_entry) in the model.
BLOCK_CAUSES: Final[tuple[BlockCause, ...]] = (
    "zap",
    "lock_wait",
    "root_alloc",
    "root_put",
    "fault",
)


@dataclass(frozen=True)
class BlockInterval:
    """``count`` back-to-back blocks of ``each_ns`` of one vCPU between ``start`` and ``end``.

    Faults are reported in runs (``count`` = faults in the run) so a 2^34-fault populate is
    a handful of rows; every other cause has ``count`` 1 and ``each_ns`` = ``end - start``.
    """

    vcpu: VcpuId
    start: Nanos
    end: Nanos
    cause: BlockCause
    count: int = 1
    each_ns: int = 0
    root: RootId | None = None


def fault_run(vcpu: VcpuId, start: Nanos, end: Nanos, count: int, each_ns: int,
              root: RootId) -> BlockInterval:
    """``BlockInterval(vcpu, start, end, "fault", count, each_ns, root)``, with the fields
    set directly: the model's fast path makes one per uncontended fault, and the frozen
    dataclass's per-field checks were a tenth of a long replay's time. Equal (``==``,
    hash, repr) to the constructor's (tests/replay/test_model_fast_path.py)."""
    iv = object.__new__(BlockInterval)
    iv.__dict__.update(vcpu=vcpu, start=start, end=end, cause="fault", count=count,
                       each_ns=each_ns, root=root)
    return iv


@dataclass(frozen=True)
class Root:
    """A snapshot of a root's lifecycle (one row of the ``roots`` table)."""

    root: RootId
    role: int
    created: Nanos
    created_by: ActorId
    invalidated: Nanos | None
    zap_start: Nanos | None
    zap_end: Nanos | None
    zapped_by: ActorId | None
    leaves_zapped: int
    tables_zapped: int
    unlinked: Nanos | None
    freed: Nanos | None


@dataclass(frozen=True)
class RefChange:
    """One change of a root's refcount (``delta`` 0 = a reference changing hands)."""

    ts: Nanos
    root: RootId
    count: int
    delta: int
    holder: str
    reason: str


@dataclass(frozen=True)
class Anomaly:
    """An invariant violation recorded instead of raised (``on_violation="record"``)."""

    ts: Nanos
    root: RootId | None
    holder: str | None
    invariant: int | None
    reason: str
