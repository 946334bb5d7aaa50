"""Turn a derived workload's absolute times into what caused them, so other eras can replay it.

A derived step happens at the trace's time. Under another era the same workload runs
faster or slower, so a step must start when what it waited for is done, not at the
recorded instant. With the thread boundaries a syscall-traced recording gives
(``kvm_entry``/``kvm_exit``, ``kvm_userspace_exit``, ``sys_enter``/``sys_exit``), each
thread's time between its steps is split into:

* guest time (after a ``kvm_entry``, kick exits included): :class:`Run` of that length —
  the model's guest reacts to kicks itself;
* time in userspace (after ``kvm_userspace_exit`` or an ioctl's ``sys_exit``, until the next
  ``KVM_RUN`` or ioctl): a wait. Where such waits of several threads end at the instant one
  of them arrived (a barrier's release is its last arrival), the waiters are one
  :class:`Rendezvous`; what is left is a :class:`Sleep`.

A vCPU's ``KVM_RUN`` whose root load runs straight into its next step belongs to that step
(its ``kvm_mmu_reload``); root loads are not steps of their own here: the step or the run
after them does the load, as the vCPU would.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from parsers.trace import Trace
from replay.infer.calls import Call
from replay.model.workload import Op, Rendezvous, Run, Sleep, VcpuOp

__all__ = ["Timed", "relativize"]

_ENTRY, _EXIT, _USER, _RUN = "entry", "exit", "user", "run"
_NEVER: Final = np.iinfo(np.int64).max


@dataclass
class Timed:
    """A derived step: its operation, trace seq, evidence, and from the trace the seq of the
    event that asked for it (``from_seq``) and when its activity ended (``until``,
    ``until_seq``; None: it never ends before the trace does)."""

    op: Op
    seq: int
    evidence: str
    confidence: str
    from_seq: int
    until: int | None
    until_seq: int | None


@dataclass
class _Wait:
    """A thread outside the guest with nothing to do, from ``start`` to ``end`` (None: to
    the end of the trace); ``first``/``last`` are the trace positions bounding it."""

    actor: str
    start: int
    end: int | None
    slot: int
    first: int
    last: int | None


@dataclass
class _Actor:
    name: str
    ops: list[tuple[Op, str, int]] = field(default_factory=list)  # op, evidence, seq
    waits: list[_Wait] = field(default_factory=list)

    def run(self, d: int, why: str, seq: int) -> None:
        if d > 0:
            self.ops.append((Run(vcpu=int(self.name[4:]), duration=d), why, seq))

    def wait(self, start: int, end: int | None, first: int, last: int | None) -> None:
        self.waits.append(_Wait(self.name, start, end, len(self.ops), first, last))


def _boundaries(trace: Trace, calls: list[Call], pids: list[int]
                ) -> dict[int, list[tuple[int, int, str]]]:
    """Per thread of ``pids``: ``(seq, ts, kind)`` of its entries, exits, userspace exits
    and ``KVM_RUN``s, in trace order."""
    out: dict[int, list[tuple[int, int, str]]] = {p: [] for p in pids}
    for name, kind in (("kvm_entry", _ENTRY), ("kvm_exit", _EXIT),
                       ("kvm_userspace_exit", _USER)):
        if name in trace.names:
            t = trace.table(name).select(["seq", "ts", "pid"]).to_pandas()
            t = t[t["pid"].isin(pids)]
            for pid, g in t.groupby("pid"):
                out[int(pid)] += [(int(q), int(s), kind) for q, s in zip(
                    g["seq"].tolist(), g["ts"].tolist(), strict=True)]
    for c in calls:
        if c.name == "KVM_RUN" and c.pid in out:
            out[c.pid].append((c.start_seq, c.start, _RUN))
    return {p: sorted(v) for p, v in out.items()}


class _VcpuSpans:
    """The state walk of :func:`_vcpu`: in userspace, in KVM after ``KVM_RUN`` (its root
    load), or in the guest (kick exits included)."""

    def __init__(self, actor: _Actor) -> None:
        self.actor = actor
        self.state = "user"
        self.since = 0
        self.since_seq = -1  # the trace position where the current span began
        self.entered: int | None = None  # entry ending the load after a KVM_RUN

    def mark(self, seq: int, ts: int, kind: str) -> None:
        if kind == _USER and self.state != "user":
            self.close_guest(ts, step=False)
            self.state, self.since, self.since_seq = "user", ts, seq
        elif kind == _RUN and self.state == "user":
            self.actor.wait(self.since, ts, self.since_seq, seq)
            self.state, self.since, self.entered = "host", ts, None
            self.since_seq = seq
        elif kind == _ENTRY and self.state == "host":
            self.state, self.entered = "guest", ts

    def close_guest(self, ts: int, *, step: bool) -> bool:
        """The guest time up to ``ts`` ends (a step, or an exit to userspace); True when
        the step begins with the load after ``KVM_RUN`` (the step's own reload)."""
        if self.entered is not None:
            if step and ts <= self.entered:
                return True
            self.actor.ops.append((Run(vcpu=int(self.actor.name[4:]), duration=0),
                                   f"KVM_RUN at {self.since}: root load until {self.entered}",
                                   self.since_seq))
            self.since, self.entered = self.entered, None
        self.actor.run(ts - self.since, f"guest time from {self.since} to {ts}",
                       self.since_seq)
        return False


def _vcpu(actor: _Actor, steps: list[Timed], marks: list[tuple[int, int, str]]) -> None:
    """Split a vCPU's time between its steps into runs and waits (module doc)."""
    walk = _VcpuSpans(actor)
    k = 0
    for st in sorted(steps, key=lambda s: (s.from_seq, s.seq)):
        while k < len(marks) and marks[k][0] < st.from_seq:
            walk.mark(*marks[k])
            k += 1
        began = st.from_seq
        if walk.state == "user":
            actor.wait(walk.since, st.op.at, walk.since_seq, st.from_seq)
        elif walk.close_guest(st.op.at, step=True):
            began = walk.since_seq  # its KVM_RUN: what the thread did first for it
        actor.ops.append((st.op, st.evidence, began))
        walk.since = st.until if st.until is not None else st.op.at
        walk.since_seq = st.until_seq if st.until_seq is not None else st.from_seq
        walk.state = "user" if type(st.op).__name__ in ("SetSregs", "Unload") else "guest"
        walk.entered = None
        while k < len(marks) and st.until_seq is not None and marks[k][0] <= st.until_seq:
            k += 1
    for m in marks[k:]:
        walk.mark(*m)
    if walk.state == "user":
        actor.wait(walk.since, None, walk.since_seq, None)


def _vmm(actor: _Actor, steps: list[Timed], calls: list[Call]) -> None:
    """A VMM thread: busy in its system calls, waiting between them."""
    by_start = {st.from_seq: st for st in steps}
    since, since_seq = 0, -1
    for c in calls:
        actor.wait(since, c.start, since_seq, c.start_seq)
        st = by_start.pop(c.start_seq, None)
        if st is not None:
            actor.ops.append((st.op, st.evidence, st.from_seq))
        since = c.end if c.end is not None else c.start
        since_seq = c.end_seq if c.end_seq is not None else c.start_seq
    for st in by_start.values():  # steps outside any call (none in syscall-traced traces)
        actor.wait(since, st.op.at, since_seq, st.from_seq)
        actor.ops.append((st.op, st.evidence, st.from_seq))
        since = st.until if st.until is not None else st.op.at
        since_seq = st.until_seq if st.until_seq is not None else st.from_seq


def _releases(waits: list[_Wait]) -> dict[int, int]:
    """Instants a wait may have ended for, with the trace position of the arrival that
    ended it: another thread arrived (began waiting) then, and somebody had been waiting
    until that instant or was still waiting past it. The arrival is the last one before
    the first waiter went on (a thread's own arrivals never release it)."""
    arrivals: dict[int, list[_Wait]] = {}
    for w in waits:
        arrivals.setdefault(w.start, []).append(w)
    instants = sorted(arrivals)
    candidates: dict[int, int] = {}  # instant -> trace position the first waiter left at
    for w in waits:
        hi = _NEVER if w.end is None else w.end
        if hi <= w.start:
            continue
        if w.end is not None and any(b.actor != w.actor for b in arrivals.get(w.end, [])):
            left = _NEVER if w.last is None else w.last
            candidates[w.end] = min(candidates.get(w.end, left), left)
        k = bisect.bisect_right(instants, w.start)
        while k < len(instants) and instants[k] < hi:
            at = instants[k]
            k += 1
            bs = arrivals[at]
            if any(b.actor != w.actor and (b.end is None or b.end > at) for b in bs) or \
                    len({b.actor for b in bs} - {w.actor}) > 1:  # several arrived at once
                candidates.setdefault(at, _NEVER)
    out: dict[int, int] = {}
    for at, left in candidates.items():
        before = [b.first for b in arrivals.get(at, []) if b.first < left]
        if before:
            out[at] = max(before)
    return out


def _barriers(actors: list[_Actor]) -> None:
    """Waits that end when another thread arrives are rendezvous; the rest are sleeps."""
    waits = [w for a in actors for w in a.waits]
    found = _releases(waits)
    releases = sorted(found)
    parties: dict[int, int] = {}
    chosen: dict[tuple[str, int], _Wait] = {}
    # a thread takes part through the wait it was in when the last thread arrived (trace
    # order tells which, when a call of no duration sits at the instant)
    for w in sorted(waits, key=lambda w: (-w.start, -w.slot)):
        hi = _NEVER if w.end is None else w.end
        lo = int(np.searchsorted(releases, w.start, side="left"))
        for r in releases[lo:]:
            if r > hi:
                break
            if w.first > found[r] or (w.last is not None and w.last < found[r]):
                continue  # it began waiting after that arrival, or went on before it
            if (w.actor, r) not in chosen:
                chosen[(w.actor, r)] = w
                parties[r] = parties.get(r, 0) + 1
    for a in actors:
        inserts: dict[int, list[tuple[Op, str, int]]] = {}
        for w in a.waits:
            mine = sorted(r for (who, r), ww in chosen.items() if who == a.name and ww is w)
            ops: list[tuple[Op, str, int]] = [
                (Rendezvous(actor=a.name, name=f"release@{r}", parties=parties[r]),
                 f"waited from {w.start}; {parties[r]} threads resumed together at {r}, when "
                 f"the last arrived: a barrier", -1) for r in mine]
            last = mine[-1] if mine else w.start
            if w.end is not None and w.end > last:
                ops.append((Sleep(actor=a.name, duration=w.end - last),
                            f"outside the guest from {last} to {w.end}", -1))
            inserts.setdefault(w.slot, []).extend(ops)
        out: list[tuple[Op, str, int]] = []
        for i in range(len(a.ops) + 1):
            out += inserts.get(i, [])
            if i < len(a.ops):
                out.append(a.ops[i])
        a.ops = _ordered(out)


def _ordered(ops: list[tuple[Op, str, int]]) -> list[tuple[Op, str, int]]:
    """Each rendezvous ordered by the trace position of what its thread did next (a thread
    with nothing left to do goes first: it does nothing)."""
    out = list(ops)
    nxt = -1
    for i in range(len(out) - 1, -1, -1):
        op, why, seq = out[i]
        if isinstance(op, Rendezvous):
            out[i] = (Rendezvous(actor=op.actor, name=op.name, parties=op.parties, order=nxt),
                      why, seq)
        elif seq >= 0:
            nxt = seq
    return out


def relativize(trace: Trace, calls: list[Call], pids: dict[str, int],
               steps: list[Timed]) -> list[tuple[Op, str, int]]:
    """The steps of one VM (its actors' pids in ``pids``) as a workload whose operations
    start when what they waited for is done: ``(op, evidence, seq)`` in actor order.

    Every operation gets ``at=0``; the time between a thread's steps becomes runs, sleeps and
    rendezvous (module doc)."""
    from dataclasses import replace

    actors: list[_Actor] = []
    marks = _boundaries(trace, calls, [p for n, p in pids.items() if n.startswith("vcpu")])
    for name, pid in pids.items():
        mine = [st for st in steps if st.op.actor == name]
        a = _Actor(name)
        if name.startswith("vcpu"):
            _vcpu(a, [st for st in mine if isinstance(st.op, VcpuOp)], marks[pid])
        else:
            _vmm(a, mine, [c for c in calls if c.pid == pid])
        actors.append(a)
    _barriers(actors)
    return [(replace(op, at=0), why, seq) for a in actors for op, why, seq in a.ops]
