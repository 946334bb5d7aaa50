"""The fleet report: a dataset's figures gathered one trace at a time, then one HTML page.

:func:`fleet_page` reads the ``traces`` table whole (one row per trace) and
``block_intervals`` one trace's partition at a time, five columns of it, twice: the first
pass fills a :class:`~replay.fleets.histogram.LogHistogram` per run, the counts by cause and
of long blocks, and the worst vCPUs (the top ``top`` per run kept, the rest dropped at each
trace); the second collects only the durations of the buckets holding the percentiles, so
they are exact. Memory is one trace's partition plus bounded figures, whatever the fleet's
size. :func:`write_fleet_report` renders the page with
:func:`replay.render.fleet_html.write_fleet_page`.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from parsers.output import check_output_file
from replay.errors import ReplayConfigError
from replay.fleets.histogram import BucketValues, LogHistogram, exact_quantiles, nearest_rank
from replay.fleets.store import TRACES, is_dataset, partition_files, read_table
from replay.model.policies import policy_names
from replay.render.fleet_html import (
    MAX_ERRORS,
    PERCENTS,
    FleetPage,
    Removal,
    RunFigures,
    TraceRow,
    WorstVcpu,
    write_fleet_page,
)
from replay.render.html import MAX_CDF_POINTS
from replay.render.series import I64, int_column
from replay.render.tables import MMU_CAUSES
from replay.trace_result import OBSERVED

__all__ = ["fleet_page", "write_fleet_report", "THRESHOLD_NS", "LIMITS_NS", "TOP"]

#: The "long block" of the removal table: 100 ms.
THRESHOLD_NS: Final = 100_000_000
#: Thresholds counted per run in the distribution table.
LIMITS_NS: Final = (100_000, 1_000_000, 10_000_000, 100_000_000)
#: Worst vCPUs listed per run.
TOP: Final = 10
_COLUMNS: Final = ["run", "vcpu", "cause", "n_blocks", "each_ns"]


def write_fleet_report(dataset: str | os.PathLike[str], path: str | os.PathLike[str], *,
                       policies: Sequence[str] | None = None, force: bool = False,
                       threshold_ns: int = THRESHOLD_NS, top: int = TOP) -> Path:
    """Write the fleet report of ``dataset`` to ``path`` (one self-contained HTML file),
    by :mod:`parsers.output`'s policy: checked before the dataset is read, written atomically,
    an existing file replaced only with ``force``.

    Raises:
        ReplayConfigError: ``dataset`` is not a fleet dataset, its ``traces`` table cannot
            be read, or a policy asked is not in it.
        OutputError: the output policy refuses ``path``.
    """
    check_output_file(path, force=force)
    page = fleet_page(dataset, policies=policies, threshold_ns=threshold_ns, top=top)
    return write_fleet_page(page, os.fspath(path), force=force)


def fleet_page(dataset: str | os.PathLike[str], *, policies: Sequence[str] | None = None,
               threshold_ns: int = THRESHOLD_NS, top: int = TOP) -> FleetPage:
    """The figures of the fleet report (see the module doc).

    Args:
        dataset: a directory :func:`replay.fleets.fleet` wrote.
        policies: the policy runs to show besides ``observed`` (default: every one).
        threshold_ns: what counts as a long block in the removal table.
        top: worst vCPUs listed per run.

    Raises:
        ReplayConfigError: ``dataset`` is not a fleet dataset, its ``traces`` table cannot
            be read, or a policy asked is not in it.
    """
    if not is_dataset(dataset):
        raise ReplayConfigError(f"{dataset}: not a fleet dataset (its .kvm-mmu-replay marker "
                                f"lists no {TRACES} table); write one with kvm-mmu-replay fleet")
    root = Path(dataset)
    traces = _trace_rows(root)
    runs = _runs(traces, policies, root)
    ticks = {t for t, r in traces.items() if r["status"] == "ok" and r["ts_unit"] != "ns"}
    tally = _Tally(runs, ticks, threshold_ns, top)
    # listed once: traces a running fleet commits meanwhile are in neither pass
    parts = [(t, p) for t, p in partition_files(root, "block_intervals") if t in traces]
    for trace_id, part in parts:
        blocks = _read(part, _COLUMNS)
        if blocks is None:
            tally.unreadable[trace_id] = str(part)
        else:
            tally.first(trace_id, blocks)
    tally.plan()
    for trace_id, part in parts:
        if trace_id not in tally.unreadable:
            tally.second(trace_id, _must_read(part))
    return _page(root, traces, runs, tally)


def _read(part: Path, columns: list[str]) -> pa.Table | None:
    """Columns of one partition, or None when it cannot be read (damaged, or its schema
    lacks a column): the page names it and goes on."""
    try:
        return pq.read_table(part, columns=columns)
    except (OSError, pa.ArrowException):
        return None


def _must_read(part: Path) -> pa.Table:
    blocks = _read(part, _COLUMNS)
    if blocks is None:
        raise ReplayConfigError(f"{part}: readable in the first pass, not in the second: "
                                "is something rewriting the dataset?")
    return blocks


def _trace_rows(root: Path) -> dict[str, dict[str, Any]]:
    try:
        table = read_table(root, TRACES)
    except (OSError, pa.ArrowException) as exc:
        raise ReplayConfigError(f"{root}: its {TRACES} table cannot be read: {exc}") from None
    if not table.num_rows:
        return {}
    wanted = ["trace", "path", "format", "ts_unit", "era", "status", "error", "events",
              "vcpus", "policies"]
    present = [c for c in wanted if c in table.column_names]
    rows = table.select(present).to_pylist()
    for row in rows:  # a dataset written before ts_unit was recorded: its times taken as ns
        row["ts_unit"] = row.get("ts_unit") or "ns"
    return {r["trace"]: r for r in rows}


def _runs(traces: dict[str, dict[str, Any]], asked: Sequence[str] | None,
          root: Path) -> list[str]:
    held = {p for r in traces.values() if r["status"] == "ok" for p in r["policies"] or []}
    if asked is not None:
        missing = sorted(set(asked) - held)
        if missing:
            raise ReplayConfigError(f"{root}: no trace was replayed under {', '.join(missing)}; the "
                              f"dataset holds {', '.join(sorted(held)) or 'no policy run'}")
        held = set(asked)
    order = {name: i for i, name in enumerate(policy_names())}
    return [OBSERVED, *sorted(held, key=lambda p: (order.get(p, len(order)), p))]


@dataclass
class _Run:
    hist: LogHistogram = field(default_factory=LogHistogram)
    causes: Counter[str] = field(default_factory=Counter)
    at_least: Counter[int] = field(default_factory=Counter)
    long: dict[str, int] = field(default_factory=dict)
    worst: list[tuple[int, str, int, str]] = field(default_factory=list)
    values: BucketValues = field(default_factory=lambda: BucketValues(frozenset()))


class _Tally:
    """The figures of every run, fed one trace's blocks at a time."""

    def __init__(self, runs: list[str], ticks: set[str], threshold_ns: int, top: int) -> None:
        self.runs = {r: _Run() for r in runs}
        self.ticks = ticks
        self.threshold = threshold_ns
        self.top = top
        #: Trace id -> its partition that could not be read (the trace is left out).
        self.unreadable: dict[str, str] = {}

    def _split(self, table: pa.Table) -> Iterator[tuple[_Run, str, pa.Table]]:
        runs = table.column("run").cast(pa.string())
        for name in pc.unique(runs).to_pylist():
            if name in self.runs:
                yield self.runs[name], name, table.filter(pc.equal(runs, name))

    def _timed(self, name: str, trace_id: str, rows: pa.Table) -> tuple[I64, I64, pa.Table]:
        """MMU-caused rows with durations in ns (none for the observed run of a tick trace)."""
        causes = pc.fill_null(rows.column("cause").cast(pa.string()), "unknown")
        mmu = rows.filter(pc.is_in(causes, pa.array(MMU_CAUSES)))
        if name == OBSERVED and trace_id in self.ticks:
            mmu = mmu.slice(0, 0)
        return int_column(mmu, "each_ns"), int_column(mmu, "n_blocks"), mmu

    def first(self, trace_id: str, table: pa.Table) -> None:
        """Pass one over ``trace_id``'s blocks."""
        for run, name, rows in self._split(table):
            causes = pa.table({"cause": pc.fill_null(rows.column("cause").cast(pa.string()),
                                                     "unknown"),
                               "n": rows.column("n_blocks").cast(pa.int64())})
            for row in causes.group_by("cause").aggregate([("n", "sum")]).to_pylist():
                run.causes[row["cause"]] += row["n_sum"] or 0
            each, count, mmu = self._timed(name, trace_id, rows)
            run.hist.add(each, count)
            for limit in LIMITS_NS:
                run.at_least[limit] += int(count[each >= limit].sum())
            run.long[trace_id] = int(count[each >= self.threshold].sum())
            run.worst = heapq.nsmallest(self.top, [*run.worst, *_vcpu_maxima(trace_id, mmu)],
                                        key=_rank)

    def plan(self) -> None:
        """Between the passes: the buckets each run's percentiles fall in."""
        for run in self.runs.values():
            total = run.hist.total
            if total:
                run.values = BucketValues(frozenset(
                    run.hist.locate(nearest_rank(total, p))[0] for p in PERCENTS))

    def second(self, trace_id: str, table: pa.Table) -> None:
        """Pass two over ``trace_id``'s blocks."""
        for run, name, rows in self._split(table):
            each, count, _ = self._timed(name, trace_id, rows)
            run.values.add(each, count)


def _rank(entry: tuple[int, str, int, str]) -> tuple[int, str, int]:
    """Longest block first; ties by trace id, then vCPU (the same order on every run)."""
    return -entry[0], entry[1], entry[2]


def _vcpu_maxima(trace_id: str, mmu: pa.Table) -> list[tuple[int, str, int, str]]:
    """``(longest block, trace, vcpu, cause)`` per vCPU; the first longest in file order.
    The top are kept by :func:`_rank`."""
    if not mmu.num_rows:
        return []
    vcpu, each = int_column(mmu, "vcpu"), int_column(mmu, "each_ns")
    order = np.lexsort((np.arange(vcpu.size), -each, vcpu))
    first = order[np.r_[True, vcpu[order][1:] != vcpu[order][:-1]]]
    causes = mmu.column("cause").cast(pa.string()).to_pylist()
    return [(int(each[i]), trace_id, int(vcpu[i]), str(causes[i])) for i in first.tolist()]


def _page(root: Path, traces: dict[str, dict[str, Any]], runs: list[str],
          tally: _Tally) -> FleetPage:
    ok = {t for t, r in traces.items() if r["status"] == "ok"} - set(tally.unreadable)
    replayed = {name: {t for t in ok if name in (traces[t]["policies"] or [])} for name in runs}
    replayed[OBSERVED] = ok - tally.ticks
    figures = [_figures(name, tally.runs[name], len(replayed[name])) for name in runs]
    observed = tally.runs[OBSERVED].long
    removals = []
    for name in runs[1:]:
        mine = sorted(replayed[name] - tally.ticks)
        seen = [t for t in mine if observed.get(t, 0)]
        long = tally.runs[name].long
        removals.append(Removal(name, len(mine), sum(observed.get(t, 0) for t in mine),
                                sum(long.get(t, 0) for t in mine), len(seen),
                                sum(not long.get(t, 0) for t in seen)))
    worst = _worst_rows(root, traces, runs, tally)
    failed = sorted((t for t, r in traces.items() if r["status"] != "ok"),
                    key=lambda t: (traces[t]["path"], t))
    return FleetPage(
        dataset=str(root), threshold_ns=tally.threshold, runs=figures, removals=removals,
        worst=worst, traces=[_trace_row(t, traces[t], tally) for t in sorted({w.trace for w
                                                                              in worst})],
        errors=[_trace_row(t, traces[t], tally) for t in failed[:MAX_ERRORS]],
        error_count=len(failed), counts=_counts(traces), notes=_notes(traces, tally))


def _figures(name: str, run: _Run, traces: int) -> RunFigures:
    return RunFigures(run=name, traces=traces, blocks=run.hist.total,
                      percentiles=exact_quantiles(run.hist, run.values, PERCENTS),
                      max_ns=run.hist.max, at_least=[(t, run.at_least[t]) for t in LIMITS_NS],
                      cdf=run.hist.cdf(MAX_CDF_POINTS), causes=dict(sorted(run.causes.items())))


def _worst_rows(root: Path, traces: dict[str, dict[str, Any]], runs: list[str],
                tally: _Tally) -> list[WorstVcpu]:
    picked = [(name, entry) for name in runs
              for entry in sorted(tally.runs[name].worst, key=_rank)]
    wanted = {trace_id for _, (_, trace_id, _, _) in picked}
    threads: dict[tuple[str, int], tuple[int | None, str | None]] = {}
    for trace_id, part in partition_files(root, "vcpus"):
        table = _read(part, ["vcpu", "vm", "pid", "comm"]) if trace_id in wanted else None
        for r in table.to_pylist() if table is not None else []:
            who = f"{r['comm'] or '?'}-{r['pid']}" if r["pid"] is not None else r["comm"]
            threads[(trace_id, int(r["vcpu"]))] = (r["vm"], who)
    return [WorstVcpu(name, trace_id, traces[trace_id]["path"], vcpu,
                      *threads.get((trace_id, vcpu), (None, None)), each, cause)
            for name, (each, trace_id, vcpu, cause) in picked]


def _trace_row(trace_id: str, row: dict[str, Any], tally: _Tally) -> TraceRow:
    return TraceRow(trace=trace_id, path=row["path"], format=row.get("format"),
                    era=row.get("era"), status=row["status"], error=row.get("error"),
                    events=row.get("events"), vcpus=row.get("vcpus"),
                    long={n: r.long.get(trace_id, 0) for n, r in tally.runs.items()})


def _counts(traces: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {key: dict(sorted(Counter(str(r.get(key) or "–") for r in traces.values()).items()))
            for key in ("status", "era", "format")}


def _notes(traces: dict[str, dict[str, Any]], tally: _Tally) -> list[str]:
    notes = []
    if not traces:
        notes.append("The dataset holds no committed trace.")
    if tally.ticks:
        notes.append(f"{len(tally.ticks)} trace(s) have tick-clock timestamps, not ns: their"
                     " observed blocks are counted by cause but left out of the observed"
                     " latencies and of the removal table.")
    if tally.unreadable:
        paths = sorted(tally.unreadable.values())
        shown = ", ".join(paths[:5]) + (", ..." if len(paths) > 5 else "")
        notes.append(f"{len(paths)} block_intervals partition(s) could not be read: their"
                     f" traces are left out of every figure: {shown}")
    return notes
