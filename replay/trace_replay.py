"""Replay a recorded trace: observed tables, and the same workload under each zap policy.

:func:`replay` is the notebook entry point and the ``replay`` command's one call::

    from replay import replay
    r = replay("sample_traces/tracefs_record_tgid.txt", policy="all")
    r.summary().to_pandas()          # per vCPU, observed and per policy
    r.block_intervals.to_pandas()    # every block, with its run ("observed" or a policy)
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from parsers.detect import iter_trace
from parsers.errors import TraceFormatError
from parsers.trace import NO_KVM_EVENTS, Trace, TraceBatch, event_mask
from replay.compare import expand_policies
from replay.heap import release_freed
from replay.infer.observed import observe
from replay.infer.threads import ThreadMap, identify_threads
from replay.infer.workload import DerivedWorkloads, derive_workloads
from replay.model.cost import DEFAULT_COST, CostModel
from replay.model.recorders import BLOCKS_SCHEMA, REFCOUNT_SCHEMA, ROOTS_SCHEMA
from replay.model.runner import run
from replay.result import ReplayResult, summarize_blocks
from replay.trace_result import (
    OBSERVED,
    REPLAY_ARGS_EVENTS,
    REPLAY_TABLES,
    ROOT_ID_STRIDE,
    TraceReplayResult,
)

__all__ = ["replay", "load_for_replay", "SPILL_FROM_BYTES"]

def replay(
    trace: Trace | str | Path,
    *,
    policy: str | Sequence[str] = "all",
    cost: CostModel = DEFAULT_COST,
    calibrate: bool = False,
) -> TraceReplayResult:
    """Observe ``trace`` and replay its derived workload under each ``policy``.

    Args:
        trace: a :class:`~parsers.trace.Trace` or the path of any trace format.
        policy: one policy name, several, or ``"all"``.
        cost: the cost model.
        calibrate: replace the costs the trace measures (fault, per-SPTE zap) with the
            measured values (:mod:`replay.infer.calibration`); each change is a warning line.

    Raises:
        TraceFormatError: the trace has no kvm or kvmmmu event at all.

    Invariant violations of damaged traces are recorded (``anomalies`` tables, a warning),
    not raised.

    Examples:
        >>> r = replay("sample_traces/tracefs_record_tgid.txt", policy=["sync", "6.9"])
        >>> r.policies, sorted(set(r.summary().column("run").to_pylist()))
        (['sync', '6.9'], ['6.9', 'observed', 'sync'])
    """
    loaded = trace if isinstance(trace, Trace) else load_for_replay(trace)
    if not loaded.has_kvm_events():
        raise TraceFormatError(str(loaded.metadata.source), NO_KVM_EVENTS)
    sampled = [] if isinstance(trace, Trace) else _sampled_note(Path(trace))
    owned = not isinstance(trace, Trace)
    threads = identify_threads(loaded)
    release_freed()
    if owned:
        loaded = _done_with(loaded, "threads")
    observed = observe(loaded, threads)
    release_freed()
    if owned:
        loaded = _done_with(loaded, "observe")
    derived = derive_workloads(loaded, threads)
    release_freed()
    names = expand_policies([policy] if isinstance(policy, str) else list(policy))
    calibration = None
    if calibrate:
        from replay.infer.calibration import calibrate as measure

        calibration = measure(loaded, cost)
        cost = calibration.cost
    runs: dict[str, Mapping[str, pa.Table]] = {OBSERVED: observed.tables}
    warnings = [*sampled, *loaded.metadata.warnings, *threads.warnings, *observed.warnings,
                *derived.warnings]
    if calibration is not None:
        warnings += [f"calibrated {k}: {v}" for k, v in calibration.evidence.items()] or [
            "--calibrate: the trace measures no cost (no kvm_page_fault/kvm_entry pairs, "
            "no SPTE zap bursts); defaults kept"]
    if loaded.metadata.ts_unit != "ns":
        warnings.append(f"timestamps are {loaded.metadata.ts_unit}, not nanoseconds (trace "
                        f"clock {loaded.metadata.clock or 'unknown'}): observed durations are in "
                        f"those units, and the replay takes them as ns")
    if not threads.vcpus:
        warnings.append("no vCPU thread in the trace (no kvm_entry/kvm_exit, CPU n/KVM thread "
                        "or kvm_userspace_exit): nothing to observe or replay")
    if derived.backend == "shadow":
        warnings.append("recorded with the shadow MMU: the replays show what the TDP MMU's "
                        "policies would have done with the same vCPU activity")
    start = pc.min(loaded.events.column("ts")).as_py() if loaded.events.num_rows else None
    source, ts_unit = str(loaded.metadata.source), loaded.metadata.ts_unit
    # the policies replay the derived workloads only: a trace this call loaded is dropped
    del loaded
    release_freed()
    for name in names:
        runs[name], anomalies = _replay_vms(derived, threads, name, cost, start)
        if anomalies:
            warnings.append(f"{name}: {anomalies} invariant violations recorded (the derived "
                            f"workload is incomplete; see the anomalies)")
    return TraceReplayResult(source, threads, derived, runs, tuple(_dedup(warnings)), cost,
                             ts_unit)


#: What ``kvm-mmu-replay scenario --sample-every N`` writes in a sampled trace's header.
_SAMPLED_MARK = "# kvm-mmu-replay: sampled"


def _sampled_note(path: Path) -> list[str]:
    """A warning when ``path`` is an emitted trace that kept only some of its events."""
    try:
        with path.open("rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return []
    for line in head.splitlines():
        if line.startswith(_SAMPLED_MARK):
            return [f"{path}: {line.lstrip('# ')}: faults and zaps not printed are missing, "
                    f"so the derived workload and its replay are not the run's"]
    return []


def load_for_replay(source: str | Path, *, strict: bool = False, salvage: bool = False,
                    workers: int | None = None, spill: bool | None = None,
                    spill_dir: str | Path | None = None) -> Trace:
    """Stream ``source`` keeping only what :func:`replay` reads: every event row, but
    ``args`` text only for :data:`REPLAY_ARGS_EVENTS`, only :data:`REPLAY_TABLES`, and the
    ``events`` columns the replay never reads (``flags``, ``instance``) null.

    Memory is then a few dozen bytes per event instead of the whole payload text.
    ``workers``: as for :func:`~parsers.detect.read_trace`.

    ``spill``: write the slim tables to files as they stream (in ``spill_dir``, else the
    temporary directory) and map them (:class:`~parsers.spill.SpillTable`), so that the
    trace's rows live in the page cache, which the kernel can evict, instead of the
    process's memory: a trace larger than the memory a worker is given still replays.
    ``None`` (the default) spills sources of :data:`SPILL_FROM_BYTES` or more. The
    replay's results are the same either way.

    Raises:
        SpillError: the spill files could not be written (the disk is full).
    """
    if spill is None:
        spill = _source_bytes(source) >= SPILL_FROM_BYTES
    stream = iter_trace(source, strict=strict, salvage=salvage, workers=workers,
                        batch_bytes=_BATCH_BYTES)
    # contiguous: derive and observe take NumPy views of whole columns, which a chunked
    # column would copy each time (+0.2 GB at 10 M events); spilled columns are contiguous
    directory = None
    if spill:
        directory = Path(spill_dir) if spill_dir is not None else Path(tempfile.gettempdir())
    trace = stream.complete(Trace.from_batches(_slim(stream), stream.metadata,
                                               contiguous=True, spill=directory))
    trace.events = _without_unread(trace.events)
    # The streamed batches, freed once concatenated, stay reserved by the allocators: give
    # them back, as the trace is about a third of them.
    release_freed()
    return trace


#: Sources at least this large are spilled by :func:`load_for_replay` (about 1 M events of
#: trace.dat, 0.3 M of text): below it the files cost more time than the memory is worth.
SPILL_FROM_BYTES: Final = 32 << 20


def _source_bytes(source: str | Path) -> int:
    try:
        return Path(source).stat().st_size
    except OSError:
        return 0  # the reader names the problem


#: Input bytes per streamed batch (a trace.dat's: per CPU). The reader's own defaults are
#: tuned for speed; the reader's working set for one batch lies on top of every slim batch
#: kept so far, so smaller ones lower the peak (measured on a 10 M-event trace.dat: the
#: reader's working set drops from about 300 MB to 110 MB, at 10-30% more time to load).
_BATCH_BYTES = 4 << 20


def _slim(batches: Iterable[TraceBatch]) -> Iterator[TraceBatch]:
    for batch in batches:
        batch_bytes = batch.source_bytes
        ev = batch.events
        keep = event_mask(pa.table(ev), REPLAY_ARGS_EVENTS.__contains__).combine_chunks()
        # take, not if_else: the kept strings only (if_else keeps every row's bytes)
        rows = pc.if_else(keep, pa.array(np.arange(ev.num_rows, dtype=np.int32)),
                          pa.scalar(None, pa.int32()))
        args = ev.column(ev.schema.get_field_index("args")).take(rows)
        ev = pa.RecordBatch.from_arrays(
            [args if f.name == "args" else
             pa.nulls(ev.num_rows, f.type) if f.name in _UNREAD else _owned(ev.column(i))
             for i, f in enumerate(ev.schema)], schema=ev.schema)
        typed = {k: pa.RecordBatch.from_arrays([_owned(c) for c in v.columns], schema=v.schema)
                 for k, v in batch.typed.items() if k in REPLAY_TABLES}
        stacks = batch.stacks  # the frames tell causes (replay.infer.stack_causes)
        if stacks is not None:
            stacks = pa.RecordBatch.from_arrays([_owned(c) for c in stacks.columns],
                                                schema=stacks.schema)
        del batch
        # the reader's batch and temporaries are freed: return them before the next one, or
        # the kept slim copies land between them and the heap cannot shrink
        release_freed()
        yield TraceBatch(ev, typed, batch_bytes, stacks)


#: ``events`` columns that :func:`replay` never reads.
_UNREAD: frozenset[str] = frozenset({"latency_flags", "instance"})
#: Rows per chunk of a column :func:`_without_unread` makes null (all chunks share one).
_NULL_CHUNK = 1 << 20


def _without_unread(events: pa.Table, also: Collection[str] = ()) -> pa.Table:
    """``events`` with the :data:`_UNREAD` columns, those in ``also``, and every column
    that holds only nulls (``tgid`` when the trace does not record it), made of null chunks
    that share one buffer: 4 bytes per event each instead of a buffer of their own."""
    n = events.num_rows
    for i, f in enumerate(events.schema):
        column = events.column(i)
        if n and f.nullable and (f.name in _UNREAD or f.name in also
                                 or column.null_count == n):
            block = pa.nulls(min(n, _NULL_CHUNK), f.type)
            chunks = [block] * (n // _NULL_CHUNK) + [block.slice(0, n % _NULL_CHUNK)]
            events = events.set_column(i, f, pa.chunked_array(chunks, f.type))
    return events


#: ``events`` columns no phase reads after the one named: ``comm`` names threads
#: (:func:`identify_threads` keeps them), ``cpu`` places lost-event windows (:func:`observe`).
_READ_UNTIL: Final = {"threads": ("comm",), "observe": ("cpu",)}


def _done_with(trace: Trace, phase: str) -> Trace:
    """``trace`` (one :func:`replay` loaded itself) without the ``events`` columns that no
    phase after ``phase`` reads, their buffers freed before the next phase runs."""
    trace.events = _without_unread(trace.events, _READ_UNTIL[phase])
    release_freed()
    return trace


def _owned(array: pa.Array) -> pa.Array:
    """``array`` copied into Arrow's memory pool.

    A reader's columns may be NumPy buffers it wrapped without copying (the trace.dat
    reader's are), allocated by malloc between the reader's per-batch temporaries; kept
    until the whole trace is concatenated they fragment malloc's heap, which then holds
    hundreds of MB it cannot give back (measured: 550 MB on a 10 M-event trace)."""
    return pa.concat_arrays([array])


def _replay_vms(derived: DerivedWorkloads, threads: ThreadMap, policy: str, cost: CostModel,
                start: int | None = None) -> tuple[dict[str, pa.Table], int]:
    """Each VM's workload under ``policy``, from the trace's first event (``start``) on."""
    results: list[ReplayResult] = []
    for vm in sorted(derived.workloads):
        results.append(run(derived.workloads[vm], policy=policy, cost=cost,
                           on_violation="record"))
    tables: dict[str, pa.Table] = {}
    for name, schema in (("blocks", BLOCKS_SCHEMA), ("refcounts", REFCOUNT_SCHEMA),
                         ("roots", ROOTS_SCHEMA)):
        parts = [_offset_roots(r.to_arrow(name), i) for i, r in enumerate(results)]
        tables[name] = pa.concat_tables(parts) if parts else schema.empty_table()
    if start is not None:
        tables = _from_trace_start(tables, start)
    vcpus = sorted(v.vcpu for v in threads.vcpus.values())
    tables["summary"] = summarize_blocks(tables["blocks"], vcpus)
    return tables, sum(r.anomalies for r in results)


def _from_trace_start(tables: dict[str, pa.Table], start: int) -> dict[str, pa.Table]:
    """What happened before the trace's first event replays the state the trace began in
    (a pre-trace root and population, :data:`replay.infer.resets.PRETRACE_AT`): its blocks
    and refcount changes are dropped, its roots' ``created`` is null (before the trace)."""
    out = dict(tables)
    out["blocks"] = tables["blocks"].filter(pc.greater(tables["blocks"].column("end"), start))
    out["refcounts"] = tables["refcounts"].filter(
        pc.greater_equal(tables["refcounts"].column("ts"), start))
    roots = tables["roots"]
    i = roots.column_names.index("created")
    early = pc.fill_null(pc.less(roots.column("created"), start), False)
    out["roots"] = roots.set_column(i, roots.schema.field(i), pc.if_else(
        early, pa.scalar(None, roots.schema.field(i).type), roots.column("created")))
    return out


def _offset_roots(table: pa.Table, vm_index: int) -> pa.Table:
    if "root" not in table.column_names or vm_index == 0:
        return table
    i = table.column_names.index("root")
    return table.set_column(i, "root", pc.add(table.column("root"),
                                              vm_index * ROOT_ID_STRIDE).cast(pa.int64()))


def _dedup(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))

