"""The engine's fast path (uncontended faults run inline, direct wake-ups) gives exactly the
plain engine's results: every table, the emitted kernel text, the end time and the step count.

Compared on every scenario x policy at small sizes, on random scattered faults of several
vCPUs (with fast zaps, resets and runs among them, so the two paths alternate), on the
hypothesis workloads of the closed loop, and on the workload derived from a trace of
scattered faults (the TDP benchmark's shape). Each comparison also checks that the fast path
was taken at all where it can be (a test that cannot fail is no test).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import read_trace
from replay.errors import WorkloadError
from replay.infer.threads import identify_threads
from replay.infer.workload import derive_workloads
from replay.model import actors
from replay.model.ids import GIB, PAGE_1G, PAGE_2M, PAGE_4K, Nanos, RootId, VcpuId
from replay.model.policies import policy_names
from replay.model.records import BlockInterval, fault_run
from replay.model.runner import default_recorders, run
from replay.model.workload import (
    MemslotDelete,
    Op,
    Populate,
    Run,
    SetSregs,
    Sleep,
    VmDestroy,
    Workload,
    populates,
)
from replay.render.kernel_text import KernelTextTrace
from tests.replay.test_closed_loop import SCENARIOS, small
from tests.replay.test_closed_loop_random import workloads

POLICIES = policy_names()


class _Taken:
    """Counts the operations the fast path ran (wraps ``_Driver._fast_populate``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        plain = actors._Driver._fast_populate

        def counted(driver: Any, index: int, op: Populate, due: bool) -> bool:
            took = plain(driver, index, op, due)
            self.count += took
            return took

        monkeypatch.setattr(actors._Driver, "_fast_populate", counted)


def _outputs(workload: Workload, policy: str, fast: bool, tmp: Path) -> dict[str, Any]:
    emitter = KernelTextTrace(policy=policy, comm="fast_path", layout="ns")
    res = run(workload, policy=policy, recorders=[*default_recorders(), emitter],
              on_violation="record", fast=fast)
    path = emitter.write(tmp / f"{policy}-{fast}.txt", force=True)
    out: dict[str, Any] = {f"table {k}": v for k, v in res.tables.items()}
    out.update(end=res.end_ns, steps=res.steps, anomalies=res.anomalies,
               text=path.read_bytes())
    return out


def assert_same(workload: Workload, policy: str, tmp: Path) -> None:
    fast, plain = (_outputs(workload, policy, f, tmp) for f in (True, False))
    assert fast.keys() == plain.keys()
    for key in plain:
        if isinstance(plain[key], pa.Table):
            assert fast[key].equals(plain[key]), f"{policy}: {key} differs"
        else:
            assert fast[key] == plain[key], f"{policy}: {key} differs"


@pytest.mark.parametrize("page", [PAGE_4K, PAGE_2M])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenarios_every_policy(tmp_path: Path, scenario: str, page: int) -> None:
    workload = small(scenario, page)
    for policy in POLICIES:
        assert_same(workload, policy, tmp_path)


def scattered(seed: int, vcpus: int = 3, faults: int = 400) -> Workload:
    """Random 4K (and some 2M) faults of ``vcpus`` vCPUs at random times, a few overlapping
    pages, with runs, a CR0.WP reset and a memslot deletion among them."""
    rng = random.Random(seed)
    ops: list[Op] = []
    at = [0] * vcpus
    for i in range(faults):
        v = rng.randrange(vcpus)
        at[v] += rng.choice([0, 500, 1_000, 2_000, 3_000, 7_000, 20_000])
        if rng.random() < 0.03:
            ops.append(Run(vcpu=v, duration=rng.randrange(1, 10) * 1_000, at=at[v]))
        elif rng.random() < 0.02:
            ops.append(SetSregs(vcpu=v, cr0_wp=bool(i & 1), at=at[v]))
        elif rng.random() < 0.1:
            ops.append(Populate(vcpu=v, start=GIB + rng.randrange(16) * PAGE_2M, size=PAGE_2M,
                                page=PAGE_2M, at=at[v]))
        else:
            n = rng.choice([1, 1, 1, 2, 5])
            ops.append(Populate(vcpu=v, start=rng.randrange(2048) * PAGE_4K, size=n * PAGE_4K,
                                at=at[v]))
    mid = sorted(at)[vcpus // 2] // 2
    ops += [Sleep(actor="vmm", duration=mid), MemslotDelete(actor="vmm", start=0, size=GIB),
            VmDestroy(actor="vmm")]
    return Workload.of(ops, name=f"scattered-{seed}")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_scattered_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 seed: int) -> None:
    workload = scattered(seed)
    taken = _Taken(monkeypatch)
    for policy in POLICIES:
        assert_same(workload, policy, tmp_path)
    assert taken.count > 20 * len(POLICIES)  # and most are not: both paths alternate


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(workload=workloads(), policy=st.sampled_from(POLICIES))
def test_closed_loop_workloads(tmp_path_factory: pytest.TempPathFactory, workload: Workload,
                               policy: str) -> None:
    assert_same(workload, policy, tmp_path_factory.mktemp("fast"))


def test_derived_scattered_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TDP benchmark's trace (2 vCPUs, random distinct 4K pages), derived: nearly every
    fault runs inline, with the same results as the plain engine."""
    import importlib.util

    here = Path(__file__).resolve().parents[2] / "benchmarks" / "replay.py"
    spec = importlib.util.spec_from_file_location("bench_replay", here)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "tdp.txt"
    bench.write_tdp_trace(path, 600, seed=5)
    trace = read_trace(path)
    derived = derive_workloads(trace, identify_threads(trace))
    taken = _Taken(monkeypatch)
    for workload in derived.workloads.values():
        for policy in POLICIES:
            assert_same(workload, policy, tmp_path)
    assert taken.count >= 590 * len(POLICIES)


def test_populates_builds_what_the_constructor_builds() -> None:
    rows = [(0, 0, PAGE_4K, PAGE_4K, 5), (3, GIB, 3 * PAGE_2M, PAGE_2M, 9),
            (1, 2 * GIB, PAGE_1G, PAGE_1G, 9)]
    built = populates(*(list(col) for col in zip(*rows, strict=True)))
    want = [Populate(vcpu=v, start=s, size=n, page=p, at=a) for v, s, n, p, a in rows]
    assert built == want
    assert [(op.actor, hash(op), repr(op)) for op in built] == \
        [(op.actor, hash(op), repr(op)) for op in want]
    for bad in ((0, 1, PAGE_4K, PAGE_4K, 0), (0, 0, PAGE_4K, 8192, 0), (-1, 0, PAGE_4K, PAGE_4K, 0),
                (0, 0, 0, PAGE_4K, 0)):
        with pytest.raises(WorkloadError):
            populates(*([x] for x in bad))


def test_fault_run_is_the_constructors_interval() -> None:
    got = fault_run(VcpuId(2), Nanos(10), Nanos(4010), 2, 2000, RootId(7))
    want = BlockInterval(vcpu=VcpuId(2), start=Nanos(10), end=Nanos(4010), cause="fault",
                         count=2, each_ns=2000, root=RootId(7))
    assert got == want and hash(got) == hash(want) and repr(got) == repr(want)
