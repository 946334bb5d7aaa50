"""The replay's cause attribution from kernel stack frames, on the real recording of
``sample_traces/stacks_full.txt.gz`` (3 VMs: orderly exit, ``_exit()`` with vCPUs inside
KVM_RUN, VM fd closed first; memslot moves and deletes in each)."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import SAMPLES

from parsers import read_trace
from parsers.trace import Trace
from replay.infer.stack_causes import cause_of, stack_causes
from replay.infer.threads import identify_threads
from replay.infer.workload import derive_workloads
from replay.trace_replay import replay

FULL = SAMPLES / "stacks_full.txt.gz"


@pytest.fixture(scope="module")
def full() -> Trace:
    return read_trace(FULL)


def _steps(evidence: pd.DataFrame, op: str) -> pd.DataFrame:
    return evidence[evidence["op"] == op].reset_index(drop=True)


def test_every_fast_zap_of_the_recording_is_under_kvm_set_memslot(full: Trace) -> None:
    causes = stack_causes(full, ["kvm_mmu_zap_all_fast"])
    fast = full.table("kvm_mmu_zap_all_fast").column("seq").to_pylist()
    assert len(fast) == 9
    assert {causes[s].cause for s in fast} == {"memslot"}
    assert {causes[s].frame for s in fast} == {"kvm_set_memslot"}


def test_compose_recorded_trace_to_replay_evidence() -> None:
    """Recorded text → read_trace (through the replay's own loader) → derived workload: the
    fast zaps are memslot changes and each VM's teardown is found, said so in the evidence,
    including VM 27763's, zapped by its exiting vCPU thread (no frame-less rule sees it)."""
    result = replay(FULL, policy=["sync"])
    ev = result.derived.evidence.to_pandas()
    fast = _steps(ev, "MemslotDelete")
    assert len(fast) == 9
    assert fast["evidence"].str.contains(r"under kvm_set_memslot \(kernel stack\): a memslot "
                                         r"change").all()
    assert (fast["confidence"] == "high").all()
    down = _steps(ev, "VmDestroy").set_index("vm")
    assert sorted(down.index) == [27762, 27763, 27764]
    assert down["evidence"].str.contains("under kvm_mmu_notifier_release").all()
    assert down.loc[27763, "actor"] == "CPU 0/KVM-27766"
    assert down.loc[27763, "ts"] == 20448633423000
    assert (down["confidence"] == "high").all()
    assert {"step", "ts", "seq"} <= set(ev.columns)


def test_without_frames_the_same_trace_falls_back_to_the_event_rules(full: Trace) -> None:
    bare = Trace(full.events, {n: full.table(n) for n in full.names}, full.metadata)
    ev = derive_workloads(bare, identify_threads(bare)).evidence.to_pandas()
    assert _steps(ev, "MemslotDelete")["evidence"].str.contains("not told apart").all()
    assert 27763 not in set(_steps(ev, "VmDestroy")["vm"])


def test_trace_dat_excerpt_gives_the_same_causes_as_its_text() -> None:
    text = stack_causes(read_trace(SAMPLES / "stacks_teardown.txt"))
    dat = stack_causes(read_trace(SAMPLES / "stacks_teardown.dat"))
    assert sorted(c.cause for c in text.values()) == sorted(c.cause for c in dat.values())
    assert {c.cause for c in text.values()} >= {"vm_teardown", "memslot", "obsolete_roots"}


def test_first_matching_rule_wins() -> None:
    assert cause_of(["kvm_mmu_zap_all_fast", "set_nx_huge_pages", "param_attr_store"]) == (
        "nx_huge_pages", "set_nx_huge_pages")
    assert cause_of(["kvm_mmu_free_roots+0x10/0x80", "kvm_mmu_free_obsolete_roots"]) == (
        "obsolete_roots", "kvm_mmu_free_obsolete_roots")
