"""Property: any trace the readers can produce replays under every policy without an
exception other than the project's own, deterministically, with well-formed tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SAMPLES, SHARED_TRACES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import KvmMmuError, read_trace
from replay import replay

THREADS = [("CPU 0/KVM", 5001, 5000), ("CPU 1/KVM", 5002, 5000), ("CPU 0/KVM", 6001, 6000),
           ("qemu-system-x86", 5000, 5000), ("qemu-system-x86", 6000, 6000),
           ("kworker/u16:3", 300, 300)]
PAYLOADS = {
    "kvm_entry": lambda v, g: f"vcpu {v}, rip 0xfff0 intr_info 0x00000000 error_code 0x00000000",
    "kvm_exit": lambda v, g: (f"vcpu {v} reason EPT_VIOLATION rip 0xfff0 info1 0x0000000000000000"
                              f" info2 0x0000000000000000 intr_info 0x00000000 error_code "
                              f"0x00000000 requests 0x0000000000000000"),
    "kvm_mmu_get_page": lambda v, g: (f"sp gen {g % 2} gfn {g:x} l{1 + g % 4} 8-byte q0"
                                      f"{' direct' if g % 3 else ''} wux nxe ad root {g % 3} "
                                      f"sync {'new' if g % 2 else 'existing'}"),
    "kvm_mmu_prepare_zap_page": lambda v, g: (f"sp gen {g % 2} gfn {g:x} l{1 + g % 4} 8-byte q0 "
                                              f"wux nxe ad root {g % 2} sync"),
    "kvm_tdp_mmu_spte_changed": lambda v, g: (f"as id 0 gfn {g:x} level {1 + g % 3} old_spte "
                                              f"{(g * 0x1000) | 0xb77:x} new_spte "
                                              f"{0 if g % 2 else (g * 0x1000) | 0xb77:x}"),
    "kvm_mmu_set_spte": lambda v, g: f"gfn {g:x} spte {(g << 12) | 0xb77:x} (rwxu) level 1 at ffff8881",
    "kvm_mmu_zap_all_fast": lambda v, g: f"kvm-mmu-valid-gen {g % 2} used_pages 0",
    "kvm_userspace_exit": lambda v, g: "reason KVM_EXIT_IO (2)",
    "workqueue_queue_work": lambda v, g: (f"work struct=00000000{g:08x} function="
                                          f"tdp_mmu_zap_root_work workqueue=kvm req_cpu=8 cpu=0"),
    "workqueue_execute_start": lambda v, g: f"work struct 00000000{g:08x}: function tdp_mmu_zap_root_work",
}


@st.composite
def trace_lines(draw: st.DrawFn) -> list[str]:
    n = draw(st.integers(1, 40))
    lines = ["# tracer: nop", "#"]
    us = draw(st.integers(0, 10**6))
    for _ in range(n):
        kind = draw(st.sampled_from(["event"] * 8 + ["lost", "garbage", "back"]))
        if kind == "lost":
            lines.append(f"CPU:{draw(st.integers(0, 1))} [LOST {draw(st.integers(1, 999))} EVENTS]")
            continue
        if kind == "garbage":
            lines.append(draw(st.text(alphabet=st.characters(codec="ascii", exclude_characters="\r\n"),
                                      max_size=60)))
            continue
        us += draw(st.integers(0, 50)) if kind == "event" else -draw(st.integers(1, 100))
        comm, pid, tgid = draw(st.sampled_from(THREADS))
        event = draw(st.sampled_from(sorted(PAYLOADS)))
        payload = PAYLOADS[event](pid % 2, draw(st.integers(0, 300)))
        sec, usec = divmod(max(us, 0), 10**6)
        lines.append(f"{comm:>16}-{pid:<7} ({tgid:>7}) [{pid % 2:03d}] ..... "
                     f"{100 + sec:5d}.{usec:06d}: {event}: {payload}")
    return lines


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=trace_lines())
def test_any_readable_trace_replays(tmp_path: Path, lines: list[str]) -> None:
    path = tmp_path / "t.txt"
    path.write_text("\n".join(lines) + "\n")
    try:
        trace = read_trace(path)
        result = replay(trace, policy="all")
    except KvmMmuError:
        return
    blocks = result.block_intervals
    assert all(s <= e for s, e in zip(blocks.column("start").to_pylist(),
                                      blocks.column("end").to_pylist(), strict=True))
    vcpus = {v.vcpu for v in result.threads.vcpus.values()}
    for label, tables in result.runs.items():
        assert set(tables["summary"].column("vcpu").to_pylist()) <= vcpus | set(
            tables["blocks"].column("vcpu").to_pylist()), label
    doc = json.dumps(result.to_json_dict(), sort_keys=True)
    again = replay(read_trace(path), policy="all")
    assert json.dumps(again.to_json_dict(), sort_keys=True) == doc
    assert again.block_intervals.equals(blocks)


def _every_trace() -> list[Path]:
    samples = [p for p in SAMPLES.rglob("*") if p.is_file() and (
        p.suffix in (".txt", ".dat", ".pftrace") or p.name.endswith(".txt.gz"))
        and not p.name.endswith(".workload.log")]
    shared = [p for p in SHARED_TRACES.rglob("*") if p.is_file() and p.suffix in (".txt", ".dat")
              and "formats" not in p.parts and not p.name.endswith("workload.log")] \
        if SHARED_TRACES.is_dir() else []
    return sorted(samples + shared)


@pytest.mark.parametrize("path", _every_trace(), ids=lambda p: p.name)
def test_every_bundled_and_shared_trace_replays(path: Path) -> None:
    result = replay(path, policy="all")
    assert set(result.runs) == {"observed", "sync", "async", "5.18", "6.4", "6.6", "6.9"}
    json.dumps(result.to_json_dict())
