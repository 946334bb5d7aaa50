"""Replay a recorded trace: observed tables, and the same workload under each zap policy.

:func:`replay` is the notebook entry point and the ``replay`` command's one call::

    from replay import replay
    r = replay("sample_traces/tracefs_record_tgid.txt", policy="all")
    r.summary().to_pandas()          # per vCPU, observed and per policy
    r.block_intervals.to_pandas()    # every block, with its run ("observed" or a policy)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from parsers.detect import iter_trace
from parsers.table_files import format_for, write_table_dir
from parsers.trace import Trace, TraceBatch
from replay.compare import expand_policies
from replay.cost import DEFAULT_COST, CostModel
from replay.observed import observe
from replay.policies import get_policy
from replay.recorders import BLOCKS_SCHEMA, REFCOUNT_SCHEMA, ROOTS_SCHEMA
from replay.result import SUMMARY_SCHEMA, ReplayResult, summarize_blocks
from replay.runner import run
from replay.trace_threads import ThreadMap, identify_threads
from replay.trace_workload import DerivedWorkloads, derive_workloads

__all__ = ["TraceReplayResult", "replay", "load_for_replay", "OBSERVED", "ROOT_ID_STRIDE",
           "FIDELITY_SCHEMA",
           "REPLAY_TABLES", "REPLAY_ARGS_EVENTS"]

#: The run label of the trace's own tables.
OBSERVED: Final = "observed"
FIDELITY_SCHEMA: Final = pa.schema([
    ("vcpu", pa.int32()), ("era", pa.string()),
    ("observed_p50_ns", pa.int64()), ("replayed_p50_ns", pa.int64()),
    ("observed_p99_ns", pa.int64()), ("replayed_p99_ns", pa.int64()),
    ("observed_max_ns", pa.int64()), ("replayed_max_ns", pa.int64()),
    ("max_ratio", pa.float64()), ("observed_cause", pa.string()),
    ("replayed_cause", pa.string()), ("same_cause", pa.bool_()),
])
#: Typed tables the replay reads; :func:`load_for_replay` keeps only these.
REPLAY_TABLES: Final = frozenset({
    "kvm_entry", "kvm_exit", "kvm_userspace_exit", "kvm_page_fault", "kvm_mmu_get_page",
    "kvm_mmu_prepare_zap_page", "kvm_mmu_sync_page", "kvm_mmu_unsync_page",
    "kvm_mmu_zap_all_fast", "kvm_tdp_mmu_spte_changed", "kvm_mmu_set_spte", "lost_events"})
#: Untyped events whose ``args`` text the replay reads (fork ancestry, zap work items).
REPLAY_ARGS_EVENTS: Final = ("sched_process_fork", "workqueue_queue_work",
                             "workqueue_execute_start", "workqueue_execute_end")
#: Replayed root ids are ``VM index * ROOT_ID_STRIDE + the model's root id``.
ROOT_ID_STRIDE: Final = 1_000_000


@dataclass(frozen=True)
class TraceReplayResult:
    """Observed and replayed tables of one trace.

    Attributes:
        source: the trace's path.
        threads: VMs and vCPU threads (with evidence).
        derived: per-VM workloads, the evidence of each step, backend and era.
        runs: run label (``"observed"``, then each policy) → tables ``blocks``, ``summary``,
            ``refcounts``, ``roots`` (the model's schemas; observed adds columns).
        warnings: everything inferred with doubt or not inferable, in words.
        cost: the cost model the replays used (calibrated when asked).
    """

    source: str
    threads: ThreadMap
    derived: DerivedWorkloads
    runs: Mapping[str, Mapping[str, pa.Table]]
    warnings: tuple[str, ...]
    cost: CostModel = DEFAULT_COST

    @property
    def policies(self) -> list[str]:
        """The replayed policies, in order."""
        return [r for r in self.runs if r != OBSERVED]

    def _stack(self, name: str, schema: pa.Schema) -> pa.Table:
        parts = []
        for label, tables in self.runs.items():
            t = tables[name].select(schema.names).cast(schema)
            parts.append(t.add_column(0, "run", pa.array([label] * t.num_rows, pa.string())))
        return pa.concat_tables(parts)

    @property
    def block_intervals(self) -> pa.Table:
        """Every block of every run: ``run`` + the model's ``blocks`` columns."""
        return self._stack("blocks", BLOCKS_SCHEMA)

    @property
    def refcount_history(self) -> pa.Table:
        """Every refcount change of every run: ``run`` + ``ts, root, count, delta, holder,
        reason``."""
        return self._stack("refcounts", REFCOUNT_SCHEMA)

    @property
    def roots(self) -> pa.Table:
        """Root lifecycles of every run: ``run`` + the model's ``roots`` columns."""
        return self._stack("roots", ROOTS_SCHEMA)

    @property
    def vcpus(self) -> pa.Table:
        """vCPU index → VM, vCPU id, pid, comm, evidence, confidence."""
        return self.threads.to_arrow()

    def summary(self) -> pa.Table:
        """Per run and vCPU: blocks, p50, p99, max, total, the cause of the longest block."""
        return self._stack("summary", SUMMARY_SCHEMA)

    def fidelity(self) -> pa.Table | None:
        """Per vCPU, observed vs replayed under the recording kernel's era (the model's
        fidelity): p50/p99/max of both, their ratio, and whether the longest block has the
        same cause. None when the era is unknown or was not replayed."""
        era = self.derived.era
        if era is None or era not in self.runs:
            return None
        obs = {r["vcpu"]: r for r in self.runs[OBSERVED]["summary"].to_pylist()}
        rep = {r["vcpu"]: r for r in self.runs[era]["summary"].to_pylist()}
        rows = []
        for v in sorted(set(obs) | set(rep)):
            o, r = obs.get(v, {}), rep.get(v, {})
            om, rm = o.get("max_ns") or 0, r.get("max_ns") or 0
            rows.append({"vcpu": v, "era": era, "observed_p50_ns": o.get("p50_ns"),
                         "replayed_p50_ns": r.get("p50_ns"), "observed_p99_ns": o.get("p99_ns"),
                         "replayed_p99_ns": r.get("p99_ns"), "observed_max_ns": om,
                         "replayed_max_ns": rm, "max_ratio": (rm / om) if om else None,
                         "observed_cause": o.get("max_cause"), "replayed_cause": r.get("max_cause"),
                         "same_cause": o.get("max_cause") == r.get("max_cause")})
        return pa.Table.from_pylist(rows, schema=FIDELITY_SCHEMA)

    def to_json_dict(self) -> dict[str, Any]:
        """The ``replay --json`` document: the ``scenario`` command's ``policies`` shape plus
        ``observed``, ``roots`` (observed count), ``warnings``, ``backend``, ``era``, ``vms``
        and ``vcpus``."""
        def vcpus(tables: Mapping[str, pa.Table]) -> dict[str, Any]:
            return {str(r.pop("vcpu")): r for r in tables["summary"].to_pylist()}

        policies: dict[str, Any] = {}
        for name in self.policies:
            pol, tables = get_policy(name), self.runs[name]
            per = vcpus(tables)
            worst = max(per, key=lambda v: (int(per[v]["max_ns"] or 0), -int(v)), default=None)
            policies[name] = {"vcpus": per, "kernel": pol.kernel, "commits": list(pol.commits),
                              "max_block_ns": per[worst]["max_ns"] if worst else 0,
                              "worst_vcpu": worst, "roots": tables["roots"].num_rows}
        observed = self.runs[OBSERVED]
        return {
            "source": self.source,
            "backend": self.derived.backend,
            "era": self.derived.era,
            "era_evidence": self.derived.era_evidence,
            "vms": self.threads.vms,
            "vcpus": {str(v["vcpu"]): {k: v[k] for k in ("vm", "vcpu_id", "pid", "comm",
                                                          "confidence")}
                      for v in self.vcpus.to_pylist()},
            "observed": {"vcpus": vcpus(observed)},
            "roots": observed["roots"].num_rows,
            "cost": self.cost.to_dict(),
            "policies": policies,
            "fidelity": None if (fid := self.fidelity()) is None else {
                "era": self.derived.era,
                "vcpus": {str(r.pop("vcpu")): r for r in fid.drop_columns(["era"]).to_pylist()}},
            "warnings": list(self.warnings),
        }

    def write_report(self, path: str | Path) -> Path:
        """A self-contained HTML report (:func:`replay.report_html.write_report`)."""
        from replay.report_html import write_report

        return write_report(self.runs, path, title=f"kvm-mmu-replay: {Path(self.source).name}",
                            source=self.source, warnings=self.warnings)

    def write_timeline(self, path: str | Path) -> Path:
        """A Perfetto trace of every run's blocks, zaps and refcounts
        (:func:`replay.timeline_perfetto.write_timeline`)."""
        from replay.timeline_perfetto import write_timeline

        return write_timeline(self.runs, path)

    def write_tables(self, out: str | Path, fmt: str | None = None) -> list[Path]:
        """Write ``block_intervals``, ``refcount_history``, ``roots``, ``summary``, ``vcpus``
        and ``evidence`` as files in directory ``out`` (temp dir, renamed when complete)."""
        kind = format_for(out, fmt)
        tables = {"block_intervals": self.block_intervals,
                  "refcount_history": self.refcount_history, "roots": self.roots,
                  "summary": self.summary(), "vcpus": self.vcpus,
                  "evidence": self.derived.evidence}
        fidelity = self.fidelity()
        if fidelity is not None:
            tables["fidelity"] = fidelity
        meta = {"kvm_mmu_replay": json.dumps({"source": self.source,
                                              "warnings": list(self.warnings)})}
        return write_table_dir({k: v.replace_schema_metadata(meta) for k, v in tables.items()},
                               out, kind)


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
            measured values (:mod:`replay.calibration`); each change is a warning line.

    Invariant violations of damaged traces are recorded (``anomalies`` tables, a warning),
    not raised.

    Examples:
        >>> r = replay("sample_traces/tracefs_record_tgid.txt", policy=["sync", "6.9"])
        >>> r.policies, sorted(set(r.summary().column("run").to_pylist()))
        (['sync', '6.9'], ['6.9', 'observed', 'sync'])
    """
    loaded = trace if isinstance(trace, Trace) else load_for_replay(trace)
    threads = identify_threads(loaded)
    observed = observe(loaded, threads)
    derived = derive_workloads(loaded, threads)
    names = expand_policies([policy] if isinstance(policy, str) else list(policy))
    calibration = None
    if calibrate:
        from replay.calibration import calibrate as measure

        calibration = measure(loaded, cost)
        cost = calibration.cost
    runs: dict[str, Mapping[str, pa.Table]] = {OBSERVED: observed.tables}
    warnings = [*loaded.metadata.warnings, *threads.warnings, *observed.warnings,
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
    for name in names:
        runs[name], anomalies = _replay_vms(derived, threads, name, cost)
        if anomalies:
            warnings.append(f"{name}: {anomalies} invariant violations recorded (the derived "
                            f"workload is incomplete; see the anomalies)")
    return TraceReplayResult(str(loaded.metadata.source), threads, derived, runs,
                             tuple(_dedup(warnings)), cost)


def load_for_replay(source: str | Path, *, strict: bool = False, salvage: bool = False
                    ) -> Trace:
    """Stream ``source`` keeping only what :func:`replay` reads: every event row, but
    ``args`` text only for :data:`REPLAY_ARGS_EVENTS`, and only :data:`REPLAY_TABLES`.

    Memory is then a few dozen bytes per event instead of the whole payload text.
    """
    stream = iter_trace(source, strict=strict, salvage=salvage)
    return stream.complete(Trace.from_batches(_slim(stream), stream.metadata))


def _slim(batches: Iterable[TraceBatch]) -> Iterator[TraceBatch]:
    for batch in batches:
        ev = batch.events
        names = ev.column(ev.schema.get_field_index("event"))
        keep = pc.is_in(names.cast(pa.string()), pa.array(REPLAY_ARGS_EVENTS))
        args = pc.if_else(keep, ev.column(ev.schema.get_field_index("args")),
                          pa.scalar(None, pa.string()))
        ev = pa.RecordBatch.from_arrays(
            [args if f.name == "args" else ev.column(i) for i, f in enumerate(ev.schema)],
            schema=ev.schema)
        yield TraceBatch(ev, {k: v for k, v in batch.typed.items() if k in REPLAY_TABLES},
                         batch.source_bytes)


def _replay_vms(derived: DerivedWorkloads, threads: ThreadMap, policy: str, cost: CostModel
                ) -> tuple[dict[str, pa.Table], int]:
    results: list[ReplayResult] = []
    for vm in sorted(derived.workloads):
        results.append(run(derived.workloads[vm], policy=policy, cost=cost,
                           on_violation="record"))
    tables: dict[str, pa.Table] = {}
    for name, schema in (("blocks", BLOCKS_SCHEMA), ("refcounts", REFCOUNT_SCHEMA),
                         ("roots", ROOTS_SCHEMA)):
        parts = [_offset_roots(r.to_arrow(name), i) for i, r in enumerate(results)]
        tables[name] = pa.concat_tables(parts) if parts else schema.empty_table()
    vcpus = sorted(v.vcpu for v in threads.vcpus.values())
    tables["summary"] = summarize_blocks(tables["blocks"], vcpus)
    return tables, sum(r.anomalies for r in results)


def _offset_roots(table: pa.Table, vm_index: int) -> pa.Table:
    if "root" not in table.column_names or vm_index == 0:
        return table
    i = table.column_names.index("root")
    return table.set_column(i, "root", pc.add(table.column("root"),
                                              vm_index * ROOT_ID_STRIDE).cast(pa.int64()))


def _dedup(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))

