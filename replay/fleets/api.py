"""``fleet(inputs, dataset, ...)``: many traces, one dataset, on Dask."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from parsers.schema import typed_event_names
from replay.compare import expand_policies
from replay.fleets.engine import Progress, local_client, require_dask, run_on_dask
from replay.fleets.inputs import expand_inputs
from replay.fleets.result import FleetResult
from replay.fleets.store import TRACES, clean_uncommitted, open_dataset
from replay.fleets.task import RESULT_TABLES

__all__ = ["fleet"]


def fleet(
    inputs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    dataset: str | os.PathLike[str] | None = None,
    *,
    policies: str | Sequence[str] = "all",
    client: Any = None,
    workers: int | None = None,
    events: bool = False,
    resume: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> FleetResult:
    """Replay every trace ``inputs`` name under ``policies`` into the Parquet dataset
    ``dataset`` (``<table>/trace=<id>/part-0.parquet``), one Dask task per trace.

    Args:
        inputs: files, directories, globs, or fsspec URLs (see
            :func:`replay.fleets.inputs.expand_inputs`).
        dataset: the output directory; an existing one is refused unless kvm-mmu-replay
            wrote it and ``resume`` (continue it) or ``force`` (replace it) is given. None:
            a new directory ``kvm-mmu-fleet-*`` in the system's temporary directory (a
            notebook's scratch; the result's ``dataset`` names it, and it is kept).
        policies: one policy, several, or ``"all"``.
        client: a ``dask.distributed.Client``; None starts a ``LocalCluster`` of
            ``workers`` processes (default: the machine's cores) and closes it afterwards.
        events: also write the parsed event tables (``events`` and each typed table).
        resume: skip traces the dataset already holds (by content id).
        force: replace an existing dataset kvm-mmu-replay wrote.
        progress: called with each event of the run (see :data:`replay.fleets.engine.Progress`).

    Raises:
        MissingExtraError: the ``fleet`` extra (dask.distributed) is not installed.
        OutputError: ``dataset`` may not be written (see :mod:`parsers.output`).
        KvmMmuError: an input matches no file, or a policy is unknown.

    A trace that cannot be read or replayed is a ``traces`` row with status ``error`` and
    its message, never a stopped fleet.
    """
    require_dask()
    names = expand_policies([policies] if isinstance(policies, str) else list(policies))
    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    sources = expand_inputs(given)
    tables = [*RESULT_TABLES, TRACES, *(["events", *typed_event_names()] if events else [])]
    if dataset is None:
        dataset = Path(tempfile.mkdtemp(prefix="kvm-mmu-fleet-")) / "dataset"
    root = open_dataset(dataset, tables, resume=resume, force=force)
    if client is not None:
        return run_on_dask(client, sources, root, names, events=events, resume=resume,
                           progress=progress)
    try:
        with local_client(workers) as own:
            return run_on_dask(own, sources, root, names, events=events, resume=resume,
                               progress=progress)
    except BaseException:
        clean_uncommitted(root)  # our workers are gone: no rename can still land
        raise
