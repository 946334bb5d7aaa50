"""Write a :class:`~parsers.trace.Trace` to Parquet, Feather or Arrow IPC files.

The output is a directory holding one file per non-empty table (``events`` plus each typed
table), named ``<table>.<suffix>``. Each file's schema metadata carries the trace metadata
as JSON under ``kvm_mmu_replay``. The directory is written under a temporary name beside the
target and renamed only when every file is complete, so a failure never leaves a
half-written output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from parsers.errors import KvmMmuError
from parsers.trace import Trace

__all__ = ["write_tables", "write_table_dir", "TABLE_FORMATS", "format_for"]

#: Output formats by name, with the file suffix each writes.
TABLE_FORMATS: Final = {"parquet": ".parquet", "feather": ".feather", "arrow": ".arrow"}
_BY_SUFFIX: Final = {".parquet": "parquet", ".feather": "feather", ".arrow": "arrow",
                     ".ipc": "arrow"}


def format_for(out: str | Path, explicit: str | None = None) -> str:
    """The output format: ``explicit`` if given, else from ``out``'s suffix, else Parquet."""
    if explicit is not None:
        if explicit not in TABLE_FORMATS:
            raise KvmMmuError(f"unknown output format {explicit!r}; use one of "
                              f"{', '.join(TABLE_FORMATS)}")
        return explicit
    return _BY_SUFFIX.get(Path(out).suffix.lower(), "parquet")


def _write_one(table: pa.Table, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "feather":
        feather.write_feather(table, path, compression="zstd")
    else:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)


def write_tables(trace: Trace, out: str | Path, fmt: str | None = None) -> list[Path]:
    """Write every non-empty table of ``trace`` into the directory ``out``.

    Returns the paths written (inside ``out``). An existing ``out`` is replaced only after
    the new one is complete.
    """
    names = ["events", *trace.names]
    return write_table_dir({n: trace.with_metadata(trace.table(n)) for n in names}, out,
                           format_for(out, fmt))


def write_table_dir(tables: dict[str, pa.Table], out: str | Path, kind: str) -> list[Path]:
    """Write ``tables`` (name → table) as ``<name><suffix>`` files of format ``kind`` in the
    directory ``out``, built under a temporary name and renamed when complete."""
    target = Path(out)
    suffix = TABLE_FORMATS[kind]
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise KvmMmuError(f"{target}: parent directory {parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        for name, table in tables.items():
            _write_one(table, tmp / f"{name}{suffix}", kind)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [target / f"{name}{suffix}" for name in tables]
