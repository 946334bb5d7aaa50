"""What ``kvm-mmu-replay record`` enables: event presets and the ring-buffer sizing rule.

Presets are data: a name maps to ``system/event`` entries, where ``system/*`` means every
event of that system the kernel has. kvm events are required (a kernel without
``events/kvmmmu`` cannot record anything useful); any other missing event is skipped with a
warning in the report.

Examples
--------
>>> PRESETS["kvm-sched"][-2:]
('sched/sched_switch', 'sched/sched_wakeup')
>>> default_buffer_kb("kvm", cpus=2, mem_available_kb=24 << 20)
16384
>>> default_buffer_kb("kvm-full", cpus=64, mem_available_kb=8 << 20)
16384
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from parsers.errors import RecordError

__all__ = ["PRESETS", "BUFFER_KB", "default_buffer_kb", "resolve_events"]

KVM_EVENTS: tuple[str, ...] = (
    "kvmmmu/*",
    "kvm/kvm_entry",
    "kvm/kvm_exit",
    "kvm/kvm_page_fault",
    "kvm/kvm_userspace_exit",
    "kvm/kvm_unmap_hva_range",  # mmu-notifier unmaps walk the roots
)
SCHED_EVENTS: tuple[str, ...] = ("sched/sched_switch", "sched/sched_wakeup")
WORKQUEUE_EVENTS: tuple[str, ...] = (
    "workqueue/workqueue_queue_work",
    "workqueue/workqueue_execute_start",
    "workqueue/workqueue_execute_end",
)

PRESETS: dict[str, tuple[str, ...]] = {
    "kvm": KVM_EVENTS,
    "kvm-sched": KVM_EVENTS + SCHED_EVENTS,
    "kvm-workqueue": KVM_EVENTS + WORKQUEUE_EVENTS,
    "kvm-full": KVM_EVENTS + SCHED_EVENTS + WORKQUEUE_EVENTS,
    "kvm-all": ("kvmmmu/*", "kvm/*"),  # as ../shared/traces/real was recorded
}
"""Preset name → ``system/event`` entries (``system/*``: every event of the system)."""

BUFFER_KB: dict[str, int] = {
    "kvm": 16384,
    "kvm-sched": 32768,
    "kvm-workqueue": 24576,
    "kvm-full": 40960,
    "kvm-all": 32768,
}
"""Default ring-buffer size per CPU in KiB for each preset.

The rule: 16 MiB per CPU for the kvm events (a shadow-MMU guest fault emits about a dozen
events of ~100 bytes; 16 MiB holds ~150k events per CPU, seconds of fault storms), +16 MiB
for scheduler events (a switch and a wakeup per vCPU block), +8 MiB for workqueue events
(three per zap work item), +16 MiB for all of ``events/kvm`` (emulation, MMIO, PIO, FPU).
The streaming reader drains the buffer while the command runs, so the buffer only has to
absorb bursts the reader cannot keep up with.
"""

_MIN_KB = 1024


def default_buffer_kb(preset: str, *, cpus: int, mem_available_kb: int) -> int:
    """The preset's :data:`BUFFER_KB`, capped so all CPUs' buffers use <= 1/8 of free memory."""
    wanted = BUFFER_KB.get(preset, BUFFER_KB["kvm"])
    cap = mem_available_kb // 8 // max(cpus, 1)
    return max(_MIN_KB, min(wanted, cap))


def resolve_events(tracefs: Path, preset: str) -> tuple[list[str], list[str]]:
    """Expand ``preset`` against ``tracefs/events``: ``(events present, entries missing)``.

    Raises
    ------
    RecordError
        The preset is unknown, or the kernel has no kvm events (``events/kvmmmu`` absent).
    """
    if preset not in PRESETS:
        raise RecordError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    events_dir = tracefs / "events"
    if not (events_dir / "kvmmmu").is_dir():
        raise RecordError(
            "this kernel has no kvm events (events/kvmmmu is missing): load the kvm module "
            "and a vendor module (kvm_intel, kvm_amd or kvm_pvm) first", str(events_dir / "kvmmmu"))
    present: list[str] = []
    missing: list[str] = []
    for entry in PRESETS[preset]:
        found = _expand(events_dir, entry)
        present.extend(found)
        if not found:
            missing.append(entry)
    return list(dict.fromkeys(present)), missing


def _expand(events_dir: Path, entry: str) -> Sequence[str]:
    system, _, event = entry.partition("/")
    if event != "*":
        return [entry] if (events_dir / system / event / "enable").is_file() else []
    if not (events_dir / system).is_dir():
        return []
    return sorted(f"{system}/{p.parent.name}" for p in (events_dir / system).glob("*/enable"))
