"""What a thread was doing outside the guest: system calls, exits, and when a step was asked.

A recording with ``raw_syscalls`` shows each ioctl as ``sys_enter: NR 16 (fd, cmd, ...)``
and ``sys_exit: NR 16 = ret`` (x86_64 numbers; ``cmd`` from include/uapi/linux/kvm.h). A
vCPU that leaves ``KVM_RUN`` prints ``kvm_userspace_exit``; the ioctls it then issues
(``KVM_SET_SREGS``: ``kvm_mmu_reset_context``) run outside the guest until its next
``kvm_entry``.

A step's *request time* is when the thread began the stay outside the guest in which it
happened: its last ``kvm_exit`` or ``KVM_RUN`` entry after its previous ``kvm_entry``
(else the step's own time). A root load or a fault that waited for ``mmu_lock`` is traced
only once it holds the lock; the replay must start it when it was asked for, so the wait is
replayed rather than lost.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from parsers.trace import Trace, rows_named

__all__ = ["Call", "syscalls", "RequestTimes", "IOCTL_NAMES", "enclosing_call", "vm_of_call"]

_ENTER_RE: Final = re.compile(r"NR (\d+) \(([0-9a-f]+), ([0-9a-f]+)")
_EXIT_RE: Final = re.compile(r"NR (\d+) = ")
_IOCTL: Final = 16
#: ioctl numbers the derivation reads (include/uapi/linux/kvm.h).
IOCTL_NAMES: Final = {
    0xAE80: "KVM_RUN", 0x4138AE84: "KVM_SET_SREGS", 0x4008AE90: "KVM_SET_CPUID2",
    0x4020AE46: "KVM_SET_USER_MEMORY_REGION", 0xC018AEC0: "KVM_CLEAR_DIRTY_LOG",
    0x4010AE42: "KVM_GET_DIRTY_LOG", 0x4140AECD: "KVM_SET_SREGS2",
}
_NAMES_OF_NR: Final = {1: "write", 231: "exit_group", 60: "exit"}


@dataclass(frozen=True)
class Call:
    """One system call of one thread: ``name`` (the ioctl's name, or the syscall's),
    ``start``/``start_seq`` at ``sys_enter``, ``end`` at its ``sys_exit`` (None: none)."""

    pid: int
    name: str
    start: int
    start_seq: int
    end: int | None
    end_seq: int | None = None
    tgid: int | None = None


def syscalls(trace: Trace) -> list[Call]:
    """Every traced system call the derivation knows, in trace order."""
    rows = rows_named(trace.events, ["sys_enter", "sys_exit"],
                      ["seq", "ts", "pid", "tgid", "event", "args"])
    if not rows.num_rows:
        return []
    open_: dict[int, tuple[str, int, int]] = {}
    out: list[Call] = []
    tgids: dict[int, int] = {}
    for seq, ts, pid, tgid, event, args in zip(*(rows.column(c).to_pylist() for c in (
            "seq", "ts", "pid", "tgid", "event", "args")), strict=True):
        if pid is None or ts is None:
            continue
        if tgid is not None:
            tgids[pid] = tgid
        if event == "sys_enter":
            m = _ENTER_RE.search(args or "")
            if not m:
                continue
            nr = int(m[1])
            name = IOCTL_NAMES.get(int(m[3], 16), "ioctl") if nr == _IOCTL else \
                _NAMES_OF_NR.get(nr, f"syscall {nr}")
            if pid in open_:
                out.append(Call(pid, open_[pid][0], open_[pid][1], open_[pid][2], None))
            open_[pid] = (name, ts, seq)
        elif pid in open_ and _EXIT_RE.search(args or ""):
            name, start, sseq = open_.pop(pid)
            out.append(Call(pid, name, start, sseq, ts, seq))
    out += [Call(pid, n, s, q, None) for pid, (n, s, q) in open_.items()]
    out = [dataclasses.replace(c, tgid=tgids.get(c.pid)) for c in out]
    return sorted(out, key=lambda c: c.start_seq)


def vm_of_call(call: Call, vm_of: dict[int, int]) -> int | None:
    """The VM of a call's thread: its own, or (a thread with no KVM event, such as a VMM
    that only exits) its process's when the trace has tgids."""
    return vm_of.get(call.pid, call.tgid if call.tgid in set(vm_of.values()) else None)


class RequestTimes:
    """Per vCPU thread: when each stay outside the guest began (see the module doc)."""

    def __init__(self, trace: Trace, calls: list[Call] | None) -> None:
        """``calls`` None: no syscalls traced; every step's request time is its own."""
        self._entries: dict[int, np.ndarray] = {}
        self._starts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if calls is None:
            return
        frames = [trace.table(name).select(["seq", "ts", "pid"]).to_pandas()
                  for name in ("kvm_exit", "kvm_userspace_exit") if name in trace.names]
        runs = [(c.start_seq, c.start, c.pid) for c in calls if c.name == "KVM_RUN"]
        frames.append(pd.DataFrame(runs, columns=["seq", "ts", "pid"]))
        every = pd.concat(frames, ignore_index=True).dropna().astype(np.int64)
        for pid, g in every.sort_values("seq", kind="stable").groupby("pid"):
            self._starts[int(pid)] = (g["seq"].to_numpy(dtype=np.int64),
                                      g["ts"].to_numpy(dtype=np.int64))
        if "kvm_entry" in trace.names:
            t = trace.table("kvm_entry").select(["seq", "pid"]).to_pandas()
            for pid, g in t.groupby("pid"):
                self._entries[int(pid)] = np.sort(g["seq"].to_numpy(dtype=np.int64))

    def at(self, pid: int, seq: int, ts: int) -> int:
        """The request time of a step traced at ``(seq, ts)`` by thread ``pid``."""
        return self.start(pid, seq, ts)[0]

    def starts(self, pid: int, seq: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`start` of many steps of one thread at once: ``(ts, seq)`` arrays."""
        found = self._starts.get(pid)
        if found is None or not seq.size:
            return ts.copy(), seq.copy()
        sseq, sts = found
        k = np.searchsorted(sseq, seq, side="left") - 1
        ok = k >= 0
        entries = self._entries.get(pid)
        if entries is not None and entries.size:
            j = np.searchsorted(entries, seq, side="left") - 1
            ok &= ~((j >= 0) & (entries[np.maximum(j, 0)] > sseq[np.maximum(k, 0)]))
        kk = np.maximum(k, 0)
        return np.where(ok, sts[kk], ts), np.where(ok, sseq[kk], seq)

    def start(self, pid: int, seq: int, ts: int) -> tuple[int, int]:
        """``(ts, seq)`` of the event that asked for the step traced at ``(seq, ts)``."""
        found = self._starts.get(pid)
        if found is None:
            return ts, seq
        sseq, sts = found
        k = int(np.searchsorted(sseq, seq, side="left")) - 1
        if k < 0:
            return ts, seq
        entries = self._entries.get(pid)
        if entries is not None:
            j = int(np.searchsorted(entries, seq, side="left")) - 1
            if j >= 0 and entries[j] > sseq[k]:
                return ts, seq  # back in the guest since: asked for when traced
        return int(sts[k]), int(sseq[k])


def enclosing_call(calls: list[Call], pid: int, seq: int, ts: int) -> Call | None:
    """The system call thread ``pid`` was in at ``(seq, ts)`` (entered before, not left)."""
    found = None
    for c in calls:
        if c.start_seq > seq:
            break
        if c.pid == pid and (c.end is None or c.end >= ts):
            found = c
    return found
