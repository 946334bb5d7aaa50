"""What the packets besides the events say: who each pid is, and the ring buffer's losses.

:class:`ThreadMap`: ``comm`` and ``tgid`` from ProcessTree and TrackDescriptor packets, and
the vCPU a KVM thread runs (from its ``CPU n/KVM`` name or from events that carry it).
Perfetto does not put ``comm``/``tgid`` on ftrace events: traced_probes' process-stats data
source writes ``ProcessTree`` packets (``Process { pid, cmdline }``, ``Thread { tid, tgid,
name }``), and SDK producers write ``TrackDescriptor`` s with thread/process descriptors.

:class:`FtraceStatsLog`: ``FtraceStats`` packets, the kernel ring buffer's per-CPU counters.
traced_probes writes one at the start (``phase = START_OF_TRACE``) and one at the end
(``END_OF_TRACE``); ``overrun`` counts events the kernel overwrote before they were read.
Perfetto keeps no per-loss count (a bundle only says ``lost_events = true``), so the
difference is reported as a warning per CPU.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Final

from parsers.perfetto.protos import field_number
from parsers.perfetto.wire import LEN, VARINT, iter_fields

__all__ = ["ThreadMap", "VCPU_THREAD_RE", "FtraceStatsLog"]

#: QEMU's (and most VMMs') vCPU thread name, e.g. ``CPU 1/KVM``.
VCPU_THREAD_RE: Final = re.compile(r"^CPU (\d+)/KVM$")
_COMM_LEN: Final = 15  # TASK_COMM_LEN - 1


def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _text(data: bytes, at: int, n: int) -> str:
    return bytes(data[at:at + n]).decode("utf-8", "replace")


@dataclass
class ThreadMap:
    """``pid -> (comm, tgid)`` as last described by the packets read so far."""

    known: dict[int, tuple[str | None, int | None]] = field(default_factory=dict)
    vcpu_by_pid: dict[int, int] = field(default_factory=dict)

    def apply_process_tree(self, data: bytes, start: int, end: int) -> None:
        """Apply one ``ProcessTree`` message (``data[start:end]``)."""
        pt = "ProcessTree"
        for number, wire, value, at in iter_fields(data, start, end):
            if wire != LEN:
                continue
            if number == field_number(pt, "processes"):
                self._process(data, at, at + value)
            elif number == field_number(pt, "threads"):
                self._thread(data, at, at + value)

    def _process(self, data: bytes, start: int, end: int) -> None:
        p = "ProcessTree.Process"
        pid, cmdline, is_comm = None, None, False
        for number, wire, value, at in iter_fields(data, start, end):
            if number == field_number(p, "pid") and wire == VARINT:
                pid = _int32(value)
            elif number == field_number(p, "cmdline") and wire == LEN and cmdline is None:
                cmdline = _text(data, at, value)
            elif number == field_number(p, "cmdline_is_comm") and wire == VARINT:
                is_comm = bool(value)
        if pid is None:
            return
        comm = cmdline
        if cmdline is not None and not is_comm:
            comm = os.path.basename(cmdline)[:_COMM_LEN] or None
        self.known[pid] = (comm, pid)

    def _thread(self, data: bytes, start: int, end: int) -> None:
        t = "ProcessTree.Thread"
        tid, tgid, name = None, None, None
        for number, wire, value, at in iter_fields(data, start, end):
            if number == field_number(t, "tid") and wire == VARINT:
                tid = _int32(value)
            elif number == field_number(t, "tgid") and wire == VARINT:
                tgid = _int32(value)
            elif number == field_number(t, "name") and wire == LEN:
                name = _text(data, at, value)
        if tid is not None:
            self.known[tid] = (name, tgid)

    def apply_track_descriptor(self, data: bytes, start: int, end: int) -> None:
        """Apply the thread or process descriptor of one ``TrackDescriptor``."""
        td = "TrackDescriptor"
        for number, wire, value, at in iter_fields(data, start, end):
            if wire == LEN and number == field_number(td, "thread"):
                self._descriptor(data, at, at + value, "ThreadDescriptor", "tid", "thread_name")
            elif wire == LEN and number == field_number(td, "process"):
                self._descriptor(data, at, at + value, "ProcessDescriptor", "pid", "process_name")

    def _descriptor(self, data: bytes, start: int, end: int, msg: str, key: str,
                    name_field: str) -> None:
        ids: dict[str, int] = {}
        name = None
        for number, wire, value, at in iter_fields(data, start, end):
            if wire == VARINT and number in (field_number(msg, "pid"), field_number(msg, key)):
                ids["pid" if number == field_number(msg, "pid") else key] = _int32(value)
            elif wire == LEN and number == field_number(msg, name_field):
                name = _text(data, at, value)
        who = ids.get(key)
        if who is not None:
            old_name = self.known.get(who, (None, None))[0]
            self.known[who] = (name if name is not None else old_name, ids.get("pid"))

    def lookup(self, pid: int) -> tuple[str | None, int | None]:
        """``(comm, tgid)`` of ``pid`` (``None`` where unknown)."""
        return self.known.get(pid, (None, None))

    def vcpu_of(self, pid: int) -> tuple[int | None, str]:
        """The vCPU index thread ``pid`` runs, and how it was learnt (``""`` if unknown)."""
        comm = self.known.get(pid, (None, None))[0]
        if comm is not None:
            m = VCPU_THREAD_RE.match(comm)
            if m:
                return int(m.group(1)), "thread-name"
        found = self.vcpu_by_pid.get(pid)
        return (found, "other-events") if found is not None else (None, "")


_START, _END = 1, 2  # FtraceStats.Phase


@dataclass
class FtraceStatsLog:
    """Per-phase, per-CPU ``(overrun, dropped_events)`` counters seen in the trace."""

    phases: dict[int, dict[int, tuple[int, int]]] = field(default_factory=dict)

    def apply(self, data: bytes, start: int, end: int) -> None:
        """Record one ``FtraceStats`` message (``data[start:end]``)."""
        phase = 0
        cpus: dict[int, tuple[int, int]] = {}
        for number, wire, value, at in iter_fields(data, start, end):
            if number == field_number("FtraceStats", "phase") and wire == VARINT:
                phase = value
            elif number == field_number("FtraceStats", "cpu_stats") and wire == LEN:
                cpu, counters = self._cpu(data, at, at + value)
                cpus[cpu] = counters
        self.phases.setdefault(phase, {}).update(cpus)

    @staticmethod
    def _cpu(data: bytes, start: int, end: int) -> tuple[int, tuple[int, int]]:
        c = "FtraceCpuStats"
        cpu, overrun, dropped = 0, 0, 0
        for number, wire, value, _ in iter_fields(data, start, end):
            if wire != VARINT:
                continue
            if number == field_number(c, "cpu"):
                cpu = value
            elif number == field_number(c, "overrun"):
                overrun = value
            elif number == field_number(c, "dropped_events"):
                dropped = value
        return cpu, (overrun, dropped)

    def lost_per_cpu(self) -> dict[int, int]:
        """Events lost during the trace per CPU (end minus start overrun, plus drops)."""
        end = self.phases.get(_END, {})
        start = self.phases.get(_START, {})
        out: dict[int, int] = {}
        for cpu, (overrun, dropped) in end.items():
            o0, d0 = start.get(cpu, (0, 0))
            lost = max(overrun - o0, 0) + max(dropped - d0, 0)
            if lost:
                out[cpu] = lost
        return dict(sorted(out.items()))

    def warnings(self) -> list[str]:
        """One line per CPU that lost events according to the stats."""
        return [f"ftrace_stats: CPU {cpu} lost {n} events (ring buffer overrun)"
                for cpu, n in self.lost_per_cpu().items()]
