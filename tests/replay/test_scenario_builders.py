"""Every scenario runs under every policy without invariant violations, and shows its era."""

from __future__ import annotations

import pytest

from replay import ReplayConfigError, build_scenario, policy_names, run
from replay.model.ids import GIB, PAGE_2M
from replay.model.workload import MemslotDelete, Populate, SetSregs

SMALL = {
    "max-guest-memory": {"memory": 8 * GIB, "vcpus": 2},
    "memslot-stress": {"vcpus": 2},
    "dirty-log-perf": {"vcpus": 2},
    "set-memory-region": {},
}


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("policy", policy_names())
def test_scenario_runs_clean(name: str, policy: str) -> None:
    res = run(build_scenario(name, **SMALL[name]), policy=policy)
    assert res.anomalies == 0
    roots = res.to_arrow("roots").to_pylist()
    assert roots and all(r["freed"] is not None for r in roots)


def test_max_guest_memory_phases() -> None:
    w = build_scenario("max-guest-memory", memory=16 * GIB, vcpus=4, page_size=PAGE_2M)
    pops = [op for op in w.ops if isinstance(op, Populate)]
    assert len(pops) == 8 and {p.size for p in pops} == {4 * GIB}
    assert pops[0].start == 4 * GIB and pops[0].page == PAGE_2M  # slots start at GPA 4 GiB
    assert sum(isinstance(op, SetSregs) for op in w.ops) == 4
    deletes = [op for op in w.ops if isinstance(op, MemslotDelete)]
    assert [d.start for d in deletes] == [4 * GIB, 8 * GIB, 12 * GIB, 16 * GIB]  # even slots


def test_memslot_stress_fast_zaps_while_vcpus_fault() -> None:
    w = build_scenario("memslot-stress", vcpus=2)
    sync = run(w, policy="sync").to_arrow("roots")
    assert sync.num_rows >= 2  # each delete invalidates the root the vCPUs are faulting into


@pytest.mark.parametrize(
    "params",
    [{"memory": GIB, "slot_size": 3 << 20}, {"vcpus": 0}, {"page_size": 8192},
     {"memory": GIB, "slot_size": 2 * GIB}],
)
def test_bad_parameters_raise(params: dict[str, int]) -> None:
    with pytest.raises(ReplayConfigError):
        build_scenario("max-guest-memory", **params)
