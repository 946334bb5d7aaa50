"""One run's tables, checked and turned into NumPy columns for the report and the timeline.

:func:`check_runs` validates the ``runs`` mapping both outputs take (label → ``blocks``,
``refcounts``, ``roots``, ``summary``) and wraps each run in a :class:`RunTables`, which
holds the columns once and answers what the renderers ask: per-vCPU CDFs, timeline lanes,
refcount histories, root lifecycles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from replay.errors import ReplayConfigError
from replay.render.series import (
    I64,
    CdfPoints,
    Run,
    Span,
    covered_columns,
    int_column,
    lane_runs,
    run_span,
    thin_steps,
    weighted_cdf,
)
from replay.result import summarize_blocks
from replay.sizes import format_duration

__all__ = ["RunTables", "LaneRows", "Zap", "check_runs", "BLOCK_COLUMNS", "MMU_CAUSES",
           "cause_kind"]

#: Block causes the model replays (the MMU's own): the headline compares these only.
MMU_CAUSES = ("zap", "lock_wait", "root_alloc", "root_put", "fault")


def cause_kind(cause: str) -> str:
    """``mmu`` for :data:`MMU_CAUSES`, ``userspace``, ``exit`` (exit handling), or ``other``.

    Examples:
        >>> [cause_kind(c) for c in ("zap", "userspace", "exit", "preempted")]
        ['mmu', 'userspace', 'exit', 'other']
    """
    if cause in MMU_CAUSES:
        return "mmu"
    return cause if cause in ("userspace", "exit") else "other"

#: Columns ``blocks`` must have (``lost`` is optional).
BLOCK_COLUMNS = ("vcpu", "start", "end", "cause", "n_blocks", "each_ns", "root")
_NOT_NULL = ("vcpu", "start", "end", "n_blocks", "each_ns")
_ROOT_MARKS = ("invalidated", "zap_start", "zap_end", "freed")


@dataclass(frozen=True)
class Zap:
    """One root's zap: the zapping thread, ``[start, end]`` ns, the root, what it zapped."""

    thread: str
    start: int
    end: int
    root: int
    leaves_zapped: int | None
    tables_zapped: int | None


@dataclass(frozen=True)
class LaneRows:
    """The intervals of one timeline lane and its marker ``(ts, text)``."""

    starts: I64
    ends: I64
    codes: I64
    names: tuple[str, ...]
    lost: npt.NDArray[np.bool_] | None
    marker: tuple[int, str] | None = None

    def instants(self, span: Span, columns: int) -> list[int]:
        """Times of the lane's zero-length intervals (drawn as ticks: no column covers them),
        the first of each of ``columns`` pixel columns (so their number stays bounded)."""
        at = np.unique(self.starts[self.starts == self.ends])
        if not at.size:
            return []
        col = np.minimum((at - span.t0) * columns // max(span.ns, 1), columns - 1)
        _, first = np.unique(col, return_index=True)
        return [int(t) for t in at[first]]

    def runs(self, span: Span, columns: int) -> list[Run]:
        """The lane merged into at most ``columns`` runs."""
        return lane_runs(self.starts, self.ends, self.codes, self.names, span, columns)

    def lost_columns(self, span: Span, columns: int) -> list[tuple[int, int]]:
        """Column ranges touched by intervals flagged ``lost``."""
        if self.lost is None:
            return []
        return covered_columns(self.starts[self.lost], self.ends[self.lost], span, columns)


def check_runs(runs: Mapping[str, Mapping[str, pa.Table]],
               units: Mapping[str, str] | None = None) -> list[RunTables]:
    """Validate ``runs`` and wrap each in a :class:`RunTables`, in the mapping's order.

    Raises:
        ReplayConfigError: a label is not a string, a run lacks ``blocks`` or one of
            :data:`BLOCK_COLUMNS`, a required value is null, or a block ends before it starts.
    """
    out: list[RunTables] = []
    for label, tables in runs.items():
        if not isinstance(label, str):
            raise ReplayConfigError(f"run label {label!r}: expected a string")
        if "blocks" not in tables:
            raise ReplayConfigError(f"run {label!r}: no 'blocks' table (have {sorted(tables)})")
        missing = [c for c in BLOCK_COLUMNS if c not in tables["blocks"].column_names]
        if missing:
            raise ReplayConfigError(f"run {label!r}: blocks lacks columns {missing}")
        for name in _NOT_NULL:
            nulls = tables["blocks"].column(name).null_count
            if nulls:
                raise ReplayConfigError(f"run {label!r}: {nulls} blocks rows have no {name}")
        run = RunTables(label, tables, (units or {}).get(label, "ns"))
        backwards = np.flatnonzero(run.end < run.start)
        if backwards.size:
            i = int(backwards[0])
            raise ReplayConfigError(
                f"run {label!r}: {backwards.size} blocks rows end before they start (row {i}:"
                f" vcpu {run.vcpu[i]}, start {run.start[i]}, end {run.end[i]})")
        out.append(run)
    return out


class RunTables:
    """The tables of one run as NumPy columns (computed once, on first use)."""

    def __init__(self, label: str, tables: Mapping[str, pa.Table], unit: str = "ns") -> None:
        self.label = label
        #: The unit of this run's times: ``ns``, or ``ticks`` for an observed tick-clock trace.
        self.unit = unit
        self.tables = tables
        blocks = tables["blocks"]
        self.vcpu = int_column(blocks, "vcpu")
        self.start = int_column(blocks, "start")
        self.end = int_column(blocks, "end")
        self.count = int_column(blocks, "n_blocks")
        self.each = int_column(blocks, "each_ns")
        self.root = int_column(blocks, "root", -1)
        self.has_root = np.asarray(blocks.column("root").is_valid().to_numpy(zero_copy_only=False),
                                   dtype=bool)
        causes = pc.fill_null(blocks.column("cause").cast(pa.string()), "unknown")
        encoded = pc.dictionary_encode(causes).combine_chunks()
        self.cause_names: tuple[str, ...] = tuple(encoded.dictionary.to_pylist())
        self.cause_codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False),
                                      dtype=np.int64)
        self.has_lost = "lost" in blocks.column_names
        self.lost: npt.NDArray[np.bool_] | None = None
        if self.has_lost:
            lost = pc.fill_null(blocks.column("lost").cast(pa.bool_()), False)
            self.lost = np.asarray(lost.to_numpy(zero_copy_only=False), dtype=bool)
        self._by_vcpu = np.lexsort((np.arange(self.vcpu.size), self.start, self.vcpu))

    @property
    def causes(self) -> set[str]:
        """Every cause this run's blocks name."""
        return set(self.cause_names)

    @cached_property
    def summary(self) -> pa.Table:
        """The run's ``summary`` table, or :func:`summarize_blocks` of its blocks."""
        if "summary" in self.tables:
            return self.tables["summary"].sort_by("vcpu")
        blocks = self.tables["blocks"].select(list(BLOCK_COLUMNS))
        return summarize_blocks(blocks, sorted(set(self.vcpu.tolist())))

    @cached_property
    def vcpus(self) -> list[int]:
        """vCPUs with blocks or a row in a given ``summary`` table, sorted."""
        given = self.tables.get("summary")
        listed = set(int_column(given, "vcpu").tolist()) if given is not None else set()
        return sorted(set(np.unique(self.vcpu).tolist()) | listed)

    @cached_property
    def roots(self) -> dict[int, dict[str, Any]]:
        """Rows of the ``roots`` table by root id (empty without the table)."""
        if "roots" not in self.tables:
            return {}
        return {int(r["root"]): r for r in self.tables["roots"].to_pylist() if r["root"] is not None}

    @cached_property
    def span(self) -> Span:
        """The time range of every block, refcount change and root event of the run."""
        stamps = [self.start, self.end]
        if "refcounts" in self.tables:
            stamps.append(_non_null(self.tables["refcounts"], "ts"))
        if "roots" in self.tables:
            stamps += [_non_null(self.tables["roots"], c) for c in ("created",) + _ROOT_MARKS]
        return run_span(stamps)

    def vcpu_rows(self, v: int) -> npt.NDArray[np.intp]:
        """Row indices of vCPU ``v``'s blocks, by start (file order on ties)."""
        sorted_vcpu = self.vcpu[self._by_vcpu]
        lo, hi = np.searchsorted(sorted_vcpu, [v, v + 1])
        return self._by_vcpu[lo:hi]

    def cdf(self, v: int, max_points: int) -> CdfPoints:
        """vCPU ``v``'s count-weighted CDF of block durations (``each_ns``)."""
        rows = self.vcpu_rows(v)
        return weighted_cdf(self.each[rows], self.count[rows], max_points=max_points)

    def lost_blocks(self) -> dict[int, int] | None:
        """Blocks (count-weighted) per vCPU flagged ``lost``; None without the column."""
        if self.lost is None:
            return None
        return {v: int(self.count[rows][self.lost[rows]].sum())
                for v in self.vcpus for rows in [self.vcpu_rows(v)]}

    def lanes(self, names: Mapping[int, str] | None = None) -> list[tuple[str, LaneRows]]:
        """Timeline lanes: one per vCPU (``names[v]``, e.g. its thread and VM, else
        ``vcpu N``), then ``zap: <thread>`` per zapping thread, names never cut."""
        out: list[tuple[str, LaneRows]] = []
        for v in self.vcpus:
            rows = self.vcpu_rows(v)
            lost = self.lost[rows] if self.lost is not None else None
            out.append(((names or {}).get(v, f"vcpu {v}"), LaneRows(self.start[rows], self.end[rows],
                                              self.cause_codes[rows], self.cause_names, lost,
                                              self._worst_marker(v, rows))))
        for name, (starts, ends) in sorted(self.zappers().items()):
            codes = np.zeros(starts.size, dtype=np.int64)
            out.append((f"zap: {name}", LaneRows(starts, ends, codes, ("zap",), None)))
        return out

    def worst_by_kind(self, v: int) -> dict[str, tuple[int, str]]:
        """vCPU ``v``'s longest block per kind of cause: ``mmu`` (what the model replays:
        :data:`MMU_CAUSES`), ``userspace``, ``exit`` (exit handling) and ``other``."""
        rows = self.vcpu_rows(v)
        out: dict[str, tuple[int, str]] = {}
        for i in rows.tolist():
            cause = self.cause_names[int(self.cause_codes[i])]
            kind = cause_kind(cause)
            each = int(self.each[i])
            if kind not in out or each > out[kind][0]:
                out[kind] = (each, cause)
        return out

    def _worst_marker(self, v: int, rows: npt.NDArray[np.intp]) -> tuple[int, str] | None:
        if rows.size == 0:
            return None
        i = int(rows[int(np.argmax(self.each[rows]))])
        cause = self.cause_names[int(self.cause_codes[i])]
        at = int(self.start[i])
        return at, (f"worst block of vcpu {v}: {format_duration(int(self.each[i]), self.unit)}"
                    f" {cause} at +{format_duration(at - self.span.t0, self.unit)}")

    def zaps(self) -> list[Zap]:
        """The roots' zaps (those with a ``zap_start``) by root id.

        A zap without an end (still running when the run ended) ends at the run's end."""
        out: list[Zap] = []
        for root, r in sorted(self.roots.items()):
            if r.get("zap_start") is None:
                continue
            end = r["zap_end"] if r.get("zap_end") is not None else self.span.t1
            if end < r["zap_start"]:
                raise ReplayConfigError(f"run {self.label!r}: root {root} zap ends at {end},"
                                        f" before it starts at {r['zap_start']}")
            out.append(Zap(str(r.get("zapped_by") or "?"), int(r["zap_start"]), int(end), root,
                           r.get("leaves_zapped"), r.get("tables_zapped")))
        return out

    def zappers(self) -> dict[str, tuple[I64, I64]]:
        """Zapping thread → (zap starts, zap ends) of the roots it zapped, by start."""
        spans: dict[str, list[tuple[int, int]]] = {}
        for z in self.zaps():
            spans.setdefault(z.thread, []).append((z.start, z.end))
        return {name: (np.array([s for s, _ in sorted(v)], np.int64),
                       np.array([e for _, e in sorted(v)], np.int64))
                for name, v in spans.items()}

    def refcount_histories(self) -> dict[int, tuple[I64, I64]]:
        """Root → (ts, count) of its refcount changes in time order (file order on ties)."""
        if "refcounts" not in self.tables or self.tables["refcounts"].num_rows == 0:
            return {}
        ref = self.tables["refcounts"]
        for name in ("ts", "root", "refcount"):
            if ref.column(name).null_count:
                raise ReplayConfigError(f"run {self.label!r}: refcounts rows without {name}")
        ts, root, count = (int_column(ref, c) for c in ("ts", "root", "refcount"))
        order = np.lexsort((np.arange(ts.size), ts, root))
        ts, root, count = ts[order], root[order], count[order]
        cuts = np.flatnonzero(np.r_[True, root[1:] != root[:-1]])
        ends = np.r_[cuts[1:], root.size]
        return {int(root[a]): (ts[a:b], count[a:b])
                for a, b in zip(cuts.tolist(), ends.tolist(), strict=True)}

    def thin_refcounts(self, ts: I64, counts: I64, columns: int) -> tuple[I64, I64]:
        """A refcount history thinned to ``columns`` pixel columns of the run's span."""
        return thin_steps(ts, counts, self.span, columns)

    def root_title(self, root: int, changes: int, points: int) -> str:
        """Title of a root's refcount plot: role, creator, zapper, free time, changes."""
        r = self.roots.get(root, {})
        bits = [f"root {root}"]
        if r.get("role") is not None:
            bits.append(f"role 0x{int(r['role']):x}")
        if r.get("created") is not None:
            bits.append(f"created by {r.get('created_by') or '?'} at {self._at(r['created'])}")
        if r.get("zap_start") is not None:
            bits.append(f"zapped by {r.get('zapped_by') or '?'} from {self._at(r['zap_start'])}")
        if r.get("freed") is not None:
            bits.append(f"freed at {self._at(r['freed'])}")
        thinned = f", drawn as {points} points" if points < changes else ""
        return ", ".join(bits) + f"; {changes} refcount changes{thinned}"

    def root_markers(self, root: int) -> list[tuple[int, str]]:
        """Dashed markers of a root's plot: invalidated, zap start/end, freed."""
        r = self.roots.get(root, {})
        return [(int(r[k]), f"{k} at {self._at(r[k])}") for k in _ROOT_MARKS
                if r.get(k) is not None]

    def _at(self, ts: int) -> str:
        return f"+{format_duration(int(ts) - self.span.t0, self.unit)}"


def _non_null(table: pa.Table, name: str) -> I64:
    if name not in table.column_names:
        return np.zeros(0, np.int64)
    col = pc.drop_null(table.column(name).cast(pa.int64()))
    return np.asarray(col.to_numpy(), dtype=np.int64)
