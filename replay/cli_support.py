"""What every command of the ``kvm-mmu-replay`` command line shares: the two consoles, the
error guard (a project error is one line on stderr and exit status 2), warnings and the
closing line. :mod:`replay.cli` and :mod:`replay.cli_fleet` import it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from parsers import KvmMmuError

__all__ = ["err", "out", "guard", "warn", "done", "StrictOpt", "SalvageOpt", "ForceOpt",
           "WorkersOpt", "PolicyOpt"]

T = TypeVar("T")

StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail on the first line (text) or "
                                         "field (Perfetto) that matches nothing known, naming "
                                         "where, instead of counting it as skipped.")]
SalvageOpt = Annotated[bool, typer.Option("--salvage", help="Keep what reads before damage "
                                          "instead of failing: binary formats keep the events "
                                          "decoded before it; text skips NUL or undecodable "
                                          "lines and keeps the complete lines of a truncated "
                                          "compressed file (each with a warning).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output file, or "
                                        "a directory kvm-mmu-replay wrote; nothing else is "
                                        "ever replaced.")]
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", min=1, help="Processes decoding an uncompressed text trace or a trace.dat "
    "(same result with any number); default: the machine's cores for text over 32 MiB or "
    "trace.dat over 1 GiB, else 1.",
    show_default=False)]
PolicyOpt = Annotated[list[str] | None, typer.Option(
    "--policy", "-p", help="Policy to replay (repeatable), or 'all' (default).",
    show_default=False)]

#: stderr: errors, warnings, progress.
err = Console(stderr=True)


def out() -> Console:
    """stdout console; at least 132 columns wide so tables stay readable when piped."""
    return Console(width=max(shutil.get_terminal_size((132, 24)).columns, 132),
                   soft_wrap=True, highlight=False)


def guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; turn the project's errors into a one-line message and exit status 2."""
    try:
        return fn()
    except KvmMmuError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def warn(warnings: Iterable[str]) -> None:
    """Each warning on one stderr line."""
    for warning in warnings:
        err.print(f"[yellow]warning[/]: {escape(warning)}", highlight=False, soft_wrap=True)


def done(path: Path | str) -> None:
    """The closing line: on stdout, or on stderr when stdout is the output itself."""
    if str(path) in ("-", "/dev/stdout"):
        err.print(f"wrote {path}", highlight=False, markup=False, soft_wrap=True)
    else:
        typer.echo(f"wrote {path}")
