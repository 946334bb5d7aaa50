"""Typed tables of a trace as DataFrames, converted once per trace, and what the workload
derivation and the era detection both read from them."""

from __future__ import annotations

import weakref

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from parsers.trace import Trace
from replay.infer.observed import SPTE_PRESENT

__all__: list[str] = []


def _has_event(trace: Trace, name: str) -> bool:
    """Whether any row of ``trace`` is event ``name`` (compares dictionary codes)."""
    if name in trace.names:
        return bool(trace.table(name).num_rows > 0)
    for chunk in trace.events.column("event").chunks:
        code = chunk.dictionary.index(name).as_py()
        if code >= 0 and bool(pc.any(pc.equal(chunk.indices, code)).as_py()):
            return True
    return False


#: Typed tables as DataFrames, converted once per trace (derive reads several of them in
#: several passes; the frames are only read, never modified).
_FRAMES: weakref.WeakKeyDictionary[Trace, dict[str, pd.DataFrame]] = weakref.WeakKeyDictionary()


def _frame(trace: Trace, name: str) -> pd.DataFrame:
    frames = _FRAMES.setdefault(trace, {})
    if name not in frames:
        frames[name] = trace.table(name).to_pandas() if name in trace.names else pd.DataFrame()
    return frames[name]


def _root_level(trace: Trace) -> int | None:
    """The TDP root level: the highest level of a direct ``kvm_mmu_get_page``, else the
    highest level of a ``kvm_tdp_mmu_spte_changed``."""
    pages = _frame(trace, "kvm_mmu_get_page")
    if not pages.empty and (pages["direct"] == True).any():  # noqa: E712
        return int(pages.loc[pages["direct"] == True, "level"].max())  # noqa: E712
    changed = _frame(trace, "kvm_tdp_mmu_spte_changed")
    level = changed["level"].max() if not changed.empty else None
    return None if level is None or pd.isna(level) else int(level)


def _root_teardowns(trace: Trace) -> pd.DataFrame:
    """``kvm_tdp_mmu_spte_changed`` rows that zap a top-level entry (present → non-present
    at the root level): only a root's teardown does that (``tdp_mmu_zap_root``, or ≤ 5.17
    ``zap_gfn_range`` over the whole root); mmu_notifier unmaps zap leaves, faults at most
    the level of the huge page they install."""
    changed = _frame(trace, "kvm_tdp_mmu_spte_changed")
    level = _root_level(trace)
    if changed.empty or level is None:
        return pd.DataFrame(columns=["seq", "ts", "pid"])
    old = changed["old_spte"].fillna(0).astype(np.uint64)
    new = changed["new_spte"].fillna(0).astype(np.uint64)
    gone = ((old & SPTE_PRESENT) != 0) & ((new & SPTE_PRESENT) == 0) & (changed["level"] == level)
    return changed.loc[gone, ["seq", "ts", "pid"]]
