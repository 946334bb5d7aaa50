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

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from parsers.schema import LOST_EVENTS
from parsers.trace import Trace
from replay.infer.root_pages import (
    BEFORE_TRACE,
    SPTE_PRESENT,
    invalidations,
    root_levels,
    unlinked_before_fast_zap,
    unseen_tdp_roots,
)
from replay.infer.threads import ThreadMap
from replay.model.recorders import BLOCKS_SCHEMA, REFCOUNT_SCHEMA, ROOTS_SCHEMA
from replay.result import summarize_blocks

__all__ = ["ObservedTables", "observe", "OBSERVED_BLOCKS_SCHEMA", "OBSERVED_ROOTS_SCHEMA",
           "BURST_GAP_NS", "CAUSES", "SPTE_PRESENT", "root_keys"]

#: Host-side events of a vCPU closer than this belong to one stay in KVM (no entry/exit).
BURST_GAP_NS: Final = 20_000
#: Causes, strongest first.
CAUSES: Final = ("zap", "root_alloc", "userspace", "preempted", "fault", "exit")
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
        >>> from replay.infer.threads import identify_threads
        >>> t = read_trace("sample_traces/tracefs_record_tgid.txt")
        >>> obs = observe(t, identify_threads(t))
        >>> obs.to_arrow("refcounts").num_rows > 0, obs.to_arrow("blocks").num_rows > 0
        (True, True)
    """
    warnings: list[str] = []
    blocks = _blocks(_vcpu_event_pieces(trace, threads), trace, threads, burst_gap_ns,
                     warnings)
    refcounts, roots = _roots(trace, threads, warnings)
    vcpus = sorted(v.vcpu for v in threads.vcpus.values())
    summary = summarize_blocks(blocks.select(BLOCKS_SCHEMA.names), vcpus)
    return ObservedTables({"blocks": blocks, "summary": summary, "refcounts": refcounts,
                           "roots": roots}, warnings)


#: Category codes of a vCPU thread's events; codes 0..5 index :data:`CAUSES` (strongest
#: first), so the cause of a window is the minimum code inside it.
_ZAP, _ROOT, _USER, _PREEMPT, _FAULT, _OTHER, _ENTRY, _EXIT = range(8)


#: Events per segment the observation reads at a time: its temporaries are a few bytes per
#: row of one segment, not of the whole trace.
SEGMENT_ROWS: Final = 1 << 21


def _vcpu_event_pieces(trace: Trace, threads: ThreadMap
                       ) -> Iterator[dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Per segment of the events table, each vCPU thread's events in it (``ts`` and category
    code, in (ts, seq) order); the segments follow each other in time, so a thread's rows
    are its pieces one after the other.

    Rows already in (ts, seq) order (every reader's merged output) are read a segment at a
    time, from NumPy views of the columns; others are sorted, all vCPU rows at once (one
    piece per thread)."""
    segment_rows = SEGMENT_ROWS
    ev = trace.events
    seq = _int_column(ev.column("seq"))
    ts = _int_column(ev.column("ts"))
    codes, words = _event_codes(ev)
    by_word = np.array([_word_code(w) for w in words] or [_OTHER], dtype=np.int8)
    pid_column = ev.column("pid")
    special = ((np.sort(_root_alloc_seqs(trace)), _ROOT), (np.sort(_zap_seqs(trace)), _ZAP))
    vcpus = sorted(threads.vcpus)
    if not _in_order(ts, seq, segment_rows):
        pid = _int_column(pc.fill_null(pid_column, -1))
        cat = _categories(by_word[codes], seq, special)
        yield {p: (ts[rows], cat[rows]) for p, rows in _vcpu_rows(pid, ts, seq, vcpus)}
        return
    for lo in range(0, seq.size, segment_rows):
        hi = min(lo + segment_rows, seq.size)
        pid = _int_column(pc.fill_null(pid_column.slice(lo, hi - lo), -1))
        cat = _categories(by_word[codes[lo:hi]], seq[lo:hi], special)
        yield {p: (ts[lo:hi][rows], cat[rows]) for p, rows in _rows_by_pid(pid, vcpus)}


def _rows_by_pid(pid: np.ndarray, vcpus: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Each of ``vcpus`` (sorted) with its rows of ``pid``, in row order, when it has any:
    one scan per pid for a few threads, one stable sort for many."""
    if len(vcpus) <= _SCAN_PIDS:
        for p in vcpus:
            rows = np.flatnonzero(pid == p)
            if rows.size:
                yield p, rows
        return
    rows = np.flatnonzero(np.isin(pid, np.array(vcpus, dtype=pid.dtype)))
    rows = rows[np.argsort(pid[rows], kind="stable")]
    bounds = np.flatnonzero(np.diff(pid[rows])) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, rows.size], strict=True):
        if hi > lo:
            yield int(pid[rows[lo]]), rows[lo:hi]


def _int_column(column: pa.ChunkedArray) -> np.ndarray:
    """A null-free integer column as one NumPy array (a view when it is one chunk)."""
    out: np.ndarray = (column.chunk(0).to_numpy(zero_copy_only=False) if column.num_chunks == 1
                       else column.to_numpy())
    return out


def _event_codes(ev: pa.Table) -> tuple[np.ndarray, list[str]]:
    """The ``event`` column as one array of dictionary codes, and the names they index."""
    names = ev.column("event").combine_chunks()
    if not pa.types.is_dictionary(names.type):
        names = names.dictionary_encode()
    return names.indices.to_numpy(zero_copy_only=False), names.dictionary.to_pylist()


def _in_order(ts: np.ndarray, seq: np.ndarray, segment_rows: int) -> bool:
    """True when rows ascend in (ts, seq): ``ts`` never falls and ``seq`` always rises
    (checked a segment at a time, and across each segment's boundary)."""
    for lo in range(0, ts.size, segment_rows):
        hi = min(lo + segment_rows + 1, ts.size)
        if not (bool(np.all(ts[lo + 1:hi] >= ts[lo:hi - 1]))
                and bool(np.all(seq[lo + 1:hi] > seq[lo:hi - 1]))):
            return False
    return True


#: Up to this many vCPU threads, their rows are found one pid at a time (a scan each)
#: instead of sorting all of them.
_SCAN_PIDS = 64


def _vcpu_rows(pid: np.ndarray, ts: np.ndarray, seq: np.ndarray, vcpus: list[int]
               ) -> Iterator[tuple[int, np.ndarray]]:
    """Each of ``vcpus`` (sorted) with its rows in (ts, seq) order, when it has any (rows
    not in that order: sorted, all of them at once)."""
    rows = np.flatnonzero(np.isin(pid, np.array(vcpus, dtype=pid.dtype)))
    rows = rows[np.lexsort((seq[rows], ts[rows], pid[rows]))]
    bounds = np.flatnonzero(np.diff(pid[rows])) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, rows.size], strict=True):
        if hi > lo:
            yield int(pid[rows[lo]]), rows[lo:hi]


def _categories(cat: np.ndarray, seq: np.ndarray,
                special: tuple[tuple[np.ndarray, int], ...]) -> np.ndarray:
    """``cat`` (the codes of the rows' event names, a new array) with the rows whose
    ``seq`` is in each special set of seqs (sorted) given that set's code (later sets
    win)."""
    for wanted, code in special:
        cat[_rows_of(seq, wanted)] = code
    return cat


def _rows_of(seq: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Rows whose ``seq`` is in ``wanted`` (sorted; a mask found by binary search when
    ``seq`` ascends, as in every reader's output, instead of sorting both)."""
    if not wanted.size or not seq.size:
        return np.zeros(seq.size, dtype=bool)
    if not bool(np.all(seq[1:] > seq[:-1])):
        return np.isin(seq, wanted)
    at = np.searchsorted(seq, wanted)
    found = at[at < seq.size]
    found = found[seq[found] == wanted[at < seq.size]]
    mask = np.zeros(seq.size, dtype=bool)
    mask[found] = True
    return mask


def _word_code(name: str) -> int:
    if name == "kvm_entry":
        return _ENTRY
    if name == "kvm_exit":
        return _EXIT
    if name == "kvm_userspace_exit":
        return _USER
    if name == "sched_switch":
        return _PREEMPT
    return _FAULT if name in _FAULT_EVENTS else _OTHER


def _zap_seqs(trace: Trace) -> np.ndarray:
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
    return np.asarray(out, dtype=np.int64)


def _root_alloc_seqs(trace: Trace) -> np.ndarray:
    if "kvm_mmu_get_page" not in trace.names:
        return np.zeros(0, dtype=np.int64)
    t = trace.table("kvm_mmu_get_page").select(["seq", "level", "created"]).to_pandas()
    if t.empty:
        return np.zeros(0, dtype=np.int64)
    new = t["created"].fillna(False).astype(bool) & (t["level"] == t["level"].max())
    seqs: np.ndarray = t.loc[new, "seq"].to_numpy(dtype=np.int64)
    return seqs


def _blocks(pieces: Iterable[dict[int, tuple[np.ndarray, np.ndarray]]], trace: Trace,
            threads: ThreadMap, gap: int, warnings: list[str]) -> pa.Table:
    """The block windows of each vCPU thread, its events read piece by piece
    (:func:`_vcpu_event_pieces`): a thread's rows not yet in a closed window are carried
    into its next piece, so the working set is one piece plus what is carried."""
    with_entries = _threads_with_entries(trace, threads)
    finders: dict[int, _WindowFinder] = {}
    for piece in pieces:
        for pid, (ts, cat) in piece.items():
            if pid not in finders:
                finders[pid] = _WindowFinder(pid in with_entries, gap)
            finders[pid].feed(ts, cat)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]] = []
    no_entry: list[str] = []
    for pid in sorted(finders):
        finder = finders.pop(pid)
        s, e, c = finder.finish()
        index = threads.vcpus[pid].vcpu
        parts.append((np.full(s.size, index), s, e, c, "high" if finder.entries else "low"))
        if not finder.entries:
            no_entry.append(threads.thread_name(pid))
    if no_entry:
        warnings.append(
            f"no kvm_entry/kvm_exit for {len(no_entry)} vCPU threads ({', '.join(no_entry[:4])}"
            f"{', ...' if len(no_entry) > 4 else ''}): their blocks are windows outside the "
            f"guest (kvm_userspace_exit → next event, and host-side bursts with gaps <= "
            f"{gap} ns), a lower bound with confidence 'low'")
    vcpu = np.concatenate([p[0] for p in parts] or [np.zeros(0)]).astype(np.int32)
    start = np.concatenate([p[1] for p in parts] or [np.zeros(0)]).astype(np.int64)
    end = np.concatenate([p[2] for p in parts] or [np.zeros(0)]).astype(np.int64)
    code = np.concatenate([p[3] for p in parts] or [np.zeros(0)]).astype(np.int8)
    conf = np.concatenate([np.full(p[1].size, p[4], dtype=object) for p in parts]
                          or [np.zeros(0, dtype=object)])
    order = np.lexsort((code, end, start, vcpu))
    vcpu, start, end, code, conf = vcpu[order], start[order], end[order], code[order], conf[order]
    lost = _lost_flags(start, end, trace)
    if lost.any():
        warnings.append(f"{int(lost.sum())} observed blocks overlap lost-events windows "
                        f"(column 'lost'): events inside them may be missing")
    cause = pa.DictionaryArray.from_arrays(pa.array(code, pa.int8()), pa.array(CAUSES))
    return pa.Table.from_arrays([
        pa.array(vcpu, pa.int32()), pa.array(start), pa.array(end), cause,
        pa.array(np.ones(start.size, dtype=np.int64)), pa.array(end - start),
        pa.nulls(start.size, pa.int64()), pa.array(lost, pa.bool_()),
        pa.array(conf.tolist(), pa.string()),
    ], schema=OBSERVED_BLOCKS_SCHEMA)


def _threads_with_entries(trace: Trace, threads: ThreadMap) -> set[int]:
    """vCPU threads with both a ``kvm_entry`` and a ``kvm_exit`` (their blocks run exit →
    entry; the others' are host windows), read a segment at a time."""
    ev = trace.events
    codes, words = _event_codes(ev)
    wanted = {code: np.array([i for i, w in enumerate(words) if _word_code(w) == code],
                             dtype=np.int32) for code in (_ENTRY, _EXIT)}
    if not all(v.size for v in wanted.values()):
        return set()
    vcpus = np.array(sorted(threads.vcpus), dtype=np.int64)
    seen: dict[int, set[int]] = {_ENTRY: set(), _EXIT: set()}
    for lo in range(0, codes.size, SEGMENT_ROWS):
        hi = min(lo + SEGMENT_ROWS, codes.size)
        pid = _int_column(pc.fill_null(ev.column("pid").slice(lo, hi - lo), -1))
        for code, indices in wanted.items():
            found = np.unique(pid[np.isin(codes[lo:hi], indices)])
            seen[code].update(found[np.isin(found, vcpus)].tolist())
    return seen[_ENTRY] & seen[_EXIT]


class _WindowFinder:
    """One vCPU thread's block windows from its events fed in order, piece by piece.

    Each piece is cut after the last point where no window can span (after the last
    ``kvm_entry``; for host windows, after the last userspace exit or gap), the windows
    before it found at once (:func:`_exit_to_entry`, :func:`_host_windows`) and the rest
    carried into the next piece: the windows are those of the whole thread at once."""

    def __init__(self, entries: bool, gap: int) -> None:
        self.entries = entries
        self.gap = gap
        self.ts = np.zeros(0, dtype=np.int64)
        self.cat = np.zeros(0, dtype=np.int8)
        self.found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def feed(self, ts: np.ndarray, cat: np.ndarray) -> None:
        if self.ts.size:
            ts, cat = np.concatenate([self.ts, ts]), np.concatenate([self.cat, cat])
        upto = self._closed(ts, cat)
        if upto:
            self.found.append(self._windows(ts[:upto], cat[:upto]))
        # host windows: the row after the cut also starts the carried rows; the rows
        # carried are copies, as a view would keep the whole piece alive
        carry = upto - 1 if upto and not self.entries else upto
        self.ts, self.cat = ts[carry:].copy(), cat[carry:].copy()

    def _closed(self, ts: np.ndarray, cat: np.ndarray) -> int:
        """Rows the windows found now cover: through the last entry; for host windows
        through the row after the last cut (that row also starts the carried rows)."""
        if self.entries:
            last = np.flatnonzero(cat == _ENTRY)
            return int(last[-1]) + 1 if last.size else 0
        if ts.size < 2:
            return 0
        cut = np.flatnonzero((cat[:-1] == _USER) | (np.diff(ts) > self.gap))
        return int(cut[-1]) + 2 if cut.size else 0

    def _windows(self, ts: np.ndarray, cat: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _exit_to_entry(ts, cat) if self.entries else _host_windows(ts, cat, self.gap)

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every window: those found, then the carried rows'."""
        if self.ts.size:
            self.found.append(self._windows(self.ts, self.cat))
        found, self.found = self.found, []
        if not found:
            return (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                    np.zeros(0, dtype=np.int8))
        start, end, code = (np.concatenate([f[i] for f in found]) for i in range(3))
        return start, end, code


def _window_cause(cat: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Strongest cause code in each ``cat[lo:hi]`` (``_OTHER`` for empty windows); windows
    are sorted and disjoint."""
    codes = np.minimum(cat, _OTHER)
    out = np.full(lo.size, _OTHER, dtype=np.int8)
    full = hi > lo
    if full.any():
        idx = np.stack([lo[full], hi[full]], axis=1).ravel()
        padded = np.append(codes, _OTHER)
        out[full] = np.minimum.reduceat(padded, idx)[::2]
    return out


def _exit_to_entry(ts: np.ndarray, cat: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kvm_exit → next kvm_entry; an exit followed by another exit first (a lost entry)
    opens no block."""
    exits = np.flatnonzero(cat == _EXIT)
    entries = np.flatnonzero(cat == _ENTRY)
    k = np.searchsorted(entries, exits, side="right")
    ok = k < entries.size
    exits, j = exits[ok], entries[k[ok]]
    next_exit = np.append(exits[1:], np.iinfo(np.int64).max)
    ok = next_exit > j
    exits, j = exits[ok], j[ok]
    return ts[exits], ts[j], _window_cause(cat, exits + 1, j)


def _host_windows(ts: np.ndarray, cat: np.ndarray, gap: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``userspace`` windows (kvm_userspace_exit → next event) and bursts of host-side
    events at most ``gap`` apart, split after each userspace exit."""
    n = ts.size
    user = np.flatnonzero(cat[:-1] == _USER) if n > 1 else np.zeros(0, dtype=np.int64)
    cut = np.flatnonzero((cat[:-1] == _USER) | (np.diff(ts) > gap)) if n > 1 else \
        np.zeros(0, dtype=np.int64)
    first = np.r_[0, cut + 1]
    last = np.r_[cut, n - 1]
    keep = ts[last] > ts[first]
    first, last = first[keep], last[keep]
    no_user = np.where(cat == _USER, _OTHER, cat)
    burst_cause = _window_cause(no_user, first, last + 1)
    start = np.r_[ts[user], ts[first]]
    end = np.r_[ts[user + 1], ts[last]]
    code = np.r_[np.full(user.size, _USER, dtype=np.int8), burst_cause]
    return start, end, code


def _lost_flags(start: np.ndarray, end: np.ndarray, trace: Trace) -> np.ndarray:
    """Blocks overlapping a lost-events window: from the last event on the marker's CPU
    before it (the trace's first event when none) to the marker."""
    flags = np.zeros(start.size, dtype=bool)
    if LOST_EVENTS not in trace.names or not start.size:
        return flags
    lost = trace.table(LOST_EVENTS)
    marker_ts = _int_column(lost.column("ts"))  # never null (the table's schema)
    marker_cpu = lost.column("cpu").to_pandas().to_numpy(dtype=float)  # NaN: unknown
    for lo, hi in zip(_lost_starts(trace, marker_ts, marker_cpu), marker_ts.tolist(),
                      strict=True):
        flags |= (start < hi) & (end > lo)
    return flags


def _lost_starts(trace: Trace, marker_ts: np.ndarray, marker_cpu: np.ndarray) -> list[int]:
    """Per lost-events marker, the time of the last event (markers excluded) on its CPU
    before it, or the trace's first event time when there is none (or the CPU is unknown);
    the events are read a segment at a time."""
    ev = trace.events
    codes, words = _event_codes(ev)
    marker_codes = [i for i, w in enumerate(words) if w == LOST_EVENTS]
    ts = _int_column(ev.column("ts"))
    none = np.iinfo(np.int64).min
    first = np.iinfo(np.int64).max
    cpus = sorted({int(c) for c in marker_cpu if not np.isnan(c)})
    below = {c: np.full(marker_ts.size, none) for c in cpus}
    for lo in range(0, ts.size, SEGMENT_ROWS):
        hi = min(lo + SEGMENT_ROWS, ts.size)
        real = ~np.isin(codes[lo:hi], marker_codes)
        seg_ts = ts[lo:hi][real]
        if not seg_ts.size:
            continue
        first = min(first, int(seg_ts.min()))
        cpu = ev.column("cpu").slice(lo, hi - lo).to_pandas().to_numpy(dtype=float)[real]
        for c in cpus:
            on = np.sort(seg_ts[cpu == c])
            if on.size:
                k = np.searchsorted(on, marker_ts, side="left") - 1
                np.maximum(below[c], np.where(k >= 0, on[np.maximum(k, 0)], none),
                           out=below[c])
    if first == np.iinfo(np.int64).max:
        first = 0
    out = []
    for i, c in enumerate(marker_cpu.tolist()):
        seen = none if np.isnan(c) else int(below[int(c)][i])
        out.append(first if seen == none else seen)
    return out


def root_keys(table: pd.DataFrame) -> pd.Series:
    """Hashable root key per row: (gfn, role fields present, generation)."""
    cols = ["gfn", *[c for c in _ROLE_KEY if c in table], "mmu_valid_gen"]
    parts = table[cols].astype("Int64").fillna(-1).astype(np.int64)
    return pd.Series(list(map(tuple, parts.to_numpy().tolist())), index=table.index)


def _vm(threads: ThreadMap, pid: object, ts: object) -> int:
    if pd.isna(pid):
        return -1
    vm = threads.vm_at(int(pid), int(ts))  # type: ignore[call-overload]
    return -1 if vm is None else vm


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
    df["vm"] = [_vm(threads, p, t) for p, t in zip(df["pid"], df["ts"], strict=True)]
    df = df.reset_index(drop=True)
    base = root_keys(df)
    # a "new" page is a new page even when (gfn, role, gen) repeat: the old one was zapped
    # (TDP roots always print gen 0; the shadow generation is a single bit since 5.x)
    new = ((df["event"] == "kvm_mmu_get_page") & (df["created"] == True)).astype(int)  # noqa: E712
    instance = new.groupby([df["vm"], base]).cumsum()
    df["key"] = [(*k, int(i)) for k, i in zip(base, instance, strict=True)]
    return df


def _roots(trace: Trace, threads: ThreadMap, warnings: list[str]) -> tuple[pa.Table, pa.Table]:
    df = _sp_events(trace, threads)
    if df.empty:
        return REFCOUNT_SCHEMA.empty_table(), unseen_tdp_roots(
            trace, threads, OBSERVED_ROOTS_SCHEMA.empty_table(), OBSERVED_ROOTS_SCHEMA)
    df = df[df["vm"] != -1] if (df["vm"] != -1).any() else df
    page = pd.Series(pd.factorize(pd.Series(list(zip(df["vm"], df["key"], strict=True)),
                                            index=df.index))[0], index=df.index)
    top = root_levels(df, trace)
    counted = (df["root_count"].fillna(0) > 0).groupby(page).transform("any")
    roots = df[counted | (df["level"] == top)].copy()
    roots["root"] = pd.factorize(page[roots.index])[0]
    tdp = roots["direct"].fillna(False).astype(bool) & (roots["root_count"].fillna(0) == 0)
    if len(roots) and tdp.all():
        warnings.append("TDP MMU roots print root_count 0: their refcount is not traced, so "
                        "the observed history holds creation and zaps only")
    traced = (roots["root_count"].fillna(0) > 0).groupby(roots["root"]).transform("any")
    history = _history(roots[traced & roots["root_count"].notna()], threads)
    table = _root_table(roots, trace, threads)
    return history, unseen_tdp_roots(trace, threads, table, OBSERVED_ROOTS_SCHEMA)


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
        "refcount": count.astype(np.int32), "delta": delta.astype(np.int32),
        "holder": [threads.thread_name(int(p)) for p in rows["pid"]], "reason": reasons,
    }, schema=REFCOUNT_SCHEMA)


def _tdp_zaps(roots: pd.DataFrame, fast: pd.DataFrame, trace: Trace, threads: ThreadMap
              ) -> pd.DataFrame:
    """TDP roots are never traced by their own zap: attribute the VM's SPTE zaps (to a
    non-present SPTE, and child-table ``prepare_zap_page``) to the newest root created
    before the last fast zap preceding them (the root that zap invalidated), or before the
    zap itself when no fast zap precedes it. A kernel worker's zaps belong to the root its
    work item was queued for: the reference time is the ``workqueue_queue_work`` (a defunct
    root's zap can still run when a later fast zap flushes the workqueue). Returns rows
    ``root, ts, pid, seq`` in seq order."""
    direct = roots[roots["direct"].fillna(False).astype(bool)]
    if direct.empty:
        return pd.DataFrame(columns=["root", "ts", "pid", "seq"])
    ev = trace.events.select(["seq", "ts", "pid"])
    # the zaps' rows only, before pandas: not a frame of every event
    ev = ev.filter(pc.is_in(ev.column("seq"), pa.array(_zap_seqs(trace), pa.int64()))).to_pandas()
    ev["vm"] = [_vm(threads, p, t) for p, t in zip(ev["pid"], ev["ts"], strict=True)]
    born = direct.groupby("root").agg(vm=("vm", "first"), created=("ts", "min")).reset_index()
    parts = []
    for vm, group in ev.groupby("vm"):
        mine = born[born["vm"] == vm].sort_values(["created", "root"], kind="stable")
        created = mine["created"].to_numpy(dtype=np.int64)
        fz = np.sort(fast.loc[fast["vm"] == vm, "ts"].to_numpy(dtype=np.int64))
        ts = group["ts"].to_numpy(dtype=np.int64)
        k = np.searchsorted(fz, ts, side="right")
        ref = np.where(k > 0, fz[np.maximum(k - 1, 0)] if fz.size else ts, ts)
        ref = _queued_at(group["pid"].to_numpy(), ts, ref, threads)
        idx = np.searchsorted(created, ref, side="left") - 1
        ok = idx >= 0
        parts.append(pd.DataFrame({"root": mine["root"].to_numpy()[idx[ok]],
                                   "ts": ts[ok], "pid": group["pid"].to_numpy()[ok],
                                   "seq": group["seq"].to_numpy()[ok]}))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["root", "ts", "pid", "seq"])
    return out.sort_values("seq", kind="stable")[["root", "ts", "pid", "seq"]]


def _queued_at(pids: np.ndarray, ts: np.ndarray, ref: np.ndarray, threads: ThreadMap
               ) -> np.ndarray:
    """``ref`` with the queueing time of the work item each (worker pid, ts) runs in."""
    out = ref.copy()
    for item in threads.work_items:
        inside = (pids == item.worker) & (ts >= item.start) & (ts <= item.end)
        out[inside] = item.queued_at
    return out


def _zap_summary(zaps: pd.DataFrame) -> pd.DataFrame:
    """Per root: first and last zap time (event order) and the thread with most zaps."""
    if zaps.empty:
        return pd.DataFrame(columns=["zap_start", "zap_end", "zapper"])
    first = zaps.drop_duplicates("root", keep="first").set_index("root")["ts"]
    last = zaps.drop_duplicates("root", keep="last").set_index("root")["ts"]
    counts = zaps.groupby(["root", "pid"]).size().reset_index(name="n")
    top = counts.sort_values(["root", "n", "pid"], ascending=[True, False, True],
                             kind="stable").drop_duplicates("root").set_index("root")["pid"]
    return pd.DataFrame({"zap_start": first, "zap_end": last, "zapper": top})


def _teardowns(attributed: pd.DataFrame, first: pd.DataFrame, trace: Trace
               ) -> dict[int, tuple[int, int]]:
    """root → (ts, pid) of the first zap of one of its top-level entries (a
    ``kvm_tdp_mmu_spte_changed`` at the root's own level): the root's teardown, not a leaf
    zap (mmu_notifier unmaps and faults never zap a top-level entry)."""
    if attributed.empty or "kvm_tdp_mmu_spte_changed" not in trace.names:
        return {}
    levels = trace.table("kvm_tdp_mmu_spte_changed").select(["seq", "level"]).to_pandas()
    rows = attributed.merge(levels, on="seq", how="inner")
    rows = rows[rows["level"].to_numpy() == first["level"].reindex(rows["root"]).to_numpy()]
    rows = rows.drop_duplicates("root", keep="first")
    return {int(r): (int(t), int(p)) for r, t, p in zip(rows["root"], rows["ts"], rows["pid"],
                                                        strict=True)}


def _root_table(roots: pd.DataFrame, trace: Trace, threads: ThreadMap) -> pa.Table:
    fast = trace.table("kvm_mmu_zap_all_fast").to_pandas() if "kvm_mmu_zap_all_fast" in \
        trace.names else pd.DataFrame(columns=["ts", "pid", "mmu_valid_gen"])
    fast["vm"] = [threads.vm_of.get(int(p), -1) for p in fast["pid"]]
    first = roots.drop_duplicates("root", keep="first").set_index("root").sort_index()
    news = roots[(roots["event"] == "kvm_mmu_get_page") & (roots["created"] == True)]  # noqa: E712
    made = news.drop_duplicates("root", keep="first").set_index("root")[["ts", "pid"]]
    pretrace = ~first.index.isin(made.index)  # first seen other than by its get_page new
    made = made.reindex(first.index).fillna(first[["ts", "pid"]])
    made = made.assign(vm=first["vm"], mmu_valid_gen=first["mmu_valid_gen"])
    own = roots.loc[roots["event"] == "kvm_mmu_prepare_zap_page", ["root", "ts", "pid"]]
    attributed = _tdp_zaps(roots, fast, trace, threads)
    attributed = attributed[~attributed["root"].isin(set(own["root"]))]
    zaps = _zap_summary(pd.concat([own, attributed[["root", "ts", "pid"]]], ignore_index=True)
                        if len(attributed) else own).reindex(first.index)
    # TDP MMU roots print generation 0 whatever the VM's mmu_valid_gen (tdp_mmu_init_sp
    # leaves it zeroed): only shadow roots are matched to fast zaps of their generation
    tdp = (first["direct"].fillna(False).astype(bool)
           & (roots.groupby("root")["root_count"].max().reindex(first.index).fillna(0) == 0))
    made = made.assign(mmu_valid_gen=made["mmu_valid_gen"].where(~tdp))
    inval = invalidations(made, fast)
    unlinked_before_fast_zap(inval, _teardowns(attributed, first, trace), threads)

    def opt_int(v: object) -> int | None:
        return None if pd.isna(v) else int(v)  # type: ignore[call-overload]

    cols: dict[str, list[object]] = {
        "root": [int(r) for r in first.index],
        "role": [opt_int(v) for v in first["role"]],
        "created": [None if pre else int(v) for v, pre in zip(made["ts"], pretrace,
                                                                  strict=True)],
        "created_by": [BEFORE_TRACE if pre else threads.thread_name(int(p))
                       for p, pre in zip(made["pid"], pretrace, strict=True)],
        "invalidated": [inval.get(int(r)) for r in first.index],
        "zap_start": [opt_int(v) for v in zaps["zap_start"]],
        "zap_end": [opt_int(v) for v in zaps["zap_end"]],
        "zapped_by": [None if pd.isna(p) else threads.thread_name(int(p)) for p in zaps["zapper"]],
        "vm": [int(v) for v in first["vm"]],
        "gfn": [opt_int(v) for v in first["gfn"]],
        "level": [opt_int(v) for v in first["level"]],
        "mmu_valid_gen": [opt_int(v) for v in first["mmu_valid_gen"]],
        "direct": [None if pd.isna(v) else bool(v) for v in first["direct"]],
    }
    for name in ("leaves_zapped", "tables_zapped", "unlinked", "freed"):
        cols[name] = [None] * len(first)
    return pa.Table.from_pydict(cols, schema=OBSERVED_ROOTS_SCHEMA)
