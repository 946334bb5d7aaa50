"""Write the kernel-text trace a kernel of the replayed era would have printed.

The layout is the tracefs ``trace`` file's (``%16s-%-7d [%03d] %s %5lu.%06lu: event:
payload`` under the ``# tracer: nop`` header) and every payload follows the event's
``print fmt`` (kernel-semantics §3.1; the 6.18 ``format`` files). Per-SPTE events (faults,
``kvm_tdp_mmu_spte_changed``, ``kvm_mmu_set_spte``, child ``kvm_mmu_get_page`` and
``kvm_mmu_prepare_zap_page``) are sampled one in ``sample_every`` per activity, so a
64 TiB run does not print 10^10 lines; root creations, fast zaps and workqueue events are
all printed. Lines are written to a temporary file renamed into place on success.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

import pyarrow as pa

from parsers.output import output_file
from replay.model.ids import PAGE_1G, PAGE_2M, PAGE_4K, ActorId, Nanos, RootId
from replay.model.policies import get_policy
from replay.model.population import Extent, Granularity
from replay.model.recorders import Recorder
from replay.model.records import BlockInterval
from replay.model.workload import TDP_ROOT_ROLE

__all__ = ["KernelTextTrace", "TRACE_LINES_SCHEMA", "format_line", "page_role_text"]

_ACCESS: Final = ("---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux")
#: ``REMOVED_SPTE`` (≤ 6.9): the frozen value written while a table is torn down.
_REMOVED_SPTE: Final = 0x5A0
_LEAF_BITS: Final = 0xB37  # present (bit 11), A/D, WB memtype, RWX
_PFN_BASE: Final = 0x100000
_LEVEL_OF: Final = {PAGE_4K: 1, PAGE_2M: 2, PAGE_1G: 3}
_VMM_PID: Final = 4000
_HEADER: Final = (
    "# tracer: nop\n#\n# entries-in-buffer/entries-written: {n}/{n}   #P:{cpus}\n#\n"
    "#                                _-----=> irqs-off/BH-disabled\n"
    "#                               / _----=> need-resched\n"
    "#                              | / _---=> hardirq/softirq\n"
    "#                              || / _--=> preempt-depth\n"
    "#                              ||| / _-=> migrate-disable\n"
    "#                              |||| /     delay\n"
    "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION\n"
    "#              | |         |   |||||     |         |\n"
)

TRACE_LINES_SCHEMA: Final = pa.schema([("event", pa.string()), ("lines", pa.int64())])


def format_line(comm: str, pid: int, cpu: int, flags: str, ts: int, event: str,
                payload: str) -> str:
    """One line of the tracefs ``trace`` file (``ts`` in ns, printed as s.us)."""
    sec, usec = divmod(ts // 1000, 1_000_000)
    return f"{comm[:15]:>16}-{pid:<7} [{cpu:03d}] {flags} {sec:5d}.{usec:06d}: {event}: {payload}"


def page_role_text(gen: int, gfn: int, role: int, root_count: int) -> str:
    """``KVM_MMU_PAGE_PRINTK`` of ``kvm_mmu_get_page`` / ``kvm_mmu_prepare_zap_page``."""
    level = role & 0xF
    four = 4 if (role >> 4) & 1 else 8
    quadrant = (role >> 5) & 3
    direct = " direct" if (role >> 7) & 1 else ""
    invalid = " invalid" if (role >> 11) & 1 else ""
    nxe = "" if (role >> 12) & 1 else "!"
    ad = "!" if (role >> 16) & 1 else ""
    access = _ACCESS[(role >> 8) & 7]
    return (f"sp gen {gen} gfn {gfn:x} l{level} {four}-byte q{quadrant}{direct} {access}{invalid}"
            f" {nxe}nxe {ad}ad root {root_count} sync")


def _sampled(extents: list[Extent], every: int, lo: float = 0.0,
             hi: float = 1.0) -> Iterator[tuple[float, int, int]]:
    """``(position in [0, 1), gfn, level)`` of every ``every``-th leaf in ``[lo, hi)``."""
    total = sum(e.size // e.page for e in extents)
    if total == 0:
        return
    first, last = int(lo * total), int(hi * total)
    k = -(-first // every) * every
    base = 0
    for e in extents:
        n = e.size // e.page
        while k < min(base + n, last):
            yield (k - first) / max(1, last - first), (e.start + (k - base) * e.page) >> 12, \
                _LEVEL_OF[e.page]
            k += every
        base += n


class KernelTextTrace(Recorder):
    """Collects the trace of one run; :meth:`write` puts it in a file."""

    name = "trace_lines"

    def __init__(self, *, policy: str, sample_every: int = 65536, comm: str = "max_guest_memor",
                 host_cpus: int = 8) -> None:
        self.policy = get_policy(policy)
        self.every = max(1, sample_every)
        self.comm = comm
        self.cpus = host_cpus
        self._lines: list[tuple[int, int, str]] = []
        self._counts: dict[str, int] = {}

    # ---------------------------------------------------------------- emission
    def _thread(self, actor: str) -> tuple[str, int, int]:
        if actor.startswith("vcpu"):
            v = int(actor[4:])
            return self.comm, _VMM_PID + 1 + v, v % self.cpus
        if actor.startswith("kworker/u:"):
            slot = int(actor.split(":")[1])
            return f"kworker/u{2 * self.cpus}:{slot}", 300 + slot, slot % self.cpus
        if actor.startswith("kworker/"):
            slot = int(actor.split("/")[1])
            return f"kworker/{slot % self.cpus}:1", 200 + slot, slot % self.cpus
        return self.comm, _VMM_PID, self.cpus - 1

    def _emit(self, ts: int, actor: str, event: str, payload: str, flags: str = "...1.") -> None:
        comm, pid, cpu = self._thread(actor)
        self._lines.append((ts, len(self._lines), format_line(comm, pid, cpu, flags, ts, event,
                                                              payload)))
        self._counts[event] = self._counts.get(event, 0) + 1

    def root_created(self, ts: Nanos, root: RootId, role: int, actor: ActorId) -> None:
        self._emit(ts, actor, "kvm_mmu_get_page", page_role_text(0, 0, role, 0) + " new")

    def fast_zap(self, ts: Nanos, actor: ActorId, generation: int) -> None:
        self._emit(ts, actor, "kvm_mmu_zap_all_fast",
                   f"kvm-mmu-valid-gen {generation} used_pages 0")

    def populated(self, start: Nanos, end: Nanos, actor: ActorId, root: RootId,
                  extents: list[Extent]) -> None:
        v = int(actor[4:])
        span = end - start
        for pos, gfn, level in _sampled(extents, self.every):
            t = start + int(pos * span)
            gpa = gfn << 12
            spte = ((_PFN_BASE + gfn) << 12) | _LEAF_BITS | (0x80 if level > 1 else 0)
            self._emit(t, actor, "kvm_exit",
                       f"vcpu {v} reason EPT_VIOLATION rip 0x401000 info1 0x{0x182:016x} "
                       f"info2 0x{0:016x} intr_info 0x{0:08x} error_code 0x{0:08x} "
                       f"requests 0x{0:016x}", "d..1.")
            self._emit(t, actor, "kvm_page_fault",
                       f"vcpu {v} rip 0x401000 address 0x{gpa:016x} error_code 0x182")
            self._emit(t, actor, "kvm_mmu_spte_requested",
                       f"gfn {gfn:x} pfn {_PFN_BASE + gfn:x} level {level}")
            self._emit(t, actor, "kvm_tdp_mmu_spte_changed",
                       f"as id 0 gfn {gfn:x} level {level} old_spte 0 new_spte {spte:x}")
            self._emit(t, actor, "kvm_mmu_set_spte",
                       f"gfn {gfn:x} spte {spte:x} (rwx) level {level} "
                       f"at {0xFFFF888100000000 + gfn * 8:x}")
            self._emit(t, actor, "kvm_entry",
                       f"vcpu {v}, rip 0x401000 intr_info 0x{0:08x} error_code 0x{0:08x}",
                       "d..1.")

    def zapped(self, start: Nanos, end: Nanos, actor: ActorId, root: RootId,
               extents: Iterable[Extent], done_from: float, done_to: float) -> None:
        span = end - start
        leaf_pass = self.policy.fast_zap_granularity is Granularity.LEAF
        new = 0 if leaf_pass else _REMOVED_SPTE
        last_table = -1
        for pos, gfn, level in _sampled(list(extents), self.every, done_from, done_to):
            t = start + int(pos * span)
            old = ((_PFN_BASE + gfn) << 12) | _LEAF_BITS | (0x80 if level > 1 else 0)
            table_gfn = gfn & ~0x1FF
            if level == 1 and table_gfn != last_table:
                last_table = table_gfn
                role = (TDP_ROOT_ROLE & ~0xF) | 1
                self._emit(t, actor, "kvm_mmu_prepare_zap_page",
                           page_role_text(0, table_gfn, role, 0))
            self._emit(t, actor, "kvm_tdp_mmu_spte_changed",
                       f"as id 0 gfn {gfn:x} level {level} old_spte {old:x} new_spte {new:x}")

    def work(self, ts: Nanos, actor: ActorId, what: str, root: RootId, queue: str) -> None:
        fn = "tdp_mmu_zap_root_async" if queue == "events" else "tdp_mmu_zap_root_work"
        work = 0xFFFF888200000000 + 0x1000 * root
        if what == "queue":
            cpu = 8192 if queue == "kvm" else self._thread(actor)[2]
            self._emit(ts, actor, "workqueue_queue_work",
                       f"work struct={work:016x} function={fn} workqueue={queue} "
                       f"req_cpu={cpu} cpu={cpu if queue != 'kvm' else 0}", "d..2.")
        else:
            event = "workqueue_execute_start" if what == "start" else "workqueue_execute_end"
            self._emit(ts, actor, event, f"work struct {work:016x}: function {fn}", ".....")

    def block(self, interval: BlockInterval) -> None:
        if interval.cause == "root_alloc":
            self._emit(interval.end, f"vcpu{interval.vcpu}", "kvm_entry",
                       f"vcpu {interval.vcpu}, rip 0x401000 intr_info 0x{0:08x} "
                       f"error_code 0x{0:08x}", "d..1.")

    # ---------------------------------------------------------------- output
    def table(self) -> pa.Table:
        names = sorted(self._counts)
        return pa.Table.from_pydict(
            {"event": names, "lines": [self._counts[n] for n in names]}, schema=TRACE_LINES_SCHEMA
        )

    def write(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the trace, sorted by (time, emission order), by the output policy of
        :func:`parsers.output.output_file` (an existing file is replaced only with ``force``)."""
        self._lines.sort()
        with output_file(path, force=force) as fh:
            out = io.TextIOWrapper(fh, encoding="utf-8", newline="\n")
            out.write(_HEADER.format(n=len(self._lines), cpus=self.cpus))
            for _, _, line in self._lines:
                out.write(line)
                out.write("\n")
            out.flush()
            out.detach()
        return Path(path)
