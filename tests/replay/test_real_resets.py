"""Resets from control-register and EFER writes, inline zap bursts and calibration
(replay/infer/resets.py, replay/infer/calibration.py), on a real VMX TDP-MMU fragment quoted
from LKML (sample_traces/quoted/) and a hand-written SVM fixture (sample_traces/handwritten/),
then on every real and bundled recording."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from parsers import read_trace
from replay import replay
from replay.infer.calibration import calibrate
from replay.infer.resets import PRETRACE_AT, control_writes, plan_resets
from replay.infer.threads import identify_threads
from replay.infer.workload import derive_workloads
from replay.model.cost import DEFAULT_COST
from replay.model.workload import LoadRoot, Populate, SetSregs, Unload

ROOT = Path(__file__).resolve().parents[2]
QUOTED = ROOT / "sample_traces" / "quoted" / "lkml_cr0wp_vmx_tdp.txt"
SVM = ROOT / "sample_traces" / "handwritten" / "tdp_5.15_svm_efer_inline.txt"
REAL = ROOT.parent / "shared" / "traces" / "real"
#: Per-leaf cost only: the zap of a root is then exactly leaves x this.
LEAF_ONLY = dataclasses.replace(DEFAULT_COST, leaf_exclusive_ns=5000.0, leaf_shared_ns=5000.0,
                                tlb_flush_ns=0.0, scan_entry_ns=0.0, page_table_ns=0.0)
US = 1000


def _ops(path: Path) -> list[tuple[str, object]]:
    t = read_trace(path)
    d = derive_workloads(t, identify_threads(t))
    return [(type(op).__name__, op) for w in d.workloads.values() for op in w.ops]


def _blocks(result: object, run: str, vcpu: int) -> list[dict[str, object]]:
    rows = result.block_intervals.to_pylist()  # type: ignore[attr-defined]
    return [r for r in rows if r["run"] == run and r["vcpu"] == vcpu]


def test_control_writes_parse_text_and_raw() -> None:
    """Kernel text (``cr_write 0 = 0x..``, ``msr_write c0000080 = 0x..``) and the raw
    ``name=value`` form of trace.dat / report -R both parse; #GP writes and other MSRs don't."""
    from replay.infer.resets import _parse

    assert _parse("kvm_cr", "cr_write 0 = 0x80050033") == ("cr0", 0x80050033, True)
    assert _parse("kvm_cr", "rw=1 cr=4 val=0x3208b0") == ("cr4", 0x3208B0, True)
    assert _parse("kvm_cr", "cr_write 3 = 0x1000") is None
    assert _parse("kvm_msr", "msr_read c0000080 = 0xd01") == ("efer", 0xD01, False)
    assert _parse("kvm_msr", "msr_write c0000080 = 0xd01 (#GP)") is None
    assert _parse("kvm_msr", "write=1 ecx=c0000080 data=0xd01 exception=0") == \
        ("efer", 0xD01, True)  # trace.dat / report -R: each field in its printk radix
    assert _parse("kvm_cr", "rw=1 cr=0 val=0x80050033") == ("cr0", 0x80050033, True)
    assert _parse("kvm_msr", "msr_write zz = 0x1") is None  # damaged: nothing, no traceback
    assert _parse("kvm_msr", "msr_write c0000103 = 0x1") is None
    writes = control_writes(read_trace(QUOTED))
    assert [(w.reg, w.write) for w in writes] == [("cr0", True), ("cr4", True), ("efer", False),
                                                  ("efer", True), ("cr4", True)]


def test_quoted_cr0_write_then_inline_zap_is_a_reset() -> None:
    """LKML fragment: vCPU 1 writes CR0 (WP on), its own thread zaps its root (10 leaves:
    6 x 4K, 4 x 2M) and re-enters 95 us after the exit on vCPU 0's root. Derived: SetSregs
    at the write (the zap-only Unload it replaces is gone), CR0.WP off before the trace
    (vCPU 0 held its own root), the 10 leaves mapped before the trace, the reload at the
    entry; the second CR4 write changes SMEP/SMAP (a reset, no zap), the first CR4 write and
    the unchanged EFER write are none."""
    ops = _ops(QUOTED)
    sets = [op for name, op in ops if name == "SetSregs"]
    assert [(s.vcpu, s.cr0_wp, s.at) for s in sets] == [  # type: ignore[attr-defined]
        (1, False, PRETRACE_AT), (1, True, 1404389373 * US)]
    unloads = [op for name, op in ops if name == "Unload"]
    assert [(u.vcpu, u.at) for u in unloads] == [(1, 1404389537 * US)]  # type: ignore[attr-defined]
    pre = [op for name, op in ops if name == "Populate"]
    assert sum(p.size // p.page for p in pre) == 10  # type: ignore[attr-defined]
    assert sorted({p.page for p in pre}) == [4096, 2 << 20]  # type: ignore[attr-defined]
    loads = sorted(op.at for name, op in ops if name == "LoadRoot" and op.vcpu == 1)  # type: ignore[attr-defined]
    assert 1404389461 * US in loads and 1404389562 * US in loads


@pytest.mark.parametrize("policy", ["sync", "async", "5.18", "6.4", "6.6", "6.9"])
def test_quoted_reset_replays_per_era(policy: str) -> None:
    """Under the detected era (sync) vCPU 1's longest block is the inline zap of the 10
    leaves the burst shows, exactly leaves x per-leaf cost; from the seed patch (async) and
    5.18 a worker zaps the root, the vCPU only puts it; from 6.4 the root is not zapped."""
    r = replay(QUOTED, policy=[policy], cost=LEAF_ONLY)
    assert r.derived.era == "sync"
    zaps = [b for b in _blocks(r, policy, 1) if b["cause"] == "zap"]
    roots = [x for x in r.roots.to_pylist() if x["run"] == policy and x["created_by"] == "vcpu1"]
    assert all(b["end"] > 1404389366 * US for b in _blocks(r, policy, 1))  # pre-trace: dropped
    assert not [b for b in _blocks(r, policy, 1) if b["cause"] == "fault"]
    if policy == "sync":
        assert [b["each_ns"] for b in zaps] == [10 * 5000]
        assert zaps[0]["start"] < 1404389384 * US  # starts at the write, not after pre-trace faults
        assert max(_blocks(r, policy, 1), key=lambda b: b["each_ns"])["cause"] == "zap"
        assert roots[0]["zapped_by"] == "vcpu1" and roots[0]["leaves_zapped"] == 10
    else:
        assert zaps == []
    if policy in ("async", "5.18"):
        assert roots[0]["zapped_by"].startswith("kworker") and roots[0]["leaves_zapped"] == 10
    if policy in ("6.4", "6.6", "6.9"):
        assert roots[0]["zap_start"] is None


def test_quoted_calibration_measures_the_short_burst() -> None:
    """One burst of zap events from 1404.389384 to the last leaf at .389439; each of its 10
    leaves' share is the time since the thread's previous zap event (3, 2, 2, 13, 3 us for
    gfn 99..9e, then 2, 3, 4, 2, 3 us for gfn 1000..2c00): 37 us / 10 = 3.7 us per leaf.
    The table teardowns between them (level 4, 3, 2 entries and their prepare_zap_page)
    are the cost model's table costs, not the leaves'. No EPT violation in the fragment:
    fault_ns keeps its default."""
    cal = calibrate(read_trace(QUOTED), DEFAULT_COST)
    assert cal.cost.leaf_exclusive_ns == 3700.0
    assert "of 1 SPTE zap bursts (10 leaves zapped)" in cal.evidence["leaf_exclusive_ns"]
    assert "fault_ns" not in cal.evidence and cal.cost.fault_ns == DEFAULT_COST.fault_ns
    r = replay(QUOTED, policy=["sync"], calibrate=True)
    zap = max(b["each_ns"] for b in _blocks(r, "sync", 1) if b["cause"] == "zap")
    assert zap >= 10 * 3700  # the burst's leaves x the measured pace (+ tables, TLB flushes)


def test_svm_efer_write_reset_and_fault_cost() -> None:
    """Hand-written SVM fixture: three NPF faults (exit -> entry 3 us), then an EFER write
    turning NX on (the previous msr_read showed it off) and the vCPU's inline zap of its 5
    leaves, 2 of them mapped before the trace; a CR0 write with no evidence is no reset."""
    ops = _ops(SVM)
    assert [(n, op.at) for n, op in ops if n in ("Unload", "SetSregs")] == [  # type: ignore[attr-defined]
        ("Unload", 200_000_301 * US)]
    pre = [op for n, op in ops if n == "Populate" and op.at == PRETRACE_AT]  # type: ignore[attr-defined]
    assert [(p.start >> 12, p.size >> 12) for p in pre] == [(1, 2)]  # type: ignore[attr-defined]
    cal = calibrate(read_trace(SVM), DEFAULT_COST)
    assert cal.cost.fault_ns == 3000.0
    assert "median of 3 EPT violation / NPF exit -> entry" in cal.evidence["fault_ns"]
    assert cal.cost.leaf_exclusive_ns == 9 * US / 5  # leaves at +306..+314, after +305's table
    r = replay(SVM, policy=["sync", "5.18"], cost=LEAF_ONLY)
    assert [b["each_ns"] for b in _blocks(r, "sync", 0) if b["cause"] == "zap"] == [5 * 5000]
    assert [b for b in _blocks(r, "5.18", 0) if b["cause"] == "zap"] == []


def test_svm_efer_reset_needs_evidence(tmp_path: Path) -> None:
    """Without the zap and the reload, an EFER write whose previous value is unknown tells
    nothing: no reset is derived."""
    lines = [ln for ln in SVM.read_text().splitlines() if "msr_read" not in ln
             and not ("kvm_tdp_mmu_spte_changed" in ln and "200.0003" in ln)
             and "prepare_zap" not in ln and "200.000316" not in ln]
    assert sum("msr_write" in ln for ln in lines) == 1
    path = tmp_path / "t.txt"
    path.write_text("\n".join(lines) + "\n")
    t = read_trace(path)
    assert not [s for s in plan_resets(t, identify_threads(t), {}).add
                if isinstance(s.op, (Unload, SetSregs))]


def _recordings() -> list[Path]:
    bundled = [p for p in (ROOT / "sample_traces").rglob("*")
               if p.is_file() and p.suffix in (".txt", ".dat", ".pftrace", ".gz")
               and "third_party" not in p.parts and "trappy" not in p.parts]
    real = sorted(REAL.glob("*.txt")) + sorted(REAL.glob("*.dat")) if REAL.is_dir() else []
    return sorted(bundled) + real


@pytest.mark.parametrize("path", _recordings(), ids=lambda p: p.name)
def test_reset_rules_hold_on_every_recording(path: Path) -> None:
    """On every real and bundled recording: each derived SetSregs/Unload from a control
    write sits at a kvm_cr/kvm_msr of its vCPU's thread, and every vCPU that is reset loads
    a root again before it runs (no replay anomaly from a derived reset)."""
    t = read_trace(path)
    threads = identify_threads(t)
    d = derive_workloads(t, threads)
    writes = {(threads.vcpus[w.pid].vcpu, w.ts) for w in control_writes(t)
              if w.pid in threads.vcpus}
    rows = d.evidence.to_pylist()
    for r in rows:
        if r["op"] in ("SetSregs", "Unload") and ("cr_write" in r["evidence"]
                                                   or "msr_write" in r["evidence"]):
            assert (int(r["actor"][4:]), r["ts"]) in writes, r
    resets = [(int(r["actor"][4:]), r["step"], r["vm"]) for r in rows
              if r["op"] in ("SetSregs", "Unload")]
    for vcpu, index, vm in resets:  # a reset vCPU that runs again loads a root first
        later = [op for op in d.workloads[vm].ops[index + 1:]
                 if isinstance(op, (LoadRoot, Populate)) and op.vcpu == vcpu]
        assert not later or isinstance(later[0], LoadRoot), (path.name, vcpu, index)


def test_inline_teardown_without_control_write_rebuilds_the_population(tmp_path: Path) -> None:
    """The 5.17 fixture with its first two faults left out (as if the trace began later):
    vCPU 1's inline teardown after KVM_SET_SREGS (no kvm_cr) still zaps gfn 1 and 2, so
    they were mapped before the trace, and the sync replay zaps both leaves inline."""
    src = (ROOT / "sample_traces" / "handwritten" / "tdp_5.17_sync.txt").read_text()
    path = tmp_path / "late.txt"
    path.write_text("\n".join(ln for ln in src.splitlines()
                              if "100.0001" not in ln and "100.0002" not in ln) + "\n")
    ops = _ops(path)
    pre = [op for n, op in ops if n == "Populate" and op.at == PRETRACE_AT]  # type: ignore[attr-defined]
    assert [(p.start >> 12, p.size >> 12) for p in pre] == [(1, 2)]  # type: ignore[attr-defined]
    r = replay(path, policy=["sync"], cost=LEAF_ONLY)
    assert [b["each_ns"] for b in _blocks(r, "sync", 1) if b["cause"] == "zap"] == [2 * 5000]


@pytest.mark.parametrize("policy", ["sync", "async", "5.18", "6.4", "6.6", "6.9"])
def test_svm_efer_reset_per_era(policy: str) -> None:
    """The SVM fixture's EFER reset of its only vCPU: a zap of the 5 leaves (2 from before
    the trace) by the vCPU itself under the detected era (sync), by a worker under async and
    5.18; from 6.4 the root stays (the TDP MMU holds a reference) and the vCPU reuses it."""
    r = replay(SVM, policy=[policy], cost=LEAF_ONLY)
    assert r.derived.era == "sync"
    zaps = [b["each_ns"] for b in _blocks(r, policy, 0) if b["cause"] == "zap"]
    assert zaps == ([5 * 5000] if policy == "sync" else [])
    roots = [x for x in r.roots.to_pylist() if x["run"] == policy]
    zapped = {x["zapped_by"] for x in roots if x["leaves_zapped"]}
    if policy == "sync":
        assert zapped == {"vcpu0"}
    elif policy in ("async", "5.18"):
        assert len(zapped) == 1 and next(iter(zapped)).startswith("kworker")
    else:
        assert zapped == set() and len(roots) == 1
