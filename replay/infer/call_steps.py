"""Derived steps from the calls and faults a syscall-traced recording shows (split from
:mod:`replay.infer.workload`): MMU resets by ioctl, dirty-log clears, and populates read
from the faults themselves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from parsers.trace import Trace
from replay.infer.calls import Call, RequestTimes, vm_of_call
from replay.infer.observed import SPTE_PRESENT
from replay.infer.threads import Confidence, ThreadMap, VcpuThread
from replay.infer.workload_frames import frame as _frame
from replay.model.ids import PAGE_1G, PAGE_2M, PAGE_4K
from replay.model.workload import Op, Populate, SetSregs, Unload, WriteProtect

__all__ = ["Step", "ioctl_resets", "dirty_log_clears", "faults", "PAGE_OF_LEVEL"]

PAGE_OF_LEVEL: Final = {1: PAGE_4K, 2: PAGE_2M, 3: PAGE_1G}
_PAGE_OF_LEVEL = PAGE_OF_LEVEL


@dataclass
class Step:
    op: Op
    seq: int
    evidence: str
    confidence: Confidence
    #: the seq of the event that asked for it, and when (and at which seq) its activity ended
    from_seq: int | None = None
    until: int | None = None
    until_seq: int | None = None


def ioctl_resets(calls: list[Call], threads: ThreadMap, steps: dict[int, list[Step]]) -> None:
    """``KVM_SET_SREGS`` (``kvm_mmu_reset_context``) and ``KVM_SET_CPUID2`` by a vCPU thread
    reset its MMU: the reset unloads its root whatever the reload does next (a new root, or
    from 6.4 the same one). The sregs' contents are not traced: each ``SET_SREGS`` is taken
    to flip CR0.WP (what max_guest_memory_test does), the one role bit ≤ 6.3 roots carry."""
    wp: dict[int, bool] = {}
    for c in calls:
        vcpu = threads.vcpus.get(c.pid)
        if vcpu is None or c.name not in ("KVM_SET_SREGS", "KVM_SET_SREGS2", "KVM_SET_CPUID2"):
            continue
        who = threads.thread_name(c.pid)
        if c.name == "KVM_SET_CPUID2":
            steps[vcpu.vm].append(Step(Unload(vcpu=vcpu.vcpu, at=c.start), c.start_seq,
                                        f"{c.name} by {who}: kvm_mmu_reset_context", "high",
                                        c.start_seq, c.end, c.end_seq))
            continue
        wp[c.pid] = not wp.get(c.pid, True)
        steps[vcpu.vm].append(Step(
            SetSregs(vcpu=vcpu.vcpu, cr0_wp=wp[c.pid], at=c.start), c.start_seq,
            f"{c.name} by {who} at {c.start}: kvm_mmu_reset_context (CR0.WP taken to flip "
            f"to {int(wp[c.pid])}: the sregs are not traced)", "medium", c.start_seq, c.end,
            c.end_seq))


def dirty_log_clears(trace: Trace, threads: ThreadMap, steps: dict[int, list[Step]],
                      calls: list[Call]) -> None:
    """``KVM_CLEAR_DIRTY_LOG`` / ``KVM_GET_DIRTY_LOG`` by a VMM thread write-protect the
    range whose SPTEs lose their W bit inside the call (present -> present)."""
    changed = _frame(trace, "kvm_tdp_mmu_spte_changed")
    for c in calls:
        vm = vm_of_call(c, threads.vm_of)
        if c.name not in ("KVM_CLEAR_DIRTY_LOG", "KVM_GET_DIRTY_LOG") or vm not in steps \
                or c.pid in threads.vcpus:
            continue
        start, size = 0, PAGE_4K
        if not changed.empty:
            inside = changed[(changed["pid"] == c.pid) & (changed["seq"] > c.start_seq)
                             & (changed["ts"] <= (c.end if c.end is not None else c.start))]
            old = inside["old_spte"].fillna(0).astype(np.uint64)
            new = inside["new_spte"].fillna(0).astype(np.uint64)
            kept = inside[((old & SPTE_PRESENT) != 0) & ((new & SPTE_PRESENT) != 0)]
            if len(kept):
                page = np.vectorize(_PAGE_OF_LEVEL.__getitem__, otypes=[np.int64])(
                    kept["level"].to_numpy(dtype=np.int64))
                gpa = kept["gfn"].to_numpy(dtype=np.int64) << 12
                start = int(gpa.min())
                size = int((gpa + page).max()) - start
        actor = threads.thread_name(c.pid)
        steps[vm].append(Step(WriteProtect(actor=actor, start=start, size=size, at=c.start),
                               c.start_seq, f"{c.name} by {actor}: write-protects "
                               f"{start:#x}+{size:#x}", "medium", c.start_seq, c.end,
                               c.end_seq))


def faults(trace: Trace, threads: ThreadMap, steps: dict[int, list[Step]],
            asked: RequestTimes) -> bool:
    """Populates from the faults themselves (``kvm_page_fault``, its
    ``kvm_mmu_spte_requested`` level): every fault the guest took, spurious ones (another
    vCPU installed the page meanwhile) and retries on an obsolete root included. A run
    continues while the same vCPU faults the next page of the same size with no time outside
    the guest in between (the next fault's exit is the previous one's entry). False when the
    trace has no fault events."""
    faults = _frame(trace, "kvm_page_fault")
    if faults.empty:
        return False
    faults = faults[faults["pid"].isin(list(threads.vcpus))].sort_values("seq", kind="stable")
    req = _frame(trace, "kvm_mmu_spte_requested")
    entries = _frame(trace, "kvm_entry")
    for pid, f in faults.groupby("pid"):
        seq = f["seq"].to_numpy(dtype=np.int64)
        ts = f["ts"].to_numpy(dtype=np.int64)
        level = _requested_levels(req, int(pid), seq)
        page = np.vectorize(_PAGE_OF_LEVEL.__getitem__, otypes=[np.int64])(level)
        start = f["fault_address"].to_numpy(dtype=np.int64) // page * page
        mine = entries[entries["pid"] == pid] if not entries.empty else entries
        e_seq = mine["seq"].to_numpy(dtype=np.int64) if len(mine) else np.zeros(0, np.int64)
        e_ts = mine["ts"].to_numpy(dtype=np.int64) if len(mine) else np.zeros(0, np.int64)
        k = np.searchsorted(e_seq, seq, side="right")
        back = np.where(k < e_seq.size, e_ts[np.minimum(k, max(e_seq.size - 1, 0))],
                        np.iinfo(np.int64).max) if e_seq.size else np.full(seq.size, -1)
        ask_ts, ask_seq = asked.starts(int(pid), seq, ts)
        asks = list(zip(ask_ts.tolist(), ask_seq.tolist(), strict=True))
        out_seq = ask_ts
        # the guest ran nothing else in between: the entry before this fault's exit is the
        # one that ended the previous fault (no exit to userspace, no KVM_RUN since)
        last = np.searchsorted(e_seq, ask_seq, side="left") - 1
        # the next page, or the same page again: a fault that found its root obsolete is
        # retried after the reload, and the vCPU goes on with the rest of the range
        cont = np.r_[False, (page[1:] == page[:-1]) & (out_seq[1:] <= back[:-1])
                     & (last[1:] == k[:-1])
                     & ((start[1:] == start[:-1] + page[:-1]) | (start[1:] == start[:-1]))]
        ends: list[tuple[int | None, int | None]] = [
            (int(e_ts[j]), int(e_seq[j])) if j < e_seq.size else (None, None)
            for j in k.tolist()]
        _add_runs(steps, threads.vcpus[int(pid)], cont, start, page, asks, seq, ends)
    return True


def _requested_levels(req: pd.DataFrame, pid: int, seq: np.ndarray) -> np.ndarray:
    """The level of each fault's ``kvm_mmu_spte_requested`` (the next one of the thread)."""
    if req.empty:
        return np.ones(seq.size, dtype=np.int64)
    mine = req[req["pid"] == pid]
    r_seq = mine["seq"].to_numpy(dtype=np.int64)
    r_lvl = mine["level"].fillna(1).to_numpy(dtype=np.int64)
    k = np.searchsorted(r_seq, seq, side="right")
    lvl = np.where(k < r_seq.size, r_lvl[np.minimum(k, max(r_seq.size - 1, 0))], 1) \
        if r_seq.size else np.ones(seq.size, dtype=np.int64)
    return np.clip(lvl, 1, 3)


def _add_runs(steps: dict[int, list[Step]], vcpu: VcpuThread, cont: np.ndarray,
              start: np.ndarray, page: np.ndarray, asks: list[tuple[int, int]], seq: np.ndarray,
              ends: Sequence[tuple[int | None, int | None]]) -> None:
    run = np.cumsum(~cont) - 1
    first = np.flatnonzero(~cont)
    count = np.bincount(run)
    for i, c in zip(first.tolist(), count.tolist(), strict=True):
        until, until_seq = ends[i + c - 1]
        size = int(start[i:i + c].max()) + int(page[i]) - int(start[i])
        steps[vcpu.vm].append(Step(
            Populate(vcpu=vcpu.vcpu, start=int(start[i]), size=size,
                     page=int(page[i]), at=asks[i][0]), int(seq[i]),
            f"{c} x kvm_page_fault from gfn {int(start[i]) >> 12:#x}", "high",
            asks[i][1], until, until_seq))
