"""The fleet dataset on disk: ``DATASET/<table>/trace=<id>/part-0.parquet``.

A trace's partitions are written under ``DATASET/.staging/`` and renamed into place one
table after the other, its ``traces`` partition last: a trace is *committed* when
``traces/trace=<id>`` exists, and then every one of its partitions is complete. Partitions
of a trace that is not committed (a worker killed between two renames, Ctrl-C) are
replaced by the next attempt and left out by :func:`read_table`; :func:`clean_uncommitted`
removes them. Only the directory's owner (kvm-mmu-replay, :mod:`parsers.output`'s marker)
writes or removes anything in it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from parsers.output import MARKER, open_growing_dir

__all__ = ["TRACES", "STAGING", "open_dataset", "is_dataset", "committed_ids", "commit",
           "read_row", "read_table", "partition_files", "clean_uncommitted", "table_names"]

#: The table of one row per trace, written last: its partition commits the trace.
TRACES: Final = "traces"
#: Where partitions are built before their rename (hidden: readers skip it).
STAGING: Final = ".staging"
PART: Final = "part-0.parquet"
_KEY: Final = "trace="


def open_dataset(path: str | os.PathLike[str], names: list[str], *, resume: bool,
                 force: bool) -> Path:
    """Create (or, with ``resume``, continue; with ``force``, replace) the dataset directory
    by :func:`parsers.output.open_growing_dir`'s rules; stale partitions of traces never
    committed are removed."""
    root = open_growing_dir(path, [STAGING, *names], resume=resume, force=force)
    clean_uncommitted(root)
    return root


def is_dataset(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a fleet dataset: a directory whose :data:`MARKER` (written by
    :func:`open_dataset`) lists the :data:`TRACES` table and the :data:`STAGING` area. Never
    guessed from the name; a directory ``parse -o`` wrote lists its files instead."""
    try:
        listed = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(listed, list) and TRACES in listed and STAGING in listed


def table_names(root: Path) -> list[str]:
    """The tables the dataset holds (directories with at least one partition)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and any(q.name.startswith(_KEY) for q in p.iterdir()))


def committed_ids(root: Path) -> set[str]:
    """Ids of the committed traces."""
    traces = root / TRACES
    if not traces.is_dir():
        return set()
    return {p.name.removeprefix(_KEY) for p in traces.iterdir() if p.name.startswith(_KEY)}


def _partition(root: Path, table: str, trace_id: str) -> Path:
    return root / table / f"{_KEY}{trace_id}"


def commit(root: Path, trace_id: str, tables: Mapping[str, pa.Table]) -> None:
    """Write ``tables`` (which must hold :data:`TRACES`) as the partitions of ``trace_id``:
    staged, then renamed into place, ``traces`` last. Partitions left by an earlier attempt
    at the same trace that was not committed are replaced (or removed when this attempt has
    no such table)."""
    stage = root / STAGING / f"{trace_id}.{secrets.token_hex(4)}"
    stage.mkdir(parents=True)
    try:
        for name, table in tables.items():
            (stage / name).mkdir()
            pq.write_table(table.replace_schema_metadata(None), stage / name / PART)
        for leftover in root.glob(f"*/{_KEY}{trace_id}"):
            if leftover.parent.name not in tables:
                _move_aside(leftover, stage)
        for name in sorted(tables, key=lambda n: n == TRACES):
            target = _partition(root, name, trace_id)
            target.parent.mkdir(exist_ok=True)
            if target.exists():
                _move_aside(target, stage)
            os.rename(stage / name, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _move_aside(path: Path, stage: Path) -> None:
    os.rename(path, stage / f"old.{path.parent.name}")


def read_row(root: Path, trace_id: str) -> dict[str, Any]:
    """The committed ``traces`` row of ``trace_id``."""
    rows: list[dict[str, Any]] = pq.read_table(_partition(root, TRACES, trace_id) / PART
                                               ).to_pylist()
    return {"trace": trace_id, **rows[0]}


def read_table(root: Path, name: str) -> pa.Table:
    """Table ``name`` of every committed trace, with the partition key as the string column
    ``trace``; rows of traces not committed are left out. Empty (no columns) when no trace
    has that table."""
    folder = root / name
    parts = [str(path) for _, path in partition_files(root, name)]
    if not parts:
        return pa.table({})
    schema = pa.unify_schemas([pq.read_schema(p).remove_metadata() for p in parts]
                              + [pa.schema([("trace", pa.string())])])
    dataset = ds.dataset(parts, schema=schema, format="parquet", partition_base_dir=str(folder),
                         partitioning=ds.partitioning(pa.schema([("trace", pa.string())]),
                                                      flavor="hive"))
    table: pa.Table = dataset.to_table()
    return table


def partition_files(root: Path, name: str) -> list[tuple[str, Path]]:
    """``(trace id, Parquet file)`` of table ``name`` for every committed trace that has it,
    by id: one trace at a time for readers that must not hold a whole table."""
    if not (root / name).is_dir():
        return []
    files = ((t, _partition(root, name, t) / PART) for t in sorted(committed_ids(root)))
    return [(t, path) for t, path in files if path.is_file()]


def clean_uncommitted(root: Path) -> list[Path]:
    """Remove the staging area and every partition of a trace not committed; return what
    was removed. Only called on a dataset this tool owns (it holds :data:`MARKER`)."""
    if not (root / MARKER).is_file():
        return []
    done = committed_ids(root)
    removed = [p for p in root.glob(f"*/{_KEY}*") if not p.parent.name.startswith(".")
               and p.name.removeprefix(_KEY) not in done]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    if (root / STAGING).exists():
        shutil.rmtree(root / STAGING, ignore_errors=True)
        removed.append(root / STAGING)
    return removed
