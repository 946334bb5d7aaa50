"""The ``query`` and ``fleet`` commands: SQL over a trace or a dataset, many traces at once.

Thin like every command: parse the arguments, call :func:`parsers.sql.query_tables` /
:func:`parsers.sql.query_dataset` / :func:`replay.fleets.fleet`, render the result.
:mod:`replay.cli` registers them on its app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pyarrow as pa
import typer
from rich.table import Table

from parsers.detect import read_trace
from parsers.perfetto.sql import query_trace
from parsers.sql import query_dataset, query_tables
from replay.cli_support import PolicyOpt, SalvageOpt, StrictOpt, guard, out
from replay.trace_replay import replay

__all__ = ["query"]


def _trace_tables(source: Path, strict: bool, salvage: bool, with_replay: bool,
                  policy: list[str] | None) -> dict[str, pa.Table]:
    """``events`` and every typed table of ``source``; with ``with_replay`` also the replay's
    tables (:meth:`~replay.trace_result.TraceReplayResult.tables`)."""
    trace = read_trace(source, strict=strict, salvage=salvage)
    tables = {"events": trace.events, **{n: trace.table(n) for n in trace.names}}
    if with_replay:
        tables.update(replay(trace, policy=policy or ["all"]).tables())
    return tables


def query(
    source: Annotated[Path, typer.Argument(
        metavar="TRACE|DATASET", help="A trace (any format), a fleet dataset, or a directory "
        "written by parse/replay -o.", show_default=False)],
    sql: Annotated[str, typer.Argument(help="DuckDB SQL, e.g. 'select event, count(*) from "
                                       "events group by 1' (PerfettoSQL with "
                                       "--trace-processor).", show_default=False)],
    trace_processor: Annotated[Path | None, typer.Option(
        "--trace-processor", help="Run PerfettoSQL with this trace_processor_shell instead "
        "of DuckDB (never downloaded).", show_default=False)] = None,
    with_replay: Annotated[bool, typer.Option(
        "--replay", help="Also replay the trace and add its tables (block_intervals, "
        "summary, roots, refcount_history, vcpus, evidence, fidelity).")] = False,
    policy: PolicyOpt = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    strict: StrictOpt = False,
    salvage: SalvageOpt = False,
) -> None:
    """Run SQL on a trace or a dataset: DuckDB, each table a view under its own name
    (events, kvm_entry, ...; a dataset's tables), or PerfettoSQL with --trace-processor."""
    def run() -> pa.Table:
        if trace_processor is not None:
            return query_trace(source, sql, trace_processor=trace_processor, strict=strict,
                               salvage=salvage)
        if source.is_dir():
            return query_dataset(source, sql)
        return query_tables(_trace_tables(source, strict, salvage, with_replay, policy), sql,
                            where=str(source))
    frame = guard(run).to_pandas()
    if as_csv:
        typer.echo(frame.to_csv(index=False), nl=False)
        return
    grid = Table(*[str(c) for c in frame.columns])
    for row in frame.itertuples(index=False):
        grid.add_row(*[str(v) for v in row])
    out().print(grid)
