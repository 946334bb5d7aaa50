"""Derive model workloads (one per VM) from a trace, every step with its evidence.

Mapping (../shared/docs/kernel-semantics.md §3.3; the kernel paths are in docs/model.md):

* a root ``kvm_mmu_get_page`` (the VM's top level) by a vCPU thread, ``new`` or ``existing``
  → :class:`~replay.model.workload.LoadRoot` at its time (silent reuse of a TDP root is not
  traced; the model reuses a valid root by itself);
* leaf installs by a vCPU (``kvm_mmu_set_spte``; ``kvm_tdp_mmu_spte_changed`` to a present
  leaf) → :class:`~replay.model.workload.Populate` of the page that level maps, adjacent pages
  merged;
* ``kvm_mmu_zap_all_fast`` by a VMM thread → :class:`~replay.model.workload.MemslotDelete` (the
  fast zap: memslot delete/move, or an ``nx_huge_pages`` write; the trace does not say which);
* root zaps by a VMM thread after the VM's last vCPU event, with no fast zap before them
  → :class:`~replay.model.workload.VmDestroy`.

With kernel stacks in the trace the frames decide, and the evidence says so
(:mod:`replay.infer.stack_causes`).

Times are the trace's own nanoseconds, so replayed tables line up with observed ones.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa

from parsers.trace import Trace
from replay.heap import release_freed
from replay.infer.call_steps import PAGE_OF_LEVEL as _PAGE_OF_LEVEL
from replay.infer.call_steps import Step as _Step
from replay.infer.call_steps import dirty_log_clears, faults, ioctl_resets
from replay.infer.calls import Call, RequestTimes, enclosing_call, syscalls, vm_of_call
from replay.infer.era import detect_era
from replay.infer.observed import BURST_GAP_NS, SPTE_PRESENT
from replay.infer.relative import Timed, relativize
from replay.infer.resets import PRETRACE_AT, ResetPlan, plan_resets
from replay.infer.stack_causes import StackCause, stack_causes, teardown_zaps
from replay.infer.threads import ThreadMap
from replay.infer.workload_frames import frame as _frame
from replay.infer.workload_frames import has_event as _has_event
from replay.infer.workload_frames import root_teardowns as _root_teardowns
from replay.model.workload import (
    LoadRoot,
    MemslotDelete,
    Populate,
    SetSregs,
    Unload,
    VcpuOp,
    VmDestroy,
    Workload,
    populates,
)

__all__ = ["DerivedWorkloads", "derive_workloads", "EVIDENCE_SCHEMA", "detect_era"]

#: Leaf bit of a non-4K SPTE (``PT_PAGE_SIZE_MASK``, bit 7).
_HUGE_BIT: Final = 1 << 7

EVIDENCE_SCHEMA: Final = pa.schema([
    ("vm", pa.int64()), ("step", pa.int32()), ("op", pa.string()), ("actor", pa.string()),
    ("ts", pa.int64()), ("seq", pa.int64()), ("evidence", pa.string()),
    ("confidence", pa.string()),
])


@dataclass
class DerivedWorkloads:
    """The per-VM workloads, the evidence of each operation, and what the trace tells of
    the recording kernel."""

    workloads: dict[int, Workload]
    evidence: pa.Table
    backend: str
    era: str | None
    era_evidence: str
    warnings: list[str] = field(default_factory=list)


def derive_workloads(trace: Trace, threads: ThreadMap) -> DerivedWorkloads:
    """One :class:`~replay.model.workload.Workload` per VM of ``trace``.

    Examples:
        >>> from parsers import read_trace
        >>> from replay.infer.threads import identify_threads
        >>> t = read_trace("sample_traces/tracefs_record_tgid.txt")
        >>> d = derive_workloads(t, identify_threads(t))
        >>> sorted(d.workloads), d.backend
        ([17504, 17505], 'shadow')
    """
    warnings: list[str] = []
    steps: dict[int, list[_Step]] = {vm: [] for vm in threads.vms}
    calls = syscalls(trace)
    asked = RequestTimes(trace, calls if calls else None)
    ioctl_resets(calls, threads, steps)
    _resets(trace, threads, steps)
    _root_loads(trace, threads, steps, asked)
    _reloads_at_entry(trace, threads, steps, asked)
    # the fault- and request-time rules need the exits and calls a syscall-traced recording
    # has; without syscalls the earlier install-time rules stay (docs/replay.md)
    if not calls or not faults(trace, threads, steps, asked):
        _populates(trace, threads, steps)
    release_freed()
    _fast_zaps(trace, threads, steps, calls)
    dirty_log_clears(trace, threads, steps, calls)
    _teardowns(trace, threads, steps, calls)
    warnings += _apply_resets(plan_resets(
        trace, threads, {vm: [s.op for s in items] for vm, items in steps.items()}), steps)
    backend, era, why = detect_era(trace, threads, calls)
    # the passes' temporaries are gone: return their pages before the steps are sorted
    release_freed()
    workloads: dict[int, Workload] = {}
    cols: dict[str, list[object]] = {name: [] for name in EVIDENCE_SCHEMA.names}
    for vm, items in sorted(steps.items()):
        items = _with_first_loads(sorted(items, key=lambda s: (s.op.at, s.seq)))
        if not any(isinstance(s.op, LoadRoot) for s in items):
            continue
        if calls:  # a syscall-traced recording: steps start when what they waited for is done
            items = _relative(trace, calls, threads, vm, items)
        workloads[vm] = Workload.of([s.op for s in items], name=f"{trace.metadata.source}:vm{vm}")
        _evidence_rows(cols, vm, items)
    skipped = [vm for vm in threads.vms if vm not in workloads]
    if skipped:
        warnings.append(f"VMs {skipped} show no root load by a vCPU: nothing to replay there")
    if _has_event(trace, "kvm_unmap_hva_range"):
        warnings.append("kvm_unmap_hva_range (mmu_notifier) events are not replayed: the trace "
                        "gives host virtual ranges, not the guest ranges the model zaps")
    return DerivedWorkloads(workloads, pa.Table.from_pydict(cols, schema=EVIDENCE_SCHEMA),
                            backend, era, why, warnings)


def _evidence_rows(cols: dict[str, list[object]], vm: int, items: list[_Step]) -> None:
    """Append one evidence row per step of ``vm`` to the columns ``cols`` (built column
    by column: a dict per step costs more than the derivation of the step)."""
    cols["vm"] += [vm] * len(items)
    cols["step"] += range(len(items))
    cols["op"] += [type(s.op).__name__ for s in items]
    cols["actor"] += [s.op.actor for s in items]
    cols["ts"] += [s.op.at for s in items]
    cols["seq"] += [s.seq for s in items]
    cols["evidence"] += [s.evidence for s in items]
    cols["confidence"] += [s.confidence for s in items]


def _apply_resets(plan: ResetPlan, steps: dict[int, list[_Step]]) -> list[str]:
    """Add the resets of control-register/EFER writes (:mod:`replay.infer.resets`); they
    replace the role-less ``Unload`` derived from the same reset's zap alone."""
    for vm, items in steps.items():
        steps[vm] = [s for s in items if not (isinstance(s.op, Unload)
                                              and (s.op.vcpu, s.op.at) in plan.drop)]
    for p in plan.add:
        steps.setdefault(p.vm, []).append(_Step(p.op, p.seq, p.evidence, p.confidence))
    return plan.warnings


def _fast_zaps_by_vm(trace: Trace, threads: ThreadMap) -> dict[int, np.ndarray]:
    """Sorted ``kvm_mmu_zap_all_fast`` times of each VM."""
    fast = _frame(trace, "kvm_mmu_zap_all_fast")
    out: dict[int, list[int]] = {vm: [] for vm in threads.vms}
    for t, p in zip(fast.get("ts", []), fast.get("pid", []), strict=True):
        vm = threads.vm_of.get(int(p))
        if vm is not None:
            out.setdefault(vm, []).append(int(t))
    return {vm: np.sort(np.asarray(ts, dtype=np.int64)) for vm, ts in out.items()}


def _root_loads(trace: Trace, threads: ThreadMap, steps: dict[int, list[_Step]],
                asked: RequestTimes) -> None:
    pages = _frame(trace, "kvm_mmu_get_page")
    if pages.empty:
        return
    pages = pages[pages["pid"].isin(list(threads.vcpus))]
    top = pages["level"].max()
    fast_arr = _fast_zaps_by_vm(trace, threads)
    # Unloads derived before this pass (a vCPU's own last put); those added below lie before
    # the load that adds them, so they never fall in a later load's window
    found: dict[int, list[int]] = {}
    for items in steps.values():
        for st in items:
            if isinstance(st.op, (Unload, SetSregs)):
                found.setdefault(st.op.vcpu, []).append(st.op.at)
    unloads = {v: np.sort(np.asarray(a, dtype=np.int64)) for v, a in found.items()}
    user = _frame(trace, "kvm_userspace_exit")
    last_load: dict[int, int] = {}
    wp: dict[int, bool] = {}
    for row in pages[pages["level"] == top].itertuples():
        vcpu = threads.vcpus[int(row.pid)]
        new = "new" if row.created is True else "existing"
        prev = last_load.get(vcpu.vcpu)
        last_load[vcpu.vcpu] = int(row.ts)
        if row.direct is True and new == "new" and prev is not None \
                and not _any_in(unloads.get(vcpu.vcpu), prev, int(row.ts)) \
                and not _any_in(fast_arr.get(vcpu.vm), prev, int(row.ts)):
            # TDP: a vCPU allocates a root of a role it already had, with no fast zap
            # in between: its MMU context was reset (kvm_mmu_reset_context → unload), by
            # an ioctl from userspace: after its last exit to userspace, if traced
            out = user[(user["pid"] == row.pid) & (user["ts"] > prev) & (user["ts"] < row.ts)] \
                if not user.empty else user
            at, seq = (int(out["ts"].iloc[-1]), int(out["seq"].iloc[-1])) if len(out) \
                else (int(row.ts), int(row.seq))
            wp[vcpu.vcpu] = not wp.get(vcpu.vcpu, True)
            steps[vcpu.vm].append(_Step(
                SetSregs(vcpu=vcpu.vcpu, cr0_wp=wp[vcpu.vcpu], at=at), seq,
                f"a new root by {threads.thread_name(int(row.pid))} with no fast zap since "
                f"its previous load: an MMU reset (KVM_SET_SREGS, CPUID, SMM) unloaded it"
                + (" after its exit to userspace" if len(out) else "")
                + "; replayed as KVM_SET_SREGS with a new role (CR0.WP flipped), so <= 6.3 "
                "allocate again even when another vCPU still holds the old root", "medium"))
        at = asked.at(int(row.pid), int(row.seq), int(row.ts))
        steps[vcpu.vm].append(_Step(
            LoadRoot(vcpu=vcpu.vcpu, at=at), int(row.seq),
            f"kvm_mmu_get_page {new} level {row.level} gfn {row.gfn:#x} by "
            f"{threads.thread_name(int(row.pid))}"
            + (f", asked for at {at} (its exit)" if at != int(row.ts) else ""), "high"))


def _any_in(times: np.ndarray | None, lo: int, hi: int) -> bool:
    """Whether sorted ``times`` holds a value in ``(lo, hi]``."""
    if times is None or not times.size:
        return False
    k = int(np.searchsorted(times, lo, side="right"))
    return k < times.size and int(times[k]) <= hi


def _reloads_at_entry(trace: Trace, threads: ThreadMap, steps: dict[int, list[_Step]],
                      asked: RequestTimes) -> None:
    """Silent reuse (§3.3 rules 3 and 5): a vCPU's first ``kvm_entry``, and its first
    ``kvm_entry`` after each fast zap of its VM, load a root; when no root ``get_page`` by
    that vCPU lies in between, it reused a valid root without a trace of it."""
    entries = _frame(trace, "kvm_entry")
    if entries.empty:
        return
    fast_by_vm = _fast_zaps_by_vm(trace, threads)
    for pid, group in entries[entries["pid"].isin(list(threads.vcpus))].groupby("pid"):
        vcpu = threads.vcpus[int(pid)]
        mine = sorted(s.op.at for s in steps.get(vcpu.vm, [])
                      if isinstance(s.op, LoadRoot) and s.op.actor == f"vcpu{vcpu.vcpu}")
        zaps = fast_by_vm.get(vcpu.vm, np.zeros(0, np.int64)).tolist()
        ts = group["ts"].to_numpy(dtype=np.int64)
        seq = group["seq"].to_numpy(dtype=np.int64)
        resets = sorted(s.op.at for s in steps.get(vcpu.vm, [])
                        if isinstance(s.op, (Unload, SetSregs)) and s.op.vcpu == vcpu.vcpu)
        marks = [(int(ts[0]), int(seq[0]), -1, "")]
        for z, what in [(z, "the fast zap") for z in zaps] + [(u, "its unload") for u in resets]:
            k = int(np.searchsorted(ts, z, side="right"))
            if k < ts.size:
                marks.append((int(ts[k]), int(seq[k]), z, what))
        first: dict[int, int] = {}  # entry time -> the earliest mark it is the first entry after
        for m in marks:
            first[m[0]] = min(first.get(m[0], m[2]), m[2])
        for at, sq, since, what in sorted(set(marks)):
            k = bisect_right(mine, since)  # a root get_page of its own in (since, at]?
            if (k < len(mine) and mine[k] <= at) or first[at] < since:
                continue
            why = ("first kvm_entry" if since < 0 else
                   f"first kvm_entry after {what} at {since}")
            steps[vcpu.vm].append(_Step(LoadRoot(vcpu=vcpu.vcpu,
                                                 at=asked.at(int(pid), sq, at)), sq,
                                        f"{why} with no root get_page by this vCPU: it "
                                        f"reused a valid root (not traced)", "medium"))



def _resets(trace: Trace, threads: ThreadMap, steps: dict[int, list[_Step]]) -> None:
    """A vCPU that itself put the last reference of its still-valid root was reset (an
    ``Unload``; the next entry reloads): up to 5.17 it tore the root down inline (its own
    top-level zaps), 5.18 .. 6.3 it queued the defunct root's ``tdp_mmu_zap_root_work``.
    Not after a fast zap since its previous ``kvm_entry``: that put is the request's."""
    evidence: list[tuple[int, int, int, str]] = []
    for seq, ts, pid in _root_teardowns(trace).itertuples(index=False):
        evidence.append((int(pid), int(ts), int(seq), "zapped a whole root inline (<= 5.17 "
                         "last put of a valid root)"))
    for item in threads.work_items:
        if "zap_root" in item.function:
            evidence.append((item.queued_by, item.queued_at, item.queued_seq,
                             f"queued {item.function} ({item.work}): the defunct-root put of "
                             f"5.18 .. 6.3"))
    entries = _frame(trace, "kvm_entry")
    fast_by_vm = _fast_zaps_by_vm(trace, threads)
    done: set[tuple[int, int]] = set()
    for items in steps.values():  # resets already derived from their ioctl
        for st in items:
            if isinstance(st.op, (Unload, SetSregs)):
                pid = next(p for p, v in threads.vcpus.items() if v.vcpu == st.op.vcpu)
                before = entries.loc[(entries["pid"] == pid) & (entries["ts"] <= st.op.at),
                                     "ts"] if not entries.empty else pd.Series(dtype=np.int64)
                done.add((pid, int(before.max()) if len(before) else -1))
    for pid, ts, seq, why in sorted(evidence, key=lambda e: (e[1], e[2])):
        vcpu = threads.vcpus.get(pid)
        if vcpu is None:
            continue
        before = entries.loc[(entries["pid"] == pid) & (entries["ts"] <= ts), "ts"] \
            if not entries.empty else pd.Series(dtype=np.int64)
        since = int(before.max()) if len(before) else -1
        if _any_in(fast_by_vm.get(vcpu.vm), since, int(ts)) or (pid, since) in done:
            continue
        done.add((pid, since))
        steps[vcpu.vm].append(_Step(Unload(vcpu=vcpu.vcpu, at=ts), seq,
                                    f"{threads.thread_name(pid)} {why}: an MMU reset put its "
                                    f"root's last reference", "high"))


def _leaf_rows(trace: Trace, threads: ThreadMap) -> pd.DataFrame:
    frames = []
    sets = _frame(trace, "kvm_mmu_set_spte")
    if not sets.empty:
        frames.append(sets[["seq", "ts", "pid", "gfn", "level"]].assign(src="kvm_mmu_set_spte"))
    changed = _frame(trace, "kvm_tdp_mmu_spte_changed")
    if not changed.empty:
        new = changed["new_spte"].fillna(0).astype(np.uint64)
        old = changed["old_spte"].fillna(0).astype(np.uint64)
        leaf = (changed["level"] == 1) | ((new & _HUGE_BIT) != 0)
        installed = ((new & SPTE_PRESENT) != 0) & ((old & SPTE_PRESENT) == 0) & leaf
        frames.append(changed.loc[installed, ["seq", "ts", "pid", "gfn", "level"]]
                      .assign(src="kvm_tdp_mmu_spte_changed"))
    if not frames:
        return pd.DataFrame()
    if len(frames) == 2 and not frames[1].empty:
        frames = frames[1:]  # TDP: spte_changed is the install; set_spte repeats it
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[rows["pid"].isin(list(threads.vcpus)) & rows["gfn"].notna()
                & rows["level"].isin(list(_PAGE_OF_LEVEL))]
    return rows.sort_values(["pid", "ts", "seq"], kind="stable")


def _populates(trace: Trace, threads: ThreadMap, steps: dict[int, list[_Step]]) -> None:
    rows = _leaf_rows(trace, threads)
    if rows.empty:
        return
    pid = rows["pid"].to_numpy(dtype=np.int64)
    page = np.vectorize(_PAGE_OF_LEVEL.__getitem__, otypes=[np.int64])(
        rows["level"].to_numpy(dtype=np.int64))
    start = (rows["gfn"].to_numpy(dtype=np.int64) << 12) // page * page
    # a run continues while the same thread maps the next page of the same size
    ts = rows["ts"].to_numpy(dtype=np.int64)
    cont = np.r_[False, (pid[1:] == pid[:-1]) & (page[1:] == page[:-1])
                 & (start[1:] == start[:-1] + page[:-1]) & (ts[1:] - ts[:-1] <= BURST_GAP_NS)]
    run = np.cumsum(~cont) - 1
    first = np.flatnonzero(~cont)
    count = np.bincount(run)
    seq = rows["seq"].to_numpy(dtype=np.int64)
    src = rows["src"].to_numpy()
    # one run per row of these lists (Python ints: no NumPy scalar per field and run)
    r_pid, r_page, r_start = pid[first].tolist(), page[first].tolist(), start[first].tolist()
    r_ts, r_seq, r_src = ts[first].tolist(), seq[first].tolist(), src[first].tolist()
    counts = count.tolist()
    vcpus = [threads.vcpus[p] for p in r_pid]
    ops = populates([v.vcpu for v in vcpus], r_start,
                    [p * c for p, c in zip(r_page, counts, strict=True)], r_page, r_ts)
    for k, c in enumerate(counts):
        steps[vcpus[k].vm].append(_Step(
            ops[k], r_seq[k], f"{c} x {r_src[k]} from gfn {r_start[k] >> 12:#x}", "high"))


def _fast_zaps(trace: Trace, threads: ThreadMap, steps: dict[int, list[_Step]],
               calls: list[Call]) -> None:
    fast = _frame(trace, "kvm_mmu_zap_all_fast")
    causes = stack_causes(trace, ["kvm_mmu_zap_all_fast"])
    for row in fast.itertuples():
        vm = threads.vm_of.get(int(row.pid))
        if vm is None or vm not in steps:
            continue
        actor = threads.thread_name(int(row.pid))
        call = enclosing_call(calls, int(row.pid), int(row.seq), int(row.ts))
        at = int(row.ts) if call is None else call.start
        why = causes.get(int(row.seq))
        told = (f"({why.words()})" if why is not None and why.cause in _FAST_ZAP_CAUSES else
                "(memslot delete/move or nx_huge_pages: not told apart)")
        steps[vm].append(_Step(MemslotDelete(actor=actor, at=at), int(row.seq),
                               f"kvm_mmu_zap_all_fast gen {row.mmu_valid_gen} by {actor} {told}"
                               + (f", in its {call.name} from {call.start}" if call else ""),
                               "high" if why is not None else "medium",
                               call.start_seq if call else None,
                               call.end if call else None, call.end_seq if call else None))


#: Stack causes that say why a fast zap ran.
_FAST_ZAP_CAUSES: Final = frozenset({"memslot", "nx_huge_pages"})


def _teardowns(trace: Trace, threads: ThreadMap, steps: dict[int, list[_Step]],
               calls: list[Call]) -> None:
    zaps = _frame(trace, "kvm_mmu_prepare_zap_page")
    if not zaps.empty:
        causes = stack_causes(trace, ["kvm_mmu_prepare_zap_page"])
        if causes:
            told = _stack_teardowns(zaps, causes, threads, steps, calls)
            zaps = zaps[~zaps["seq"].isin(list(causes))]  # the heuristic takes the others
            steps = {vm: items for vm, items in steps.items() if vm not in told}
    fast = _frame(trace, "kvm_mmu_zap_all_fast")
    exits = [c for c in calls if c.name in ("exit_group", "exit") and c.pid not in threads.vcpus]
    for vm, items in steps.items():
        mine_exit = [c for c in exits if vm_of_call(c, threads.vm_of) == vm]
        if mine_exit:  # the VMM's process exit: mmu_notifier release, then teardown
            c = mine_exit[0]
            actor = threads.thread_name(c.pid)
            items.append(_Step(VmDestroy(actor=actor, at=c.start), c.start_seq,
                               f"{c.name} by {actor}: kvm_mmu_zap_all at process exit, then "
                               f"vCPU and MMU teardown", "high", c.start_seq))
            continue
        vcpu_ends = [s.op.at for s in items if isinstance(s.op, (LoadRoot, Populate))]
        if not vcpu_ends:
            continue
        last = max(vcpu_ends)
        if zaps.empty:
            continue
        in_vm = zaps["pid"].map(lambda p: threads.vm_of.get(int(p))) == vm
        mine = zaps[in_vm & ~zaps["pid"].isin(list(threads.vcpus)) & (zaps["ts"] > last)]
        if mine.empty:
            continue
        first = mine.iloc[0]
        prior_fast = fast[(fast["pid"] == first["pid"]) & (fast["ts"] <= first["ts"])
                          & (fast["ts"] > last)] if not fast.empty else fast
        if len(prior_fast):
            continue
        actor = threads.thread_name(int(first["pid"]))
        call = enclosing_call(calls, int(first["pid"]), int(first["seq"]), int(first["ts"]))
        at = call.start if call is not None and call.name in ("exit_group", "exit") \
            else int(first["ts"])
        items.append(_Step(VmDestroy(actor=actor, at=at), int(first["seq"]),
                           f"{len(mine)} kvm_mmu_prepare_zap_page by {actor} after the VM's last "
                           f"vCPU event, with no fast zap: kvm_mmu_zap_all at VM exit", "medium"))


def _relative(trace: Trace, calls: list[Call], threads: ThreadMap, vm: int,
              items: list[_Step]) -> list[_Step]:
    """``items`` as runs, sleeps and rendezvous between the steps (:mod:`.relative`)."""
    pids = {f"vcpu{v.vcpu}": p for p, v in threads.vcpus.items() if v.vm == vm}
    pids.update({threads.thread_name(p): p for p, v in threads.vm_of.items()
                 if v == vm and p not in threads.vcpus})
    pids.update({threads.thread_name(c.pid): c.pid for c in calls
                 if c.pid not in threads.vcpus and vm_of_call(c, threads.vm_of) == vm})
    timed = [Timed(s.op, s.seq, s.evidence, s.confidence,
                   s.seq if s.from_seq is None else s.from_seq, s.until, s.until_seq)
             for s in items if not isinstance(s.op, LoadRoot)]
    conf = {s.seq: s.confidence for s in items}
    return [_Step(op, seq, why, conf.get(seq, "medium")) for op, why, seq in
            relativize(trace, calls, pids, timed)]


def _stack_teardowns(zaps: pd.DataFrame, causes: dict[int, StackCause], threads: ThreadMap,
                     steps: dict[int, list[_Step]], calls: list[Call]) -> set[int]:
    """:class:`VmDestroy` of each VM whose zaps' stacks show its teardown (the VMs); at the
    start of the process exit the first such zap is in, when syscalls are traced."""
    found = teardown_zaps(zaps, causes, threads.vm_of)
    for vm, (seq, ts, pid, count) in found.items():
        if vm not in steps:
            continue
        actor = threads.thread_name(pid)
        call = enclosing_call(calls, pid, seq, ts)
        if call is not None and call.name not in ("exit_group", "exit"):
            call = None
        steps[vm].append(_Step(
            VmDestroy(actor=actor, at=ts if call is None else call.start), seq,
            f"{count} kvm_mmu_prepare_zap_page by {actor} {causes[seq].words()}"
            + (f", in its {call.name} from {call.start}" if call else ""), "high",
            call.start_seq if call else None))
    return set(found) & set(steps)


def _with_first_loads(items: list[_Step]) -> list[_Step]:
    """A vCPU whose first traced step is not a root load loaded its root before the trace
    began: add that load (at its first step's time). A ``SetSregs`` at
    :data:`~replay.infer.resets.PRETRACE_AT` is the role the vCPU ran with before the trace
    (set before its pre-trace load, which follows it), not a reset of a loaded root."""
    loaded: set[str] = set()
    out: list[_Step] = []
    for s in items:
        if isinstance(s.op, SetSregs) and s.op.at == PRETRACE_AT:
            out.append(s)
            continue
        if isinstance(s.op, (Populate, Unload, SetSregs)) and s.op.actor not in loaded:
            assert isinstance(s.op, VcpuOp)
            out.append(_Step(LoadRoot(vcpu=s.op.vcpu, at=s.op.at), s.seq,
                             f"root loaded before the trace began (the first traced step is "
                             f"{type(s.op).__name__}, not a load)", "low"))
        if isinstance(s.op, (LoadRoot, Populate, Unload, SetSregs)):
            loaded.add(s.op.actor)
        out.append(s)
    return out
