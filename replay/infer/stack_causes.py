"""Why an event happened, from its kernel stack (the ``stacks`` table, :mod:`parsers.stacks`).

A trace recorded with ``options/stacktrace`` tells apart what the events alone cannot: a
``kvm_mmu_zap_all_fast`` under ``kvm_set_memslot`` is a memslot change, under
``set_nx_huge_pages`` an ``nx_huge_pages`` write; a ``kvm_mmu_prepare_zap_page`` under
``kvm_mmu_notifier_release`` is the VM's teardown when its mm goes away (process exit: the
thread doing the last ``mmput`` zaps, vCPU thread or not), under ``kvm_destroy_vm`` the
VM fd's release. The call paths are Linux 6.18's (virt/kvm/kvm_main.c, arch/x86/kvm/mmu/mmu.c)
and were seen in the recording of ``sample_traces/stacks_*``.

Examples
--------
>>> cause_of(["trace_event_raw_event_kvm_mmu_zap_all_fast", "kvm_mmu_zap_all_fast",
...           "kvm_set_memslot", "kvm_set_memory_region", "kvm_vm_ioctl"])
('memslot', 'kvm_set_memslot')
>>> cause_of(["__kvm_mmu_prepare_zap_page", "kvm_arch_flush_shadow_all",
...           "kvm_mmu_notifier_release", "__mmu_notifier_release", "exit_mmap"])
('vm_teardown', 'kvm_mmu_notifier_release')
>>> cause_of(["do_syscall_64"]) is None
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from parsers.stacks import function_name
from parsers.trace import Trace, rows_named

__all__ = ["FRAME_CAUSES", "StackCause", "cause_of", "stack_causes", "CAUSE_WORDS",
           "teardown_zaps"]

#: (function, cause), most telling first: the first rule any frame matches wins.
FRAME_CAUSES: Final = (
    ("kvm_mmu_notifier_release", "vm_teardown"),
    ("kvm_destroy_vm", "vm_teardown"),
    ("kvm_arch_destroy_vm", "vm_teardown"),
    ("set_nx_huge_pages", "nx_huge_pages"),
    ("kvm_set_memslot", "memslot"),
    ("kvm_set_memory_region", "memslot"),
    ("kvm_vm_ioctl_set_memory_region", "memslot"),
    ("kvm_mmu_notifier_invalidate_range_start", "mmu_notifier"),
    ("kvm_mmu_free_obsolete_roots", "obsolete_roots"),
    ("kvm_arch_vcpu_ioctl_set_sregs", "vcpu_reset"),
    ("kvm_mmu_reset_context", "vcpu_reset"),
)
#: What each cause means, for evidence text.
CAUSE_WORDS: Final = {
    "vm_teardown": "VM teardown",
    "nx_huge_pages": "an nx_huge_pages write",
    "memslot": "a memslot change",
    "mmu_notifier": "an mmu_notifier invalidation",
    "obsolete_roots": "freeing obsolete roots at vCPU entry",
    "vcpu_reset": "a vCPU register reset",
}


@dataclass(frozen=True)
class StackCause:
    """The cause an event's kernel stack shows, and the frame that shows it."""

    cause: str
    frame: str

    def words(self) -> str:
        """Evidence text: ``under kvm_set_memslot (kernel stack): a memslot change``."""
        return f"under {self.frame} (kernel stack): {CAUSE_WORDS[self.cause]}"


def cause_of(frames: Sequence[str]) -> tuple[str, str] | None:
    """(cause, function) of a kernel stack's frames (innermost first), or ``None``."""
    names = {function_name(f) for f in frames}
    for function, cause in FRAME_CAUSES:
        if function in names:
            return cause, function
    return None


def stack_causes(trace: Trace, events: Sequence[str] | None = None) -> dict[int, StackCause]:
    """``seq`` of each event (of ``events``, or any) → the cause its kernel stack shows."""
    stacks = trace.stacks
    if not stacks.num_rows:
        return {}
    kernel = stacks.filter(pc.and_(pc.equal(stacks.column("kind").cast(pa.string()), "kernel"),
                                   pc.is_valid(stacks.column("frame"))))
    if events is not None:
        wanted = rows_named(trace.events, events, ["seq"])
        kernel = kernel.filter(pc.is_in(kernel.column("event_seq"), wanted.column("seq")))
    frames: dict[int, list[str]] = {}
    for owner, frame in zip(kernel.column("event_seq").to_pylist(),
                            kernel.column("frame").to_pylist(), strict=True):
        if owner is not None:
            frames.setdefault(int(owner), []).append(str(frame))
    out: dict[int, StackCause] = {}
    for seq, names in frames.items():
        found = cause_of(names)
        if found is not None:
            out[seq] = StackCause(found[0], found[1])
    return out


def teardown_zaps(zaps: pd.DataFrame, causes: dict[int, StackCause], vm_of: dict[int, int]
                  ) -> dict[int, tuple[int, int, int, int]]:
    """VM → (seq, ts, pid, count) of its first ``kvm_mmu_prepare_zap_page`` whose stack
    shows the VM's teardown (``kvm_mmu_notifier_release``, ``kvm_destroy_vm``), whichever
    thread zaps (the last ``mmput`` may run on an exiting vCPU thread), and how many do.
    ``zaps`` has columns ``seq``, ``ts``, ``pid`` in seq order."""
    out: dict[int, tuple[int, int, int, int]] = {}
    for seq, ts, pid in zip(zaps["seq"], zaps["ts"], zaps["pid"], strict=True):
        why = causes.get(int(seq))
        vm = vm_of.get(int(pid))
        if why is None or why.cause != "vm_teardown" or vm is None:
            continue
        held = out.get(vm)
        out[vm] = (int(seq), int(ts), int(pid), 1) if held is None else (*held[:3], held[3] + 1)
    return out
