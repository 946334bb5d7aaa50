"""Identifier and unit types of the replay model (values, never mutable state)."""

from __future__ import annotations

from typing import Final, NewType

__all__ = [
    "RootId",
    "VcpuId",
    "Nanos",
    "ActorId",
    "NS_PER_S",
    "PAGE_4K",
    "PAGE_2M",
    "PAGE_1G",
    "PAGE_512G",
    "GIB",
    "vcpu_actor",
]

#: Identity of a TDP MMU root, in creation order (0, 1, 2, ...).
RootId = NewType("RootId", int)
#: ``vcpu_id`` as KVM numbers vCPUs.
VcpuId = NewType("VcpuId", int)
#: Simulated time or a duration, in integer nanoseconds (never float seconds).
Nanos = NewType("Nanos", int)
#: Name of a thread of the model: ``"vcpu3"``, ``"vmm"``, ``"kworker/events:0"``.
ActorId = NewType("ActorId", str)

NS_PER_S: Final = 1_000_000_000
PAGE_4K: Final = 1 << 12
PAGE_2M: Final = 1 << 21
PAGE_1G: Final = 1 << 30
PAGE_512G: Final = 1 << 39
GIB: Final = 1 << 30


def vcpu_actor(vcpu: int) -> ActorId:
    """The actor name of vCPU ``vcpu`` (``"vcpu<n>"``)."""
    return ActorId(f"vcpu{vcpu}")
