"""The result of replaying a recorded trace: observed and replayed tables side by side.

:class:`TraceReplayResult` is what :func:`replay.trace_replay.replay` returns; the
renderers (:mod:`replay.render`) read it and never the trace.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pandas as pd
import pyarrow as pa

from parsers.table_files import format_for, write_table_dir
from parsers.trace import table_to_pandas
from replay.infer.threads import ThreadMap
from replay.infer.workload import DerivedWorkloads
from replay.model.cost import DEFAULT_COST, CostModel
from replay.model.policies import get_policy
from replay.model.recorders import BLOCKS_SCHEMA, REFCOUNT_SCHEMA, ROOTS_SCHEMA
from replay.result import SUMMARY_SCHEMA

__all__ = ["TraceReplayResult", "OBSERVED", "ROOT_ID_STRIDE", "FIDELITY_SCHEMA",
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
    "kvm_mmu_zap_all_fast", "kvm_tdp_mmu_spte_changed", "kvm_mmu_set_spte", "lost_events",
    "kvm_mmu_spte_requested"})
#: Untyped events whose ``args`` text the replay reads (fork ancestry, zap work items,
#: control-register/EFER writes, the VMM's vCPU creation, ioctl boundaries).
REPLAY_ARGS_EVENTS: Final = ("sched_process_fork", "workqueue_queue_work",
                             "workqueue_execute_start", "workqueue_execute_end",
                             "kvm_cr", "kvm_msr", "kvm_write_tsc_offset", "kvm_track_tsc",
                             "sys_enter", "sys_exit")
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
        ts_unit: the unit of the trace's timestamps (``ns``, or ``ticks`` for the
            ``counter``/``x86-tsc`` clocks): the observed run's times are in it.
    """

    source: str
    threads: ThreadMap
    derived: DerivedWorkloads
    runs: Mapping[str, Mapping[str, pa.Table]]
    warnings: tuple[str, ...]
    cost: CostModel = DEFAULT_COST
    ts_unit: str = "ns"

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

    def tables(self) -> dict[str, pa.Table]:
        """Every table by name: ``block_intervals``, ``refcount_history``, ``roots``,
        ``summary``, ``vcpus``, ``evidence`` and (when the era was replayed) ``fidelity``."""
        out = {"block_intervals": self.block_intervals,
               "refcount_history": self.refcount_history, "roots": self.roots,
               "summary": self.summary(), "vcpus": self.vcpus, "evidence": self.derived.evidence}
        fidelity = self.fidelity()
        if fidelity is not None:
            out["fidelity"] = fidelity
        return out

    def to_pandas(self, name: str) -> pd.DataFrame:
        """The table ``name`` (see :meth:`tables`) as a DataFrame whose id and timestamp
        columns are nullable integers (``Int64``, ``Int32``), never float64.

        Raises:
            KeyError: no table of that name.
        """
        tables = self.tables()
        if name not in tables:
            raise KeyError(f"no table {name!r}; have {sorted(tables)}")
        return table_to_pandas(tables[name])

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

    def write_report(self, path: str | Path, *, force: bool = False) -> Path:
        """A self-contained HTML report (:func:`replay.render.html.write_report`)."""
        from replay.render.html import write_report

        return write_report(self.runs, path, title=f"kvm-mmu-replay: {Path(self.source).name}",
                            source=self.source, warnings=self.warnings, force=force,
                            vcpu_names=self.vcpu_names(),
                            units={OBSERVED: self.ts_unit} if self.ts_unit != "ns" else None)

    def vcpu_names(self) -> dict[int, str]:
        """vCPU index → ``vcpu N: <comm>-<pid> (VM <vm>, vcpu_id <id>)`` for lane labels."""
        out = {}
        for r in self.vcpus.to_pylist():
            who = f"{r['comm'] or '?'}-{r['pid']}" if r["pid"] is not None else (r["comm"] or "?")
            vid = f", vcpu_id {r['vcpu_id']}" if r["vcpu_id"] is not None else ""
            out[int(r["vcpu"])] = f"vcpu {r['vcpu']}: {who} (VM {r['vm']}{vid})"
        return out

    def write_timeline(self, path: str | Path, *, force: bool = False) -> Path:
        """A Perfetto trace of every run's blocks, zaps and refcounts
        (:func:`replay.render.timeline.write_timeline`)."""
        from replay.render.timeline import write_timeline

        return write_timeline(self.runs, path, force=force)

    def write_tables(self, out: str | Path, fmt: str | None = None, *,
                     force: bool = False) -> list[Path]:
        """Write ``block_intervals``, ``refcount_history``, ``roots``, ``summary``, ``vcpus``
        and ``evidence`` as files in directory ``out`` (:func:`parsers.table_files.
        write_table_dir`: an existing ``out`` is replaced only when kvm-mmu-replay wrote it
        and ``force`` is given)."""
        kind = format_for(out, fmt)
        tables = self.tables()
        meta = {"kvm_mmu_replay": json.dumps({"source": self.source,
                                              "warnings": list(self.warnings)})}
        return write_table_dir({k: v.replace_schema_metadata(meta) for k, v in tables.items()},
                               out, kind, force=force)
