"""The ``kvm-mmu-replay`` command line: a thin layer over the library.

Each command parses its arguments, calls one public function and renders the result.
Errors the user can cause print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from parsers import KvmMmuError, Trace, TraceBatch, TraceStream
from parsers.detect import iter_trace
from parsers.table_files import write_tables

__all__ = ["app", "main"]

app = typer.Typer(
    name="kvm-mmu-replay",
    help="Read kvm_mmu traces into Arrow tables and replay KVM's TDP MMU root lifecycle.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")
_err = Console(stderr=True)

TraceArg = Annotated[Path, typer.Argument(help="Trace file: ftrace text, trace-cmd report "
                                          "text (plain, .gz, .xz, .zst).", show_default=False)]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail on the first line that matches "
                                         "no grammar, naming file:line.")]
EventsOpt = Annotated[list[str] | None, typer.Option(
    "--event", "-e", help="Keep only this event (repeatable).", show_default=False)]


def _guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; turn the project's errors into a one-line message and exit status 2."""
    try:
        return fn()
    except KvmMmuError as exc:
        _err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        _err.print("interrupted")
        raise typer.Exit(130) from None


def _with_progress(stream: TraceStream, path: Path) -> Iterator[TraceBatch]:
    """Pass batches through, drawing a progress bar on stderr when it is a terminal."""
    size = path.stat().st_size if path.exists() else 0
    if not sys.stderr.isatty() or size < (64 << 20):
        yield from stream
        return
    columns = (TextColumn("parsing"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_err, transient=True) as bar:
        task = bar.add_task("parse", total=size)
        for batch in stream:
            bar.advance(task, batch.source_bytes)
            yield batch


def _load(path: Path, events: list[str] | None, strict: bool) -> Trace:
    stream = iter_trace(path, events=events or None, strict=strict)
    return Trace.from_batches(_with_progress(stream, path), stream.metadata)


@app.command()
def parse(
    trace: TraceArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory, one file per "
                                      "table; its suffix (.parquet, .feather, .arrow) picks "
                                      "the format unless --format is given.")],
    fmt: Annotated[str | None, typer.Option("--format", help="parquet, feather or arrow.",
                                            show_default=False)] = None,
    events: EventsOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Parse TRACE into Arrow tables written as Parquet, Feather or Arrow IPC files."""
    def run() -> None:
        loaded = _load(trace, events, strict)
        written = write_tables(loaded, out, fmt)
        typer.echo(f"wrote {len(written)} tables ({loaded.events.num_rows} event rows) to {out}")
    _guard(run)


@app.command()
def info(
    trace: TraceArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    strict: StrictOpt = False,
) -> None:
    """Summarise TRACE: format, clock, CPUs, time range, events per name, losses, skips."""
    summary = _guard(lambda: _load(trace, None, strict).info())
    if as_json:
        typer.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    _render_info(summary)


def _render_info(summary: dict[str, Any]) -> None:
    out = Console(soft_wrap=True, highlight=False)
    out.print(f"[bold]{summary['source']}[/]: {summary['format']} "
              f"({', '.join(summary['variants'])})")
    out.print(f"cpus {summary['cpus']}, ts unit {summary['ts_unit']}, "
              f"first {summary['first_ts']}, last {summary['last_ts']}, "
              f"{summary['events']} events")
    table = Table("event", "rows", title="events by name")
    for name, count in summary["event_counts"].items():
        table.add_row(name, str(count))
    out.print(table)
    if summary["lost_events"]:
        lost = ", ".join(f"cpu {c}: {'unknown' if n is None else n}"
                         for c, n in summary["lost_events"].items())
        out.print(f"[yellow]lost events[/]: {lost}")
    if summary["skipped_lines"]:
        out.print("skipped lines: " + ", ".join(f"{k} {v}" for k, v in
                                                 summary["skipped_lines"].items()))
    for warning in summary["warnings"]:
        out.print(f"[yellow]warning[/]: {warning}")


def main() -> None:
    """Console-script entry point."""
    app()


