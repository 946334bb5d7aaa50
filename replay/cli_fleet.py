"""The ``query`` and ``fleet`` commands and ``report`` of a dataset: SQL over a trace or a
dataset, many traces at once, one page of a fleet.

Thin like every command: parse the arguments, call :func:`parsers.sql.query_tables` /
:func:`parsers.sql.query_dataset` / :func:`replay.fleets.fleet` /
:func:`replay.fleets.report.write_fleet_report`, render the result. :mod:`replay.cli`
registers them on its app.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from parsers.detect import read_trace
from parsers.perfetto.sql import query_trace
from parsers.sql import query_dataset, query_tables
from parsers.trace import table_to_pandas
from replay.cli_support import ForceOpt, PolicyOpt, SalvageOpt, StrictOpt, done, err, guard, out
from replay.compare import expand_policies
from replay.errors import ReplayConfigError
from replay.fleets import FleetResult, fleet
from replay.fleets.report import write_fleet_report
from replay.sizes import format_ns
from replay.trace_replay import replay

__all__ = ["query", "fleet_command", "fleet_report"]


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
    frame = table_to_pandas(guard(run))
    if as_csv:
        typer.echo(frame.to_csv(index=False), nl=False)
        return
    grid = Table(*[str(c) for c in frame.columns])
    for row in frame.itertuples(index=False):
        grid.add_row(*[str(v) for v in row])
    out().print(grid)


@contextmanager
def _progress_bar() -> Iterator[Callable[[str, Any], None] | None]:
    """A progress callback drawing a bar on stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        yield None
        return
    columns = (TextColumn("traces"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[errors]} errors"))
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("fleet", total=None, errors=0)
        errors = 0

        def tell(kind: str, value: Any) -> None:
            nonlocal errors
            if kind == "total":
                bar.update(task, total=value)
                return
            errors += kind == "row" and value["status"] != "ok"
            bar.update(task, advance=1, errors=errors)
        yield tell


def _summary(result: FleetResult) -> None:
    seconds = result.elapsed_ns / 1e9
    rate = f"{len(result.rows) / seconds:.1f} traces/s, {result.events / seconds:,.0f} events/s" \
        if seconds > 0 and result.rows else "-"
    typer.echo(f"{result.dataset}: {result.ok} traces replayed, {len(result.errors)} failed, "
               f"{len(result.skipped)} already done, {len(result.duplicates)} duplicates; "
               f"{result.events} events in {format_ns(result.elapsed_ns)} on {result.workers} "
               f"workers ({rate})")
    for row in result.errors[:20]:
        err.print(f"[red]failed[/]: {escape(str(row['error']))}", highlight=False, soft_wrap=True)
    if len(result.errors) > 20:
        err.print(f"... and {len(result.errors) - 20} more: query the traces table "
                  "(status = 'error')", highlight=False)
    for source, trace_id in result.duplicates[:20]:
        err.print(f"duplicate: {escape(source)} has the bytes of trace {trace_id}",
                  highlight=False, soft_wrap=True)


def fleet_command(
    inputs: Annotated[list[str], typer.Argument(
        metavar="INPUT...", help="Trace files, directories (every file under them) or globs; "
        "fsspec URLs (s3://... with the s3 extra).", show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", "-o", metavar="DATASET", help="Dataset "
                                          "directory: <table>/trace=<id>/part-0.parquet.",
                                          show_default=False)],
    policy: PolicyOpt = None,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="Address of a running Dask scheduler (tcp://host:8786); default: "
        "a LocalCluster of worker processes.", show_default=False)] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="LocalCluster worker processes (default: the machine's "
        "cores).", show_default=False)] = None,
    events: Annotated[bool, typer.Option("--events", help="Also write the parsed event "
                                         "tables (events and each typed table).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue DATASET: skip the traces "
                                         "it already holds (same bytes).")] = False,
    force: ForceOpt = False,
) -> None:
    """Replay many traces on Dask into one hive-partitioned Parquet dataset (one task each)."""
    def run() -> FleetResult:
        from replay.fleets.engine import local_client

        with _progress_bar() as tell:
            if scheduler is None:
                return fleet(inputs, out_dir, policies=policy or ["all"], workers=workers,
                             events=events, resume=resume, force=force, progress=tell)
            with local_client(address=scheduler) as client:
                return fleet(inputs, out_dir, policies=policy or ["all"], client=client,
                             events=events, resume=resume, force=force, progress=tell)
    _summary(guard(run))


def fleet_report(dataset: Path, out_file: Path, policy: list[str] | None, force: bool,
                 trace_only: list[str]) -> None:
    """``report DATASET -o OUT``: the fleet page; ``trace_only`` names the options given that
    only a trace takes (refused: they would be silently ignored)."""
    def run() -> Path:
        if trace_only:
            raise ReplayConfigError(f"{dataset} is a fleet dataset, already replayed; options "
                                    f"for a trace only: {', '.join(trace_only)}")
        policies = None if not policy or "all" in policy else expand_policies(policy)
        return write_fleet_report(dataset, out_file, policies=policies, force=force)
    guard(run)
    done(out_file)
