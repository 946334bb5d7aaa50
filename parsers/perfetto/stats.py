"""``FtraceStats`` packets: the kernel ring buffer's per-CPU counters at trace start and end.

traced_probes writes one ``FtraceStats`` at the start (``phase = START_OF_TRACE``) and one at
the end (``END_OF_TRACE``); ``overrun`` counts events the kernel overwrote before they were
read. Perfetto keeps no per-loss count (a bundle only says ``lost_events = true``), so the
difference is reported as a warning per CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parsers.perfetto.protos import field_number
from parsers.perfetto.wire import LEN, VARINT, iter_fields

__all__ = ["FtraceStatsLog"]

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
