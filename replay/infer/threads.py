"""Who is who in a trace: VMs, vCPU threads and VMM threads, each with its evidence.

Inference rules (kernel tracepoints, see ``include/trace/events/kvm.h`` and
``arch/x86/kvm/trace.h``): ``kvm_entry``/``kvm_exit`` carry ``vcpu_id`` and are emitted by
the vCPU thread (``vcpu_enter_guest``); QEMU and the selftests name vCPU threads
``CPU n/KVM``; ``kvm_userspace_exit`` is emitted only from ``KVM_RUN`` (a vCPU thread);
``record-tgid`` (or Perfetto's process tree) gives each thread's process = VM; without it a
``sched_process_fork`` edge gives ancestry. Anything weaker is said in a warning and carries a
``low`` confidence, never passed off as a fact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from parsers.trace import Trace, event_mask, rows_named
from replay.infer.generations import assign_by_generation
from replay.infer.grouping import (
    Life,
    assign_by_creation,
    clashes,
    lifetimes,
    split_by_id,
    vcpu_creators,
)

__all__ = ["WorkItem", "Confidence", "ThreadMap", "VcpuThread", "identify_threads", "VCPU_THREAD_RE",
           "VCPU_TABLE_SCHEMA"]

Confidence = Literal["high", "medium", "low"]

#: QEMU's (and the project's workload's) vCPU thread name.
VCPU_THREAD_RE: Final = re.compile(r"^CPU (\d+)/KVM$")
_FORK_RE: Final = re.compile(r"child_pid=(\d+)")
#: Kernel worker threads serve every VM: their tgid is their own pid, never a VM's.
KERNEL_THREAD_RE: Final = re.compile(r"^(kworker/|kdamond|kswapd|ksoftirqd/|rcu)")
_QUEUE_RE: Final = re.compile(r"work struct=(\S+) function=(\S+)")
_EXEC_RE: Final = re.compile(r"work struct (\S+): function (\S+)")
_PARENT_RE: Final = re.compile(r"pid=(\d+)")

VCPU_TABLE_SCHEMA: Final = pa.schema([
    ("vcpu", pa.int32()), ("vm", pa.int64()), ("vcpu_id", pa.int32()), ("pid", pa.int32()),
    ("comm", pa.string()), ("evidence", pa.string()), ("confidence", pa.string()),
])


@dataclass(frozen=True)
class VcpuThread:
    """One vCPU thread: ``vcpu`` is the replay's index (unique across VMs), ``vcpu_id`` the
    kernel's id within its VM."""

    vcpu: int
    vm: int
    vcpu_id: int
    pid: int
    comm: str
    evidence: str
    confidence: Confidence


@dataclass(frozen=True)
class WorkItem:
    """One execution of a work item a VM thread queued (``workqueue_queue_work`` →
    ``workqueue_execute_start``/``_end`` of the same ``work`` address).

    ``end`` is the worker's ``execute_end``, else its next ``execute_start`` (a worker runs
    one item at a time), else the trace's last timestamp."""

    work: str
    function: str
    queued_at: int
    queued_by: int
    queued_seq: int
    vm: int
    worker: int
    start: int
    end: int


@dataclass
class ThreadMap:
    """VMs and threads of a trace.

    Attributes:
        vcpus: vCPU threads by pid.
        vm_of: VM of every thread that emitted a KVM event (pid → VM id; the VM id is the
            tgid when known, else a synthetic id).
        vm_confidence: how each VM grouping was established.
        comms: last comm seen per pid.
        warnings: what could not be established, in words.
    """

    vcpus: dict[int, VcpuThread] = field(default_factory=dict)
    vm_of: dict[int, int] = field(default_factory=dict)
    vm_confidence: dict[int, Confidence] = field(default_factory=dict)
    comms: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: kernel worker pid → (start, end, VM) of each work item a VM thread queued
    #: (``workqueue_queue_work`` → ``workqueue_execute_start``/``_end`` of the same work).
    work: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)
    #: the same executions with who queued them and when, in execution order.
    work_items: list[WorkItem] = field(default_factory=list)

    def vm_at(self, pid: int, ts: int) -> int | None:
        """The VM thread ``pid`` works for at ``ts``: its own, or for a kernel worker the
        VM whose work item it is executing."""
        for start, end, vm in self.work.get(pid, ()):
            if start <= ts <= end:
                return vm
        return self.vm_of.get(pid)

    @property
    def vms(self) -> list[int]:
        """VM ids, sorted."""
        return sorted(set(self.vm_of.values()))

    def thread_name(self, pid: int) -> str:
        """``comm-pid`` as ftrace prints it."""
        return f"{self.comms.get(pid, '<...>')}-{pid}"

    def to_arrow(self) -> pa.Table:
        """The vCPU threads as a table (:data:`VCPU_TABLE_SCHEMA`)."""
        rows = sorted(self.vcpus.values(), key=lambda v: v.vcpu)
        return pa.Table.from_pylist([r.__dict__ for r in rows], schema=VCPU_TABLE_SCHEMA)


def identify_threads(trace: Trace) -> ThreadMap:
    """Find the VMs, vCPU threads and VMM threads of ``trace``.

    Examples:
        >>> from parsers import read_trace
        >>> m = identify_threads(read_trace("sample_traces/tracefs_record_tgid.txt"))
        >>> len(m.vms), len(m.vcpus), sorted({v.confidence for v in m.vcpus.values()})
        (2, 4, ['medium'])
    """
    out = ThreadMap()
    ev = trace.events
    out.comms = {int(k): str(v) for k, v in _last_per_pid(ev, "comm").items()}
    kvm_pids = _kvm_pids(trace)
    ids = _vcpu_ids(trace, out.comms, kvm_pids, out.warnings)
    tgids = _tgids(ev)
    parents = _fork_parents(trace)
    kernel = {p for p in kvm_pids if KERNEL_THREAD_RE.match(out.comms.get(p, ""))}
    _group_vms(out, [p for p in kvm_pids if p not in kernel], ids, tgids, parents, trace)
    _number_vcpus(out, ids)
    out.work_items = _work_items(trace, out)
    for item in out.work_items:
        out.work.setdefault(item.worker, []).append((item.start, item.end, item.vm))
    return out


def _work_items(trace: Trace, out: ThreadMap) -> list[WorkItem]:
    """Which VM's work each kernel worker runs, from the workqueue events' ``work`` address:
    queued by a thread of a known VM, executed (start..end) by a worker."""
    ev = trace.events
    rows = rows_named(ev, ["workqueue_queue_work", "workqueue_execute_start",
                           "workqueue_execute_end"], ["ts", "pid", "seq", "event", "args"])
    queued: dict[str, tuple[int, int, int, int, str]] = {}
    open_: dict[int, tuple[str, int, tuple[int, int, int, int, str]]] = {}
    items: list[WorkItem] = []

    def close(worker: int, end: int) -> None:
        work, start, (at, by, seq, vm, function) = open_.pop(worker)
        items.append(WorkItem(work, function, at, by, seq, vm, worker, start, max(start, end)))

    for ts, pid, seq, event, args in zip(*(rows.column(c).to_pylist() for c in (
            "ts", "pid", "seq", "event", "args")), strict=True):
        m = (_QUEUE_RE if event == "workqueue_queue_work" else _EXEC_RE).search(args or "")
        if not m or ts is None or pid is None:
            continue
        work = m[1]
        if event == "workqueue_queue_work":
            vm = out.vm_of.get(pid)
            if vm is not None:
                queued[work] = (ts, pid, seq, vm, m[2])
            continue
        if pid in open_ and (event == "workqueue_execute_start" or open_[pid][0] == work):
            close(pid, ts)
        if event == "workqueue_execute_start" and work in queued:
            open_[pid] = (work, ts, queued.pop(work))  # one queueing, one execution
    last = pc.max(ev.column("ts")).as_py() if ev.num_rows else None
    for worker in sorted(open_):
        close(worker, last if last is not None else open_[worker][1])
    return sorted(items, key=lambda i: (i.start, i.worker))


def _kvm_pids(trace: Trace) -> list[int]:
    """Threads that emitted a kvm or kvmmmu event (not sched/workqueue-only threads)."""
    kvm = event_mask(trace.events, lambda name: name.startswith(("kvm", "vcpu_")))
    pids = trace.events.column("pid").filter(kvm)
    return sorted(int(p) for p in pc.unique(pids).to_pylist() if p is not None)


def _vcpu_ids(trace: Trace, comms: dict[int, str], kvm_pids: list[int],
              warnings: list[str]) -> dict[int, tuple[int | None, str, Confidence]]:
    """pid → (vcpu_id or None, evidence, confidence) for every vCPU thread."""
    ids: dict[int, tuple[int | None, str, Confidence]] = {}
    for name in ("kvm_entry", "kvm_exit"):
        if name not in trace.names:
            continue
        t = trace.table(name).select(["pid", "vcpu_id", "seq"]).filter(
            pc.is_valid(trace.table(name).column("vcpu_id")))
        for pid, vid, seq in zip(*(t.column(c).to_pylist() for c in ("pid", "vcpu_id", "seq")),
                                 strict=True):
            if pid not in ids:
                ids[pid] = (vid, f"{name} vcpu_id={vid} (seq {seq})", "high")
            elif ids[pid][0] != vid:
                warnings.append(f"thread {pid} reports vcpu_id {ids[pid][0]} and {vid}; "
                                f"keeping the first")
    for pid in kvm_pids:
        if pid in ids:
            continue
        m = VCPU_THREAD_RE.match(comms.get(pid, ""))
        if m:
            ids[pid] = (int(m[1]), f"thread name {comms[pid]!r}", "medium")
    for name in ("kvm_entry", "kvm_exit", "kvm_userspace_exit"):
        if name not in trace.names:
            continue
        for pid in sorted(set(trace.table(name).column("pid").to_pylist()) - {None}):
            if pid not in ids:
                # Perfetto's compiled kvm_entry/kvm_exit carry no vcpu_id: the thread still
                # enters the guest, so it is a vCPU whose id the trace does not give.
                ids[pid] = (None, f"emits {name} (KVM_RUN) but has no vcpu_id "
                            "or CPU n/KVM name", "low")
    return ids


def _tgids(ev: pa.Table) -> dict[int, int]:
    return {int(k): int(v) for k, v in _last_per_pid(ev, "tgid").items()}


#: Rows converted to pandas at a time by :func:`_last_per_pid` (bounds its memory).
_SLICE_ROWS = 1 << 20


def _last_per_pid(ev: pa.Table, column: str) -> dict[Any, Any]:
    """The last non-null ``column`` value of each pid, in the order of those last rows.

    Slice by slice (a later slice's value replaces an earlier one and moves to the end), so
    only one slice of the events is ever a DataFrame."""
    out: dict[Any, Any] = {}
    for lo in range(0, ev.num_rows, _SLICE_ROWS):
        df = ev.slice(lo, _SLICE_ROWS).select(["pid", column]).to_pandas().dropna()
        last = df.drop_duplicates("pid", keep="last")
        for pid, value in zip(last["pid"].tolist(), last[column].astype(object).tolist(),
                              strict=True):
            out.pop(pid, None)
            out[pid] = value
    return out


def _fork_parents(trace: Trace) -> dict[int, int]:
    """child pid → parent pid from ``sched_process_fork`` (args text) when recorded."""
    forks = rows_named(trace.events, ["sched_process_fork"], ["args"])
    parents: dict[int, int] = {}
    for args in forks.column("args").to_pylist():
        child = _FORK_RE.search(args or "")
        parent = _PARENT_RE.search(args or "")
        if child and parent:
            parents[int(child[1])] = int(parent[1])
    return parents


def _root_ancestor(pid: int, parents: dict[int, int]) -> int:
    seen = {pid}
    while pid in parents and parents[pid] not in seen:
        pid = parents[pid]
        seen.add(pid)
    return pid


def _group_vms(out: ThreadMap, kvm_pids: list[int],
               ids: dict[int, tuple[int | None, str, Confidence]],
               tgids: dict[int, int], parents: dict[int, int], trace: Trace) -> None:
    missing = [p for p in kvm_pids if p not in tgids]
    for pid in kvm_pids:
        if pid in tgids:
            out.vm_of[pid] = tgids[pid]
            out.vm_confidence[tgids[pid]] = "high"
        elif parents:
            root = _root_ancestor(pid, parents)
            out.vm_of[pid] = root
            out.vm_confidence.setdefault(root, "medium")
    if not missing or parents:
        return
    vid = {p: v[0] for p, v in ids.items()}
    life = lifetimes(trace, missing)
    by_gen = assign_by_generation(trace, [p for p in missing if p in ids])
    for pid, (vmm, _) in by_gen.items():
        for thread in (pid, vmm):
            out.vm_of[thread] = vmm
        out.vm_confidence[vmm] = "medium"
    undone = _undo_clashes(out, by_gen, vid, life)
    for pid, (_, evidence) in by_gen.items():
        if pid not in undone:
            ids[pid] = (ids[pid][0], f"{ids[pid][1]}; VM: {evidence}", ids[pid][2])
    creators = vcpu_creators(trace, set(ids))
    unplaced = [p for p in missing if p in ids and p not in out.vm_of]
    by_make = assign_by_creation(unplaced, vid, creators, out.vm_of, life)
    for pid, (vm, evidence) in by_make.items():
        out.vm_confidence.setdefault(vm, "medium")
        ids[pid] = (ids[pid][0], f"{ids[pid][1]}; VM: {evidence}", ids[pid][2])
    placed = len(by_gen) - len(undone) + len(by_make)
    if placed:
        out.warnings.append(f"no tgid: {placed} vCPU threads assigned to VMs by the "
                            f"mmu_valid_gen of their pages and by who created their vCPU "
                            f"(evidence in the vcpus table)")
    _pseudo_vms(out, [p for p in missing if p not in out.vm_of], ids, vid, life)


def _undo_clashes(out: ThreadMap, by_gen: dict[int, tuple[int, str]],
                  vid: dict[int, int | None], life: dict[int, Life]) -> set[int]:
    """Generation placements that put one vcpu_id twice alive at once in a VM are undone:
    the tie-broken one ("fits ... equally"), else both."""
    undone: set[int] = set()
    for vm in sorted(set(out.vm_of.values())):
        members = [p for p, v in out.vm_of.items() if v == vm and p in vid]
        for a, b in clashes(members, vid, life):
            weak = [p for p in (a, b) if p in by_gen and "equally" in by_gen[p][1]]
            for p in (weak if len(weak) == 1 else [p for p in (a, b) if p in by_gen]):
                undone.add(p)
    for p in undone:
        out.vm_of.pop(p, None)
    if undone:
        out.warnings.append(f"threads {sorted(undone)}: their generation evidence would put "
                            f"one vcpu_id twice in a VM; not used")
    return undone


def _pseudo_vms(out: ThreadMap, missing: list[int],
                ids: dict[int, tuple[int | None, str, Confidence]],
                vid: dict[int, int | None], life: dict[int, Life]) -> None:
    """Threads nothing placed: one pseudo-VM when their vcpu_ids are distinct (a VMM may
    have several threads: QEMU's main loop, I/O threads); else one pseudo-VM per
    id-distinct group of vCPU threads, and each other thread alone (which VMM goes with
    which group is unknown: its fast zaps then reach no vCPU's roots rather than the wrong
    VM's)."""
    if not missing:
        return
    vcpus = [p for p in missing if p in ids]
    others = [p for p in missing if p not in ids]
    if not clashes(vcpus, vid, life):
        groups = [missing]
    else:
        groups = split_by_id(vcpus, vid, life) + [[p] for p in others]
    for group in groups:
        pseudo = min([p for p in group if p in ids] or group)
        for pid in group:
            out.vm_of[pid] = pseudo
        out.vm_confidence[pseudo] = "low"
    out.warnings.append(
        f"no tgid (record-tgid off), no sched_process_fork, and no generation or vCPU "
        f"creation evidence for {len(missing)} threads: "
        + ("treated as ONE VM" if len(groups) == 1 else
           f"split into {len(groups)} VMs so that no vcpu_id repeats in a VM (their VMM "
           f"threads stand alone: their fast zaps are not replayed against these vCPUs)")
        + "; record with options/record-tgid to separate VMs")


def _number_vcpus(out: ThreadMap, ids: dict[int, tuple[int | None, str, Confidence]]) -> None:
    """Replay indices: by (VM, vcpu_id, pid); unknown ids get the next free id in the VM."""
    order = sorted((out.vm_of.get(p, p), -1 if v[0] is None else v[0], p)
                   for p, v in ids.items())
    used: dict[int, set[int]] = {}
    pending: list[tuple[int, int]] = []
    for vm, vid, pid in order:
        if vid < 0:
            pending.append((vm, pid))
        else:
            used.setdefault(vm, set()).add(vid)
    assigned: dict[int, int] = {p: v for p, (v, _, _) in ids.items() if v is not None}
    for vm, pid in pending:
        taken = used.setdefault(vm, set())
        free = next(i for i in range(len(taken) + 1) if i not in taken)
        taken.add(free)
        assigned[pid] = free
        out.warnings.append(f"thread {out.thread_name(pid)}: vCPU id unknown, numbered "
                            f"{free} in VM {vm}")
    final = sorted((out.vm_of.get(p, p), assigned[p], p) for p in ids)
    for index, (vm, vid, pid) in enumerate(final):
        _, evidence, confidence = ids[pid]
        out.vm_of.setdefault(pid, vm)
        out.vcpus[pid] = VcpuThread(index, vm, vid, pid, out.comms.get(pid, ""),
                                    evidence, confidence)
    if np.unique([(v.vm, v.vcpu_id) for v in out.vcpus.values()], axis=0).shape[0] \
            != len(out.vcpus) and out.vcpus:
        out.warnings.append("several threads claim the same (VM, vCPU id); each is replayed "
                            "as its own vCPU")
