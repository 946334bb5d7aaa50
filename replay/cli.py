"""``kvm-mmu-replay``: the command line (thin: parse, call one library function, render).

This worktree's cli.py holds only the ``scenario`` command; the lead merges it into the
project's cli.py next to ``parse`` and ``info``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from parsers.errors import KvmMmuError
from replay.compare import run_scenario
from replay.cost import DEFAULT_COST, apply_overrides, load_cost_file
from replay.sizes import format_ns, parse_size

__all__ = ["app", "main"]

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Replay KVM's TDP MMU root lifecycle under each root-zap policy.")


@app.callback()
def _root() -> None:
    """kvm-mmu-replay: read kvm_mmu traces and replay TDP MMU root zaps."""


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
    emit_trace: Annotated[Path | None, typer.Option(help="Write the era's kernel trace")] = None,
    sample_every: Annotated[int | None, typer.Option(min=1, help="Keep 1 in N SPTE events")] = None,
) -> None:
    """Run a selftest-like scenario under each policy and show per-vCPU block latencies."""
    try:
        model = load_cost_file(cost_file) if cost_file else DEFAULT_COST
        comp = run_scenario(
            name, policies=policy, cost=apply_overrides(model, cost or []),
            memory=parse_size(memory, what="--memory") if memory else None,
            slot_size=parse_size(slot_size, what="--slot-size") if slot_size else None,
            page_size=parse_size(page_size, what="--page-size") if page_size else None,
            vcpus=vcpus, emit_trace=emit_trace, sample_every=sample_every,
        )
    except KvmMmuError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
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
    Console().print(table)


def main() -> None:
    """Entry point of the ``kvm-mmu-replay`` script."""
    app()
