"""MMU resets a recording shows by their cause: control-register and EFER writes.

Kernel paths (arch/x86/kvm/x86.c; the same from 5.x to 6.18):

* ``handle_cr`` (VMX) / ``cr_interception`` (SVM) print ``kvm_cr: cr_write N = 0xV``
  (``trace_kvm_cr_write``) and call ``kvm_set_cr0``/``kvm_set_cr4``; ``kvm_post_set_cr0``
  resets the MMU context (``kvm_mmu_reset_context`` → ``kvm_mmu_unload``) when a bit of
  ``KVM_MMU_CR0_ROLE_BITS`` (PG, WP) changes, ``kvm_post_set_cr4`` when one of
  ``KVM_MMU_CR4_ROLE_BITS`` (PSE, PAE, LA57, SMEP, SMAP, PKE) does.
* ``kvm_msr: msr_write c0000080 = 0xV`` (``trace_kvm_msr_write`` in ``kvm_emulate_wrmsr``):
  ``set_efer`` resets the context when EFER.NX or EFER.LMA change.
* The trace prints the new value only. A write is a reset when the vCPU's previous value
  of that register (an earlier ``cr_read``/``cr_write``/``msr_read``/``msr_write`` of the
  same thread) differs in a role bit, or when the reset's consequences follow on the same
  thread before its next ``kvm_entry``: SPTE zaps (<= 5.17: the last put of a still-valid
  root tears it down inline, ``kvm_tdp_mmu_put_root`` → ``zap_gfn_range``), a queued
  ``tdp_mmu_zap_root_work`` (5.18 .. 6.3), or a new root ``kvm_mmu_get_page``.

A reset derives a :class:`~replay.model.workload.SetSregs` (CR0: the model's role carries
CR0.WP in the eras whose TDP role did) or an :class:`~replay.model.workload.Unload`
(CR4, EFER) at the write, and a :class:`~replay.model.workload.LoadRoot` at the next entry.
A zap burst on that thread is the put of the vCPU's last reference: the root it zaps held
exactly the leaves the burst removes, so those not faulted earlier in the trace were mapped
before it began (a pre-trace ``Populate`` of that vCPU, at :data:`PRETRACE_AT`), and the
vCPU was the root's only holder: its role differed from the others' (for CR0, the previous
CR0.WP was the other value).
Any other inline teardown by a vCPU thread (the zap of a top-level entry, after a reset no
control write shows, e.g. ``KVM_SET_SREGS``) gives its pre-trace population the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from parsers.trace import Trace, rows_named
from replay.infer.observed import SPTE_PRESENT
from replay.infer.root_pages import tdp_root_level
from replay.infer.threads import Confidence, ThreadMap
from replay.model.ids import PAGE_1G, PAGE_2M, PAGE_4K
from replay.model.workload import LoadRoot, Op, Populate, SetSregs, Unload

__all__ = ["ControlWrite", "PlannedStep", "ResetPlan", "control_writes", "plan_resets",
           "ROLE_BITS", "EFER_MSR", "CR0_WP", "PRETRACE_AT"]

#: ``at`` of the state a vCPU was in when the trace began (its CR0.WP, root, population):
#: replayed at time 0, long before the first event, so that its faults delay nothing the
#: trace shows (the replay drops blocks that end before the trace's first event).
PRETRACE_AT: Final = 0
#: ``MSR_EFER``.
EFER_MSR: Final = 0xC0000080
#: ``X86_CR0_WP``.
CR0_WP: Final = 1 << 16
#: Bits whose change resets the MMU context, per register (``KVM_MMU_CR0_ROLE_BITS``,
#: ``KVM_MMU_CR4_ROLE_BITS``, ``KVM_MMU_EFER_ROLE_BITS``).
ROLE_BITS: Final = {
    "cr0": (1 << 31) | CR0_WP,
    "cr4": (1 << 4) | (1 << 5) | (1 << 12) | (1 << 20) | (1 << 21) | (1 << 22),
    "efer": (1 << 11) | (1 << 10),
}
_PAGE_OF_LEVEL: Final = {1: PAGE_4K, 2: PAGE_2M, 3: PAGE_1G}
_HUGE_BIT: Final = 1 << 7
# kernel text / trace-cmd report: "cr_write 0 = 0x80050033", "msr_write c0000080 = 0xd01";
# trace.dat and report -R: "rw=1 cr=0 val=0x80050033", "write=1 ecx=0xc0000080 data=0xd01 ..."
_CR_TEXT: Final = re.compile(r"cr_(read|write) (\w+) = (0x[0-9a-fA-F]+|\d+)")
_MSR_TEXT: Final = re.compile(r"msr_(read|write) ([0-9a-fA-Fx]+) = (0x[0-9a-fA-F]+|\d+)( \(#GP\))?")
_CR_RAW: Final = re.compile(r"rw=(\w+) cr=(\w+) val=(\w+)")
_MSR_RAW: Final = re.compile(r"write=(\w+) ecx=(\w+) data=(\w+)(?: exception=(\w+))?")


@dataclass(frozen=True)
class ControlWrite:
    """One traced read or write of CR0, CR4 or EFER by a thread."""

    pid: int
    ts: int
    seq: int
    reg: str
    value: int
    write: bool


@dataclass(frozen=True)
class PlannedStep:
    """A workload operation this module derives, with its evidence."""

    vm: int
    op: Op
    seq: int
    evidence: str
    confidence: Confidence


@dataclass
class ResetPlan:
    """Operations to add, and the ``(vcpu, at)`` of the role-less ``Unload`` steps they
    replace (the same reset derived from its zap alone)."""

    add: list[PlannedStep] = field(default_factory=list)
    drop: set[tuple[int, int]] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)


def _int(text: str, hex_default: bool) -> int:
    if text.lower().startswith("0x"):
        return int(text, 16)
    return int(text, 16 if hex_default else 10)


def _parse(event: str, args: str) -> tuple[str, int, bool] | None:
    """(register, value, is_write) of one ``kvm_cr``/``kvm_msr`` payload, or None (also for
    a payload whose numbers do not parse: a damaged line tells nothing)."""
    try:
        return _parse_numbers(event, args)
    except ValueError:
        return None


def _parse_numbers(event: str, args: str) -> tuple[str, int, bool] | None:
    # the raw name=value form (trace.dat, report -R) prints each field with its printk
    # spec: cr and ecx "%x" (hex, no prefix), val and data "0x%llx"
    if event == "kvm_cr":
        m = _CR_TEXT.search(args)
        if m:
            write, cr, value = m[1] == "write", _int(m[2], True), _int(m[3], False)
        elif (m := _CR_RAW.search(args)) is not None:  # cr printed "%x", val "0x%lx"
            write, cr, value = m[1] not in ("0", "0x0"), _int(m[2], True), _int(m[3], False)
        else:
            return None
        return (f"cr{cr}", value, write) if cr in (0, 4) else None
    m = _MSR_TEXT.search(args)
    if m:
        if m[4]:
            return None  # the write raised #GP: nothing changed
        write, ecx, value = m[1] == "write", _int(m[2], True), _int(m[3], False)
    elif (m := _MSR_RAW.search(args)) is not None:
        if m[4] not in (None, "0", "0x0"):
            return None
        write, ecx, value = m[1] not in ("0", "0x0"), _int(m[2], True), _int(m[3], False)
    else:
        return None
    return ("efer", value, write) if ecx == EFER_MSR else None


def control_writes(trace: Trace) -> list[ControlWrite]:
    """Every CR0/CR4/EFER read and write the trace prints, in event order.

    Examples:
        >>> from parsers import read_trace
        >>> t = read_trace("sample_traces/quoted/lkml_cr0wp_vmx_tdp.txt")
        >>> [(w.reg, hex(w.value), w.write) for w in control_writes(t)][:2]
        [('cr0', '0x80050033', True), ('cr4', '0xb0', True)]
    """
    rows = rows_named(trace.events, ["kvm_cr", "kvm_msr"], ["pid", "ts", "seq", "event", "args"])
    out: list[ControlWrite] = []
    for pid, ts, seq, event, args in zip(*(rows.column(c).to_pylist() for c in (
            "pid", "ts", "seq", "event", "args")), strict=True):
        parsed = _parse(str(event), args or "") if pid is not None else None
        if parsed is not None:
            out.append(ControlWrite(int(pid), int(ts), int(seq), *parsed))
    return sorted(out, key=lambda w: w.seq)


def _times(trace: Trace, name: str) -> dict[int, np.ndarray]:
    """Sorted timestamps of event ``name`` per pid."""
    if name not in trace.names:
        return {}
    df = trace.table(name).select(["pid", "ts"]).to_pandas().dropna()
    return {int(p): np.sort(g["ts"].to_numpy(dtype=np.int64)) for p, g in df.groupby("pid")}


def _zap_rows(trace: Trace) -> pd.DataFrame:
    """SPTE zaps (present → non-present) and ``prepare_zap_page``: pid, ts, seq, and for the
    SPTEs gfn, level and whether the old SPTE was a leaf."""
    frames = []
    if "kvm_tdp_mmu_spte_changed" in trace.names:
        t = trace.table("kvm_tdp_mmu_spte_changed").select(
            ["pid", "ts", "seq", "gfn", "level", "old_spte", "new_spte"]).to_pandas()
        old = t["old_spte"].fillna(0).astype(np.uint64)
        new = t["new_spte"].fillna(0).astype(np.uint64)
        gone = ((old & SPTE_PRESENT) != 0) & ((new & SPTE_PRESENT) == 0)
        t = t[gone].assign(leaf=((t["level"] == 1) | ((old & _HUGE_BIT) != 0))[gone])
        frames.append(t[["pid", "ts", "seq", "gfn", "level", "leaf"]])
    if "kvm_mmu_prepare_zap_page" in trace.names:
        z = trace.table("kvm_mmu_prepare_zap_page").select(["pid", "ts", "seq"]).to_pandas()
        frames.append(z.assign(gfn=pd.NA, level=pd.NA, leaf=False))
    if not frames:
        return pd.DataFrame(columns=["pid", "ts", "seq", "gfn", "level", "leaf"])
    rows = pd.concat(frames, ignore_index=True).dropna(subset=["pid"])
    return rows.sort_values("seq", kind="stable").reset_index(drop=True)


def _new_roots(trace: Trace) -> dict[int, np.ndarray]:
    """Times of root ``kvm_mmu_get_page ... new`` per pid (the highest level traced)."""
    if "kvm_mmu_get_page" not in trace.names:
        return {}
    t = trace.table("kvm_mmu_get_page").select(["pid", "ts", "level", "created"]).to_pandas()
    if t.empty:
        return {}
    t = t[(t["created"] == True) & (t["level"] == t["level"].max())]  # noqa: E712
    return {int(p): np.sort(g["ts"].to_numpy(dtype=np.int64)) for p, g in t.groupby("pid")}


def _between(times: np.ndarray | None, lo: int, hi: int) -> int:
    """How many sorted ``times`` lie in ``(lo, hi]``."""
    if times is None or not times.size:
        return 0
    return int(np.searchsorted(times, hi, side="right") - np.searchsorted(times, lo, side="right"))


def _after(times: np.ndarray | None, ts: int) -> int | None:
    if times is None:
        return None
    k = int(np.searchsorted(times, ts, side="right"))
    return int(times[k]) if k < times.size else None


def _before(times: np.ndarray | None, ts: int) -> int | None:
    if times is None:
        return None
    k = int(np.searchsorted(times, ts, side="right"))
    return int(times[k - 1]) if k else None


@dataclass(frozen=True)
class _Window:
    """A write, its vCPU, and the stay in KVM it happened in."""

    write: ControlWrite
    vm: int
    vcpu: int
    opened: int          # the exit before the write (else the write)
    closed: int | None   # the next kvm_entry (None: not traced)
    closed_seq: int
    end: int             # last time whose events belong to this write's handling


@dataclass
class _Context:
    trace: Trace
    threads: ThreadMap
    ops: Mapping[int, Sequence[Op]]
    entries: dict[int, tuple[np.ndarray, np.ndarray]]
    exits: dict[int, np.ndarray]
    user: dict[int, np.ndarray]
    zaps: pd.DataFrame
    roots: dict[int, np.ndarray]
    plan: ResetPlan = field(default_factory=ResetPlan)
    pretrace: set[int] = field(default_factory=set)
    #: zap seqs already read as some reset's burst
    used: set[int] = field(default_factory=set)
    #: (ts, seq) of each vCPU thread's first event
    firsts: dict[int, tuple[int, int]] = field(default_factory=dict)


def plan_resets(trace: Trace, threads: ThreadMap, ops: Mapping[int, Sequence[Op]]
                ) -> ResetPlan:
    """The resets ``trace``'s control-register and EFER writes show (module docstring),
    given the operations already derived per VM (``ops``).

    Examples:
        >>> from parsers import read_trace
        >>> from replay.infer.threads import identify_threads
        >>> t = read_trace("sample_traces/quoted/lkml_cr0wp_vmx_tdp.txt")
        >>> plan = plan_resets(t, identify_threads(t), {})
        >>> [type(s.op).__name__ for s in plan.add][:4]
        ['SetSregs', 'LoadRoot', 'SetSregs', 'LoadRoot']
    """
    writes = [w for w in control_writes(trace) if w.pid in threads.vcpus]
    zaps = _zap_rows(trace)
    if not writes and not zaps["pid"].isin(list(threads.vcpus)).any():
        return ResetPlan()
    ctx = _Context(trace, threads, ops, _entry_times(trace), _times(trace, "kvm_exit"),
                   _times(trace, "kvm_userspace_exit"), zaps, _new_roots(trace))
    known: dict[tuple[int, str], int] = {}
    for i, w in enumerate(writes):
        prev = known.get((w.pid, w.reg))
        known[(w.pid, w.reg)] = w.value
        if w.write:
            later = next((x.ts for x in writes[i + 1:] if x.pid == w.pid and x.write), None)
            _one_write(ctx, _window(ctx, w, later), prev)
    _other_teardowns(ctx)
    return ctx.plan


def _entry_times(trace: Trace) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    if "kvm_entry" not in trace.names:
        return {}
    df = trace.table("kvm_entry").select(["pid", "ts", "seq"]).to_pandas().dropna()
    df = df.sort_values("seq", kind="stable")
    return {int(p): (g["ts"].to_numpy(dtype=np.int64), g["seq"].to_numpy(dtype=np.int64))
            for p, g in df.groupby("pid")}


def _window(ctx: _Context, w: ControlWrite, later: int | None) -> _Window:
    v = ctx.threads.vcpus[w.pid]
    ts, seq = ctx.entries.get(w.pid, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    k = int(np.searchsorted(seq, w.seq, side="right"))
    closed = int(ts[k]) if k < ts.size else None
    end = min(x for x in (closed, later, np.iinfo(np.int64).max) if x is not None)
    opened = _before(ctx.exits.get(w.pid), w.ts)
    return _Window(w, v.vm, v.vcpu, w.ts if opened is None else opened, closed,
                   int(seq[k]) if k < seq.size else w.seq, end)


def _one_write(ctx: _Context, win: _Window, prev: int | None) -> None:
    w = win.write
    name = ctx.threads.thread_name(w.pid)
    zaps = ctx.zaps[(ctx.zaps["pid"] == w.pid) & (ctx.zaps["seq"] > w.seq)
                    & (ctx.zaps["ts"] <= win.end)]
    work = [i for i in ctx.threads.work_items if i.queued_by == w.pid
            and "zap_root" in i.function and i.queued_seq > w.seq and i.queued_at <= win.end]
    allocs = _between(ctx.roots.get(w.pid), w.ts - 1, win.end)
    changed = prev is not None and bool((prev ^ w.value) & ROLE_BITS[w.reg])
    why = [f"{len(zaps)} zap events by the same thread (<= 5.17: the last put of a valid "
           f"root zaps it inline)"] if len(zaps) else []
    why += [f"it queued {work[0].function} (5.18 .. 6.3: the defunct root's put)"] if work else []
    why += ["a new root get_page by the same thread"] if allocs else []
    why += [f"role bits changed from {prev:#x}"] if changed else []
    if not why:
        return
    label = "msr_write EFER" if w.reg == "efer" else f"cr_write {w.reg[2:]}"
    text = (f"{name} {label} = {w.value:#x} ({'; '.join(why)}): kvm_mmu_reset_context "
            f"unloads its root")
    conf: Confidence = "high" if len(zaps) or work or allocs else "medium"
    op: Op = SetSregs(vcpu=win.vcpu, cr0_wp=bool(w.value & CR0_WP), at=w.ts) \
        if w.reg == "cr0" else Unload(vcpu=win.vcpu, at=w.ts)
    ctx.plan.add.append(PlannedStep(win.vm, op, w.seq, text, conf))
    ctx.plan.drop |= {(u.vcpu, u.at) for u in ctx.ops.get(win.vm, ()) if isinstance(u, Unload)
                      and u.vcpu == win.vcpu and win.opened <= u.at <= win.end}
    if win.closed is not None and not _has_load(ctx, win, w.ts, win.closed):
        ctx.plan.add.append(PlannedStep(win.vm, LoadRoot(vcpu=win.vcpu, at=win.closed),
                                        win.closed_seq, f"{name} enters after its reset "
                                        f"({label}): it loads a root", "high"))
    if len(zaps):
        ctx.used |= set(zaps["seq"].astype(int))
        _pretrace(ctx, win, zaps, prev)


def _other_teardowns(ctx: _Context) -> None:
    """Inline teardowns by vCPU threads after resets the trace gives no control write for
    (``KVM_SET_SREGS``, CPUID, SMM): the zap of a top-level entry by a vCPU thread starts
    the last put's teardown; its burst (to the thread's next ``kvm_entry``) gives the
    population the root held, as after a control write."""
    level = tdp_root_level(ctx.trace)
    z = ctx.zaps[ctx.zaps["pid"].isin(list(ctx.threads.vcpus)) & ~ctx.zaps["seq"].isin(ctx.used)]
    for pid, rows in z.groupby("pid"):
        seq = rows["seq"].to_numpy(dtype=np.int64)
        ts = rows["ts"].to_numpy(dtype=np.int64)
        tops = np.flatnonzero((rows["level"] == level).to_numpy() & rows["gfn"].notna().to_numpy())
        done = -1
        for i in tops.tolist():
            if i <= done:
                continue
            mark = ControlWrite(int(pid), int(ts[i]), int(seq[i]) - 1, "none", 0, True)
            win = _window(ctx, mark, None)
            done = int(np.searchsorted(ts, win.end, side="right")) - 1
            burst = rows.iloc[i:done + 1]
            ctx.used |= set(burst["seq"].astype(int))
            _pretrace(ctx, win, burst, None)


def _has_load(ctx: _Context, win: _Window, lo: int, hi: int) -> bool:
    """Whether a LoadRoot of the window's vCPU lies in ``(lo, hi]`` (derived or planned)."""
    ops = [*ctx.ops.get(win.vm, ()), *(s.op for s in ctx.plan.add if s.vm == win.vm)]
    return any(isinstance(o, LoadRoot) and o.vcpu == win.vcpu and lo < o.at <= hi for o in ops)


def _pretrace(ctx: _Context, win: _Window, zaps: pd.DataFrame, prev: int | None) -> None:
    """The burst is the put of the vCPU's last reference: the root it loaded (before the
    trace, if no load is traced) held the leaves the burst removes."""
    w = win.write
    name = ctx.threads.thread_name(w.pid)
    _, first_seq = _first_event(ctx, w.pid)
    ops = [*ctx.ops.get(win.vm, ()), *(s.op for s in ctx.plan.add if s.vm == win.vm)]
    covered = [(o.start, o.start + o.size) for o in ops if isinstance(o, Populate)
               and o.at <= w.ts]
    leaves = zaps[zaps["leaf"] == True]  # noqa: E712
    fresh = _uncovered(_leaf_pages(leaves), covered)
    add = ctx.plan.add
    if w.reg == "cr0" and prev is None and win.vcpu not in ctx.pretrace \
            and _others_hold(ctx, win, int(zaps["ts"].max())):
        add.append(PlannedStep(win.vm, SetSregs(vcpu=win.vcpu, cr0_wp=not w.value & CR0_WP,
                                                at=PRETRACE_AT), first_seq - 3,
                               f"before the trace {name} ran with CR0.WP="
                               f"{int(not w.value & CR0_WP)}: its reset put the last reference "
                               f"of its root while other vCPUs of the VM held theirs, so its "
                               f"role differed", "medium"))
    if (fresh or w.reg != "none") and not _has_load(ctx, win, -1, w.ts):
        add.append(PlannedStep(win.vm, LoadRoot(vcpu=win.vcpu, at=PRETRACE_AT), first_seq - 2,
                               f"root loaded before the trace began: {name}'s reset zapped "
                               f"it", "medium"))
    for start, size, page in _merge(fresh):
        add.append(PlannedStep(
            win.vm, Populate(vcpu=win.vcpu, start=start, size=size, page=page, at=PRETRACE_AT),
            first_seq - 1, f"mapped before the trace began: {size // page} leaves from gfn "
            f"{start >> 12:#x} that {name}'s inline zap removes and no traced fault "
            f"installed", "medium"))
    ctx.pretrace.add(win.vcpu)


def _leaf_pages(leaves: pd.DataFrame) -> list[tuple[int, int]]:
    """(start byte, page size) of each zapped leaf SPTE, distinct, sorted."""
    out = set()
    for gfn, level in zip(leaves["gfn"], leaves["level"], strict=True):
        page = _PAGE_OF_LEVEL.get(int(level))
        if page is not None and pd.notna(gfn):
            out.add(((int(gfn) << 12) // page * page, page))
    return sorted(out)


def _uncovered(pages: list[tuple[int, int]], covered: list[tuple[int, int]]
               ) -> list[tuple[int, int]]:
    """The ``(start, page)`` pairs whose start lies in none of the ``[lo, hi)`` ranges."""
    if not covered or not pages:
        return pages
    spans = np.array(sorted(covered), dtype=np.int64)
    hi = np.maximum.accumulate(spans[:, 1])  # furthest end among ranges starting at or before
    starts = np.array([p[0] for p in pages], dtype=np.int64)
    k = np.searchsorted(spans[:, 0], starts, side="right") - 1
    inside = (k >= 0) & (starts < hi[np.maximum(k, 0)])
    return [p for p, hit in zip(pages, inside.tolist(), strict=True) if not hit]


def _merge(pages: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(start, page) pairs → (start, size, page) runs of adjacent pages of one size."""
    runs: list[tuple[int, int, int]] = []
    for start, page in sorted(pages, key=lambda p: (p[1], p[0])):
        if runs and runs[-1][2] == page and runs[-1][0] + runs[-1][1] == start:
            runs[-1] = (runs[-1][0], runs[-1][1] + page, page)
        else:
            runs.append((start, page, page))
    return runs


def _others_hold(ctx: _Context, win: _Window, until: int) -> bool:
    """Whether another vCPU of the VM was in the guest at ``until`` as far as the trace
    tells: it entered before, and did not exit to userspace since its last entry."""
    for pid, v in ctx.threads.vcpus.items():
        if v.vm != win.vm or v.vcpu == win.vcpu:
            continue
        ts = ctx.entries.get(pid, (np.zeros(0, np.int64), None))[0]
        entered = _before(ts, until)
        left = _before(ctx.user.get(pid), until)
        if entered is not None and (left is None or left < entered):
            return True
    return False


def _first_event(ctx: _Context, pid: int) -> tuple[int, int]:
    """(ts, seq) of the first event of vCPU thread ``pid`` (all vCPU threads at once, once)."""
    if not ctx.firsts:
        ev = ctx.trace.events.select(["pid", "ts", "seq"])
        mine = ev.filter(pc.fill_null(pc.is_in(ev.column("pid"), pa.array(
            sorted(ctx.threads.vcpus), pa.int32())), False))
        agg = mine.group_by("pid").aggregate([("ts", "min"), ("seq", "min")])
        ctx.firsts.update({int(p): (int(t), int(q)) for p, t, q in zip(
            *(agg.column(c).to_pylist() for c in ("pid", "ts_min", "seq_min")), strict=True)})
    return ctx.firsts[pid]
