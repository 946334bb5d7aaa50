"""Replaying the hand-written TDP-era traces (sample_traces/handwritten/README.md): every
expectation below is derived from the kernel's rules (kernel-semantics.md §1 and §3.3),
not read back from the implementation."""

from __future__ import annotations

import pytest
from conftest import SAMPLES

from replay import replay

HW = SAMPLES / "handwritten"
T = 100_000_000_000  # 100 s in ns
US = 1000
VMM, V0, V1, KW = "qemu-system-x86-5000", "CPU 0/KVM-5001", "CPU 1/KVM-5002", "kworker/u16:3-300"


def _blocks(result, run: str = "observed") -> list[tuple[int, int, int, str]]:  # type: ignore[no-untyped-def]
    t = result.runs[run]["blocks"].to_pylist()
    return sorted((r["vcpu"], r["start"], r["end"], str(r["cause"])) for r in t)


def _roots(result, run: str = "observed") -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    keep = ("created", "created_by", "invalidated", "zap_start", "zap_end", "zapped_by")
    return [{k: r[k] for k in keep} for r in result.runs[run]["roots"].to_pylist()]


# Two vCPUs, one fault each: kvm_exit (EPT violation) -> kvm_entry, the fault's events inside.
FAULTS = [(0, T + 100 * US, T + 104 * US, "fault"), (1, T + 200 * US, T + 204 * US, "fault")]
# After kvm_mmu_zap_all_fast both vCPUs exit (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS); vCPU 0
# allocates the new root before its entry (root_alloc), vCPU 1 reuses it (nothing traced).
RELOADS = [(0, T + 1001 * US, T + 1012 * US, "root_alloc"), (1, T + 1001 * US, T + 1015 * US, "exit")]


@pytest.mark.parametrize(("name", "era", "zapper", "zap"), [
    # 6.6 (0df9dab891ff): the invalidating task zaps the invalidated roots itself, inline
    ("tdp_6.6_inline_zap.txt", "6.6", VMM, (T + 1002 * US, T + 1004 * US)),
    # 5.18 (22b94c4b63eb): one work item per root on the per-VM workqueue, run by a kworker
    ("tdp_5.18_worker_zap.txt", "5.18", KW, (T + 1004 * US, T + 1006 * US)),
])
def test_fast_zap_eras(name: str, era: str, zapper: str, zap: tuple[int, int]) -> None:
    result = replay(HW / name, policy=[era])
    assert result.derived.backend == "tdp" and result.derived.era == era
    assert result.threads.vms == [5000]  # the kworker serves the VM, it is not one
    assert {v.pid: (v.vcpu_id, v.confidence) for v in result.threads.vcpus.values()} == {
        5001: (0, "high"), 5002: (1, "high")}  # vcpu_id from kvm_entry/kvm_exit
    assert _blocks(result) == sorted(FAULTS + RELOADS)
    assert _roots(result) == [
        {"created": T + 10 * US, "created_by": V0, "invalidated": T + 1000 * US,
         "zap_start": zap[0], "zap_end": zap[1], "zapped_by": zapper},
        {"created": T + 1010 * US, "created_by": V0, "invalidated": None, "zap_start": None,
         "zap_end": None, "zapped_by": None}]
    ops = [(r["op"], r["actor"], r["at"]) for r in result.derived.evidence.to_pylist()]
    assert ops == [
        ("LoadRoot", "vcpu0", T + 10 * US),          # get_page new
        ("LoadRoot", "vcpu1", T + 15 * US),          # first entry, silent reuse
        ("Populate", "vcpu0", T + 102 * US),         # spte_changed to present (set_spte repeats it)
        ("Populate", "vcpu1", T + 202 * US),
        ("MemslotDelete", VMM, T + 1000 * US),       # kvm_mmu_zap_all_fast
        ("LoadRoot", "vcpu0", T + 1010 * US),        # get_page new after the fast zap
        ("LoadRoot", "vcpu1", T + 1015 * US)]        # first entry after the zap: reuse
    # the era's own policy zaps the invalidated root with the same kind of thread
    replayed = _roots(result, era)
    assert replayed[0]["invalidated"] == T + 1000 * US
    kind = replayed[0]["zapped_by"]
    assert (kind == VMM) if era == "6.6" else str(kind).startswith("kworker")


def test_sync_era_last_put_zaps_on_the_vcpu() -> None:
    """<= 5.17: the vCPU dropping the last reference (KVM_SET_SREGS -> unload) zaps the
    whole root inline, inside its exit: its longest block is a zap, observed and replayed."""
    result = replay(HW / "tdp_5.17_sync_put.txt", policy=["sync", "6.6"])
    assert result.derived.era == "sync"
    assert _blocks(result) == [(0, T + 100 * US, T + 104 * US, "fault"),
                               (0, T + 200 * US, T + 204 * US, "fault"),
                               (0, T + 1000 * US, T + 1112 * US, "zap")]
    assert _roots(result)[0] == {"created": T + 10 * US, "created_by": V0, "invalidated": None,
                                 "zap_start": T + 1100 * US, "zap_end": T + 1102 * US,
                                 "zapped_by": V0}
    ops = [r["op"] for r in result.derived.evidence.to_pylist()]
    assert ops == ["LoadRoot", "Populate", "Populate", "Unload", "LoadRoot"]
    summary = {(r["run"], r["vcpu"]): r["max_cause"] for r in result.summary().to_pylist()}
    assert summary[("observed", 0)] == "zap" and summary[("sync", 0)] == "zap"
    # from 6.4 roots are preserved: the same reset zaps nothing on the vCPU
    assert summary[("6.6", 0)] != "zap"
    assert _roots(result, "sync")[0]["zapped_by"] == "vcpu0"
    fidelity = result.fidelity()
    assert fidelity is not None
    row = fidelity.to_pylist()[0]
    assert row["era"] == "sync" and row["same_cause"] and row["observed_cause"] == "zap"
    assert result.to_json_dict()["fidelity"]["vcpus"]["0"]["same_cause"] is True


@pytest.mark.parametrize("name", sorted(p.name for p in HW.glob("*.txt")))
def test_handwritten_traces_parse_without_skips(name: str) -> None:
    from parsers import read_trace

    trace = read_trace(HW / name)
    assert set(trace.metadata.skipped) <= {"header"}
    assert not trace.metadata.warnings


def test_calibration_from_a_trace(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """fault_ns is the median kvm_page_fault -> kvm_entry; per-SPTE zap cost the pace of zap
    bursts (replay/calibration.py). Built from the 6.6 trace by repeating its fault lines."""
    from parsers import read_trace
    from replay.calibration import MIN_SAMPLES, calibrate
    from replay.cost import DEFAULT_COST

    lines = (HW / "tdp_6.6_inline_zap.txt").read_text().splitlines()
    header, body = lines[:12], lines[12:]
    head = "       CPU 0/KVM-5001    (   5000) [000] .....   "
    extra = []
    for k in range(MIN_SAMPLES):  # vCPU 0 faults again, 3 us each, 1 ms apart
        us = 101_000_000 + k * 1000
        extra += [f"{head}{us // 10**6:3d}.{us % 10**6:06d}: kvm_page_fault: vcpu 0 rip 0xfff0 "
                  f"address 0x0000000000005000 error_code 0x181",
                  f"{head}{us // 10**6:3d}.{(us + 3) % 10**6:06d}: kvm_entry: vcpu 0, rip 0xfff0 "
                  f"intr_info 0x00000000 error_code 0x00000000"]
    path = tmp_path / "t.txt"
    path.write_text("\n".join(header + body + extra) + "\n")
    trace = read_trace(path)
    assert not set(trace.metadata.skipped) - {"header"}, trace.metadata.samples
    cal = calibrate(trace, DEFAULT_COST)
    assert cal.cost.fault_ns == 3000.0  # 8 added faults and the trace's 2, all 3 us
    assert "fault_ns" in cal.evidence and "leaf_exclusive_ns" not in cal.evidence  # 2 zaps only
    result = replay(path, policy=["6.6"], calibrate=True)
    assert result.cost.fault_ns == 3000.0
    assert any(w.startswith("calibrated fault_ns") for w in result.warnings)
