"""Rich rendering of a :class:`~replay.trace_result.TraceReplayResult` for the terminal."""

from __future__ import annotations

from typing import Final

import pyarrow as pa
from rich.console import Console
from rich.table import Table

from replay.sizes import format_ns
from replay.trace_result import OBSERVED, TraceReplayResult

__all__ = ["render_replay", "MAX_ROWS", "CAUSE_MARKS"]

#: Rows shown per table before "... N more" (the files written with -o hold everything).
MAX_ROWS: Final = 40


def render_replay(console: Console, result: TraceReplayResult) -> None:
    """Print who is who, the per-vCPU comparison, the per-run summary, roots and warnings."""
    d = result.derived
    console.print(f"[bold]{result.source}[/]: backend {d.backend}, era "
                  f"{d.era or 'not determined'} ({d.era_evidence})")
    console.print(_comparison(result))
    fidelity = result.fidelity()
    if fidelity is not None:
        console.print(_fidelity(fidelity))
    console.print(_summary(result))
    console.print(_roots(result))
    console.print(_history(result))
    for warning in result.warnings:
        console.print(f"[yellow]warning[/]: {warning}")


def _ns(value: object) -> str:
    return "-" if value is None else format_ns(int(value))  # type: ignore[call-overload]


#: One-letter cause marks for the wide comparison table (legend in its caption).
CAUSE_MARKS: Final = {"zap": "Z", "lock_wait": "L", "root_alloc": "A", "root_put": "P",
                      "fault": "F", "userspace": "U", "preempted": "S", "exit": "X"}


def _comparison(result: TraceReplayResult) -> Table:
    runs = list(result.runs)
    table = Table("vcpu", "thread (vm)", *runs,
                  title="longest block per vCPU: observed vs each policy",
                  caption="cause: " + ", ".join(f"{m} {c}" for c, m in CAUSE_MARKS.items()))
    per_run = {r: {row["vcpu"]: row for row in result.runs[r]["summary"].to_pylist()}
               for r in runs}
    for v in result.vcpus.to_pylist()[:MAX_ROWS]:
        cells = []
        for r in runs:
            row = per_run[r].get(v["vcpu"])
            cells.append("-" if row is None or not row["blocks"] else
                         f"{_ns(row['max_ns'])} {CAUSE_MARKS.get(str(row['max_cause']), '?')}")
        table.add_row(str(v["vcpu"]), f"{v['comm']}-{v['pid']} ({v['vm']})", *cells)
    return table


def _summary(result: TraceReplayResult) -> Table:
    table = Table("run", "vcpu", "blocks", "p50", "p99", "max", "max cause", "total",
                  title="per-vCPU block latency")
    rows = result.summary().to_pylist()
    for row in rows[:MAX_ROWS * 4]:
        table.add_row(row["run"], str(row["vcpu"]), str(row["blocks"]), _ns(row["p50_ns"]),
                      _ns(row["p99_ns"]), _ns(row["max_ns"]), str(row["max_cause"] or "-"),
                      _ns(row["total_ns"]))
    if len(rows) > MAX_ROWS * 4:
        table.caption = f"... {len(rows) - MAX_ROWS * 4} more rows (-o writes them all)"
    return table


def _roots(result: TraceReplayResult) -> Table:
    roots = result.runs[OBSERVED]["roots"].to_pylist()
    table = Table("root", "vm", "gfn", "level", "created", "by", "invalidated", "zapped",
                  "zapped by", title=f"observed roots ({len(roots)})")
    for r in roots[:MAX_ROWS]:
        table.add_row(str(r["root"]), str(r.get("vm", "-")),
                      "-" if r.get("gfn") is None else f"{r['gfn']:#x}", str(r.get("level", "-")),
                      "-" if r["created"] is None else str(r["created"]),
                      str(r["created_by"] or "-"), str(r["invalidated"] or "-"),
                      str(r["zap_start"] or "-"), str(r["zapped_by"] or "-"))
    if len(roots) > MAX_ROWS:
        table.caption = f"... {len(roots) - MAX_ROWS} more roots (-o writes them all)"
    return table


def _history(result: TraceReplayResult) -> Table:
    rows = result.runs[OBSERVED]["refcounts"].to_pylist()
    table = Table("ts", "root", "refcount", "delta", "holder", "reason",
                  title=f"observed refcount history ({len(rows)} changes)")
    for r in rows[:MAX_ROWS]:
        table.add_row(str(r["ts"]), str(r["root"]), str(r["refcount"]), f"{r['delta']:+d}",
                      r["holder"] or "-", r["reason"] or "-")
    if len(rows) > MAX_ROWS:
        table.caption = f"... {len(rows) - MAX_ROWS} more changes (-o writes them all)"
    return table


def _fidelity(table: pa.Table) -> Table:
    rows = table.to_pylist()
    out = Table("vcpu", "observed max", "replayed max", "ratio", "same cause",
                title=f"model fidelity under the recording kernel's era ({rows[0]['era']})"
                if rows else "model fidelity")
    for r in rows[:MAX_ROWS]:
        ratio = "-" if r["max_ratio"] is None else f"{r['max_ratio']:.2f}"
        out.add_row(str(r["vcpu"]), f"{_ns(r['observed_max_ns'])} {r['observed_cause'] or ''}",
                    f"{_ns(r['replayed_max_ns'])} {r['replayed_cause'] or ''}", ratio,
                    "yes" if r["same_cause"] else "no")
    return out
