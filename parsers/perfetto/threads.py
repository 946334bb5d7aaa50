"""Who each pid is: ``comm`` and ``tgid`` from ProcessTree and TrackDescriptor packets,
and the vCPU a KVM thread runs (from its ``CPU n/KVM`` name or from events that carry it).

Perfetto does not put ``comm``/``tgid`` on ftrace events: traced_probes' process-stats data
source writes ``ProcessTree`` packets (``Process { pid, cmdline }``, ``Thread { tid, tgid,
name }``), and SDK producers write ``TrackDescriptor`` s with thread/process descriptors.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Final

from parsers.perfetto.protos import field_number
from parsers.perfetto.wire import LEN, VARINT, iter_fields

__all__ = ["ThreadMap", "VCPU_THREAD_RE"]

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
