"""Write the kernel-text trace a kernel of the replayed era would have printed.

Two layouts, both read back by :func:`parsers.read_trace`:

* ``"tracefs"`` (default): the tracefs ``trace`` file (``%16s-%-7d [%03d] %s %5lu.%06lu:
  event: payload`` under the ``# tracer: nop`` header), with the record-tgid column
  ``(%7s)`` unless ``tgid=False``. Timestamps are µs, as the kernel prints them.
* ``"ns"``: ``trace-cmd report -t`` text (``cpus=N``, then ``comm-pid [cpu] s.nnnnnnnnn:
  event: payload``), with the same optional tgid column: nanosecond timestamps, so a
  replay of the trace can reproduce the model's times exactly.

Every payload follows the event's ``print fmt`` (kernel-semantics §3.1). What is printed
(docs/model.md "Emitted traces"): every fault as ``kvm_exit`` (EPT violation) at its
request, ``kvm_page_fault``, ``kvm_mmu_spte_requested``, child-table ``kvm_mmu_get_page``
and links, the leaf's ``kvm_tdp_mmu_spte_changed`` and ``kvm_mmu_set_spte``, ``kvm_entry``
at its end; root loads (``get_page`` new, then ``kvm_entry``) with the exit before them;
ioctls outside ``KVM_RUN`` (``SET_SREGS``, memslot changes, dirty-log clears, process exit)
as raw ``sys_enter``/``sys_exit``, after the vCPU's exit to userspace; fast zaps; zaps in
the era's pass order (:mod:`replay.render.zap_text`); workqueue events. ``sample_every``
N > 1 keeps one in N faults and zapped SPTEs (and says so in the header); the default
keeps every event. Lines go to a temporary file renamed into place on success.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import pyarrow as pa

from parsers.output import output_file
from replay.model.cost import DEFAULT_COST, CostModel
from replay.model.ids import ActorId, Nanos, RootId
from replay.model.population import Extent
from replay.model.recorders import Recorder, ZapShape
from replay.model.records import BlockInterval
from replay.model.workload import TDP_ROOT_ROLE
from replay.render.zap_text import LEVEL_OF, leaf_spte, placed, table_spte, zap_events

__all__ = ["KernelTextTrace", "TRACE_LINES_SCHEMA", "TGID_HEADER", "TRACEFS_HEADER",
           "format_line", "page_role_text", "SAMPLED_MARK", "IOCTL_CMDS", "Layout"]

Layout = Literal["tracefs", "ns"]
_ACCESS: Final = ("---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux")
_VMM_PID: Final = 4000
#: The header line a sampled emitted trace carries (the reader warns on it).
SAMPLED_MARK: Final = "# kvm-mmu-replay: sampled"
#: ioctl numbers (include/uapi/linux/kvm.h) of the calls the model issues.
IOCTL_CMDS: Final = {
    "KVM_RUN": 0xAE80, "KVM_SET_SREGS": 0x4138AE84, "KVM_SET_CPUID2": 0x4008AE90,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46, "KVM_CLEAR_DIRTY_LOG": 0xC018AEC0,
}
_SYSCALL_NR: Final = {"write": 1, "exit_group": 231}
_IOCTL_NR: Final = 16
TRACEFS_HEADER: Final = (
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
TGID_HEADER: Final = (
    "# tracer: nop\n#\n# entries-in-buffer/entries-written: {n}/{n}   #P:{cpus}\n#\n"
    "#                                          _-----=> irqs-off/BH-disabled\n"
    "#                                         / _----=> need-resched\n"
    "#                                        | / _---=> hardirq/softirq\n"
    "#                                        || / _--=> preempt-depth\n"
    "#                                        ||| / _-=> migrate-disable\n"
    "#                                        |||| /     delay\n"
    "#           TASK-PID       TGID    CPU#  |||||  TIMESTAMP  FUNCTION\n"
    "#              | |           |       |   |||||     |         |\n"
)

TRACE_LINES_SCHEMA: Final = pa.schema([("event", pa.string()), ("lines", pa.int64())])


def format_line(comm: str, pid: int, cpu: int, flags: str, ts: int, event: str,
                payload: str, *, tgid: int | None = None, layout: Layout = "tracefs") -> str:
    """One line of the tracefs ``trace`` file (``ts`` in ns, printed as s.us), or of
    ``trace-cmd report -t`` (``layout="ns"``: s.ns, no flags column)."""
    head = f"{comm[:15]:>16}-{pid:<7}" + ("" if tgid is None else f" ({tgid:>7})")
    if layout == "ns":
        sec, nsec = divmod(ts, 1_000_000_000)
        return f"{head} [{cpu:03d}] {sec:5d}.{nsec:09d}: {event + ':':<21} {payload}"
    sec, usec = divmod(ts // 1000, 1_000_000)
    return f"{head} [{cpu:03d}] {flags} {sec:5d}.{usec:06d}: {event}: {payload}"


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


def _child_role(level: int) -> int:
    return (TDP_ROOT_ROLE & ~0xF) | level


@dataclass
class _Vcpu:
    """What the trace last said of a vCPU thread: in the guest, in KVM, or in userspace."""

    state: str = "user"
    wait_from: int | None = None


class KernelTextTrace(Recorder):
    """Collects the trace of one run; :meth:`write` puts it in a file."""

    name = "trace_lines"

    def __init__(self, *, policy: str, sample_every: int = 1, comm: str = "max_guest_memor",
                 host_cpus: int = 8, cost: CostModel = DEFAULT_COST, layout: Layout = "tracefs",
                 tgid: bool = True) -> None:
        self.policy = policy
        self.every = max(1, sample_every)
        self.comm = comm
        self.cpus = host_cpus
        self.cost = cost
        self.layout: Layout = layout
        self.tgid = tgid
        self._lines: list[tuple[int, int, str]] = []
        self._counts: dict[str, int] = {}
        self._vcpus: dict[int, _Vcpu] = {}
        self._tables: dict[RootId, set[tuple[int, int]]] = {}
        self._zaps: dict[RootId, tuple[list[tuple[int, object]], int]] = {}

    # ---------------------------------------------------------------- emission
    def _thread(self, actor: str) -> tuple[str, int, int, int]:
        """``(comm, pid, cpu, tgid)`` of a model actor."""
        if actor.startswith("vcpu"):
            v = int(actor[4:])
            return self.comm, _VMM_PID + 1 + v, v % self.cpus, _VMM_PID
        if actor.startswith("kworker/u:"):
            slot = int(actor.split(":")[1])
            return f"kworker/u{2 * self.cpus}:{slot}", 300 + slot, slot % self.cpus, 300 + slot
        if actor.startswith("kworker/"):
            slot = int(actor.split("/")[1])
            return f"kworker/{slot % self.cpus}:1", 200 + slot, slot % self.cpus, 200 + slot
        return self.comm, _VMM_PID, self.cpus - 1, _VMM_PID

    def _emit(self, ts: int, actor: str, event: str, payload: str, flags: str = "...1.") -> None:
        comm, pid, cpu, tgid = self._thread(actor)
        line = format_line(comm, pid, cpu, flags, ts, event, payload,
                           tgid=tgid if self.tgid else None, layout=self.layout)
        self._lines.append((ts, len(self._lines), line))
        self._counts[event] = self._counts.get(event, 0) + 1

    def _vcpu(self, actor: str) -> tuple[int, _Vcpu] | None:
        if not actor.startswith("vcpu"):
            return None
        v = int(actor[4:])
        return v, self._vcpus.setdefault(v, _Vcpu())

    def _exit(self, ts: int, actor: str, reason: str, info1: int = 0) -> int:
        """Leave the guest (``kvm_exit``) at ``ts``, or at the start of the lock wait that
        kept the vCPU from doing what it exited for; returns the exit's time."""
        found = self._vcpu(actor)
        if found is None:
            return ts
        v, st = found
        at = ts
        if st.state == "guest":
            at = ts if st.wait_from is None else min(ts, st.wait_from)
            self._emit(at, actor, "kvm_exit",
                       f"vcpu {v} reason {reason} rip 0x401000 info1 0x{info1:016x} "
                       f"info2 0x{0:016x} intr_info 0x{0:08x} error_code 0x{0:08x} "
                       f"requests 0x{0:016x}", "d..1.")
        elif st.state == "user":
            self._syscall(ts, actor, "KVM_RUN", "enter")
        st.state = "host"
        st.wait_from = None
        return at

    def _entry(self, ts: int, actor: str) -> None:
        found = self._vcpu(actor)
        if found is None:
            return
        v, st = found
        self._emit(ts, actor, "kvm_entry",
                   f"vcpu {v}, rip 0x401000 intr_info 0x{0:08x} error_code 0x{0:08x}", "d..1.")
        st.state = "guest"
        st.wait_from = None

    def _syscall(self, ts: int, actor: str, name: str, phase: str) -> None:
        nr = _SYSCALL_NR.get(name, _IOCTL_NR)
        if phase == "exit":
            self._emit(ts, actor, "sys_exit", f"NR {nr} = 0")
            return
        if nr == _IOCTL_NR:
            fd = 10 + int(actor[4:]) if actor.startswith("vcpu") else 9
            args = f"{fd:x}, {IOCTL_CMDS[name]:x}, 7ffc1000, 0, 0, 0"
        else:
            args = "0, 0, 0, 0, 0, 0"
        self._emit(ts, actor, "sys_enter", f"NR {nr} ({args})")

    # ---------------------------------------------------------------- vCPU hooks
    def block(self, interval: BlockInterval) -> None:
        actor = f"vcpu{interval.vcpu}"
        found = self._vcpu(actor)
        if found is None:
            return
        _, st = found
        if interval.cause == "lock_wait" and st.state == "guest" and st.wait_from is None:
            st.wait_from = interval.start
        if interval.cause == "root_alloc":
            self._entry(interval.end, actor)

    def enter_guest(self, ts: Nanos, actor: ActorId, reload: bool) -> None:
        found = self._vcpu(actor)
        if found is None:
            return
        if reload:
            self._exit(ts, actor, "EXTERNAL_INTERRUPT")
        elif found[1].state == "user":
            self._syscall(ts, actor, "KVM_RUN", "enter")
            self._entry(ts, actor)

    def rendezvous(self, ts: Nanos, actor: ActorId, name: str) -> None:
        """A vCPU waiting for the others has left ``KVM_RUN`` (the selftests' ucall)."""
        found = self._vcpu(actor)
        if found is not None and found[1].state == "guest":
            self._to_user(ts, actor)

    def root_created(self, ts: Nanos, root: RootId, role: int, actor: ActorId) -> None:
        self._tables[root] = set()
        self._emit(ts, actor, "kvm_mmu_get_page", page_role_text(0, 0, role, 0) + " new")

    def faults(self, start: Nanos, actor: ActorId, root: RootId, faulted: list[Extent],
               installed: list[Extent], each_ns: int) -> None:
        if self.every > 1:  # one in N, without listing the leaves of a 64 TiB run
            for i, gfn, level in _nth(faulted, self.every, 0, _count(faulted)):
                t = start + i * each_ns
                self._fault(t, t + each_ns, actor, root, gfn, level,
                            any(e.start <= gfn << 12 < e.end for e in installed))
            return
        new = set(_leaves(installed))
        for i, (gfn, level) in enumerate(_leaves(faulted)):
            t = start + i * each_ns
            self._fault(t, t + each_ns, actor, root, gfn, level, (gfn, level) in new)

    def _fault(self, t: int, end: int, actor: str, root: RootId, gfn: int, level: int,
               fresh: bool) -> None:
        self._fault_head(t, actor, gfn, level)
        spte = leaf_spte(gfn, level)
        if fresh:
            self._link_tables(t, actor, root, gfn, level)
            self._emit(t, actor, "kvm_tdp_mmu_spte_changed",
                       f"as id 0 gfn {gfn:x} level {level} old_spte 0 new_spte {spte:x}")
        self._emit(t, actor, "kvm_mmu_set_spte",
                   f"gfn {gfn:x} spte {spte:x} (rwx) level {level} "
                   f"at {0xFFFF888100000000 + gfn * 8:x}")
        self._entry(end, actor)

    def _link_tables(self, t: int, actor: str, root: RootId, gfn: int, level: int) -> None:
        """``tdp_mmu_link_sp``: the child tables a leaf needs, top down."""
        have = self._tables.setdefault(root, set())
        for lvl in range(3, level - 1, -1):
            index = (gfn << 12) >> (12 + 9 * lvl)
            if (lvl, index) in have:
                continue
            have.add((lvl, index))
            base = index << (9 * lvl)
            self._emit(t, actor, "kvm_mmu_get_page",
                       page_role_text(0, base, _child_role(lvl), 0) + " new")
            self._emit(t, actor, "kvm_tdp_mmu_spte_changed",
                       f"as id 0 gfn {base:x} level {lvl + 1} old_spte 0 "
                       f"new_spte {table_spte(lvl, index):x}")

    def fault_retry(self, ts: Nanos, actor: ActorId, root: RootId, leaf: Extent) -> None:
        self._fault_head(ts, actor, leaf.start >> 12, LEVEL_OF[leaf.page])

    def _fault_head(self, ts: int, actor: str, gfn: int, level: int) -> None:
        """The exit of a fault and what the fault handler prints before taking mmu_lock."""
        at = self._exit(ts, actor, "EPT_VIOLATION", 0x182)
        self._emit(at, actor, "kvm_page_fault",
                   f"vcpu {actor[4:]} rip 0x401000 address 0x{gfn << 12:016x} error_code 0x182")
        self._emit(at, actor, "kvm_mmu_spte_requested",
                   f"gfn {gfn:x} pfn {0x100000 + gfn:x} level {level}")

    def _to_user(self, ts: int, actor: str) -> None:
        """``KVM_RUN`` returns: an I/O exit (the ucall), then ``kvm_userspace_exit``."""
        found = self._vcpu(actor)
        assert found is not None
        if found[1].state == "guest":
            self._exit(ts, actor, "IO_INSTRUCTION", 0x1F80040)
        self._emit(ts, actor, "kvm_userspace_exit", "reason KVM_EXIT_IO (2)")
        found[1].state = "user"

    def ioctl(self, ts: Nanos, actor: ActorId, name: str, phase: str) -> None:
        found = self._vcpu(actor)
        if found is not None and phase == "enter" and found[1].state != "user":
            self._to_user(ts, actor)
        if name == "exit_group" and phase == "exit":
            return
        self._syscall(ts, actor, name, phase)

    # ---------------------------------------------------------------- zaps and workers
    def fast_zap(self, ts: Nanos, actor: ActorId, generation: int) -> None:
        self._emit(ts, actor, "kvm_mmu_zap_all_fast",
                   f"kvm-mmu-valid-gen {generation} used_pages 0")

    def zapped(self, start: Nanos, end: Nanos, actor: ActorId, root: RootId,
               extents: Iterable[Extent], done_from: float, done_to: float, *,
               shape: ZapShape | None = None) -> None:
        if shape is None:
            return
        if self.every > 1:
            self._zapped_sampled(start, end, actor, list(extents), done_from, done_to)
            return
        total = sum(s.total_ns for s in shape.segments)
        if done_from <= 0.0 or root not in self._zaps:
            events = zap_events(list(extents), shape, self.cost)
            self._zaps[root] = (list(placed(events, total)), 0)
        events_at, k = self._zaps[root]
        lo, hi = round(done_from * total), round(done_to * total)
        while k < len(events_at) and (events_at[k][0] <= hi or done_to >= 1.0):
            pos, ev = events_at[k]
            k += 1
            self._zap_line(start + max(0, pos - lo), actor, ev)
        self._zaps[root] = (events_at, k)

    def _zap_line(self, t: int, actor: str, ev: object) -> None:
        from replay.render.zap_text import ZapEvent

        assert isinstance(ev, ZapEvent)
        if ev.kind == "scan":
            return
        if ev.kind == "page":
            self._emit(t, actor, "kvm_mmu_prepare_zap_page",
                       page_role_text(0, ev.gfn, _child_role(ev.level), 0))
        else:
            self._emit(t, actor, "kvm_tdp_mmu_spte_changed",
                       f"as id 0 gfn {ev.gfn:x} level {ev.level} old_spte {ev.old:x} "
                       f"new_spte {ev.new:x}")

    def walked(self, start: Nanos, end: Nanos, actor: ActorId, root: RootId,
               extents: list[Extent], removed: bool) -> None:
        n = _count(extents)
        for i, gfn, level in _nth(extents, self.every, 0, n):
            t = start + (end - start) * (i + 1) // max(1, n)
            old = leaf_spte(gfn, level)
            new = 0 if removed else old & ~0x2  # write protection clears the W bit
            self._emit(t, actor, "kvm_tdp_mmu_spte_changed",
                       f"as id 0 gfn {gfn:x} level {level} old_spte {old:x} new_spte {new:x}")

    def _zapped_sampled(self, start: int, end: int, actor: str, extents: list[Extent],
                        done_from: float, done_to: float) -> None:
        """Sampled traces: one in N zapped leaves, spread over the stretch (no tables)."""
        n = _count(extents)
        lo, hi = int(done_from * n), int(done_to * n)
        for i, gfn, level in _nth(extents, self.every, lo, hi):
            t = start + (end - start) * (i - lo) // max(1, hi - lo)
            self._emit(t, actor, "kvm_tdp_mmu_spte_changed",
                       f"as id 0 gfn {gfn:x} level {level} old_spte {leaf_spte(gfn, level):x} "
                       f"new_spte 0")

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

    # ---------------------------------------------------------------- output
    def table(self) -> pa.Table:
        names = sorted(self._counts)
        return pa.Table.from_pydict(
            {"event": names, "lines": [self._counts[n] for n in names]}, schema=TRACE_LINES_SCHEMA
        )

    def header(self) -> str:
        """The file's header: the layout's own, plus the sampling note when sampled."""
        n = len(self._lines)
        if self.layout == "ns":
            head = f"cpus={self.cpus}\n"
        else:
            head = (TGID_HEADER if self.tgid else TRACEFS_HEADER).format(n=n, cpus=self.cpus)
        if self.every > 1:
            head += (f"{SAMPLED_MARK} 1 in {self.every} faults and zapped SPTEs "
                     f"(kvm-mmu-replay scenario --sample-every {self.every})\n")
        return head

    def write(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the trace, sorted by (time, emission order), by the output policy of
        :func:`parsers.output.output_file` (an existing file is replaced only with ``force``)."""
        self._lines.sort()
        with output_file(path, force=force) as fh:
            out = io.TextIOWrapper(fh, encoding="utf-8", newline="\n")
            out.write(self.header())
            for _, _, line in self._lines:
                out.write(line)
                out.write("\n")
            out.flush()
            out.detach()
        return Path(path)


def _leaves(extents: list[Extent]) -> list[tuple[int, int]]:
    """``(gfn, level)`` of every leaf of ``extents``, in order."""
    out: list[tuple[int, int]] = []
    for e in extents:
        level = LEVEL_OF[e.page]
        out.extend(((start >> 12), level) for start in range(e.start, e.end, e.page))
    return out


def _count(extents: list[Extent]) -> int:
    return sum(e.size // e.page for e in extents)


def _nth(extents: list[Extent], every: int, lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
    """``(index, gfn, level)`` of the leaves ``lo <= index < hi`` of ``extents`` whose index
    is a multiple of ``every``, without walking the others."""
    base = 0
    for e in extents:
        n = e.size // e.page
        k = max(lo, base)
        k = -(-k // every) * every
        while k < min(hi, base + n):
            yield k, (e.start + (k - base) * e.page) >> 12, LEVEL_OF[e.page]
            k += every
        base += n
        if base >= hi:
            return
