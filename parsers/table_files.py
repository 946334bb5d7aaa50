"""Write a :class:`~parsers.trace.Trace` to Parquet, Feather or Arrow IPC files.

The output is a directory holding one file per non-empty table (``events`` plus each typed
table), named ``<table>.<suffix>``. Each file's schema metadata carries the trace metadata
as JSON under ``kvm_mmu_replay``. The directory is written by the output policy of
:mod:`parsers.output` (temporary name, renamed when complete; an existing directory is
replaced only when kvm-mmu-replay wrote it and ``force`` is given).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from parsers.errors import KvmMmuError
from parsers.output import output_dir
from parsers.trace import Trace

__all__ = ["write_tables", "write_table_dir", "TABLE_FORMATS", "TABLE_SUFFIXES", "format_for"]

#: Output formats by name, with the file suffix each writes.
TABLE_FORMATS: Final = {"parquet": ".parquet", "feather": ".feather", "arrow": ".arrow"}
#: The directory suffixes that name a table format.
TABLE_SUFFIXES: Final = {".parquet": "parquet", ".feather": "feather", ".arrow": "arrow",
                         ".ipc": "arrow"}


def format_for(out: str | Path, explicit: str | None = None) -> str:
    """The output format: ``explicit`` if given, else from ``out``'s suffix; a name without
    a suffix is Parquet, an unknown suffix is an error (as for ``convert``).

    Examples:
        >>> format_for("t.feather"), format_for("tables"), format_for("x.out", "arrow")
        ('feather', 'parquet', 'arrow')
    """
    if explicit is not None:
        if explicit not in TABLE_FORMATS:
            raise KvmMmuError(f"unknown output format {explicit!r}; use one of "
                              f"{', '.join(TABLE_FORMATS)}")
        return explicit
    suffix = Path(out).suffix.lower()
    if not suffix:
        return "parquet"
    if suffix not in TABLE_SUFFIXES:
        raise KvmMmuError(f"{out}: cannot tell the table format from the suffix {suffix}; name "
                          "it .parquet, .feather or .arrow (or no suffix for Parquet), or pass "
                          "--format")
    return TABLE_SUFFIXES[suffix]


def _write_one(table: pa.Table, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "feather":
        feather.write_feather(table, path, compression="zstd")
    else:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)


def write_tables(trace: Trace, out: str | Path, fmt: str | None = None, *,
                 force: bool = False) -> list[Path]:
    """Write every non-empty table of ``trace`` into the directory ``out``.

    Returns the paths written (inside ``out``). See :func:`write_table_dir` for ``force``.
    """
    names = ["events", *trace.names, *(["stacks"] if trace.stacks.num_rows else [])]
    return write_table_dir({n: trace.with_metadata(trace.table(n)) for n in names}, out,
                           format_for(out, fmt), force=force)


def write_table_dir(tables: dict[str, pa.Table], out: str | Path, kind: str, *,
                    force: bool = False) -> list[Path]:
    """Write ``tables`` (name → table) as ``<name><suffix>`` files of format ``kind`` in the
    directory ``out`` (:func:`parsers.output.output_dir`: built under a temporary name,
    renamed when complete; an existing ``out`` is replaced only when kvm-mmu-replay wrote it
    and ``force`` is true).

    Raises:
        OutputError: the output policy refuses ``out``, or writing failed.
    """
    suffix = TABLE_FORMATS[kind]
    with output_dir(out, force=force) as tmp:
        for name, table in tables.items():
            _write_one(table, tmp / f"{name}{suffix}", kind)
    return [Path(out) / f"{name}{suffix}" for name in tables]
