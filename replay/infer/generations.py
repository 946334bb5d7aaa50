"""Which VM a vCPU thread belongs to when the trace has no tgid: follow ``mmu_valid_gen``.

``kvm_mmu_zap_all_fast`` (arch/x86/kvm/mmu/mmu.c) flips the VM's ``mmu_valid_gen`` and
prints the old value; every shadow page the VM's vCPUs get afterwards carries the new one
(``kvm_mmu_get_page`` prints it; obsolete pages are never returned by the lookup). VMs
zap at different instants, so the generation a vCPU's pages carry over time matches the
timeline of exactly one VMM thread's fast zaps: that thread's process is the vCPU's VM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import pandas as pd

from parsers.trace import Trace

__all__ = ["assign_by_generation", "MIN_AGREEMENT"]

#: Share of a vCPU's pages whose generation must match the chosen VMM's timeline.
MIN_AGREEMENT: Final = 0.95


def _generation_at(zaps: pd.DataFrame, ts: np.ndarray) -> np.ndarray:
    """The VM's generation at each of ``ts`` given its fast zaps (ts, printed old gen)."""
    zts = zaps["ts"].to_numpy(dtype=np.int64)
    old = zaps["mmu_valid_gen"].to_numpy(dtype=np.int64)
    nxt = np.searchsorted(zts, ts, side="left")
    after_last = 1 - old[-1] if old[-1] in (0, 1) else old[-1] + 1
    gens: np.ndarray = np.where(nxt < zts.size, old[np.minimum(nxt, zts.size - 1)], after_last)
    return gens


def _latest_before_switches(ts: np.ndarray, gen: np.ndarray,
                            candidates: dict[int, pd.DataFrame]) -> dict[int, int]:
    """For each generation switch in a vCPU's pages, the candidate whose fast zap came last
    before the first page of the new generation; votes per candidate."""
    votes = dict.fromkeys(candidates, 0)
    times = {v: np.sort(z["ts"].to_numpy(dtype=np.int64)) for v, z in candidates.items()}
    for i in (np.flatnonzero(gen[1:] != gen[:-1]) + 1).tolist():
        last: dict[int, int] = {}
        for vmm, t in times.items():
            k = int(np.searchsorted(t, ts[i], side="right"))
            if k:
                last[vmm] = int(t[k - 1])
        if last:
            votes[max(last, key=lambda v: (last[v], -v))] += 1
    return votes


def assign_by_generation(trace: Trace, vcpu_pids: Sequence[int]
                         ) -> dict[int, tuple[int, str]]:
    """vCPU pid → (VMM thread pid, evidence) for each vCPU whose pages' generations follow
    exactly one VMM thread's fast zaps (at least :data:`MIN_AGREEMENT` of them, and
    strictly more than any other thread's).

    Examples:
        >>> from parsers import read_trace
        >>> t = read_trace("sample_traces/tracefs_record_tgid.txt")
        >>> sorted(assign_by_generation(t, [17506, 17507, 17508, 17509]).items())[0][1][0]
        17505
    """
    if "kvm_mmu_zap_all_fast" not in trace.names or "kvm_mmu_get_page" not in trace.names:
        return {}
    zaps = trace.table("kvm_mmu_zap_all_fast").to_pandas().dropna(subset=["mmu_valid_gen"])
    pages = trace.table("kvm_mmu_get_page").select(["ts", "pid", "mmu_valid_gen"]).to_pandas()
    pages = pages.dropna(subset=["mmu_valid_gen"])
    vmms = {int(p): z.sort_values("ts", kind="stable") for p, z in zaps.groupby("pid")}
    vmms = {p: z for p, z in vmms.items() if p not in set(vcpu_pids)}
    out: dict[int, tuple[int, str]] = {}
    if len(vmms) < 1:
        return out
    for pid in vcpu_pids:
        mine = pages[pages["pid"] == pid]
        if mine.empty:
            continue
        ts = mine["ts"].to_numpy(dtype=np.int64)
        gen = mine["mmu_valid_gen"].to_numpy(dtype=np.int64)
        order = np.argsort(ts, kind="stable")
        ts, gen = ts[order], gen[order]
        scores = sorted(((float(np.mean(_generation_at(z, ts) == gen)), vmm)
                         for vmm, z in vmms.items()), reverse=True)
        best, vmm = scores[0]
        if best < MIN_AGREEMENT:
            continue
        tied = [v for s, v in scores if s == best]
        if len(tied) == 1:
            second = scores[1][0] if len(scores) > 1 else 0.0
            out[pid] = (vmm, f"mmu_valid_gen of its {len(gen)} shadow pages follows the fast "
                             f"zaps of thread {vmm} ({best:.0%} agree; next best {second:.0%})")
            continue
        votes = _latest_before_switches(ts, gen, {v: vmms[v] for v in tied})
        ranked = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))
        if ranked[0][1] > 0 and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]):
            vmm = ranked[0][0]
            out[pid] = (vmm, f"mmu_valid_gen of its pages fits the fast zaps of threads "
                             f"{sorted(tied)} equally; thread {vmm}'s zap came last before its "
                             f"first page of a new generation ({ranked[0][1]} of "
                             f"{sum(votes.values())} switches)")
    return out
