"""What a trace itself shows: per-vCPU block intervals and the refcount history of roots.

Rules (../shared/docs/kernel-semantics.md §3.3, from the kernel's tracepoints):

* A vCPU is blocked from ``kvm_exit`` to its next ``kvm_entry`` (``vcpu_enter_guest``).
  Traces without those events (a kvm_pvm host) give only the thread's windows outside
  the guest: ``kvm_userspace_exit`` → the thread's next event (``userspace``), and bursts
  of host-side events no more than ``burst_gap_ns`` apart (a lower bound of the time spent
  in KVM; each such block carries ``confidence`` ``low``).
* Each block's cause comes from the same thread's events inside it: zap events
  (``kvm_mmu_prepare_zap_page``, ``kvm_tdp_mmu_spte_changed`` to a non-present SPTE) ⇒
  ``zap``; a root ``kvm_mmu_get_page`` ⇒ ``root_alloc``; ``kvm_userspace_exit`` ⇒
  ``userspace``; ``sched_switch`` away ⇒ ``preempted``; fault handling ⇒ ``fault``; else
  ``exit``.
* A block that overlaps a lost-events window (from the previous event on that CPU to the
  marker) is flagged ``lost``: events inside it may be missing.
* Shadow-MMU roots print their live ``root_count`` in ``kvm_mmu_get_page``,
  ``kvm_mmu_prepare_zap_page``, ``kvm_mmu_sync_page`` and ``kvm_mmu_unsync_page``; roots are
  keyed by (VM, gfn, role, generation) and their history is exactly those fields.
  ``get_page ... existing`` prints the count *before* the caller's get (``kvm_mmu_get_page``
  traces before ``mmu_alloc_root`` bumps ``root_count``). TDP MMU roots print 0: their
  refcount is not observable, only creation and zap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from parsers.schema import LOST_EVENTS
from parsers.trace import Trace
from replay.recorders import BLOCKS_SCHEMA, REFCOUNT_SCHEMA, ROOTS_SCHEMA
from replay.result import summarize_blocks
from replay.trace_threads import ThreadMap

__all__ = ["ObservedTables", "observe", "OBSERVED_BLOCKS_SCHEMA", "OBSERVED_ROOTS_SCHEMA",
           "BURST_GAP_NS", "CAUSES", "SPTE_PRESENT", "root_keys"]

#: Host-side events of a vCPU closer than this belong to one stay in KVM (no entry/exit).
BURST_GAP_NS: Final = 20_000
#: Causes, strongest first.
CAUSES: Final = ("zap", "root_alloc", "userspace", "preempted", "fault", "exit")
#: ``SPTE_MMU_PRESENT_MASK`` (bit 11, arch/x86/kvm/mmu/spte.h).
SPTE_PRESENT: Final = 1 << 11
_FAULT_EVENTS: Final = frozenset({
    "kvm_page_fault", "kvm_mmu_spte_requested", "kvm_mmu_set_spte", "kvm_mmu_pagetable_walk",
    "kvm_mmu_paging_element", "fast_page_fault", "kvm_mmu_get_page", "kvm_mmu_set_accessed_bit",
    "kvm_mmu_set_dirty_bit", "kvm_mmu_split_huge_page", "handle_mmio_page_fault"})
_ROOT_COUNT_EVENTS: Final = ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page", "kvm_mmu_sync_page",
                             "kvm_mmu_unsync_page")
_ROLE_KEY: Final = ("level", "has_4_byte_gpte", "quadrant", "direct", "access", "efer_nx",
                    "ad_disabled", "guest_mode", "passthrough", "as_id")

OBSERVED_BLOCKS_SCHEMA: Final = BLOCKS_SCHEMA.append(pa.field("lost", pa.bool_())).append(
    pa.field("confidence", pa.string()))
OBSERVED_ROOTS_SCHEMA: Final = pa.schema([
    *ROOTS_SCHEMA, pa.field("vm", pa.int64()), pa.field("gfn", pa.int64()),
    pa.field("level", pa.int32()), pa.field("mmu_valid_gen", pa.int64()),
    pa.field("direct", pa.bool_()),
])


@dataclass
class ObservedTables:
    """Observed ``blocks``, ``summary``, ``refcounts`` and ``roots`` (the replay's shapes, so
    observed and replayed compare column for column), and the words for what is unknown."""

    tables: dict[str, pa.Table]
    warnings: list[str] = field(default_factory=list)

    def to_arrow(self, name: str) -> pa.Table:
        """One table by name."""
        return self.tables[name]


def observe(trace: Trace, threads: ThreadMap, *, burst_gap_ns: int = BURST_GAP_NS
            ) -> ObservedTables:
    """The observed tables of ``trace`` given its thread map.

    Examples:
        >>> from parsers import read_trace
        >>> from replay.trace_threads import identify_threads
        >>> t = read_trace("sample_traces/tracefs_record_tgid.txt")
        >>> obs = observe(t, identify_threads(t))
        >>> obs.to_arrow("refcounts").num_rows > 0, obs.to_arrow("blocks").num_rows > 0
        (True, True)
    """
    warnings: list[str] = []
    frame = _vcpu_event_frame(trace, threads)
    blocks = _blocks(frame, trace, threads, burst_gap_ns, warnings)
    refcounts, roots = _roots(trace, threads, warnings)
    vcpus = sorted(v.vcpu for v in threads.vcpus.values())
    summary = summarize_blocks(blocks.select(BLOCKS_SCHEMA.names), vcpus)
    return ObservedTables({"blocks": blocks, "summary": summary, "refcounts": refcounts,
                           "roots": roots}, warnings)


def _vcpu_event_frame(trace: Trace, threads: ThreadMap) -> pd.DataFrame:
    """Events of vCPU threads with a category per row, sorted by (pid, ts, seq)."""
    ev = trace.events.select(["seq", "ts", "cpu", "pid", "event", "args"])
    keep = pc.is_in(ev.column("pid"), pa.array(sorted(threads.vcpus), pa.int32()))
    df = ev.filter(pc.fill_null(keep, False)).to_pandas()
    df["event"] = df["event"].astype(str)
    df["cat"] = _categories(df, trace)
    return df.sort_values(["pid", "ts", "seq"], kind="stable").reset_index(drop=True)


def _categories(df: pd.DataFrame, trace: Trace) -> np.ndarray:
    cat = np.full(len(df), "", dtype=object)
    ev = df["event"].to_numpy()
    cat[np.isin(ev, list(_FAULT_EVENTS))] = "fault"
    cat[ev == "kvm_userspace_exit"] = "userspace"
    cat[ev == "sched_switch"] = "preempted"
    zap_seq = set(_zap_seqs(trace))
    root_seq = set(_root_alloc_seqs(trace))
    seq = df["seq"].to_numpy()
    cat[np.isin(seq, sorted(root_seq))] = "root_alloc"
    cat[np.isin(seq, sorted(zap_seq))] = "zap"
    cat[ev == "kvm_entry"] = "entry"
    cat[ev == "kvm_exit"] = "exit_event"
    return cat


def _zap_seqs(trace: Trace) -> list[int]:
    out: list[int] = []
    if "kvm_mmu_prepare_zap_page" in trace.names:
        out += trace.table("kvm_mmu_prepare_zap_page").column("seq").to_pylist()
    if "kvm_tdp_mmu_spte_changed" in trace.names:
        t = trace.table("kvm_tdp_mmu_spte_changed")
        old = pc.fill_null(t.column("old_spte"), 0).to_numpy(zero_copy_only=False)
        new = pc.fill_null(t.column("new_spte"), 0).to_numpy(zero_copy_only=False)
        gone = ((old.astype(np.uint64) & SPTE_PRESENT) != 0) & \
            ((new.astype(np.uint64) & SPTE_PRESENT) == 0)
        out += t.column("seq").to_numpy()[gone].tolist()
    return out


def _root_alloc_seqs(trace: Trace) -> list[int]:
    if "kvm_mmu_get_page" not in trace.names:
        return []
    t = trace.table("kvm_mmu_get_page").to_pandas()
    if t.empty:
        return []
    top = t["level"].max()
    new = t["created"].fillna(False).astype(bool) & (t["level"] == top)
    return [int(s) for s in t.loc[new, "seq"]]


def _blocks(df: pd.DataFrame, trace: Trace, threads: ThreadMap, gap: int,
            warnings: list[str]) -> pa.Table:
    rows: list[tuple[int, int, int, str, str]] = []
    no_entry: list[str] = []
    for pid, group in df.groupby("pid", sort=True):
        vcpu = threads.vcpus[int(pid)].vcpu
        ts = group["ts"].to_numpy()
        cat = group["cat"].to_numpy()
        if (cat == "entry").any() and (cat == "exit_event").any():
            rows += [(vcpu, s, e, c, "high") for s, e, c in _exit_to_entry(ts, cat)]
        else:
            no_entry.append(threads.thread_name(int(pid)))
            rows += [(vcpu, s, e, c, "low") for s, e, c in _host_windows(ts, cat, gap)]
    if no_entry:
        warnings.append(
            f"no kvm_entry/kvm_exit for {len(no_entry)} vCPU threads ({', '.join(no_entry[:4])}"
            f"{', ...' if len(no_entry) > 4 else ''}): their blocks are windows outside the "
            f"guest (kvm_userspace_exit → next event, and host-side bursts with gaps <= "
            f"{gap} ns), a lower bound with confidence 'low'")
    rows.sort()
    lost = _lost_flags(rows, trace)
    if lost.any():
        warnings.append(f"{int(lost.sum())} observed blocks overlap lost-events windows "
                        f"(column 'lost'): events inside them may be missing")
    cols: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [[]] * 5
    start, end = np.asarray(cols[1], dtype=np.int64), np.asarray(cols[2], dtype=np.int64)
    return pa.Table.from_arrays([
        pa.array(cols[0], pa.int32()), pa.array(start), pa.array(end),
        pa.array(cols[3], pa.string()).dictionary_encode().cast(BLOCKS_SCHEMA.field("cause").type),
        pa.array(np.ones(len(rows), dtype=np.int64)), pa.array(end - start),
        pa.nulls(len(rows), pa.int64()), pa.array(lost, pa.bool_()), pa.array(cols[4], pa.string()),
    ], schema=OBSERVED_BLOCKS_SCHEMA)


def _strongest(cats: Sequence[str]) -> str:
    present = set(cats)
    return next((c for c in CAUSES if c in present), "exit")


def _exit_to_entry(ts: np.ndarray, cat: np.ndarray) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    exits = np.flatnonzero(cat == "exit_event")
    entries = np.flatnonzero(cat == "entry")
    nxt = np.searchsorted(entries, exits, side="right")
    for i, k in zip(exits.tolist(), nxt.tolist(), strict=True):
        if k >= entries.size:
            continue
        j = int(entries[k])
        inside = cat[i + 1:j]
        if (inside == "exit_event").any():  # a lost entry: the window is not one block
            continue
        out.append((int(ts[i]), int(ts[j]), _strongest(inside.tolist())))
    return out


def _host_windows(ts: np.ndarray, cat: np.ndarray, gap: int) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    start = 0
    for i in range(ts.size):
        last = i == ts.size - 1
        if cat[i] == "userspace" and not last:
            out.append((int(ts[i]), int(ts[i + 1]), "userspace"))
        if last or cat[i] == "userspace" or ts[i + 1] - ts[i] > gap:
            if ts[i] > ts[start]:
                burst = [c for c in cat[start:i + 1].tolist() if c != "userspace"]
                out.append((int(ts[start]), int(ts[i]), _strongest(burst)))
            start = i + 1
    return out


def _lost_flags(rows: list[tuple[int, int, int, str, str]], trace: Trace) -> np.ndarray:
    flags = np.zeros(len(rows), dtype=bool)
    if LOST_EVENTS not in trace.names or not rows:
        return flags
    lost = trace.table(LOST_EVENTS).to_pandas()
    ev = trace.events.select(["ts", "cpu", "event"]).to_pandas()
    ev = ev[ev["event"].astype(str) != LOST_EVENTS]
    first = int(ev["ts"].min()) if len(ev) else 0
    start = np.array([r[1] for r in rows])
    end = np.array([r[2] for r in rows])
    for ts, cpu in zip(lost["ts"], lost["cpu"], strict=True):
        hi = int(ts) if pd.notna(ts) else int(ev["ts"].max())
        before = ev[(ev["cpu"] == cpu) & (ev["ts"] < hi)]["ts"]
        lo = int(before.max()) if len(before) else first
        flags |= (start < hi) & (end > lo)
    return flags


def root_keys(table: pd.DataFrame) -> pd.Series:
    """Hashable root key per row: (gfn, role fields present, generation)."""
    cols = ["gfn", *[c for c in _ROLE_KEY if c in table], "mmu_valid_gen"]
    parts = table[cols].astype("Int64").fillna(-1).astype(np.int64)
    return pd.Series(list(map(tuple, parts.to_numpy().tolist())), index=table.index)


def _sp_events(trace: Trace, threads: ThreadMap) -> pd.DataFrame:
    frames = []
    for name in _ROOT_COUNT_EVENTS:
        if name in trace.names:
            t = trace.table(name).to_pandas()
            t["event"] = name
            frames.append(t)
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True).sort_values("seq", kind="stable")
    for col in ("created", "role", "mmu_valid_gen", "direct", "level", "gfn", "root_count"):
        if col not in df:
            df[col] = pd.NA
    df["vm"] = [threads.vm_of.get(int(p), -1) if pd.notna(p) else -1 for p in df["pid"]]
    df["key"] = root_keys(df)
    return df.reset_index(drop=True)


def _roots(trace: Trace, threads: ThreadMap, warnings: list[str]) -> tuple[pa.Table, pa.Table]:
    df = _sp_events(trace, threads)
    if df.empty:
        return REFCOUNT_SCHEMA.empty_table(), OBSERVED_ROOTS_SCHEMA.empty_table()
    top = df.groupby(["vm", "direct"], dropna=False)["level"].transform("max")
    counted = df.groupby(["vm", "key"])["root_count"].transform(lambda s: (s.fillna(0) > 0).any())
    is_root = counted | (df["level"] == top)
    roots = df[is_root].copy()
    ids = {k: i for i, k in enumerate(dict.fromkeys(zip(roots["vm"], roots["key"], strict=True)))}
    roots["root"] = [ids[(v, k)] for v, k in zip(roots["vm"], roots["key"], strict=True)]
    tdp = roots["direct"].fillna(False).astype(bool) & (roots["root_count"].fillna(0) == 0)
    if len(roots) and tdp.all():
        warnings.append("TDP MMU roots print root_count 0: their refcount is not traced, so "
                        "the observed history holds creation and zaps only")
    history = _history(roots[roots["root_count"].notna()], threads)
    table = _root_table(roots, trace, threads)
    return history, table


def _history(rows: pd.DataFrame, threads: ThreadMap) -> pa.Table:
    count = rows["root_count"].astype(np.int64).to_numpy()
    delta = count - rows.groupby("root")["root_count"].shift(1).fillna(0).astype(np.int64).to_numpy()
    created = rows["created"] if "created" in rows else pd.Series(dtype=object)
    reasons = []
    for ev, new in zip(rows["event"], created.reindex(rows.index), strict=True):
        if ev == "kvm_mmu_get_page":
            reasons.append("get_page new" if new is True else
                           "get_page existing (count before the caller's get)")
        else:
            reasons.append(ev.removeprefix("kvm_mmu_"))
    return pa.Table.from_pydict({
        "ts": rows["ts"].astype(np.int64).to_numpy(), "root": rows["root"].astype(np.int64).to_numpy(),
        "count": count.astype(np.int32), "delta": delta.astype(np.int32),
        "holder": [threads.thread_name(int(p)) for p in rows["pid"]], "reason": reasons,
    }, schema=REFCOUNT_SCHEMA)


def _root_table(roots: pd.DataFrame, trace: Trace, threads: ThreadMap) -> pa.Table:
    fast = trace.table("kvm_mmu_zap_all_fast").to_pandas() if "kvm_mmu_zap_all_fast" in \
        trace.names else pd.DataFrame(columns=["ts", "pid", "mmu_valid_gen"])
    fast["vm"] = [threads.vm_of.get(int(p), -1) for p in fast["pid"]]
    out: dict[str, list[object]] = {n: [] for n in OBSERVED_ROOTS_SCHEMA.names}
    for root, g in roots.groupby("root", sort=True):
        first = g.iloc[0]
        created = g[(g["event"] == "kvm_mmu_get_page") & (g["created"].fillna(False) == True)]  # noqa: E712
        made = created.iloc[0] if len(created) else first
        zaps = g[g["event"] == "kvm_mmu_prepare_zap_page"]
        gen = first.get("mmu_valid_gen")
        inval = fast[(fast["vm"] == first["vm"]) & (fast["ts"] >= made["ts"])]
        if pd.notna(gen) and "mmu_valid_gen" in inval and inval["mmu_valid_gen"].notna().any():
            inval = inval[inval["mmu_valid_gen"] == gen]
        role = first.get("role")
        values = {
            "root": int(root), "role": int(role) if pd.notna(role) else None,
            "created": int(made["ts"]), "created_by": threads.thread_name(int(made["pid"])),
            "invalidated": int(inval["ts"].iloc[0]) if len(inval) else None,
            "zap_start": int(zaps["ts"].iloc[0]) if len(zaps) else None,
            "zap_end": int(zaps["ts"].iloc[-1]) if len(zaps) else None,
            "zapped_by": threads.thread_name(int(zaps["pid"].iloc[0])) if len(zaps) else None,
            "leaves_zapped": None, "tables_zapped": None, "unlinked": None, "freed": None,
            "vm": int(first["vm"]), "gfn": int(first["gfn"]) if pd.notna(first["gfn"]) else None,
            "level": int(first["level"]) if pd.notna(first["level"]) else None,
            "mmu_valid_gen": int(gen) if pd.notna(gen) else None,
            "direct": bool(first["direct"]) if pd.notna(first["direct"]) else None,
        }
        for k, v in values.items():
            out[k].append(v)
    return pa.Table.from_pydict(out, schema=OBSERVED_ROOTS_SCHEMA)
