"""Workloads imitating the KVM selftests of kernel-semantics §4.

Each builder returns a :class:`~replay.model.workload.Workload` that runs under any policy.
:data:`SCENARIOS` maps the CLI names to the builders; every builder takes the same
keyword parameters (``memory``, ``slot_size``, ``vcpus``, ``page_size``, ``host_cpus``)
and ignores none silently: parameters that make no sense for a scenario raise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from replay.errors import ReplayConfigError
from replay.model.ids import GIB, PAGE_1G, PAGE_2M, PAGE_4K, vcpu_actor
from replay.model.workload import (
    MemslotCreate,
    MemslotDelete,
    MemslotMove,
    Op,
    Populate,
    Run,
    SetSregs,
    Sleep,
    VmDestroy,
    Workload,
    WriteProtect,
    rendezvous,
)

__all__ = [
    "SCENARIOS",
    "ScenarioBuilder",
    "max_guest_memory",
    "memslot_stress",
    "dirty_log_perf",
    "set_memory_region",
    "build_scenario",
    "SELFTEST_BINARIES",
]

_VMM = "vmm"
#: max_guest_memory_test maps its slots from GPA 4 GiB.
_BASE_GPA: Final = 4 * GIB


def _check(memory: int, slot_size: int, vcpus: int, page_size: int) -> None:
    if page_size not in (PAGE_4K, PAGE_2M, PAGE_1G):
        raise ReplayConfigError(f"page size {page_size}: expected 4K, 2M or 1G")
    if vcpus < 1:
        raise ReplayConfigError(f"vcpus={vcpus}: need at least one vCPU")
    if slot_size <= 0 or slot_size % page_size:
        raise ReplayConfigError(f"slot size {slot_size}: must be a multiple of the page size")
    if memory < slot_size or memory % slot_size:
        raise ReplayConfigError(f"memory {memory}: must be a positive multiple of the slot size")
    if (memory // vcpus) < page_size:
        raise ReplayConfigError(f"memory {memory} is less than one page per vCPU")


def _shares(start: int, size: int, vcpus: int, page: int) -> list[tuple[int, int]]:
    """Each vCPU's ``(start, size)``: 1/N of the range, rounded down to pages."""
    each = (size // vcpus) // page * page
    return [(start + i * each, each) for i in range(vcpus)]


def _default_vcpus(vcpus: int | None, host_cpus: int) -> int:
    """The selftests' default: three quarters of the host CPUs (at least one)."""
    return vcpus if vcpus is not None else max(1, 3 * host_cpus // 4)


def max_guest_memory(
    *, memory: int = 128 * GIB, slot_size: int = 2 * GIB, vcpus: int | None = None,
    page_size: int = PAGE_4K, host_cpus: int = 8,
) -> Workload:
    """``max_guest_memory_test`` (b58c55d522b2): populate → CR0.WP reset → re-fault →
    delete even slots → exit without cleanup.

    Slots of ``slot_size`` from GPA 4 GiB cover ``memory``; each vCPU writes one u64 per
    page of its 1/N share in both runs; between runs every vCPU flips CR0.WP with
    ``KVM_SET_SREGS`` (an MMU reset) behind a rendezvous.
    """
    n = _default_vcpus(vcpus, host_cpus)
    _check(memory, slot_size, n, page_size)
    actors = [vcpu_actor(i) for i in range(n)] + [_VMM]
    ops: list[Op] = []
    slots = memory // slot_size
    ops += [MemslotCreate(actor=_VMM, start=_BASE_GPA + s * slot_size, size=slot_size)
            for s in range(slots)]
    shares = _shares(_BASE_GPA, memory, n, page_size)
    ops += rendezvous("start", actors)
    ops += [Populate(vcpu=i, start=s, size=z, page=page_size) for i, (s, z) in enumerate(shares)]
    ops += rendezvous("run1", actors)
    ops += [SetSregs(vcpu=i, cr0_wp=False) for i in range(n)]
    ops += rendezvous("reset", actors)
    ops += [Populate(vcpu=i, start=s, size=z, page=page_size) for i, (s, z) in enumerate(shares)]
    ops += rendezvous("run2", actors)
    ops += [MemslotDelete(actor=_VMM, start=_BASE_GPA + s * slot_size, size=slot_size)
            for s in range(0, slots, 2)]
    ops.append(VmDestroy(actor=_VMM))
    return Workload.of(ops, name="max-guest-memory", params=_params(memory, slot_size, n,
                                                                     page_size))


def memslot_stress(
    *, memory: int = GIB, slot_size: int = 2 * 1024 * 1024, vcpus: int | None = None,
    page_size: int = PAGE_4K, host_cpus: int = 8, iterations: int = 10, delay_ns: int = 0,
) -> Workload:
    """``memslot_modification_stress_test``: vCPUs keep re-faulting ``memory`` each while
    the VMM adds then deletes a small dummy slot ``iterations`` times (one fast zap each)."""
    n = vcpus if vcpus is not None else 1
    _check(memory, page_size, 1, page_size)
    actors = [vcpu_actor(i) for i in range(n)] + [_VMM]
    ops: list[Op] = []
    ops += rendezvous("start", actors)
    region = _BASE_GPA
    for _ in range(iterations + 1):
        for i in range(n):
            ops.append(Populate(vcpu=i, start=region + i * memory, size=memory, page=page_size))
    dummy = region - slot_size
    for _ in range(iterations):
        ops.append(MemslotCreate(actor=_VMM, start=dummy, size=slot_size))
        ops.append(MemslotDelete(actor=_VMM, start=dummy, size=slot_size))
        if delay_ns:
            ops.append(Sleep(actor=_VMM, duration=delay_ns))
    ops += rendezvous("done", actors)
    ops.append(VmDestroy(actor=_VMM))
    return Workload.of(ops, name="memslot-stress", params=_params(memory, slot_size, n,
                                                                   page_size))


def dirty_log_perf(
    *, memory: int = GIB, slot_size: int = GIB, vcpus: int | None = None,
    page_size: int = PAGE_4K, host_cpus: int = 8, iterations: int = 2,
) -> Workload:
    """``dirty_log_perf_test``: populate ``memory`` per vCPU, enable dirty logging, iterate
    dirty + clear-log, disable, exit. No root invalidation until the VM exits."""
    n = _default_vcpus(vcpus, host_cpus)
    _check(memory, page_size, 1, page_size)
    actors = [vcpu_actor(i) for i in range(n)] + [_VMM]
    total = memory * n
    ops: list[Op] = []
    ops += rendezvous("start", actors)
    ops += [Populate(vcpu=i, start=_BASE_GPA + i * memory, size=memory, page=page_size)
            for i in range(n)]
    ops += rendezvous("populated", actors)
    for it in range(iterations):
        ops.append(WriteProtect(actor=_VMM, start=_BASE_GPA, size=total))
        ops += [Run(vcpu=i, duration=1_000_000) for i in range(n)]
        ops += rendezvous(f"iteration{it}", actors)
    ops.append(VmDestroy(actor=_VMM))
    return Workload.of(ops, name="dirty-log-perf", params=_params(memory, slot_size, n,
                                                                   page_size))


def set_memory_region(
    *, memory: int = 2 * 1024 * 1024, slot_size: int = 2 * 1024 * 1024, vcpus: int | None = None,
    page_size: int = PAGE_4K, host_cpus: int = 8,
) -> Workload:
    """``set_memory_region_test``: MOVE then DELETE an in-use slot while a vCPU spins."""
    n = vcpus if vcpus is not None else 1
    _check(memory, slot_size, 1, page_size)
    actors = [vcpu_actor(i) for i in range(n)] + [_VMM]
    base = _BASE_GPA
    ops: list[Op] = [MemslotCreate(actor=_VMM, start=base, size=memory)]
    ops += rendezvous("start", actors)
    for i in range(n):
        ops.append(Populate(vcpu=i, start=base, size=memory, page=page_size))
        ops.append(Run(vcpu=i, duration=10_000_000))
        ops.append(Populate(vcpu=i, start=base, size=memory, page=page_size))
    ops.append(Sleep(actor=_VMM, duration=2_000_000))
    ops.append(MemslotMove(actor=_VMM, start=base, size=memory, new_start=base + GIB))
    ops.append(Sleep(actor=_VMM, duration=2_000_000))
    ops.append(MemslotDelete(actor=_VMM, start=base + GIB, size=memory))
    ops += rendezvous("done", actors)
    ops.append(VmDestroy(actor=_VMM))
    return Workload.of(ops, name="set-memory-region", params=_params(memory, slot_size, n,
                                                                      page_size))


def _params(memory: int, slot_size: int, vcpus: int, page: int) -> tuple[tuple[str, int], ...]:
    return (("memory", memory), ("slot_size", slot_size), ("vcpus", vcpus), ("page_size", page))


ScenarioBuilder = Callable[..., Workload]

#: CLI name → builder.
SCENARIOS: Final[Mapping[str, ScenarioBuilder]] = MappingProxyType(
    {
        "max-guest-memory": max_guest_memory,
        "memslot-stress": memslot_stress,
        "dirty-log-perf": dirty_log_perf,
        "set-memory-region": set_memory_region,
    }
)


#: Scenario name → the selftest binary it imitates (its comm, truncated, is in traces).
SELFTEST_BINARIES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "max-guest-memory": "max_guest_memory_test",
        "memslot-stress": "memslot_modification_stress_test",
        "dirty-log-perf": "dirty_log_perf_test",
        "set-memory-region": "set_memory_region_test",
    }
)


def build_scenario(name: str, **params: int | None) -> Workload:
    """Build scenario ``name`` with the given parameters (None = the scenario's default)."""
    builder = SCENARIOS.get(name)
    if builder is None:
        raise ReplayConfigError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    given = {k: v for k, v in params.items() if v is not None}
    return builder(**given)
