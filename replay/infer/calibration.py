"""Calibrate the cost model from what a trace measured, each value with its evidence.

* ``fault_ns``: the median exit → entry of a vCPU thread's EPT violations (VMX exit reason
  48) and nested page faults (SVM ``npf``, 0x400): the cost model's own definition of a
  fault. Exits whose stay holds a ``kvm_userspace_exit`` (userspace time) or zap events
  (not a fault's cost) are left out. A trace without ``kvm_exit`` reasons falls back to
  ``kvm_page_fault`` → the thread's next ``kvm_entry``.
* ``leaf_exclusive_ns`` and ``leaf_shared_ns``: the median per-leaf pace of zap bursts —
  one thread's zap events (``kvm_tdp_mmu_spte_changed`` to non-present, frozen writes
  included, and ``kvm_mmu_prepare_zap_page``) at most ``BURST_GAP_NS`` apart, however
  short: each leaf zap's share is the time since the thread's previous zap event, and a
  burst's pace is its leaves' shares over its leaves. Table teardown, which the cost model
  charges on its own (``page_table_ns``, ``tlb_flush_ns``), ends at the table's own events
  and stays out of the pace. A burst whose leaves all share their predecessors' timestamps
  (the trace's resolution hides its pace) measures nothing.

What the trace does not show keeps its default; a trace without the events changes
nothing and says so. Every value says how many samples it comes from.
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

__all__ = ["Calibration", "calibrate", "MIN_SAMPLES", "FAULT_EXITS"]

#: Fewest samples for a value (one: a short real trace still measures something; the
#: evidence gives the count).
MIN_SAMPLES: Final = 1
#: (isa, exit reason) of the exits that are guest page faults handled by the TDP MMU:
#: VMX ``EXIT_REASON_EPT_VIOLATION`` (48), SVM ``SVM_EXIT_NPF`` (0x400).
FAULT_EXITS: Final = ((1, 48), (2, 0x400))
_HUGE_BIT: Final = 1 << 7


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
        value, n, what = fault
        changes["fault_ns"] = value
        evidence["fault_ns"] = (f"median of {n} {what} intervals: {value:.0f} ns (default "
                                f"{base.fault_ns:.0f})")
    leaf = _leaf_ns(trace)
    if leaf is not None:
        value, bursts, leaves = leaf
        for key in ("leaf_exclusive_ns", "leaf_shared_ns"):
            changes[key] = value
            evidence[key] = (f"median per-leaf pace of {bursts} SPTE zap bursts ({leaves} "
                             f"leaves zapped): {value:.2f} ns per leaf (default "
                             f"{getattr(base, key):.2f})")
    return Calibration(dataclasses.replace(base, **changes), evidence)  # type: ignore[arg-type]


def _by_pid(trace: Trace, name: str, cols: list[str]) -> dict[int, pd.DataFrame]:
    if name not in trace.names:
        return {}
    df = trace.table(name).select(["pid", "ts", "seq", *cols]).to_pandas()
    df = df.dropna(subset=["pid"]).sort_values("seq", kind="stable")
    return {int(p): g for p, g in df.groupby("pid")}


def _fault_ns(trace: Trace) -> tuple[float, int, str] | None:
    exits = _by_pid(trace, "kvm_exit", ["isa", "exit_reason"])
    entries = _by_pid(trace, "kvm_entry", [])
    noise = _noise_seqs(trace)
    spans = []
    for pid, ex in exits.items():
        en = entries.get(pid)
        if en is None:
            continue
        e_seq, e_ts = en["seq"].to_numpy(dtype=np.int64), en["ts"].to_numpy(dtype=np.int64)
        x_seq, x_ts = ex["seq"].to_numpy(dtype=np.int64), ex["ts"].to_numpy(dtype=np.int64)
        k = np.searchsorted(e_seq, x_seq, side="right")
        ok = k < e_seq.size
        nxt = np.append(x_seq[1:], np.iinfo(np.int64).max)
        ok[ok] &= nxt[ok] > e_seq[k[ok]]  # an exit then another exit: the entry was lost
        reason = ex["exit_reason"].fillna(-1).astype(np.int64).to_numpy()
        isa = ex["isa"].fillna(0).astype(np.int64).to_numpy()
        fault = np.zeros(x_seq.size, dtype=bool)
        for want_isa, want in FAULT_EXITS:  # isa 0: not printed, either vendor
            fault |= ((isa == want_isa) | (isa == 0)) & ((reason & 0xFFFF) == want)
        quiet = noise.get(pid, np.zeros(0, np.int64))
        kk = np.minimum(k, max(e_seq.size - 1, 0))
        dirty = np.searchsorted(quiet, e_seq[kk]) > np.searchsorted(quiet, x_seq)
        pick = ok & fault & ~dirty
        spans.append(e_ts[k[pick]] - x_ts[pick])
    values = np.concatenate(spans) if spans else np.zeros(0, np.int64)
    if values.size >= MIN_SAMPLES:
        return float(np.median(values)), int(values.size), "EPT violation / NPF exit -> entry"
    return _page_fault_ns(trace)


def _noise_seqs(trace: Trace) -> dict[int, np.ndarray]:
    """Per pid, sorted seqs of events that make a stay more than a fault: exits to
    userspace and zaps."""
    out: dict[int, list[np.ndarray]] = {}
    for name in ("kvm_userspace_exit", "kvm_mmu_prepare_zap_page"):
        for pid, g in _by_pid(trace, name, []).items():
            out.setdefault(pid, []).append(g["seq"].to_numpy(dtype=np.int64))
    for pid, g in _by_pid(trace, "kvm_tdp_mmu_spte_changed", ["old_spte", "new_spte"]).items():
        old = g["old_spte"].fillna(0).astype(np.uint64)
        new = g["new_spte"].fillna(0).astype(np.uint64)
        gone = ((old & SPTE_PRESENT) != 0) & ((new & SPTE_PRESENT) == 0)
        out.setdefault(pid, []).append(g.loc[gone, "seq"].to_numpy(dtype=np.int64))
    return {p: np.sort(np.concatenate(v)) for p, v in out.items()}


def _page_fault_ns(trace: Trace) -> tuple[float, int, str] | None:
    faults = _by_pid(trace, "kvm_page_fault", [])
    entries = _by_pid(trace, "kvm_entry", [])
    spans = []
    for pid, f in faults.items():
        if pid not in entries:
            continue
        e_seq = entries[pid]["seq"].to_numpy(dtype=np.int64)
        e_ts = entries[pid]["ts"].to_numpy(dtype=np.int64)
        ts = f["ts"].to_numpy(dtype=np.int64)
        k = np.searchsorted(e_seq, f["seq"].to_numpy(dtype=np.int64), side="right")
        ok = k < e_seq.size  # the entry after the fault in trace order (same ts possible)
        spans.append(e_ts[k[ok]] - ts[ok])
    values = np.concatenate(spans) if spans else np.zeros(0)
    if values.size < MIN_SAMPLES:
        return None
    return float(np.median(values)), int(values.size), "kvm_page_fault -> kvm_entry"


def _leaf_ns(trace: Trace) -> tuple[float, int, int] | None:
    """(median per-leaf pace, bursts, leaves) of the trace's SPTE zap bursts.

    A burst: one thread's zap events (``kvm_tdp_mmu_spte_changed`` to a non-present value,
    frozen writes included, and ``kvm_mmu_prepare_zap_page``) at most ``BURST_GAP_NS``
    apart. Each leaf zap's share is the time since the thread's previous zap event (a zap
    event is printed when its work is done); the burst's pace is the sum of its leaves'
    shares over its leaves. A table's own teardown, which the cost model charges on its own
    (``page_table_ns``, ``tlb_flush_ns``), ends at its ``prepare_zap_page`` or upper-level
    zap and stays out of the leaves' shares."""
    paces: list[float] = []
    leaves = 0
    pages = _by_pid(trace, "kvm_mmu_prepare_zap_page", [])
    for pid, g in _by_pid(trace, "kvm_tdp_mmu_spte_changed",
                          ["old_spte", "new_spte", "level"]).items():
        old = g["old_spte"].fillna(0).astype(np.uint64)
        new = g["new_spte"].fillna(0).astype(np.uint64)
        gone = ((new & SPTE_PRESENT) == 0).to_numpy()
        leaf = (((old & SPTE_PRESENT) != 0) & ((g["level"] == 1) | ((old & _HUGE_BIT) != 0))
                ).to_numpy() & gone
        seq = g["seq"].to_numpy(dtype=np.int64)[gone]
        ts = g["ts"].to_numpy(dtype=np.int64)[gone]
        is_leaf = leaf[gone]
        if pid in pages:  # merge the thread's page teardowns in trace order
            p = pages[pid]
            seq = np.concatenate([seq, p["seq"].to_numpy(dtype=np.int64)])
            ts = np.concatenate([ts, p["ts"].to_numpy(dtype=np.int64)])
            is_leaf = np.concatenate([is_leaf, np.zeros(len(p), bool)])
            order = np.argsort(seq, kind="stable")
            ts, is_leaf = ts[order], is_leaf[order]
        if not is_leaf.any():
            continue
        share = np.diff(ts, prepend=ts[0])
        cuts = np.flatnonzero(share > BURST_GAP_NS)
        share[cuts] = 0  # a burst's first event: its start is not traced
        for run_share, run_leaf in zip(np.split(share, cuts), np.split(is_leaf, cuts),
                                       strict=True):
            counted = run_leaf.copy()
            if run_leaf.size and run_leaf[0]:
                counted[0] = False  # the burst's first event: no previous one to measure from
            n = int(counted.sum())
            spent = int(run_share[counted].sum())
            if n and spent > 0:
                paces.append(spent / n)
                leaves += n
    if len(paces) < MIN_SAMPLES:
        return None
    return float(pd.Series(paces).median()), len(paces), leaves
