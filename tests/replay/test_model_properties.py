"""Hypothesis properties of the model over random lock-step workloads (kernel-semantics §5)."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replay import (
    CostModel,
    Recorder,
    ReplayInvariantError,
    WorkqueueZap,
    default_recorders,
    policy_names,
    run,
)
from replay.model.ids import GIB, PAGE_2M, PAGE_4K
from replay.model.population import counts_of
from replay.model.workload import (
    LoadRoot,
    MemslotDelete,
    Op,
    Populate,
    Run,
    SetNxHugePages,
    SetSregs,
    Unload,
    VmDestroy,
    Workload,
    WriteProtect,
    rendezvous,
)

COST = CostModel(rcu_grace_ns=10_000, host_cpus=2)
MIB2 = 2 << 20

vcpu_step = st.one_of(
    st.builds(lambda s, n, p: ("populate", s, n, p), st.integers(0, 7), st.integers(1, 4),
              st.sampled_from([PAGE_4K, PAGE_2M])),
    st.builds(lambda wp: ("sregs", wp), st.booleans()),
    st.just(("unload",)),
    st.just(("load",)),
    st.builds(lambda d: ("run", d), st.integers(1, 50_000)),
)
vmm_step = st.sampled_from(["delete", "nx", "wp"])
phase = st.one_of(
    st.lists(vcpu_step, min_size=1, max_size=3).map(lambda s: ("vcpus", s)),
    vmm_step.map(lambda s: ("vmm", s)),
)


def build(nvcpu: int, phases: list[tuple[str, object]]) -> Workload:
    """Phases separated by rendezvous: a vCPU phase (each vCPU does the steps, on its own
    share) or a VMM phase (one fast zap or write-protect while the vCPUs wait)."""
    actors = [f"vcpu{i}" for i in range(nvcpu)] + ["vmm"]
    ops: list[Op] = []
    for k, (kind, steps) in enumerate(phases):
        if kind == "vcpus":
            assert isinstance(steps, list)
            for v in range(nvcpu):
                for step in steps:
                    ops.append(_vcpu_op(v, step))
        elif steps == "delete":
            ops.append(MemslotDelete(actor="vmm", start=0, size=MIB2))
        elif steps == "nx":
            ops.append(SetNxHugePages(actor="vmm"))
        else:
            ops.append(WriteProtect(actor="vmm", start=0, size=GIB))
        ops += rendezvous(f"p{k}", actors)
    ops.append(VmDestroy(actor="vmm"))
    return Workload.of(ops)


def _vcpu_op(v: int, step: tuple[object, ...]) -> Op:
    kind = step[0]
    if kind == "populate":
        start, n, page = step[1], step[2], step[3]
        assert isinstance(start, int) and isinstance(n, int) and isinstance(page, int)
        return Populate(vcpu=v, start=(v * 8 + start) * MIB2, size=n * MIB2, page=page)
    if kind == "sregs":
        return SetSregs(vcpu=v, cr0_wp=bool(step[1]))
    if kind == "unload":
        return Unload(vcpu=v)
    if kind == "load":
        return LoadRoot(vcpu=v)
    duration = step[1]
    assert isinstance(duration, int)
    return Run(vcpu=v, duration=duration)


workloads = st.builds(build, st.integers(1, 3), st.lists(phase, min_size=1, max_size=6))
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(workloads)
def test_every_policy_keeps_the_invariants(w: Workload) -> None:
    for name in policy_names():
        installs = _Installs()
        # raises ReplayInvariantError on any violation
        res = run(w, policy=name, cost=COST, recorders=[*default_recorders(), installs])
        hist = res.to_arrow("refcounts").to_pylist()
        assert all(h["refcount"] >= 0 for h in hist)
        roots = res.to_arrow("roots").to_pylist()
        assert all(r["freed"] is not None for r in roots), "every root freed"
        assert all(r["freed"] >= r["unlinked"] for r in roots)
        zeros = Counter(h["root"] for h in hist if h["refcount"] == 0)
        revived = Counter(h["root"] for h in hist if h["reason"].startswith("resurrect"))
        for r in roots:  # 0 once, plus once per era B/C resurrection of a defunct root
            assert revived[r["root"]] <= (1 if name in ("async", "5.18") else 0)
            assert zeros[r["root"]] == 1 + revived[r["root"]]
        b = res.to_arrow("blocks").to_pydict()
        assert all(e >= s for s, e in zip(b["start"], b["end"], strict=True))
        assert all(x >= 0 for x in b["each_ns"])
        # Every SPTE a vCPU installed is zapped exactly once, whatever the era.
        faults = sum(c for c, cause in zip(b["n_blocks"], b["cause"], strict=True)
                     if cause == "fault")
        assert installs.leaves <= faults  # concurrent faults on one page: one is spurious
        assert sum(r["leaves_zapped"] for r in roots) == installs.leaves


class _Installs(Recorder):
    """Counts the leaves the vCPUs installed (the ``populated`` hook)."""

    name = "installs"

    def __init__(self) -> None:
        self.leaves = 0

    def populated(self, start, end, actor, root, extents):  # type: ignore[no-untyped-def]
        self.leaves += counts_of(extents).leaves

    def table(self) -> pa.Table:
        return pa.table({"leaves": [self.leaves]})


def zapped_roots(w: Workload, policy: str) -> list[tuple[int, int]]:
    roots = run(w, policy=policy, cost=COST).to_arrow("roots").to_pylist()
    return sorted((r["role"] & ~(1 << 11), r["leaves_zapped"]) for r in roots)


@SETTINGS
@given(workloads)
def test_policies_of_one_root_lifetime_zap_the_same_roots(w: Workload) -> None:
    # sync / async / 5.18 share the root lifetime (refcount 1, CR0.WP in the role): same roots,
    # same SPTEs zapped; 6.4 / 6.6 / 6.9 share theirs (preserved roots).
    assert zapped_roots(w, "sync") == zapped_roots(w, "async") == zapped_roots(w, "5.18")
    assert zapped_roots(w, "6.4") == zapped_roots(w, "6.6") == zapped_roots(w, "6.9")


class _NoFlush(WorkqueueZap):
    """A deliberately broken 5.18: the fast zap does not wait for its workers."""

    def fast_zap(self, rp, actor):  # type: ignore[no-untyped-def]
        def section() -> None:
            self.invalidate_all(rp, actor)
            rp.request_all()

        yield from rp.write_section(actor, section)


def _populated_then_deleted() -> Workload:
    ops: list[Op] = [Populate(vcpu=0, start=0, size=GIB), *rendezvous("a", ["vcpu0", "vmm"]),
                     MemslotDelete(actor="vmm", start=0, size=MIB2), VmDestroy(actor="vmm")]
    return Workload.of(ops)


def test_a_fast_zap_that_returns_early_is_caught() -> None:
    with pytest.raises(ReplayInvariantError) as err:
        run(_populated_then_deleted(), policy=_NoFlush(), cost=COST)
    e = err.value
    assert (e.invariant, e.root, e.holder) == (7, 0, "vmm")
    assert e.ts > 0 and "fast zap returned" in str(e)


def test_violations_can_be_recorded_instead() -> None:
    res = run(_populated_then_deleted(), policy=_NoFlush(), cost=COST, on_violation="record")
    rows = res.to_arrow("anomalies").to_pylist()
    assert res.anomalies == len(rows) == 1
    assert (rows[0]["invariant"], rows[0]["root"], rows[0]["holder"]) == (7, 0, "vmm")


def build_racing(
    nvcpu: int, steps: list[tuple[object, ...]], zaps: list[tuple[int, str]]
) -> Workload:
    """vCPUs run their steps while the VMM fast-zaps / write-protects at fixed times."""
    ops: list[Op] = [_vcpu_op(v, s) for v in range(nvcpu) for s in steps]
    t = 0
    for delay, kind in zaps:
        t += delay
        if kind == "delete":
            ops.append(MemslotDelete(actor="vmm", start=0, size=MIB2, at=t))
        elif kind == "nx":
            ops.append(SetNxHugePages(actor="vmm", at=t))
        else:
            ops.append(WriteProtect(actor="vmm", start=0, size=GIB, at=t))
    ops.append(VmDestroy(actor="vmm", at=t))
    return Workload.of(ops)


racing = st.builds(
    build_racing, st.integers(1, 3), st.lists(vcpu_step, min_size=1, max_size=6),
    st.lists(st.tuples(st.integers(0, 3_000_000), vmm_step), max_size=4),
)


@SETTINGS
@given(racing)
def test_invalidation_racing_with_faults_keeps_the_invariants(w: Workload) -> None:
    for name in policy_names():
        installs = _Installs()
        res = run(w, policy=name, cost=COST, recorders=[*default_recorders(), installs])
        roots = res.to_arrow("roots").to_pylist()
        assert all(r["freed"] is not None for r in roots)
        assert sum(r["leaves_zapped"] for r in roots) == installs.leaves
