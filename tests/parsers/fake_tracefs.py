"""A fake tracefs directory tree for the record tests (no root, no /dev/kvm needed).

It mirrors the real layout: ``events/<system>/<event>/enable``, ``options/record-tgid``,
``buffer_size_kb``, ``tracing_on``, ``trace_clock``, ``set_event``, ``per_cpu/cpuN/stats`` and
``trace_pipe`` as a regular file that a test's command appends to (as the kernel would).
"""

from __future__ import annotations

import sys
from pathlib import Path

EVENT_LINES = (
    "       CPU 0/KVM-101     (    100) [000] ..... 10.000001: kvm_mmu_get_page: sp gen 0 gfn 100 "
    "l4 8-byte q0 wux nxe ad root 0 sync new\n"
    "       CPU 1/KVM-102     (    100) [001] ..... 10.000002: kvm_userspace_exit: reason KVM_EXIT_MMIO (6)\n"
    "CPU:1 [LOST 5 EVENTS]\n"
    "         tinyvmm-100     (    100) [000] ..... 10.000003: kvm_mmu_zap_all_fast: "
    "kvm-mmu-valid-gen 0 used_pages 3\n"
)

_STATS = ("entries: {entries}\noverrun: {overrun}\ncommit overrun: 0\nbytes: 0\n"
          "oldest event ts:     0.000000\nnow ts: 10.000000\ndropped events: {dropped}\n"
          "read events: 0\n")

# Settings a recording may change, with the text a kernel shows before it.
INITIAL = {
    "tracing_on": "1\n",
    "buffer_size_kb": "7 (expanded: 1408)\n",
    "trace_clock": "[local] global counter mono boot\n",
    "options/record-tgid": "0\n",
    "set_event": "sched:sched_switch\n",
    "set_event_pid": "",
    "current_tracer": "nop\n",
    "events/kvmmmu/kvm_mmu_get_page/enable": "0\n",
    "events/kvmmmu/kvm_mmu_zap_all_fast/enable": "0\n",
    "events/kvmmmu/kvm_mmu_prepare_zap_page/enable": "0\n",
    "events/kvm/kvm_entry/enable": "0\n",
    "events/kvm/kvm_exit/enable": "0\n",
    "events/kvm/kvm_userspace_exit/enable": "0\n",
    "events/kvm/kvm_unmap_hva_range/enable": "0\n",
    "events/sched/sched_switch/enable": "1\n",
    "events/sched/sched_wakeup/enable": "0\n",
    "per_cpu/cpu0/buffer_size_kb": "1408\n",
    "per_cpu/cpu1/buffer_size_kb": "1408\n",
}


def stats_text(entries: int = 0, overrun: int = 0, dropped: int = 0) -> str:
    """A ``per_cpu/cpuN/stats`` file's text."""
    return _STATS.format(entries=entries, overrun=overrun, dropped=dropped)


def make_fake_tracefs(root: Path) -> Path:
    """Build the tree under ``root`` and return it."""
    for rel, text in INITIAL.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for cpu in (0, 1):
        (root / f"per_cpu/cpu{cpu}/stats").write_text(stats_text())
    (root / "trace_pipe").write_text("")
    (root / "trace").write_text("old unread events\n")
    return root


def settings(root: Path) -> dict[str, str]:
    """Every settings file of the tree (not the data files a recording reads or clears)."""
    skip = {"trace_pipe", "trace"}
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip and p.name != "stats"}


def emitting_command(root: Path, dump: Path, *, exit_code: int = 0) -> list[str]:
    """A command that records the live settings in ``dump``, then plays the kernel: appends
    :data:`EVENT_LINES` to ``trace_pipe`` and bumps CPU 1's overrun and dropped counters."""
    code = (
        "import json, pathlib, sys\n"
        f"root = pathlib.Path({str(root)!r})\n"
        "live = {str(p.relative_to(root)): p.read_text() for p in root.rglob('*') "
        "if p.is_file() and p.name not in ('trace_pipe', 'stats')}\n"
        f"pathlib.Path({str(dump)!r}).write_text(json.dumps(live))\n"
        "with open(root / 'trace_pipe', 'a') as pipe:\n"
        f"    pipe.write({EVENT_LINES!r})\n"
        f"(root / 'per_cpu/cpu1/stats').write_text({stats_text(4, 2, 1)!r})\n"
        f"sys.exit({exit_code})\n"
    )
    return [sys.executable, "-c", code]
