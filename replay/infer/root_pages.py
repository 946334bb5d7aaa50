"""Which pages are roots, and the roots a trace shows only by their teardown.

* A page is a root only at its role's root level. Shadow (indirect) roots: the highest
  level of their VM's pages (the guest's paging mode; roots whose ``root_count`` was ever
  above 0 are roots at any level, e.g. PAE roots). TDP and direct roots: the host's TDP
  level (``kvm_mmu_get_tdp_level``), the same for every VM: the highest direct page level
  of the whole trace or the highest SPTE level ``kvm_tdp_mmu_spte_changed`` printed (a
  root's own entries print its level), at least 4. A VM guessed wrong, or whose root was
  loaded before the trace, then never turns a child table into a root.
* The TDP MMU never traces a root's own zap (``handle_removed_pt`` traces the children):
  a zap of a top-level entry (present → non-present at the root level) that no observed
  root accounts for tears down a root loaded before the trace: it gets a row with
  ``created`` null and ``created_by`` ``"before the trace"``.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from parsers.trace import Trace
from replay.infer.threads import ThreadMap

__all__ = ["SPTE_PRESENT", "BEFORE_TRACE", "root_levels", "tdp_root_level", "unseen_tdp_roots",
           "invalidations", "unlinked_before_fast_zap"]

#: ``SPTE_MMU_PRESENT_MASK`` (bit 11, arch/x86/kvm/mmu/spte.h).
SPTE_PRESENT: Final = 1 << 11
#: ``created_by`` of a root created before the trace began (``created`` is null).
BEFORE_TRACE: Final = "before the trace"
#: Zaps of one teardown are at most this far apart (ns).
_GAP_NS: Final = 20_000


def tdp_root_level(trace: Trace, pages: pd.DataFrame | None = None) -> int:
    """The host's TDP root level (module docstring)."""
    level = 4
    if pages is not None and len(pages):
        direct = pages["direct"].fillna(False).astype(bool)
        if direct.any():
            level = max(level, int(pages.loc[direct, "level"].max()))
    if "kvm_tdp_mmu_spte_changed" in trace.names:
        printed = pc.max(trace.table("kvm_tdp_mmu_spte_changed").column("level")).as_py()
        level = max(level, int(printed or 0))
    return level


def root_levels(df: pd.DataFrame, trace: Trace) -> pd.Series:
    """The root level of each page row's role (``df``: page events with ``vm``, ``direct``,
    ``level``)."""
    per_vm = df.groupby(["vm", "direct"], dropna=False)["level"].transform("max")
    direct = df["direct"].fillna(False).astype(bool)
    out: pd.Series = per_vm.where(~direct, tdp_root_level(trace, df))
    return out


def _top_zaps(trace: Trace, threads: ThreadMap, level: int) -> pd.DataFrame:
    """Zaps of top-level entries with their VM, and each zapping thread's zap events."""
    t = trace.table("kvm_tdp_mmu_spte_changed").select(
        ["seq", "ts", "pid", "level", "old_spte", "new_spte"]).to_pandas()
    old = t["old_spte"].fillna(0).astype(np.uint64)
    new = t["new_spte"].fillna(0).astype(np.uint64)
    gone = ((old & SPTE_PRESENT) != 0) & ((new & SPTE_PRESENT) == 0)
    t = t[gone & t["pid"].notna()].copy()
    t["top"] = t["level"] == level
    t["vm"] = [threads.vm_at(int(p), int(s)) for p, s in zip(t["pid"], t["ts"], strict=True)]
    return t.sort_values("seq", kind="stable")


def unseen_tdp_roots(trace: Trace, threads: ThreadMap, table: pa.Table, schema: pa.Schema
                     ) -> pa.Table:
    """``table`` plus one row per teardown of a root the trace never showed otherwise."""
    if "kvm_tdp_mmu_spte_changed" not in trace.names:
        return table
    level = tdp_root_level(trace)
    zaps = _top_zaps(trace, threads, level)
    known = table.to_pylist()
    rows: list[dict[str, object]] = []
    for (vm, pid), g in zaps.groupby(["vm", "pid"], sort=True):
        ts = g["ts"].to_numpy(dtype=np.int64)
        cuts = np.flatnonzero(np.diff(ts) > _GAP_NS) + 1
        for run, top in zip(np.split(ts, cuts), np.split(g["top"].to_numpy(), cuts), strict=True):
            if not top.any():
                continue
            start, end = int(run[top][0]), int(run[-1])
            if any(r["vm"] == vm and r["zap_start"] is not None and r["zap_end"] is not None
                   and r["zap_start"] <= start <= r["zap_end"] for r in known + rows):
                continue
            rows.append({"root": len(known) + len(rows), "created": None,
                         "created_by": BEFORE_TRACE, "zap_start": start, "zap_end": end,
                         "zapped_by": threads.thread_name(int(pid)), "vm": int(vm),
                         "level": level, "direct": True})
    if not rows:
        return table
    return pa.concat_tables([table, pa.Table.from_pylist(rows, schema=schema)])


def invalidations(made: pd.DataFrame, fast: pd.DataFrame) -> dict[int, int]:
    """root → the first fast zap of its VM at or after its creation (of its generation when
    both are known)."""
    by_vm: dict[int, np.ndarray] = {}
    by_gen: dict[tuple[int, int], np.ndarray] = {}
    has_gen: set[int] = set()
    for vm, g in fast.groupby("vm"):
        by_vm[int(vm)] = np.sort(g["ts"].to_numpy(dtype=np.int64))
        known = g[g["mmu_valid_gen"].notna()]
        if len(known):
            has_gen.add(int(vm))
        for gen, gg in known.groupby("mmu_valid_gen"):
            by_gen[(int(vm), int(gen))] = np.sort(gg["ts"].to_numpy(dtype=np.int64))
    out: dict[int, int] = {}
    empty = np.zeros(0, dtype=np.int64)
    for root, vm, ts, gen in zip(made.index, made["vm"], made["ts"], made["mmu_valid_gen"],
                                 strict=True):
        if int(vm) not in by_vm:
            continue
        times = by_gen.get((int(vm), int(gen)), empty) if pd.notna(gen) and int(vm) in has_gen \
            else by_vm[int(vm)]
        k = int(np.searchsorted(times, int(ts), side="left"))
        if k < times.size:
            out[int(root)] = int(times[k])
    return out


def unlinked_before_fast_zap(inval: dict[int, int], torn: dict[int, tuple[int, int]],
                              threads: ThreadMap) -> None:
    """Roots the last put of a still-valid root made defunct or tore down. 5.18 .. 6.3 mark
    such a root invalid and queue its zap from the putting vCPU (``tdp_mmu_zap_root_work``):
    invalidated at that ``workqueue_queue_work``, even when its zap is still running at the
    next fast zap (which skips invalid roots). Up to 5.17 the putter unlinks and zaps it
    without marking it invalid (``kvm_tdp_mmu_put_root``): a root torn down before the
    next fast zap was never invalidated."""
    for root, (ts, pid) in torn.items():
        defunct = next((item.queued_at for item in threads.work_items
                        if item.worker == pid and item.start <= ts <= item.end
                        and item.queued_by in threads.vcpus), None)
        if defunct is not None:
            inval[root] = min(defunct, inval.get(root, defunct))
        elif root in inval and inval[root] > ts:
            del inval[root]
