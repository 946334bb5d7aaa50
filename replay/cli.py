"""The ``kvm-mmu-replay`` command line: a thin layer over the library.

Each command parses its arguments, calls one public function and renders the result.
Errors the user can cause print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from parsers import Trace, TraceBatch, TraceStream, __version__
from parsers.convert import CONVERT_TARGETS, ConvertReport, convert_trace
from parsers.detect import iter_trace
from parsers.output import check_output_dir, check_output_file
from parsers.recording.presets import PRESETS
from parsers.recording.record import RecordReport, record
from parsers.table_files import format_for
from replay.cli_fleet import fleet_command, fleet_report, query
from replay.cli_support import ForceOpt, PolicyOpt, SalvageOpt, StrictOpt, WorkersOpt
from replay.cli_support import done as _done
from replay.cli_support import err as _err
from replay.cli_support import guard as _guard
from replay.cli_support import out as _out
from replay.cli_support import warn as _warn
from replay.compare import run_scenario
from replay.errors import ReplayConfigError
from replay.fleets.store import is_dataset
from replay.model.cost import DEFAULT_COST, apply_overrides, load_cost_file
from replay.render.terminal import render_replay
from replay.sizes import format_ns, parse_size
from replay.trace_replay import load_for_replay, replay
from replay.trace_result import TraceReplayResult

__all__ = ["app", "main"]

app = typer.Typer(
    name="kvm-mmu-replay",
    help="Read kvm_mmu traces into Arrow tables and replay KVM's TDP MMU root lifecycle.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

def _version(value: bool) -> None:
    if value:
        typer.echo(f"kvm-mmu-replay {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """Read kvm_mmu traces into Arrow tables and replay KVM's TDP MMU root lifecycle."""
TraceArg = Annotated[Path, typer.Argument(help="Trace file: ftrace or trace-cmd report text "
                                          "(plain, .gz, .xz, .zst), trace.dat, or Perfetto "
                                          "protobuf; detected from the content.",
                                          show_default=False)]
EventsOpt = Annotated[list[str] | None, typer.Option(
    "--event", "-e", help="Keep only this event (repeatable).", show_default=False)]


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


def _load(path: Path, events: list[str] | None, strict: bool, salvage: bool,
          workers: int | None = None) -> Trace:
    stream = iter_trace(path, events=events or None, strict=strict, salvage=salvage,
                        workers=workers)
    return stream.complete(Trace.from_batches(_with_progress(stream, path), stream.metadata))


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
    salvage: SalvageOpt = False,
    force: ForceOpt = False,
    workers: WorkersOpt = None,
) -> None:
    """Parse TRACE into Arrow tables written as Parquet, Feather or Arrow IPC files."""
    report: ConvertReport = _guard(lambda: convert_trace(
        trace, out, to=format_for(out, fmt), events=events or None, strict=strict,
        salvage=salvage, force=force, batches=lambda s: _with_progress(s, trace),
        workers=workers))
    typer.echo(f"wrote {len(report.files)} tables ({report.events} event rows) to {out}")
    _warn(report.warnings)


@app.command()
def info(
    trace: TraceArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    strict: StrictOpt = False,
    salvage: SalvageOpt = False,
    workers: WorkersOpt = None,
) -> None:
    """Summarise TRACE: format, clock, CPUs, time range, events per name, losses, skips."""
    summary = _guard(lambda: _load(trace, None, strict, salvage, workers).info())
    if as_json:
        typer.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    _render_info(summary)


def lost_text(summary: dict[str, Any]) -> str:
    """Lost events per CPU from an ``info()`` summary: ``1718``, or ``≥ 2426`` when some
    markers gave no count (each of those lost one event at least)."""
    uncounted = summary.get("lost_markers_uncounted", {})
    parts = []
    for cpu, known in summary["lost_events"].items():
        missing = uncounted.get(cpu, 0)
        total = (known or 0) + missing
        parts.append(f"cpu {cpu}: {total}" if not missing else
                     f"cpu {cpu}: ≥ {total} ({missing} marker{'s' * (missing > 1)} without a "
                     "count)")
    return ", ".join(parts)


def _render_info(summary: dict[str, Any]) -> None:
    out = _out()
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
        out.print(f"[yellow]lost events[/]: {lost_text(summary)}")
    if summary["skipped_lines"]:
        out.print("skipped lines: " + ", ".join(f"{k} {v}" for k, v in
                                                 summary["skipped_lines"].items()))
    for warning in summary["warnings"]:
        out.print(f"[yellow]warning[/]: {warning}")


@app.command()
def convert(
    trace: TraceArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output: a .pftrace file, or a "
                                      "directory named .parquet, .feather or .arrow.")],
    to: Annotated[str | None, typer.Option("--to", help="Output kind, one of "
                                           f"{', '.join(CONVERT_TARGETS)}; default from the "
                                           "suffix of --out.", show_default=False)] = None,
    encoding: Annotated[str, typer.Option("--encoding", help="Perfetto generic-event encoding: "
                                          "dense (descriptors + field ids) or legacy "
                                          "(GenericFtraceEvent).")] = "dense",
    compress: Annotated[bool, typer.Option("--compress", help="Perfetto: zlib "
                                           "compressed_packets.")] = False,
    events: EventsOpt = None,
    strict: StrictOpt = False,
    salvage: SalvageOpt = False,
    force: ForceOpt = False,
    workers: WorkersOpt = None,
) -> None:
    """Convert TRACE (any format) to Perfetto, Parquet, Feather or Arrow IPC."""
    if encoding not in ("dense", "legacy"):
        _err.print(f"[bold red]error:[/] --encoding must be dense or legacy, not {encoding!r}")
        raise typer.Exit(2)
    report: ConvertReport = _guard(lambda: convert_trace(
        trace, out, to=to, encoding="dense" if encoding == "dense" else "legacy",
        compress=compress, events=events or None, strict=strict, salvage=salvage, force=force,
        batches=lambda s: _with_progress(s, trace), workers=workers))
    typer.echo(f"wrote {report.target} ({report.events} events from {report.source_format}) "
               f"to {report.out}")
    for name, count in sorted(report.dropped.items()):
        _err.print(f"[yellow]note[/]: {name}: {count} values Perfetto cannot hold were dropped")
    _warn(report.warnings)




CostFileOpt = Annotated[Path | None, typer.Option(help="TOML cost model")]
CostOpt = Annotated[list[str] | None, typer.Option(help="Override one cost: KEY=VALUE")]
CalibrateOpt = Annotated[bool, typer.Option(
    "--calibrate", help="Use the fault and per-SPTE zap costs the trace measures.")]


def _replayed(trace: Path, policy: list[str] | None, cost_file: Path | None,
              cost: list[str] | None, strict: bool = False, salvage: bool = False,
              calibrate: bool = False, workers: int | None = None) -> TraceReplayResult:
    model = apply_overrides(load_cost_file(cost_file) if cost_file else DEFAULT_COST, cost or [])
    return replay(load_for_replay(trace, strict=strict, salvage=salvage, workers=workers),
                  policy=policy or ["all"], cost=model, calibrate=calibrate)


def _replay_to(trace: Path, policy: list[str] | None, cost_file: Path | None,
               cost: list[str] | None, strict: bool, salvage: bool, calibrate: bool,
               write: Callable[[TraceReplayResult], object],
               check: Callable[[], object], workers: int | None = None) -> TraceReplayResult:
    """Check the output first (before the long replay), replay, then write."""
    def run() -> TraceReplayResult:
        check()
        result = _replayed(trace, policy, cost_file, cost, strict, salvage, calibrate, workers)
        write(result)
        return result
    return _guard(run)


@app.command()
def report(
    trace: Annotated[Path, typer.Argument(
        metavar="TRACE|DATASET", help="A trace file (any format, detected from the content), "
        "or a dataset written by fleet.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write ('-': stdout).")],
    policy: PolicyOpt = None, cost_file: CostFileOpt = None, cost: CostOpt = None,
    calibrate: CalibrateOpt = False, strict: StrictOpt = False, salvage: SalvageOpt = False,
    force: ForceOpt = False, workers: WorkersOpt = None,
) -> None:
    """Replay TRACE and write a self-contained HTML report with plots; for a fleet DATASET,
    one page of the whole fleet (latency per run, worst vCPUs, counts, errors)."""
    if is_dataset(trace):
        trace_only = {"--cost-file": cost_file is not None, "--cost": bool(cost),
                      "--calibrate": calibrate, "--strict": strict, "--salvage": salvage,
                      "--workers": workers is not None}
        fleet_report(trace, out, policy, force, [k for k, given in trace_only.items() if given])
        return
    _replay_to(trace, policy, cost_file, cost, strict, salvage, calibrate,
               lambda r: r.write_report(out, force=force),
               lambda: check_output_file(out, force=force), workers)
    _done(out)


@app.command("export-perfetto")
def export_perfetto(
    trace: TraceArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Perfetto trace to write "
                                      "(open it in ui.perfetto.dev; '-': stdout).")],
    policy: PolicyOpt = None, cost_file: CostFileOpt = None, cost: CostOpt = None,
    calibrate: CalibrateOpt = False, strict: StrictOpt = False, salvage: SalvageOpt = False,
    force: ForceOpt = False, workers: WorkersOpt = None,
) -> None:
    """Replay TRACE and write a Perfetto timeline: vCPU blocks, zaps, refcounts per run."""
    result = _replay_to(trace, policy, cost_file, cost, strict, salvage, calibrate,
                        lambda r: r.write_timeline(out, force=force),
                        lambda: check_output_file(out, force=force), workers)
    _done(out)
    if result.ts_unit != "ns":
        _warn([f"the trace's timestamps are {result.ts_unit}: Perfetto shows the observed "
               "run's times as ns (a tick is not a nanosecond)"])


def _layout(name: str) -> Literal["tracefs", "ns"]:
    """The ``--emit-layout`` value, checked."""
    if name == "tracefs":
        return "tracefs"
    if name == "ns":
        return "ns"
    raise ReplayConfigError(f"--emit-layout {name!r}: expected tracefs or ns")


@app.command()
def scenario(
    name: Annotated[str, typer.Argument(help="max-guest-memory, memslot-stress, dirty-log-perf "
                                             "or set-memory-region")],
    memory: Annotated[str | None, typer.Option(help="Guest memory, e.g. 64TiB")] = None,
    slot_size: Annotated[str | None, typer.Option(help="Memslot size, e.g. 2GiB")] = None,
    vcpus: Annotated[int | None, typer.Option(help="vCPUs (default: the selftest's)")] = None,
    page_size: Annotated[str | None, typer.Option(help="4K, 2M or 1G")] = None,
    policy: Annotated[list[str] | None, typer.Option(help="Policy (repeatable) or 'all'")] = None,
    cost_file: Annotated[Path | None, typer.Option(help="TOML cost model")] = None,
    cost: Annotated[list[str] | None, typer.Option(help="Override one cost: KEY=VALUE")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    emit_trace: Annotated[str | None, typer.Option(
        help="Write the era's kernel trace to this file; with several policies the name "
        "must hold {policy} (e.g. e.{policy}.txt), replaced by each policy's name")] = None,
    sample_every: Annotated[int | None, typer.Option(
        min=1, help="Keep 1 in N faults and zapped SPTEs (default: every event)")] = None,
    emit_layout: Annotated[str, typer.Option(
        help="tracefs (the kernel's µs text) or ns (trace-cmd report -t)")] = "tracefs",
    emit_tgid: Annotated[bool, typer.Option(help="Print the record-tgid column")] = True,
    force: ForceOpt = False,
) -> None:
    """Run a selftest-like scenario under each policy and show per-vCPU block latencies."""
    def run() -> Any:
        model = load_cost_file(cost_file) if cost_file else DEFAULT_COST
        return run_scenario(
            name, policies=policy, cost=apply_overrides(model, cost or []),
            memory=parse_size(memory, what="--memory") if memory else None,
            slot_size=parse_size(slot_size, what="--slot-size") if slot_size else None,
            page_size=parse_size(page_size, what="--page-size") if page_size else None,
            vcpus=vcpus, emit_trace=emit_trace, sample_every=sample_every, force=force,
            emit_layout=_layout(emit_layout), emit_tgid=emit_tgid,
        )
    comp = _guard(run)
    if as_json:
        typer.echo(json.dumps(comp.to_json_dict(), indent=2, sort_keys=True))
        return
    table = Table("policy", "vcpu", "blocks", "p50", "p99", "max", "max cause", "total",
                  title=name)
    for pol, res in comp.results.items():
        for row in res.to_arrow("summary").to_pylist():
            table.add_row(pol, str(row["vcpu"]), str(row["blocks"]), format_ns(row["p50_ns"]),
                          format_ns(row["p99_ns"]), format_ns(row["max_ns"]),
                          str(row["max_cause"] or "-"), format_ns(row["total_ns"]))
    _out().print(table)


@app.command("replay")
def replay_command(
    trace: TraceArg,
    policy: Annotated[list[str] | None, typer.Option(
        "--policy", "-p", help="Policy to replay (repeatable), or 'all' (default).",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write the tables (block_intervals, refcount_history, roots, "
        "summary, vcpus, evidence) to this directory; its suffix picks the format.",
        show_default=False)] = None,
    cost_file: CostFileOpt = None,
    cost: CostOpt = None,
    strict: StrictOpt = False,
    salvage: SalvageOpt = False,
    calibrate: CalibrateOpt = False,
    force: ForceOpt = False,
    workers: WorkersOpt = None,
) -> None:
    """Replay TRACE: observed per-vCPU blocks and refcounts, and each policy's replay."""
    result = _replay_to(
        trace, policy, cost_file, cost, strict, salvage, calibrate,
        lambda r: r.write_tables(out, force=force) if out is not None else None,
        lambda: (format_for(out), check_output_dir(out, force=force)) if out else None,
        workers)
    if as_json:
        typer.echo(json.dumps(result.to_json_dict(), indent=2, sort_keys=True))
        return
    render_replay(_out(), result)
    if out is not None:
        typer.echo(f"wrote tables to {out}")




def _render_record(report: RecordReport) -> None:
    """One summary line, lost events and warnings on stderr."""
    seconds = report.duration_ns / 1e9
    _err.print(f"{report.out}: {report.events_written} events, {report.bytes_written} bytes, "
               f"{seconds:.3f} s ({report.method}, preset {report.preset}, buffer "
               f"{report.buffer_kb} KiB/CPU); restored {len(report.restored)} tracefs settings",
               highlight=False, markup=False, soft_wrap=True)
    for label, per_cpu in (("lost (LOST markers)", report.lost_markers),
                           ("lost (ring-buffer overrun)", report.overrun),
                           ("lost (dropped events)", report.dropped)):
        cpus = ", ".join(f"cpu{cpu} {n}" for cpu, n in sorted(per_cpu.items())) or "none"
        _err.print(f"{label}: {cpus}", highlight=False, markup=False)
    for note in report.warnings:
        _err.print(f"warning: {note}", highlight=False, markup=False)


@app.command("record", context_settings={"allow_extra_args": True,
                                         "ignore_unknown_options": True},
             options_metavar="[OPTIONS] -- COMMAND [ARGS]...")
def record_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output: ftrace text, or trace.dat "
                                      "with --trace-cmd", show_default=False)],
    events: Annotated[str, typer.Option("--events", help="Event preset: "
                                        + ", ".join(PRESETS))] = "kvm",
    buffer_kb: Annotated[int | None, typer.Option("--buffer-kb", min=1, help="Ring buffer per "
                                                  "CPU in KiB (default: the preset's rule)")] = None,
    trace_cmd: Annotated[bool, typer.Option("--trace-cmd", help="Capture with trace-cmd "
                                            "extract into a trace.dat")] = False,
    clock: Annotated[str | None, typer.Option("--clock", help="trace_clock to select, e.g. "
                                              "mono (default: unchanged)")] = None,
    tracefs: Annotated[Path | None, typer.Option("--tracefs", help="tracefs directory "
                                                 "(default: found)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    force: ForceOpt = False,
) -> None:
    """Record kvm events while a command runs (root): record -o OUT -- COMMAND [ARGS]...

    Everything after -- is the command and its arguments.
    """
    command = list(ctx.args)[1:] if ctx.args[:1] == ["--"] else list(ctx.args)
    report = _guard(lambda: record(out, command, preset=events, buffer_kb=buffer_kb,
                                   use_trace_cmd=trace_cmd, tracefs=tracefs, clock=clock,
                                   force=force))
    if as_json:
        typer.echo(json.dumps(report.to_json_dict(), indent=2, sort_keys=True))
    _render_record(report)
    if report.returncode != 0:
        _err.print(f"error: the command exited with status {report.returncode} (trace kept)")
        raise typer.Exit(1)

app.command()(query)
app.command("fleet")(fleet_command)


def main() -> None:
    """Console-script entry point."""
    app()


