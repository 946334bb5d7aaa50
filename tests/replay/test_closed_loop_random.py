"""The closed loop on random small workloads built from the operation types (issue 12).

Each example is a few phases separated by rendezvous of every thread; in a phase each vCPU
faults small ranges (4K or 2M pages, overlapping other vCPUs' at times), runs its guest,
resets its MMU (``KVM_SET_SREGS``, CR0.WP flipped each time; ``KVM_SET_CPUID2``), and the
VMM creates, deletes and moves memslots, writes ``nx_huge_pages``, clears the dirty log and
sleeps; the VM exits at the end. Emitted under a random era, read back, derived and
replayed under the same era, it must replay as the direct run did (:func:`differences`).
Not generated: mmu_notifier unmaps (``ZapLeafs``; traced as host-virtual ranges, not
replayed), ``Sleep`` of a vCPU (indistinguishable from guest time in a trace), and vCPUs
whose first operation does not enter the guest (a thread that never ran ``KVM_RUN`` prints
no KVM event, so the trace holds no such vCPU).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replay.model.ids import GIB, PAGE_2M, PAGE_4K, vcpu_actor
from replay.model.policies import policy_names
from replay.model.workload import (
    MemslotCreate,
    MemslotDelete,
    MemslotMove,
    Op,
    Populate,
    Run,
    SetNxHugePages,
    SetSregs,
    Sleep,
    Unload,
    VmDestroy,
    Workload,
    WriteProtect,
    rendezvous,
)
from tests.replay.closed_loop import differences, loop

_BASE = 4 * GIB
_VMM = "vmm"


@st.composite
def vcpu_op(draw: st.DrawFn, vcpu: int) -> Op:
    kind = draw(st.sampled_from(["populate", "populate", "populate", "run", "sregs", "cpuid"]))
    if kind == "populate":
        page = draw(st.sampled_from([PAGE_4K, PAGE_4K, PAGE_2M]))
        first = draw(st.integers(0, 1023 if page == PAGE_4K else 3))
        n = draw(st.integers(1, 24 if page == PAGE_4K else 2))
        base = _BASE if page == PAGE_4K else _BASE + GIB  # 2M region with 4K leaves
        return Populate(vcpu=vcpu, start=base + first * page, size=n * page, page=page)
    if kind == "run":
        return Run(vcpu=vcpu, duration=draw(st.integers(1, 50)) * 1000)
    if kind == "sregs":
        return SetSregs(vcpu=vcpu, cr0_wp=False)  # flipped below
    return Unload(vcpu=vcpu)


@st.composite
def vmm_op(draw: st.DrawFn) -> Op:
    kind = draw(st.sampled_from(["create", "delete", "move", "nx", "dirty", "sleep"]))
    if kind == "create":
        return MemslotCreate(actor=_VMM, start=_BASE, size=PAGE_2M)
    if kind == "delete":
        return MemslotDelete(actor=_VMM, start=_BASE, size=PAGE_2M)
    if kind == "move":
        return MemslotMove(actor=_VMM, start=_BASE, size=PAGE_2M, new_start=_BASE + GIB)
    if kind == "nx":
        return SetNxHugePages(actor=_VMM)
    if kind == "dirty":
        return WriteProtect(actor=_VMM, start=_BASE, size=2 * GIB)
    return Sleep(actor=_VMM, duration=draw(st.integers(1, 40)) * 1000)


@st.composite
def workloads(draw: st.DrawFn) -> Workload:
    n = draw(st.integers(1, 3))
    actors = [vcpu_actor(i) for i in range(n)] + [_VMM]
    ops: list[Op] = []
    wp = dict.fromkeys(range(n), True)
    for phase in range(draw(st.integers(1, 3))):
        for v in range(n):
            mine = draw(st.lists(vcpu_op(v), min_size=1, max_size=4))
            if phase == 0 and not isinstance(mine[0], (Populate, Run)):
                mine.insert(0, Run(vcpu=v, duration=1000))  # a vCPU that never ran is no vCPU
            for op in mine:
                if isinstance(op, SetSregs):
                    wp[v] = not wp[v]
                    op = SetSregs(vcpu=v, cr0_wp=wp[v])
                ops.append(op)
        ops += draw(st.lists(vmm_op(), max_size=4))
        ops += rendezvous(f"phase{phase}", actors)
    ops.append(VmDestroy(actor=_VMM))
    return Workload.of(ops, name="random")


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(workload=workloads(), policy=st.sampled_from(policy_names()))
def test_random_workloads_replay_as_they_ran(workload: Workload, policy: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lp = loop(workload, policy, policy, Path(tmp) / "t.txt")
        assert differences(lp) == []
