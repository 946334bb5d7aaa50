"""Assemble decoded bundles into a :class:`~parsers.trace.TraceBatch` in file order.

Rows come in the order of the file: bundle by bundle; in each bundle a ``lost_events``
marker first (the flag says events were lost *before* the bundle), then the events, with
compact-sched events merged in by timestamp. ``seq`` numbers the rows of the whole trace.
``comm``/``tgid`` come from the :class:`~parsers.perfetto.side_packets.ThreadMap`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from parsers.perfetto.bundles import BundleRun, CompactEvent
from parsers.perfetto.events import DecodedEvents, EventGroup
from parsers.perfetto.side_packets import ThreadMap
from parsers.perfetto.wire import I64
from parsers.schema import EVENTS_SCHEMA, LOST_EVENTS
from parsers.trace import TraceBatch
from parsers.typed_batch import build_typed_batch

__all__ = ["Inference", "assemble_batch", "VCPU_TABLES"]

#: Compiled Perfetto events whose x86 fields (``vcpu_id`` among them) the recorder drops.
VCPU_TABLES = ("kvm_entry", "kvm_exit")
_VCPU_SOURCES = ("kvm_page_fault", "fast_page_fault", "kvm_entry", "kvm_exit")


@dataclass
class Inference:
    """How many compiled kvm_entry/kvm_exit rows got their vcpu_id, and from what."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, how: str, n: int) -> None:
        """Count ``n`` rows resolved by ``how`` (``""``: not resolved)."""
        if n:
            self.counts[how] = self.counts.get(how, 0) + n


@dataclass
class _Rows:
    """The row layout of a batch before columns are built."""

    kind: I64  # 0 marker, 1 event, 2 compact
    index: I64  # into markers / decoded events / compact list
    bundle: I64


def _layout(run: BundleRun, dec: DecodedEvents, compact: list[list[CompactEvent]],
            keep: np.ndarray) -> _Rows:
    """Row order: read cycle by read cycle; within a cycle the bundles' events merged by time
    (ties: bundle order, then order in the bundle), a loss marker just before its bundle's
    first event, compact-sched events by time among their bundle's events."""
    nb = len(run)
    cycle = np.array(run.cycle, np.int64)
    ev_idx = np.flatnonzero(keep)
    first = np.searchsorted(dec.bundle, np.arange(nb))
    ev_b = dec.bundle[ev_idx]
    kinds = [np.ones(ev_idx.size, np.int64)]
    index = [ev_idx]
    k_b, k_ts, k_sub = [ev_b], [dec.ts[ev_idx]], [2 * (ev_idx - first[ev_b]) + 1]
    lb = np.flatnonzero(np.array(run.lost, bool))
    kinds.append(np.zeros(lb.size, np.int64))
    index.append(lb)
    k_b.append(lb)
    k_ts.append(np.array([_marker_ts(int(b), run, dec, None) for b in lb], np.int64))
    k_sub.append(np.full(lb.size, -1, np.int64))
    flat = [(b, ev) for b, evs in enumerate(compact) for ev in evs]
    if flat:
        cb = np.array([b for b, _ in flat], np.int64)
        cts = np.array([ev.ts for _, ev in flat], np.int64)
        sub = np.empty(cb.size, np.int64)
        for b in np.unique(cb).tolist():
            mine = ev_idx[ev_b == b]
            sel = cb == b
            sub[sel] = 2 * np.searchsorted(dec.ts[mine], cts[sel], side="right")
        kinds.append(np.full(cb.size, 2, np.int64))
        index.append(np.arange(cb.size, dtype=np.int64))
        k_b.append(cb)
        k_ts.append(cts)
        k_sub.append(sub)
    b_all = np.concatenate(k_b)
    order = np.lexsort((np.arange(b_all.size), np.concatenate(k_sub), b_all,
                        np.concatenate(k_ts), cycle[b_all]))
    return _Rows(np.concatenate(kinds)[order], np.concatenate(index)[order], b_all[order])


def assemble_batch(
    run: BundleRun, dec: DecodedEvents, compact: list[list[CompactEvent]],
    threads: ThreadMap, keep_events: Collection[str] | None, seq0: int, last_ts: int | None,
    inference: Inference,
) -> tuple[TraceBatch, int]:
    """Build the batch; returns it and the number of rows (``seq`` advances by that)."""
    groups = [g for g in dec.groups if keep_events is None or g.name in keep_events]
    flat_compact = [ev for evs in compact for ev in evs]
    keep = np.zeros(dec.ts.size, bool)
    name_of = np.full(dec.ts.size, -1, np.int64)
    for gi, g in enumerate(groups):
        keep[g.rows] = True
        name_of[g.rows] = gi
    if keep_events is not None:
        kept = [ev for ev in flat_compact if ev.name in keep_events]
        compact = [[ev for ev in evs if ev.name in keep_events] for evs in compact]
        flat_compact = kept
    rows = _layout(run, dec, compact, keep)
    n = rows.kind.size
    seq = seq0 + np.arange(n, dtype=np.int64)
    cols = _columns(run, dec, flat_compact, groups, name_of, rows, threads, last_ts)
    event_seq = np.full(dec.ts.size, -1, np.int64)
    is_ev = rows.kind == 1
    event_seq[rows.index[is_ev]] = seq[is_ev]
    typed = _typed(groups, dec, run, event_seq, threads, inference)
    lost_rows = np.flatnonzero(rows.kind == 0)
    if lost_rows.size:
        typed[LOST_EVENTS] = build_typed_batch(
            LOST_EVENTS, seq=pa.array(seq[lost_rows]), ts=cols["ts"].take(pa.array(lost_rows)),
            cpu=cols["cpu"].take(pa.array(lost_rows)), pid=pa.nulls(lost_rows.size, pa.int32()),
            fields={})
    cols["seq"] = pa.array(seq)
    arrays = [
        _dict(cols[f.name]) if pa.types.is_dictionary(f.type) else cols[f.name].cast(f.type)
        for f in EVENTS_SCHEMA
    ]
    batch = pa.RecordBatch.from_arrays(arrays, schema=EVENTS_SCHEMA)
    return TraceBatch(batch, typed, len(run.buf)), n


def _dict(arr: pa.Array) -> pa.Array:
    target = pa.dictionary(pa.int32(), pa.string())
    if pa.types.is_dictionary(arr.type):
        return arr.cast(target)
    return pc.dictionary_encode(arr.cast(pa.string())).cast(target)


def _columns(
    run: BundleRun, dec: DecodedEvents, compact: list[CompactEvent],
    groups: list[EventGroup], name_of: I64, rows: _Rows, threads: ThreadMap,
    last_ts: int | None,
) -> dict[str, pa.Array]:
    n = rows.kind.size
    kind, index = rows.kind, rows.index
    ev, mk, cp = kind == 1, kind == 0, kind == 2
    ts = np.zeros(n, np.int64)
    pid = np.zeros(n, np.int64)
    pid_ok = np.zeros(n, bool)
    ts[ev] = dec.ts[index[ev]]
    pid[ev], pid_ok[ev] = dec.pid[index[ev]], dec.pid_ok[index[ev]]
    ts[mk] = [_marker_ts(b, run, dec, last_ts) for b in index[mk].tolist()]
    cidx = index[cp].tolist()
    ts[cp] = [compact[i].ts for i in cidx]
    pid[cp] = [compact[i].pid or 0 for i in cidx]
    pid_ok[cp] = [compact[i].pid is not None for i in cidx]
    cpus = np.array([-1 if c is None else c for c in run.cpu], np.int64)[rows.bundle]
    comm, tgid = _who(pid, pid_ok, threads)
    return {
        "ts": pa.array(ts), "pid": pa.array(pid.astype(np.int32), mask=~pid_ok),
        "cpu": pa.array(cpus.astype(np.int32), mask=cpus < 0), "tgid": tgid, "comm": comm,
        "event": _event_names(groups, name_of, rows, compact),
        "latency_flags": pa.nulls(n, pa.string()), "instance": pa.nulls(n, pa.string()),
        "args": _args(groups, dec.ts.size, rows, compact),
    }


def _event_names(groups: list[EventGroup], name_of: I64, rows: _Rows,
                 compact: list[CompactEvent]) -> pa.Array:
    """The ``event`` column, dictionary-encoded without going through Python strings."""
    names: dict[str, int] = {}
    group_code = np.array([names.setdefault(g.name, len(names)) for g in groups] or [0],
                          np.int32)
    lost_code = names.setdefault(LOST_EVENTS, len(names)) if (rows.kind == 0).any() else 0
    compact_code = np.array([names.setdefault(c.name, len(names)) for c in compact] or [0],
                            np.int32)
    codes = np.full(rows.kind.size, lost_code, np.int32)
    ev, cp = rows.kind == 1, rows.kind == 2
    codes[ev] = group_code[name_of[rows.index[ev]]]
    codes[cp] = compact_code[rows.index[cp]]
    return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(list(names), pa.string()))


def _marker_ts(b: int, run: BundleRun, dec: DecodedEvents, last_ts: int | None) -> int:
    """A loss marker takes the time of the bundle's first event (the first record after the
    loss), else the bundle's read time, else the last time seen."""
    assert dec.dropped is not None
    mine = np.flatnonzero((dec.bundle == b) & ~dec.dropped)
    if mine.size:
        return int(dec.ts[mine[0]])
    read_at = run.ftrace_ts[b]
    if read_at is not None:
        return read_at
    return last_ts if last_ts is not None else 0


def _who(pid: I64, ok: np.ndarray, threads: ThreadMap) -> tuple[pa.Array, pa.Array]:
    """``comm`` (dictionary-encoded) and ``tgid`` of each row's pid, from the thread map."""
    uniq, inverse = _unique_inverse(np.where(ok, pid, -1))
    found = [threads.lookup(p) if p != -1 else (None, None) for p in uniq.tolist()]
    comm_u = pc.dictionary_encode(pa.array([c for c, _ in found], pa.string()))
    tgid_u = pa.array([t for _, t in found], pa.int32())
    idx = pa.array(inverse.ravel())
    codes = comm_u.indices.take(idx)
    comm = pa.DictionaryArray.from_arrays(codes, comm_u.dictionary)
    return comm, tgid_u.take(idx)


def _unique_inverse(values: I64) -> tuple[I64, I64]:
    """``np.unique(values, return_inverse=True)``, by a table of the values seen when they
    span a small range (pids do) instead of a sort."""
    if values.size:
        lo, hi = int(values.min()), int(values.max())
        if hi - lo < 1 << 23:
            seen = np.zeros(hi - lo + 1, bool)
            seen[values - lo] = True
            rank = np.cumsum(seen) - 1
            return np.flatnonzero(seen) + lo, rank[values - lo]
    uniq, inverse = np.unique(values, return_inverse=True)
    return uniq, inverse.ravel()


def _args(groups: list[EventGroup], n_events: int, rows: _Rows,
          compact: list[CompactEvent]) -> pa.Array:
    """The ``args`` column: one take over the groups' texts, compact texts and a null."""
    parts = [g.args.cast(pa.string()) if g.args is not None else pa.nulls(g.rows.size, pa.string())
             for g in groups]
    pos = np.zeros(n_events, np.int64)
    if groups:
        rows_all = np.concatenate([g.rows for g in groups])
        pos[rows_all] = np.arange(rows_all.size)
    texts = pa.concat_arrays([*parts, pa.array([c.args for c in compact], pa.string()),
                              pa.nulls(1, pa.string())])
    n_group = sum(len(p) for p in parts)
    take = np.full(rows.kind.size, n_group + len(compact), np.int64)
    ev, cp = rows.kind == 1, rows.kind == 2
    take[ev] = pos[rows.index[ev]]
    take[cp] = n_group + rows.index[cp]
    return texts.take(pa.array(take))


def _typed(
    groups: list[EventGroup], dec: DecodedEvents, run: BundleRun, event_seq: I64,
    threads: ThreadMap, inference: Inference,
) -> dict[str, pa.RecordBatch]:
    by_name: dict[str, list[pa.RecordBatch]] = {}
    cpus = np.array([-1 if c is None else c for c in run.cpu], np.int64)
    for g in groups:
        if g.typed is None:
            continue
        cpu = cpus[dec.bundle[g.rows]]
        pid = pa.array(dec.pid[g.rows].astype(np.int32), mask=~dec.pid_ok[g.rows])
        fields = dict(g.typed)
        if g.compiled and g.name in VCPU_TABLES:
            fields["vcpu_id"] = _infer_vcpu(fields.get("vcpu_id"), dec, g, threads, inference)
        _learn_vcpus(g, dec, threads)
        rb = build_typed_batch(
            g.name, seq=pa.array(event_seq[g.rows]), ts=pa.array(dec.ts[g.rows]),
            cpu=pa.array(cpu.astype(np.int32), mask=cpu < 0), pid=pid, fields=fields)
        by_name.setdefault(g.name, []).append(rb)
    out: dict[str, pa.RecordBatch] = {}
    for name, rbs in by_name.items():
        table = pa.Table.from_batches(rbs).combine_chunks()
        table = table.take(pc.sort_indices(table.column("seq")))
        out[name] = table.to_batches()[0] if table.num_rows else rbs[0]
    return out


def _learn_vcpus(g: EventGroup, dec: DecodedEvents, threads: ThreadMap) -> None:
    """Remember pid -> vcpu_id from events that carry both (e.g. generic kvm_page_fault)."""
    if g.typed is None or g.name not in _VCPU_SOURCES or "vcpu_id" not in g.typed:
        return
    vcpu = g.typed["vcpu_id"]
    if vcpu.null_count == len(vcpu):
        return
    ok = dec.pid_ok[g.rows] & vcpu.is_valid().to_numpy(zero_copy_only=False)
    pids = dec.pid[g.rows][ok]
    values = vcpu.filter(pa.array(ok)).to_numpy(zero_copy_only=False)
    for p, v in zip(pids.tolist(), values.tolist(), strict=True):
        threads.vcpu_by_pid[p] = int(v)


def _infer_vcpu(
    given: pa.Array | None, dec: DecodedEvents, g: EventGroup, threads: ThreadMap,
    inference: Inference,
) -> pa.Array:
    """vcpu_id of compiled kvm_entry/kvm_exit rows, which Perfetto's protos drop on x86."""
    n = g.rows.size
    have = np.zeros(n, bool) if given is None else given.is_valid().to_numpy(zero_copy_only=False)
    values = np.zeros(n, np.int64)
    if given is not None:
        values[have] = given.filter(pa.array(have)).to_numpy(zero_copy_only=False)
    need = ~have & dec.pid_ok[g.rows]
    pids = dec.pid[g.rows]
    for p in np.unique(pids[need]).tolist():
        vcpu, how = threads.vcpu_of(p)
        sel = need & (pids == p)
        inference.add(how, int(sel.sum()))
        if vcpu is not None:
            values[sel] = vcpu
            have |= sel
    inference.add("", int((~have & ~dec.pid_ok[g.rows]).sum()))
    return pa.array(values.astype(np.uint32), mask=~have)
