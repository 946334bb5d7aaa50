"""Whole-log assertions on a hand-built two-vCPU workload, one test per era family.

Costs are round numbers so every timestamp below can be checked by hand:
50 ns per leaf, 1 us per fault and per root alloc, 100 ns per put, everything else 0
(except an RCU grace period of 1 us). A 1 GiB subtree of 4K leaves is 262,144 leaves:
13,107,200 ns to zap; faulting it costs 262,144,000 ns.
"""

from __future__ import annotations

import pytest

from replay import CostModel, run
from replay.model.ids import GIB
from replay.model.workload import LoadRoot, Populate, SetSregs, VmDestroy, Workload, rendezvous

COST = CostModel(
    leaf_exclusive_ns=50, leaf_shared_ns=50, page_table_ns=0, frozen_entry_ns=0,
    tlb_flush_ns=0, yield_ns=0, lock_handoff_ns=0, root_alloc_ns=1000, root_put_ns=100,
    fault_ns=1000, invalidate_root_ns=0, fast_zap_section_ns=0, scan_entry_ns=0,
    rcu_grace_ns=1000, host_cpus=2,
)
ZAP_GIB = 262_144 * 50
FAULT_GIB = 262_144 * 1000
T_RUN1 = 2000 + FAULT_GIB  # both vCPUs finish faulting their GiB
T_PUT = T_RUN1 + 200  # the last put (vcpu0's, after vcpu1's)


def workload() -> Workload:
    both = ["vcpu0", "vcpu1"]
    ops = [
        Populate(vcpu=0, start=0, size=GIB),
        Populate(vcpu=1, start=GIB, size=GIB),
        *rendezvous("run1", both),
        SetSregs(vcpu=0, cr0_wp=False),
        SetSregs(vcpu=1, cr0_wp=False),
        *rendezvous("reset", both),
        LoadRoot(vcpu=0),
        Populate(vcpu=0, start=0, size=GIB),
        VmDestroy(actor="vmm"),
    ]
    return Workload.of(ops)


def blocks(policy: str) -> list[tuple[int, int, int, str, int]]:
    res = run(workload(), policy=policy, cost=COST)
    t = res.to_arrow("blocks").to_pydict()
    rows = zip(t["vcpu"], t["start"], t["end"], t["cause"], t["n_blocks"], strict=True)
    return sorted(rows, key=lambda r: (r[1], r[0], r[2]))


#: Up to 6.8 root alloc and free take mmu_lock for write: the vCPUs queue behind each other.
RUN1 = [
    (0, 0, 1000, "root_alloc", 1),
    (1, 0, 1000, "lock_wait", 1),
    (0, 1000, 2000, "lock_wait", 1),  # its first fault (read) waits behind vcpu1's write
    (1, 1000, 2000, "root_alloc", 1),
    (0, 2000, T_RUN1, "fault", 262_144),
    (1, 2000, T_RUN1, "fault", 262_144),
    # vcpu1 got its read lock first at 2000 (it released the write lock and re-took it in
    # the same step), so it finishes first, reaches the rendezvous first and unloads first:
    (0, T_RUN1, T_RUN1 + 100, "lock_wait", 1),
    (1, T_RUN1, T_RUN1 + 100, "root_put", 1),
    (0, T_RUN1 + 100, T_PUT, "root_put", 1),  # vcpu0 drops the last reference
]


def test_sync_last_putter_zaps_the_whole_root_inline() -> None:
    zap_end = T_PUT + 2 * ZAP_GIB
    assert blocks("sync") == RUN1 + [
        (0, T_PUT, zap_end, "zap", 1),  # vcpu0 pays 2 GiB of zap, non-yielding
        (0, zap_end, zap_end + 1000, "root_alloc", 1),
        (0, zap_end + 1000, zap_end + 1000 + FAULT_GIB, "fault", 262_144),
    ]
    roots = run(workload(), policy="sync", cost=COST).to_arrow("roots").to_pylist()
    assert [(r["root"], r["zapped_by"], r["zap_start"], r["zap_end"], r["unlinked"], r["freed"])
            for r in roots][0] == (0, "vcpu0", T_PUT, zap_end, T_PUT, zap_end + 1000)


@pytest.mark.parametrize("policy", ["async", "5.18"])
def test_worker_zaps_and_the_vcpu_waits_one_gib(policy: str) -> None:
    yield_at = T_PUT + ZAP_GIB  # the worker yields at its first 1 GiB boundary
    assert blocks(policy) == RUN1 + [
        (0, T_PUT, yield_at, "lock_wait", 1),  # root alloc needs mmu_lock write
        (0, yield_at, yield_at + 1000, "root_alloc", 1),
        (0, yield_at + 1000, yield_at + 1000 + FAULT_GIB, "fault", 262_144),
    ]
    res = run(workload(), policy=policy, cost=COST)
    root0 = res.to_arrow("roots").to_pylist()[0]
    worker = "kworker/0" if policy == "async" else "kworker/u:0"
    assert (root0["zapped_by"], root0["zap_start"], root0["zap_end"]) == (
        worker, T_PUT, T_PUT + 2 * ZAP_GIB + 1000)  # + vcpu0's alloc while it yielded
    history = res.to_arrow("refcounts").to_pylist()
    assert [(h["root"], h["refcount"], h["delta"], h["holder"]) for h in history][:6] == [
        (0, 1, +1, "vcpu0"), (0, 2, +1, "vcpu1"), (0, 1, -1, "vcpu1"), (0, 0, -1, "vcpu0"),
        (0, 1, +1, "zap_work"), (1, 1, +1, "vcpu0"),
    ]


@pytest.mark.parametrize("policy", ["6.4", "6.6"])
def test_preserved_root_is_reused_without_faults(policy: str) -> None:
    assert blocks(policy) == RUN1 + [(0, T_PUT, T_PUT + 1000, "root_alloc", 1)]
    res = run(workload(), policy=policy, cost=COST)
    roots = res.to_arrow("roots").to_pylist()
    assert len(roots) == 1 and roots[0]["zapped_by"] == "vmm"  # only the VM's teardown zaps
    counts = [(h["refcount"], h["holder"]) for h in res.to_arrow("refcounts").to_pylist()]
    assert counts == [
        (1, "vcpu0"), (2, "tdp_mmu"), (3, "vcpu1"),  # alloc (refcount 2), reuse
        (2, "vcpu1"), (1, "vcpu0"),  # both unload: the TDP MMU's reference keeps it
        (2, "vcpu0"),  # reload: same role (no CR0.WP in the role), same root
        (3, "iter:vmm"), (2, "iter:vmm"),  # kvm_tdp_mmu_zap_all at exit zaps it
        (1, "vcpu0"),  # vCPU destroy
        *UNINIT[policy],
    ]


UNINIT = {
    "6.4": [(1, "zap_work"), (0, "zap_work")],  # gift to the work item, put after its zap
    "6.6": [(2, "iter:vmm"), (1, "tdp_mmu"), (0, "iter:vmm")],  # inline, iterator ref
}


def test_6_9_allocates_roots_under_the_read_lock() -> None:
    # 6.9: root alloc/free take mmu_lock for read, so the vCPUs never queue behind each other.
    assert blocks("6.9") == [
        (0, 0, 1000, "root_alloc", 1),
        (1, 0, 1000, "root_alloc", 1),
        (0, 1000, 1000 + FAULT_GIB, "fault", 262_144),
        (1, 1000, 1000 + FAULT_GIB, "fault", 262_144),
        (0, 1000 + FAULT_GIB, 1100 + FAULT_GIB, "root_put", 1),
        (1, 1000 + FAULT_GIB, 1100 + FAULT_GIB, "root_put", 1),
        (0, 1100 + FAULT_GIB, 2100 + FAULT_GIB, "root_alloc", 1),  # reuse, no faults
    ]
