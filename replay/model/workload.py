"""A workload: the time-ordered list of typed operations a replay executes.

Scenarios (:mod:`replay.model.scenarios`) build workloads; a trace-derived workload can be built
the same way. Each operation belongs to one *actor* (a vCPU thread ``"vcpu<n>"`` or a VMM
thread such as ``"vmm"``). An actor executes its operations one after the other, in list
order, each no earlier than its ``at`` (ns). Under a slower policy an actor's later
operations start later: delays propagate as they would on a real host.

Operations (kernel paths in brackets):

* :class:`LoadRoot` — a vCPU enters the guest (``kvm_mmu_reload``): services pending
  requests, then reuses or allocates its root; ``role`` forces a role word.
* :class:`Populate` — a vCPU's guest touches ``[start, start+size)``: one fault per leaf not
  yet mapped by its current root (page size ``page``).
* :class:`Run` — a vCPU runs its guest for ``duration`` ns without faulting.
* :class:`SetSregs` — ``KVM_SET_SREGS`` with guest CR0.WP = ``cr0_wp``
  (``kvm_mmu_reset_context`` → unload).
* :class:`Unload` — any other MMU reset (SMM, CPUID, nested transition).
* :class:`MemslotCreate` / :class:`MemslotDelete` / :class:`MemslotMove` — memslot updates;
  delete and move invalidate all roots (``kvm_mmu_zap_all_fast``), create does not.
* :class:`SetNxHugePages` — write of ``kvm.nx_huge_pages`` (fast zap of the VM).
* :class:`ZapLeafs` — an mmu_notifier unmap of a range (iterates valid roots with references).
* :class:`WriteProtect` — dirty-log write protection / clear of a range (iterator).
* :class:`Sleep` — the actor does nothing MMU-related for ``duration`` ns.
* :class:`Rendezvous` — the actor waits until ``parties`` actors reached the barrier ``name``.
* :class:`VmDestroy` — process exit: mmu_notifier release (``kvm_mmu_zap_all``), vCPU
  destruction, MMU uninit, ``rcu_barrier``. Runs after every vCPU's last operation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from replay.errors import WorkloadError
from replay.model.ids import PAGE_1G, PAGE_2M, PAGE_4K, ActorId, vcpu_actor

__all__ = [
    "Op",
    "VcpuOp",
    "LoadRoot",
    "Populate",
    "Run",
    "SetSregs",
    "Unload",
    "MemslotCreate",
    "MemslotDelete",
    "MemslotMove",
    "SetNxHugePages",
    "ZapLeafs",
    "WriteProtect",
    "Sleep",
    "Rendezvous",
    "VmDestroy",
    "Workload",
    "rendezvous",
    "populates",
    "TDP_ROOT_ROLE",
    "CR0_WP_BIT",
]

#: Role word of a 4-level TDP root: level 4, direct, access wux, efer_nx, ad enabled.
TDP_ROOT_ROLE = 4 | (1 << 7) | (7 << 8) | (1 << 12)
#: ``role.cr0_wp`` (bit 13): part of TDP root roles until about v5.19.
CR0_WP_BIT = 1 << 13
_PAGES = (PAGE_4K, PAGE_2M, PAGE_1G)


@dataclass(frozen=True, kw_only=True)
class Op:
    """Base of every operation: the ``actor`` that runs it, no earlier than ``at`` ns."""

    actor: str
    at: int = 0


@dataclass(frozen=True, kw_only=True)
class VcpuOp(Op):
    """An operation of a vCPU thread; ``actor`` is derived from ``vcpu``."""

    vcpu: int
    actor: str = ""

    def __post_init__(self) -> None:
        if self.vcpu < 0:
            raise WorkloadError(-1, f"vcpu{self.vcpu}", "vCPU ids are >= 0")
        object.__setattr__(self, "actor", vcpu_actor(self.vcpu))


@dataclass(frozen=True, kw_only=True)
class LoadRoot(VcpuOp):
    """Enter the guest: service requests and load a root (``role`` overrides the role word)."""

    role: int | None = None


@dataclass(frozen=True, kw_only=True)
class Populate(VcpuOp):
    """The guest touches ``[start, start + size)``; unmapped leaves of ``page`` bytes fault."""

    start: int
    size: int
    page: int = PAGE_4K

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.page not in _PAGES:
            raise WorkloadError(-1, self.actor, f"page size {self.page} is not 4K, 2M or 1G")
        if self.start % self.page or self.size % self.page or self.size <= 0:
            raise WorkloadError(
                -1, self.actor, f"range {self.start:#x}+{self.size:#x} not aligned to {self.page}"
            )


def populates(vcpus: Sequence[int], starts: Sequence[int], sizes: Sequence[int],
              pages: Sequence[int], ats: Sequence[int]) -> list[Populate]:
    """Many :class:`Populate` at once (a derived workload has one per run of faults):
    the checks of ``Populate.__post_init__`` run over the whole columns first, then each
    operation's fields are set without re-checking them one by one (the constructor's
    frozen-field checks were most of a long derivation's cost). Raises the constructor's
    :class:`~replay.errors.WorkloadError` for the first bad row."""
    for i, (v, start, size, page) in enumerate(zip(vcpus, starts, sizes, pages, strict=True)):
        if v < 0 or page not in _PAGES or start % page or size % page or size <= 0:
            Populate(vcpu=v, start=start, size=size, page=page, at=ats[i])  # raises
    actors = {v: vcpu_actor(v) for v in set(vcpus)}
    new = object.__new__
    out: list[Populate] = []
    for v, start, size, page, at in zip(vcpus, starts, sizes, pages, ats, strict=True):
        op = new(Populate)
        op.__dict__.update(actor=actors[v], at=at, vcpu=v, start=start, size=size, page=page)
        out.append(op)
    return out


@dataclass(frozen=True, kw_only=True)
class Run(VcpuOp):
    """The guest runs ``duration`` ns without MMU work (requests are still serviced)."""

    duration: int


@dataclass(frozen=True, kw_only=True)
class SetSregs(VcpuOp):
    """``KVM_SET_SREGS`` setting guest CR0.WP: an MMU context reset (unload)."""

    cr0_wp: bool


@dataclass(frozen=True, kw_only=True)
class Unload(VcpuOp):
    """An MMU reset other than SREGS (SMM, CPUID update, nested transition)."""


@dataclass(frozen=True, kw_only=True)
class MemslotCreate(Op):
    """``KVM_SET_USER_MEMORY_REGION`` creating a slot: roots are not invalidated."""

    start: int = 0
    size: int = 0


@dataclass(frozen=True, kw_only=True)
class MemslotDelete(Op):
    """Deleting a slot: ``kvm_arch_flush_shadow_memslot`` → ``kvm_mmu_zap_all_fast``."""

    start: int = 0
    size: int = 0


@dataclass(frozen=True, kw_only=True)
class MemslotMove(Op):
    """Moving a slot: a fast zap, like delete."""

    start: int = 0
    size: int = 0
    new_start: int = 0


@dataclass(frozen=True, kw_only=True)
class SetNxHugePages(Op):
    """Writing the ``kvm.nx_huge_pages`` module parameter: a fast zap of the VM."""


@dataclass(frozen=True, kw_only=True)
class ZapLeafs(Op):
    """An mmu_notifier unmap of ``[start, start + size)`` on every valid root."""

    start: int
    size: int


@dataclass(frozen=True, kw_only=True)
class WriteProtect(Op):
    """Dirty-log write protection (or clear) of ``[start, start + size)`` on valid roots."""

    start: int
    size: int


@dataclass(frozen=True, kw_only=True)
class Sleep(Op):
    """Think time: no MMU work for ``duration`` ns."""

    duration: int


@dataclass(frozen=True, kw_only=True)
class Rendezvous(Op):
    """Wait at barrier ``name`` until ``parties`` actors arrived; on release the waiters go
    on in arrival order, those that arrived at the same instant by ascending ``order`` (a
    trace-derived barrier orders them as the trace shows them going on)."""

    name: str
    parties: int
    order: int = 0


@dataclass(frozen=True, kw_only=True)
class VmDestroy(Op):
    """Tear the VM down (after every vCPU's last operation)."""


def rendezvous(name: str, actors: Iterable[str], at: int = 0) -> list[Rendezvous]:
    """One :class:`Rendezvous` per actor for barrier ``name``."""
    names = list(actors)
    return [Rendezvous(actor=a, name=name, parties=len(names), at=at) for a in names]


@dataclass(frozen=True)
class Workload:
    """A named, validated list of operations.

    Attributes:
        ops: the operations, in order.
        name: what produced it (scenario name or trace path).
        root_role: role word of vCPU roots (CR0.WP applied per policy).
        params: scenario parameters, for reports.
    """

    ops: tuple[Op, ...]
    name: str = "workload"
    root_role: int = TDP_ROOT_ROLE
    params: tuple[tuple[str, int], ...] = field(default=())

    def __post_init__(self) -> None:
        last: dict[str, int] = {}
        barriers: dict[str, int] = {}
        for i, op in enumerate(self.ops):
            if not op.actor:
                raise WorkloadError(i, "?", "operation without an actor")
            if op.at < 0 or op.at < last.get(op.actor, 0):
                raise WorkloadError(i, op.actor, f"at={op.at} goes back in time for this actor")
            last[op.actor] = op.at
            if isinstance(op, Rendezvous):
                if barriers.setdefault(op.name, op.parties) != op.parties or op.parties < 1:
                    raise WorkloadError(i, op.actor, f"barrier {op.name!r}: inconsistent parties")

    @classmethod
    def of(cls, ops: Sequence[Op], **kwargs: object) -> Workload:
        """Build from any sequence of operations."""
        return cls(tuple(ops), **kwargs)  # type: ignore[arg-type]

    def actors(self) -> list[ActorId]:
        """Actors in order of first appearance."""
        seen: dict[str, None] = {}
        for op in self.ops:
            seen.setdefault(op.actor, None)
        return [ActorId(a) for a in seen]

    def vcpus(self) -> list[int]:
        """vCPU ids used, sorted."""
        return sorted({op.vcpu for op in self.ops if isinstance(op, VcpuOp)})
