"""Which kernel era recorded a trace: who zaps roots, in which passes, and what resets do.

Split from :mod:`replay.infer.workload`; the rules and their evidence are in docs/replay.md
("Era detection"), including the eras a trace cannot tell apart.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from parsers.trace import Trace
from replay.infer.calls import Call, syscalls
from replay.infer.observed import SPTE_PRESENT
from replay.infer.threads import ThreadMap
from replay.infer.workload_frames import frame as _frame
from replay.infer.workload_frames import has_event as _has_event
from replay.infer.workload_frames import root_level as _root_level
from replay.infer.workload_frames import root_teardowns as _root_teardowns

__all__ = ["detect_era"]


#: ``SHADOW_NONPRESENT_VALUE`` (bit 63, x86_64 ~6.10+): what a zapping iterator writes.
_NONPRESENT_VALUE: Final = 1 << 63


def _fast_zap_passes(trace: Trace, zaps: pd.DataFrame, calls: list[Call] | None = None
                     ) -> str | None:
    """``"one"`` or ``"multi"``: how the fast-zap task tore the invalidated roots down.

    The iterator writes 0 (or ``SHADOW_NONPRESENT_VALUE``) into the entries it zaps;
    ``handle_removed_pt`` writes the frozen value below them. <= 5.17 zaps at the root
    level only (``zap_gfn_range`` over everything): the task's first zap after its
    ``kvm_mmu_zap_all_fast`` is a top-level entry and every write below it is frozen.
    5.18+ zap the 1 GiB level first (6.9+: 4K, 2M, 1G), then the root level: iterator
    writes below the root level come first (``"leaf"`` when the first is a 4K or 2M
    leaf: 6.9+). The VMM's own teardown at process exit (``exit_group``, when syscalls are
    traced) is read the same way. ``None`` when no teardown follows a fast zap."""
    level = _root_level(trace)
    fast = _frame(trace, "kvm_mmu_zap_all_fast")
    starts = list(zip(fast["seq"], fast["pid"], strict=True)) if not fast.empty else []
    starts += [(c.start_seq, c.pid) for c in calls or [] if c.name in ("exit_group", "exit")]
    if level is None or not starts or zaps.empty:
        return None
    zaps = zaps.sort_values("seq", kind="stable")
    new = zaps["new_spte"].fillna(0).astype(np.uint64).to_numpy()
    iterator = (new & np.uint64(~_NONPRESENT_VALUE & (2**64 - 1))) == 0
    zseq, zpid, zlevel = (zaps[c].to_numpy() for c in ("seq", "pid", "level"))
    votes: set[str] = set()
    for pid in sorted({p for _, p in starts}):  # per task, by seq: its zaps, its starts
        mine = np.flatnonzero(zpid == pid)
        seqs, levels = zseq[mine], zlevel[mine]
        tops = np.flatnonzero(levels == level)
        below = np.flatnonzero((levels < level) & iterator[mine])  # iterator writes below
        begin = np.unique(np.array([q for q, p in starts if p == pid], dtype=np.int64))
        ends = np.append(begin[1:], np.iinfo(np.int64).max)  # the task's next start
        for lo, hi in zip(np.searchsorted(seqs, begin, "right").tolist(),
                          np.searchsorted(seqs, ends, "left").tolist(), strict=True):
            t = int(np.searchsorted(tops, lo))  # its first top-level zap in the window
            if t >= tops.size or tops[t] >= hi:
                continue
            b = int(np.searchsorted(below, lo))  # the first iterator write below, up to it?
            if b >= below.size or below[b] > tops[t]:
                votes.add("one")
            else:
                votes.add("leaf" if int(levels[below[b]]) < 3 else "multi")
    for kind in ("leaf", "multi", "one"):
        if kind in votes:
            return kind
    return None


def _reset_reused(trace: Trace, threads: ThreadMap, calls: list[Call]) -> bool:
    """Whether a vCPU's ``KVM_SET_SREGS`` was followed by its next ``kvm_entry`` without a
    root ``kvm_mmu_get_page`` of its own in between (it reloaded the root it had)."""
    pages = _frame(trace, "kvm_mmu_get_page")
    entries = _frame(trace, "kvm_entry")
    if entries.empty:
        return False
    top = int(pages["level"].max()) if not pages.empty else -1
    for c in calls:
        if c.name != "KVM_SET_SREGS" or c.pid not in threads.vcpus:
            continue
        after = entries[(entries["pid"] == c.pid) & (entries["seq"] > c.start_seq)]
        if after.empty:
            continue
        nxt = int(after["seq"].min())
        new = pages[(pages["pid"] == c.pid) & (pages["seq"] > c.start_seq)
                    & (pages["seq"] < nxt) & (pages["level"] == top)] if not pages.empty \
            else pages
        if new.empty:
            return True
    return False


def _workqueue_era(trace: Trace, threads: ThreadMap, calls: list[Call]
                   ) -> tuple[str, str | None, str]:
    """5.18 .. 6.3 or 6.4/6.5: zap work items on the per-VM ``kvm`` workqueue."""
    defunct = any(i.queued_by in threads.vcpus for i in threads.work_items
                  if i.function == "tdp_mmu_zap_root_work")
    if not defunct and _reset_reused(trace, threads, calls):
        return ("tdp", "6.4", "workqueue_queue_work function=tdp_mmu_zap_root_work by "
                "the VMM only, and a vCPU reset (KVM_SET_SREGS) reloaded the root it had "
                "(no new root, no zap work): roots are preserved (6.4, 6.5); 5.18 .. 6.3 "
                "would have put it and allocated one with the new CR0.WP")
    return ("tdp", "5.18", "workqueue_queue_work function=tdp_mmu_zap_root_work: per-VM "
            "workqueue zaps " + ("(5.18 .. 6.3: a vCPU queued one, a defunct root's put; "
                                 "from 6.4 a valid root is never put to 0)" if defunct else
                                 "(5.18 .. 6.5; no vCPU queued one, so 6.4/6.5, which "
                                 "preserve roots, are not ruled out)"))


def detect_era(trace: Trace, threads: ThreadMap, calls: list[Call] | None = None
               ) -> tuple[str, str | None, str]:
    """(backend, era policy name or None, evidence): who zaps roots tells the era."""
    calls = syscalls(trace) if calls is None else calls
    pages = _frame(trace, "kvm_mmu_get_page")
    shadow = not pages.empty and ((pages["root_count"].fillna(0) > 0).any()
                                  or (pages["direct"] == False).any())  # noqa: E712
    if shadow and not _has_event(trace, "kvm_tdp_mmu_spte_changed"):
        return ("shadow", None, "kvm_mmu_get_page shows live root_count / indirect roots and "
                "no kvm_tdp_mmu_spte_changed: the shadow MMU (kvm.tdp_mmu=N); no TDP era applies")
    if not _has_event(trace, "kvm_tdp_mmu_spte_changed"):
        return ("unknown", None, "no kvm_tdp_mmu_spte_changed and no shadow pages: backend unknown")
    args = " ".join(a or "" for a in trace.events.column("args").to_pylist()
                    if a and "function=" in a)
    if "tdp_mmu_zap_root_work" in args:
        return _workqueue_era(trace, threads, calls)
    if "tdp_mmu_zap_root_async" in args:
        return ("tdp", "async", "function=tdp_mmu_zap_root_async on the system workqueue")
    changed = _frame(trace, "kvm_tdp_mmu_spte_changed")
    gone = ((changed["old_spte"].fillna(0).astype(np.uint64) & SPTE_PRESENT) != 0) & \
        ((changed["new_spte"].fillna(0).astype(np.uint64) & SPTE_PRESENT) == 0)
    zappers = set(changed.loc[gone, "pid"].dropna().astype(int))
    fast = set(_frame(trace, "kvm_mmu_zap_all_fast").get("pid", pd.Series(dtype=int)))
    names = {threads.comms.get(p, "") for p in zappers}
    torn = set(_root_teardowns(trace)["pid"].dropna().astype(int))
    if torn & set(threads.vcpus):
        return ("tdp", "sync", "vCPU threads zap top-level entries: the last put of a valid "
                "root tears it down inline (<= 5.17; from 5.18 the putter only queues the "
                "zap, from 6.4 a valid root is never put to 0)")
    passes = _fast_zap_passes(trace, changed[gone], calls)
    if passes == "leaf":
        return ("tdp", "6.9", "the zapping task's first iterator writes are 4K/2M leaves: "
                "the 4K, 2M, 1G, root passes of 6.9+ (8ca983631f3c); 5.18 .. 6.8 zap the 1 GiB "
                "level first")
    if zappers & fast:
        if passes == "one":
            return ("tdp", "sync", "SPTE zaps by the kvm_mmu_zap_all_fast task itself, in one "
                    "root-level pass (top-level entry first, only frozen writes below it): "
                    "<= 5.17 zaps gifted roots inline that way; 5.18+ zap the 1 GiB level "
                    "first")
        return ("tdp", "6.6", "SPTE zaps by the kvm_mmu_zap_all_fast task itself: the invalidating "
                "task zaps inline (6.6+; the 1 GiB level first unless no teardown is traced)")
    if any(n.startswith("kworker") for n in names):
        return ("tdp", "5.18", "SPTE zaps by kworkers (5.18 .. 6.5)")
    if zappers & set(threads.vcpus):
        return ("tdp", "sync", "SPTE zaps by vCPU threads: the last put zaps inline (<= 5.17)")
    if passes == "one":
        return ("tdp", "sync", "the VMM's teardown at process exit zaps in one root-level "
                "pass (<= 5.17)")
    if passes == "multi":
        return ("tdp", "6.6", "the VMM's teardown at process exit zaps the 1 GiB level first "
                "and no worker zaps: 6.6 .. 6.8 (the async seed looks the same)")
    return ("tdp", None, "no root zap in the trace: the era is not determined")
