"""Which kernel era recorded a trace: who zaps roots, and how, tells it.

Split from :mod:`replay.infer.workload`; both read :mod:`replay.infer.frames`.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from parsers.trace import Trace
from replay.infer.frames import _frame, _has_event, _root_level, _root_teardowns
from replay.infer.observed import SPTE_PRESENT
from replay.infer.threads import ThreadMap

__all__ = ["detect_era"]


#: ``SHADOW_NONPRESENT_VALUE`` (bit 63, x86_64 ~6.10+): what a zapping iterator writes.
_NONPRESENT_VALUE: Final = 1 << 63


def _fast_zap_passes(trace: Trace, zaps: pd.DataFrame) -> str | None:
    """``"one"`` or ``"multi"``: how the fast-zap task tore the invalidated roots down.

    The iterator writes 0 (or ``SHADOW_NONPRESENT_VALUE``) into the entries it zaps;
    ``handle_removed_pt`` writes the frozen value below them. <= 5.17 zaps at the root
    level only (``zap_gfn_range`` over everything): the task's first zap after its
    ``kvm_mmu_zap_all_fast`` is a top-level entry and every write below it is frozen.
    5.18+ zap the 1 GiB level first (6.9+: 4K, 2M, 1G), then the root level: iterator
    writes below the root level come first. ``None`` when no teardown follows a fast zap."""
    level = _root_level(trace)
    fast = _frame(trace, "kvm_mmu_zap_all_fast")
    if level is None or fast.empty or zaps.empty:
        return None
    zaps = zaps.sort_values("seq", kind="stable")
    new = zaps["new_spte"].fillna(0).astype(np.uint64).to_numpy()
    iterator = (new & np.uint64(~_NONPRESENT_VALUE & (2**64 - 1))) == 0
    zseq, zpid, zlevel = (zaps[c].to_numpy() for c in ("seq", "pid", "level"))
    votes: set[str] = set()
    for pid in pd.unique(fast["pid"]):  # per task, by seq: its zaps, its fast zaps
        mine = np.flatnonzero(zpid == pid)
        seqs, tops = zseq[mine], np.flatnonzero(zlevel[mine] == level)
        hits = np.r_[0, np.cumsum((zlevel[mine] < level) & iterator[mine])]
        starts = np.sort(fast["seq"].to_numpy()[fast["pid"].to_numpy() == pid])
        ends = np.append(starts[1:], np.iinfo(np.int64).max)  # the task's next fast zap
        for lo, hi in zip(np.searchsorted(seqs, starts, "right").tolist(),
                          np.searchsorted(seqs, ends, "left").tolist(), strict=True):
            t = int(np.searchsorted(tops, lo))  # its first top-level zap in the window
            if t < tops.size and tops[t] < hi:  # iterator writes below it, up to it?
                votes.add("multi" if hits[tops[t] + 1] > hits[lo] else "one")
    return "multi" if "multi" in votes else ("one" if votes else None)


def detect_era(trace: Trace, threads: ThreadMap) -> tuple[str, str | None, str]:
    """(backend, era policy name or None, evidence): who zaps roots tells the era."""
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
        defunct = any(i.queued_by in threads.vcpus for i in threads.work_items
                      if i.function == "tdp_mmu_zap_root_work")
        return ("tdp", "5.18", "workqueue_queue_work function=tdp_mmu_zap_root_work: per-VM "
                "workqueue zaps " + ("(5.18 .. 6.3: a vCPU queued one, a defunct root's put; "
                                     "from 6.4 a valid root is never put to 0)" if defunct else
                                     "(5.18 .. 6.5; no vCPU queued one, so 6.4/6.5, which "
                                     "preserve roots, are not ruled out)"))
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
    if zappers & fast:
        if _fast_zap_passes(trace, changed[gone]) == "one":
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
    return ("tdp", None, "no root zap in the trace: the era is not determined")
