"""The emitted kernel-text trace follows tracefs' layout and each event's print fmt."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from replay import run_scenario
from replay.model.policies import policy_names

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "traces" / "real"
# %16s-%-7d [%03d] %s %5lu.%06lu: event: payload   (tracefs `trace`, no tgid column)
LINE = re.compile(r"^ *(?P<comm>.{1,16})-(?P<pid>\d+) +(?:\( *\d+\) )?\[(?P<cpu>\d{3})\] "
                  r"(?P<flags>[.dNnhs0-9]{5}) +(?P<sec>\d+)\.(?P<usec>\d{6}): "
                  r"(?P<event>\w+): (?P<payload>.*)$")
ROLE = (r"sp gen \d+ gfn [0-9a-f]+ l\d \d-byte q\d( direct)? [-wux]{3}( invalid)? "
        r"!?nxe !?ad root \d+ (un)?sync")
PAYLOADS = {
    "kvm_mmu_get_page": re.compile(ROLE + r" (new|existing)$"),
    "kvm_mmu_prepare_zap_page": re.compile(ROLE + "$"),
    "kvm_mmu_zap_all_fast": re.compile(r"^kvm-mmu-valid-gen \d+ used_pages [0-9a-f]+$"),
    "kvm_tdp_mmu_spte_changed": re.compile(
        r"^as id \d+ gfn [0-9a-f]+ level \d old_spte [0-9a-f]+ new_spte [0-9a-f]+$"),
    "kvm_mmu_set_spte": re.compile(
        r"^gfn [0-9a-f]+ spte [0-9a-f]+ \([-r][-w][-x][-u]?\) level \d at [0-9a-f]+$"),
    "kvm_mmu_spte_requested": re.compile(r"^gfn [0-9a-f]+ pfn [0-9a-f]+ level \d$"),
    "kvm_page_fault": re.compile(r"^vcpu \d+ rip 0x[0-9a-f]+ address 0x[0-9a-f]{16} "
                                 r"error_code 0x[0-9a-f]+$"),
    "kvm_entry": re.compile(r"^vcpu \d+, rip 0x[0-9a-f]+ intr_info 0x[0-9a-f]{8} "
                            r"error_code 0x[0-9a-f]{8}$"),
    "kvm_exit": re.compile(r"^vcpu \d+ reason [A-Z_]+ rip 0x[0-9a-f]+ info1 0x[0-9a-f]{16} "
                           r"info2 0x[0-9a-f]{16} intr_info 0x[0-9a-f]{8} error_code "
                           r"0x[0-9a-f]{8} requests 0x[0-9a-f]{16}$"),
    "sys_enter": re.compile(r"^NR \d+ \(([0-9a-f]+, ){5}[0-9a-f]+\)$"),
    "sys_exit": re.compile(r"^NR \d+ = -?\d+$"),
    "kvm_userspace_exit": re.compile(r"^reason KVM_EXIT_\w+ \(\d+\)$"),
    "workqueue_queue_work": re.compile(r"^work struct=[0-9a-f]+ function=\w+ workqueue=\w+ "
                                       r"req_cpu=\d+ cpu=\d+$"),
    "workqueue_execute_start": re.compile(r"^work struct [0-9a-f]+: function \w+$"),
    "workqueue_execute_end": re.compile(r"^work struct [0-9a-f]+: function \w+$"),
}


def emit(tmp_path: Path, policy: str, tgid: bool = True) -> list[str]:
    out = tmp_path / f"{policy}.txt"
    run_scenario("max-guest-memory", policies=[policy], memory=8 << 20, slot_size=4 << 20,
                 vcpus=2, emit_trace=out, emit_tgid=tgid)
    return out.read_text().splitlines()


@pytest.mark.parametrize("policy", policy_names())
def test_every_line_matches_the_kernel_layout(tmp_path: Path, policy: str) -> None:
    lines = emit(tmp_path, policy)
    header = [ln for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if not ln.startswith("#")]
    assert header[0] == "# tracer: nop" and len(header) == 12
    assert f"entries-in-buffer/entries-written: {len(body)}/{len(body)}" in header[2]
    last = -1
    seen = set()
    for ln in body:
        m = LINE.match(ln)
        assert m, ln
        assert PAYLOADS[m["event"]].match(m["payload"]), ln
        ts = int(m["sec"]) * 10**6 + int(m["usec"])
        assert ts >= last
        last = ts
        seen.add(m["event"])
    assert {"kvm_mmu_get_page", "kvm_tdp_mmu_spte_changed", "kvm_mmu_zap_all_fast"} <= seen
    if policy in ("async", "5.18", "6.4"):
        assert "workqueue_execute_start" in seen
    else:
        assert "workqueue_execute_start" not in seen


def test_root_creations_and_zappers_follow_the_era(tmp_path: Path) -> None:
    roots = [ln for ln in emit(tmp_path, "sync") if "l4 8-byte" in ln and ln.endswith(" new")]
    assert len(roots) == 2  # CR0.WP was part of the role: the reset made a second root
    roots = [ln for ln in emit(tmp_path, "6.9") if "l4 8-byte" in ln and ln.endswith(" new")]
    assert len(roots) == 1  # 6.4+: the same root is reloaded
    wq = [ln for ln in emit(tmp_path, "async") if "workqueue_queue_work" in ln]
    assert wq and "function=tdp_mmu_zap_root_async workqueue=events" in wq[0]
    assert LINE.match(wq[0])["pid"] in ("4001", "4002")  # queued by the vCPU's last put


@pytest.mark.shared
def test_header_matches_a_real_tracefs_file(tmp_path: Path) -> None:
    real = REAL / "tracefs_default.txt"
    if not real.exists():
        pytest.skip(f"{real} absent (../shared/traces is not next to the repository)")
    with real.open() as f:
        real_header = [next(f).rstrip("\n") for _ in range(12)]
    ours = emit(tmp_path, "6.6", tgid=False)[:12]
    assert [h for i, h in enumerate(ours) if i != 2] == [h for i, h in enumerate(real_header)
                                                        if i != 2]
    real_line = next(ln for ln in real.read_text().splitlines()
                     if "kvm_mmu_get_page" in ln)
    m = LINE.match(real_line)
    assert m and PAYLOADS["kvm_mmu_get_page"].match(m["payload"])


def test_emission_is_byte_identical_across_runs(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()  # missing parents are an error, never created
    assert emit(tmp_path / "a", "async") == emit(tmp_path / "b", "async")
    assert not list((tmp_path / "a").glob(".*.tmp"))  # written via a temp name, renamed
