"""Property: any trace the readers can produce replays under every policy without an
exception other than the project's own (``parsers.errors.KvmMmuError``), deterministically,
with well-formed tables; and every bundled and shared trace replays."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import SAMPLES, SHARED_TRACES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import read_trace
from parsers.errors import KvmMmuError, TraceFormatError
from replay import replay
from replay.model.policies import policy_names

PRESENT = 1 << 11
#: non-present values a zap writes: 0, SHADOW_NONPRESENT_VALUE (bit 63, ~6.10+), the
#: frozen REMOVED_SPTE (0x5a0) and its 6.10+ form
NON_PRESENT = [0, 1 << 63, 0x5A0, (1 << 63) | 0x5A0]
REASONS = ["EPT_VIOLATION", "EXTERNAL_INTERRUPT", "IO_INSTRUCTION", "HLT", "EPT_MISCONFIG",
           "MSR_WRITE", "PREEMPTION_TIMER"]
USER_EXITS = ["KVM_EXIT_IO (2)", "KVM_EXIT_MMIO (6)", "restart (-4)", "error (-14)"]
WORKS = ["00000000a1b2c3d4", "00000000b5e6f708"]


@st.composite
def thread_cast(draw: st.DrawFn) -> list[tuple[str, int, int, int | None]]:
    """(comm, pid, tgid, vcpu_id or None) for 1-3 VMs of 1-3 vCPUs, their VMMs and a kworker."""
    cast: list[tuple[str, int, int, int | None]] = []
    for vm in range(draw(st.integers(1, 3))):
        tgid = 5000 + 1000 * vm
        cast.append(("qemu-system-x86", tgid, tgid, None))
        for v in range(draw(st.integers(1, 3))):
            cast.append((f"CPU {v}/KVM", tgid + 1 + v, tgid, v))
    cast.append(("kworker/u16:3", 300, 300, None))
    return cast


def _payload(draw: st.DrawFn, event: str, vcpu: int) -> str:
    g = draw(st.integers(0, 0x3FF))
    level = draw(st.integers(1, 5))
    present = (g << 12) | 0xB77 | PRESENT
    if event == "kvm_entry":
        return f"vcpu {vcpu}, rip {g:#x} intr_info 0x00000000 error_code 0x00000000" + draw(
            st.sampled_from(["", " [immediate exit]"]))
    if event == "kvm_exit":
        req = draw(st.sampled_from([0, 1 << 39, 1 << 1]))
        return (f"vcpu {vcpu} reason {draw(st.sampled_from(REASONS))} rip {g:#x} info1 "
                f"{g:#018x} info2 0x0000000000000000 intr_info 0x00000000 error_code "
                f"0x00000000 requests {req:#018x}")
    if event == "kvm_page_fault":
        return f"vcpu {vcpu} rip {g:#x} address {g << 12:#018x} error_code 0x181"
    if event in ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page"):
        new = " new" if event == "kvm_mmu_get_page" else ""
        return (f"sp gen 0 gfn {0 if level >= 4 else g:x} l{min(level, 4)} 8-byte q0 direct wux "
                f"nxe ad root 0 sync{new}")
    if event == "kvm_tdp_mmu_spte_changed":
        old, new_spte = draw(st.sampled_from([(0, present), (present, 0), (present, 1 << 63),
                                              (present, 0x5A0), (0, 0x5A0), (present, present)]))
        new_spte = draw(st.sampled_from([new_spte, *NON_PRESENT]))
        return f"as id 0 gfn {g:x} level {level} old_spte {old:x} new_spte {new_spte:x}"
    if event == "kvm_mmu_set_spte":
        return f"gfn {g:x} spte {present:x} (rwx) level 1 at ffff88810a003{8 * (g % 512):03x}"
    if event == "kvm_mmu_zap_all_fast":
        return f"kvm-mmu-valid-gen {g % 2} used_pages 0"
    if event == "kvm_userspace_exit":
        return f"reason {draw(st.sampled_from(USER_EXITS))}"
    work = draw(st.sampled_from(WORKS))
    if event == "workqueue_queue_work":
        return (f"work struct={work} function=tdp_mmu_zap_root_work workqueue=kvm "
                f"req_cpu=8192 cpu=-1")
    return f"work struct {work}: function tdp_mmu_zap_root_work"


EVENTS = ["kvm_entry", "kvm_exit", "kvm_page_fault", "kvm_mmu_get_page",
          "kvm_mmu_prepare_zap_page", "kvm_tdp_mmu_spte_changed", "kvm_mmu_set_spte",
          "kvm_mmu_zap_all_fast", "kvm_userspace_exit", "workqueue_queue_work",
          "workqueue_execute_start", "workqueue_execute_end"]


@st.composite
def trace_lines(draw: st.DrawFn) -> list[str]:
    """A small grammatical tracefs ``trace`` file (record-tgid or not), with out-of-order
    and equal timestamps, lost-events markers and garbage lines."""
    cast = draw(thread_cast())
    tgid = draw(st.booleans())
    lines = ["# tracer: nop", "#"]
    us = draw(st.integers(0, 10**6))
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["event"] * 12 + ["lost", "garbage", "back"]))
        if kind == "lost":
            lines.append(f"CPU:{draw(st.integers(0, 1))} [LOST {draw(st.integers(1, 999))} EVENTS]")
            continue
        if kind == "garbage":
            lines.append(draw(st.text(alphabet=st.characters(codec="ascii",
                                                             exclude_characters="\r\n"),
                                      max_size=60)))
            continue
        us += draw(st.integers(0, 50)) if kind == "event" else -draw(st.integers(1, 100))
        comm, pid, group, vcpu = draw(st.sampled_from(cast))
        event = draw(st.sampled_from(EVENTS))
        payload = _payload(draw, event, vcpu if vcpu is not None else draw(st.integers(0, 2)))
        sec, usec = divmod(max(us, 0), 10**6)
        middle = f" ({group:>7})" if tgid else ""
        lines.append(f"{comm:>16}-{pid:<7}{middle} [{pid % 2:03d}] ..... "
                     f"{100 + sec:5d}.{usec:06d}: {event}: {payload}")
    return lines


def _tables(result) -> dict[str, pa.Table]:  # type: ignore[no-untyped-def]
    out = {f"{run}/{name}": table for run, tables in result.runs.items()
           for name, table in tables.items()}
    out["vcpus"] = result.vcpus
    out["evidence"] = result.derived.evidence
    return out


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
        return  # the project's own errors are the allowed outcome for bad input
    assert list(result.runs) == ["observed", *policy_names()]
    blocks = result.block_intervals
    assert all(s <= e for s, e in zip(blocks.column("start").to_pylist(),
                                      blocks.column("end").to_pylist(), strict=True))
    vcpus = sorted(v.vcpu for v in result.threads.vcpus.values())
    for label, tables in result.runs.items():
        assert sorted(tables["summary"].column("vcpu").to_pylist()) == vcpus, label
    assert set(result.vcpus.column("vcpu").to_pylist()) == set(vcpus)
    doc = json.dumps(result.to_json_dict(), sort_keys=True)
    again = replay(read_trace(path), policy="all")
    assert json.dumps(again.to_json_dict(), sort_keys=True) == doc
    first, second = _tables(result), _tables(again)
    assert first.keys() == second.keys()
    for name, table in first.items():
        assert table.equals(second[name]), name


def _traces(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and (
        p.suffix in (".txt", ".dat", ".pftrace") or p.name.endswith(".txt.gz"))
        and "formats" not in p.parts and not p.name.endswith("workload.log")
        and p.name != "README.md")


def _replays(path: Path) -> None:
    if not read_trace(path).has_kvm_events():  # e.g. trappy's sched-only traces
        with pytest.raises(TraceFormatError, match="no KVM events"):
            replay(path, policy="all")
        return
    result = replay(path, policy="all")
    assert list(result.runs) == ["observed", *policy_names()]
    json.dumps(result.to_json_dict())


@pytest.mark.parametrize("path", _traces(SAMPLES), ids=lambda p: str(p.relative_to(SAMPLES)))
def test_every_sample_trace_replays(path: Path) -> None:
    _replays(path)


@pytest.mark.shared
@pytest.mark.parametrize("path", _traces(SHARED_TRACES) or [pytest.param(
    None, marks=pytest.mark.skip(reason=f"{SHARED_TRACES} is absent (../shared is not beside "
                                        f"the checkout)"))],
    ids=lambda p: str(p.relative_to(SHARED_TRACES)) if p else "absent")
def test_every_shared_trace_replays(path: Path) -> None:
    _replays(path)
