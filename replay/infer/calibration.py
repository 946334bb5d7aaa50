"""Calibrate the cost model from what a trace measured, each value with its evidence.

* ``fault_ns``: the median of ``kvm_page_fault`` → the same vCPU thread's next
  ``kvm_entry`` (the cost model's own definition of a fault: exit to entry).
* ``leaf_exclusive_ns`` and ``leaf_shared_ns``: the median per-SPTE time of zap bursts —
  runs of at least :data:`MIN_BURST` consecutive ``kvm_tdp_mmu_spte_changed`` events of one
  thread taking present SPTEs to non-present, at most ``BURST_GAP_NS`` apart (the zap
  loop's pace, one event per SPTE).

What the trace does not show keeps its default; a trace without the events changes
nothing and says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from parsers.trace import Trace
from replay.infer.observed import BURST_GAP_NS, SPTE_PRESENT
from replay.model.cost import CostModel

__all__ = ["Calibration", "calibrate", "MIN_BURST", "MIN_SAMPLES"]

#: Shortest run of SPTE zaps that measures the per-leaf cost.
MIN_BURST: Final = 16
#: Fewest faults for a fault cost.
MIN_SAMPLES: Final = 8


@dataclass(frozen=True)
class Calibration:
    """The calibrated cost model and, per changed key, what it was measured from."""

    cost: CostModel
    evidence: dict[str, str]


def calibrate(trace: Trace, base: CostModel) -> Calibration:
    """``base`` with the costs ``trace`` measures replaced (see the module docstring).

    Examples:
        >>> from parsers import read_trace
        >>> from replay.model.cost import DEFAULT_COST
        >>> calibrate(read_trace("sample_traces/tracefs_record_tgid.txt"), DEFAULT_COST).evidence
        {}
    """
    changes: dict[str, float] = {}
    evidence: dict[str, str] = {}
    fault = _fault_ns(trace)
    if fault is not None:
        changes["fault_ns"] = fault[0]
        evidence["fault_ns"] = (f"median of {fault[1]} kvm_page_fault -> kvm_entry intervals: "
                                f"{fault[0]:.0f} ns (default {base.fault_ns:.0f})")
    leaf = _leaf_ns(trace)
    if leaf is not None:
        for key in ("leaf_exclusive_ns", "leaf_shared_ns"):
            changes[key] = leaf[0]
            evidence[key] = (f"median pace of {leaf[1]} SPTE zap bursts (>= {MIN_BURST} "
                             f"zaps): {leaf[0]:.2f} ns per SPTE (default "
                             f"{getattr(base, key):.2f})")
    return Calibration(dataclasses.replace(base, **changes), evidence)  # type: ignore[arg-type]


def _fault_ns(trace: Trace) -> tuple[float, int] | None:
    if "kvm_page_fault" not in trace.names or "kvm_entry" not in trace.names:
        return None
    faults = trace.table("kvm_page_fault").select(["seq", "ts", "pid"]).to_pandas()
    entries = trace.table("kvm_entry").select(["seq", "ts", "pid"]).to_pandas()
    spans = []
    for pid, f in faults.groupby("pid"):
        mine = entries[entries["pid"] == pid].sort_values("seq", kind="stable")
        e_seq = mine["seq"].to_numpy(dtype=np.int64)
        e_ts = mine["ts"].to_numpy(dtype=np.int64)
        ts = f["ts"].to_numpy(dtype=np.int64)
        k = np.searchsorted(e_seq, f["seq"].to_numpy(dtype=np.int64), side="right")
        ok = k < e_seq.size  # the entry after the fault in trace order (same ts possible)
        spans.append(e_ts[k[ok]] - ts[ok])
    values = np.concatenate(spans) if spans else np.zeros(0)
    if values.size < MIN_SAMPLES:
        return None
    return float(np.median(values)), int(values.size)


def _leaf_ns(trace: Trace) -> tuple[float, int] | None:
    if "kvm_tdp_mmu_spte_changed" not in trace.names:
        return None
    t = trace.table("kvm_tdp_mmu_spte_changed").select(
        ["seq", "ts", "pid", "level", "old_spte", "new_spte"]).to_pandas()
    old = t["old_spte"].fillna(0).astype(np.uint64)
    new = t["new_spte"].fillna(0).astype(np.uint64)
    leaf = (t["level"] == 1) | ((old & np.uint64(1 << 7)) != 0)
    t = t.assign(zap=(((old & SPTE_PRESENT) != 0) & ((new & SPTE_PRESENT) == 0) & leaf))
    paces = []
    for _, g in t.sort_values("seq", kind="stable").groupby("pid"):
        # a burst: consecutive leaf zaps of one thread; any other SPTE change of the thread
        # (a table's teardown, a frozen entry) ends it, so table costs never enter the pace
        z = g["zap"].to_numpy()
        ts = g["ts"].to_numpy(dtype=np.int64)
        split = np.flatnonzero(~z)
        keep = z.copy()
        ts = ts[keep]
        runs_id = np.cumsum(~z)[keep]
        cuts = np.flatnonzero((np.diff(ts) > BURST_GAP_NS) | (np.diff(runs_id) != 0)) + 1
        del split
        for run in np.split(ts, cuts):
            if run.size >= MIN_BURST and run[-1] > run[0]:
                paces.append((run[-1] - run[0]) / (run.size - 1))
    if not paces:
        return None
    return float(pd.Series(paces).median()), len(paces)
