"""VM grouping without tgid: who created which vCPU, and one ``vcpu_id`` per VM at a time.

* ``kvm_vm_ioctl_create_vcpu`` → ``kvm_arch_vcpu_postcreate`` → ``kvm_synchronize_tsc``
  prints ``kvm_write_tsc_offset: vcpu=N`` and ``kvm_track_tsc: vcpu_id N ... nr_online M``
  on the thread that issued ``KVM_CREATE_VCPU``: a VMM thread of the VM that owns vCPU
  ``N`` (later host writes of the TSC MSR come from the same VMM; a guest's from the vCPU
  thread itself, which is no creator).
* A VM has one vCPU per id (``kvm_vm_ioctl_create_vcpu`` refuses a duplicate id), and
  ``kvm_entry``/``kvm_exit`` of one vCPU come from the thread running ``KVM_RUN``: two
  threads alive at the same time with the same ``vcpu_id`` are in different VMs.

A vCPU thread whose id only one VMM created (and whose VM does not already have a live
thread with that id) belongs to that VMM's VM. Threads still unplaced are grouped into
pseudo-VMs that never hold one id twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from parsers.trace import Trace, rows_named

__all__ = ["vcpu_creators", "lifetimes", "clashes", "assign_by_creation", "split_by_id", "Life"]

_VCPU_ARG: Final = re.compile(r"\bvcpu(?:_id)?[= ](\d+)")
_CREATION_EVENTS: Final = ("kvm_write_tsc_offset", "kvm_track_tsc")

#: (first ts, last ts) of a thread's events.
Life = tuple[int, int]


def vcpu_creators(trace: Trace, exclude: set[int]) -> dict[int, dict[int, int]]:
    """vcpu_id → {creator pid: first such event's ts}, from the TSC events of threads not
    in ``exclude`` (vCPU threads and kernel threads).

    Examples:
        >>> from parsers import read_trace
        >>> c = vcpu_creators(read_trace("sample_traces/tracefs_record_tgid.txt"), set())
        >>> sorted(c[0])
        [17504, 17505]
    """
    rows = rows_named(trace.events, _CREATION_EVENTS, ["pid", "ts", "args"])
    out: dict[int, dict[int, int]] = {}
    for pid, ts, args in zip(*(rows.column(c).to_pylist() for c in ("pid", "ts", "args")),
                             strict=True):
        m = _VCPU_ARG.search(args or "")
        if m and pid is not None and pid not in exclude:
            out.setdefault(int(m[1]), {}).setdefault(int(pid), int(ts))
    return out


def lifetimes(trace: Trace, pids: list[int]) -> dict[int, Life]:
    """(first, last) event time of each of ``pids``."""
    ev = trace.events.select(["pid", "ts"])
    ev = ev.filter(pc.fill_null(pc.is_in(ev.column("pid"), pa.array(pids, pa.int32())), False))
    if not ev.num_rows:
        return {}
    agg = ev.group_by("pid").aggregate([("ts", "min"), ("ts", "max")])
    return {int(p): (int(lo), int(hi)) for p, lo, hi in zip(
        *(agg.column(c).to_pylist() for c in ("pid", "ts_min", "ts_max")), strict=True)}


def _overlap(a: Life | None, b: Life | None) -> bool:
    if a is None or b is None:
        return True
    return a[0] <= b[1] and b[0] <= a[1]


def clashes(members: list[int], ids: Mapping[int, int | None], life: Mapping[int, Life]
            ) -> list[tuple[int, int]]:
    """Pairs of ``members`` with the same vcpu_id alive at the same time."""
    out = []
    for i, a in enumerate(members):
        for b in members[i + 1:]:
            if ids.get(a) is not None and ids.get(a) == ids.get(b) \
                    and _overlap(life.get(a), life.get(b)):
                out.append((a, b))
    return out


def _taken(vm: int, vid: int, pid: int, vm_of: Mapping[int, int],
           ids: Mapping[int, int | None], life: Mapping[int, Life]) -> bool:
    return any(v == vm and p != pid and ids.get(p) == vid and _overlap(life.get(p), life.get(pid))
               for p, v in vm_of.items())


def assign_by_creation(unplaced: list[int], ids: Mapping[int, int | None],
                       creators: Mapping[int, Mapping[int, int]], vm_of: dict[int, int],
                       life: Mapping[int, Life]) -> dict[int, tuple[int, str]]:
    """vCPU pid → (VM, evidence) for each unplaced vCPU thread whose id exactly one VM's
    creator made before the thread's first event, that VM having no live thread with that
    id. Repeats until nothing changes (each placement can leave one candidate elsewhere).
    ``vm_of`` is updated: the creators join their own VM (id: their VM or their pid)."""
    placed: dict[int, tuple[int, str]] = {}
    changed = True
    while changed:
        changed = False
        for pid in unplaced:
            vid = ids.get(pid)
            if pid in placed or vid is None:
                continue
            first = life.get(pid, (0, 0))[0]
            made = {c: t for c, t in creators.get(vid, {}).items() if t <= first or not first}
            vms = {vm_of.get(c, c): c for c in sorted(made)}
            free = {vm: c for vm, c in vms.items() if not _taken(vm, vid, pid, vm_of, ids, life)}
            if len(free) != 1:
                continue
            (vm, creator), = free.items()
            vm_of.setdefault(creator, vm)
            vm_of[pid] = vm
            others = sorted(set(vms) - {vm})
            placed[pid] = (vm, f"vcpu_id {vid} was created by thread {creator} "
                               f"(kvm_write_tsc_offset/kvm_track_tsc)"
                           + (f"; the other creators' VMs {others} already had a live vCPU "
                              f"{vid}" if others else ""))
            changed = True
    return placed


def split_by_id(members: list[int], ids: Mapping[int, int | None], life: Mapping[int, Life]
                ) -> list[list[int]]:
    """``members`` in as few groups as possible (greedy, in pid order) with no vcpu_id
    twice alive at once in a group."""
    groups: list[list[int]] = []
    for pid in sorted(members):
        for g in groups:
            if not clashes([*g, pid], ids, life):
                g.append(pid)
                break
        else:
            groups.append([pid])
    return groups
