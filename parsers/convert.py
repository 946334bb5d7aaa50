"""Convert a trace of any readable format to Perfetto or to Arrow table files.

One entry point, :func:`convert_trace`, behind ``kvm-mmu-replay convert``. The output kind
comes from ``to`` or from the output's suffix: ``.pftrace``/``.perfetto-trace`` write a
Perfetto trace (one file); ``.parquet``/``.feather``/``.arrow`` write a directory of one
file per table (see :mod:`parsers.table_files`). Both are written under a temporary name
and renamed when complete.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from parsers.detect import read_trace
from parsers.errors import KvmMmuError
from parsers.perfetto.writer import write_perfetto
from parsers.table_files import TABLE_FORMATS, write_tables

__all__ = ["CONVERT_TARGETS", "ConvertReport", "convert_trace", "target_for"]

#: What :func:`convert_trace` writes, by name.
CONVERT_TARGETS: Final = ("perfetto", *TABLE_FORMATS)
_PERFETTO_SUFFIXES: Final = (".pftrace", ".perfetto-trace", ".perfetto")
_TABLE_SUFFIXES: Final = {".parquet": "parquet", ".feather": "feather", ".arrow": "arrow",
                          ".ipc": "arrow"}


@dataclass(frozen=True)
class ConvertReport:
    """What :func:`convert_trace` read and wrote."""

    source: str
    source_format: str
    target: str
    out: str
    events: int
    files: list[str]
    #: Fields the target could not represent, by ``event.field`` (Perfetto only).
    dropped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def target_for(out: str | Path, to: str | None = None) -> str:
    """The output kind: ``to`` when given, else from ``out``'s suffix.

    Examples:
        >>> target_for("t.pftrace"), target_for("tables.feather"), target_for("x", "arrow")
        ('perfetto', 'feather', 'arrow')
    """
    if to is not None:
        if to not in CONVERT_TARGETS:
            raise KvmMmuError(f"unknown conversion target {to!r}; use one of "
                              f"{', '.join(CONVERT_TARGETS)}")
        return to
    suffix = Path(out).suffix.lower()
    if suffix in _PERFETTO_SUFFIXES:
        return "perfetto"
    if suffix in _TABLE_SUFFIXES:
        return _TABLE_SUFFIXES[suffix]
    raise KvmMmuError(f"{out}: cannot tell the output format from the suffix {suffix or '(none)'}"
                      f"; name it .pftrace, .parquet, .feather or .arrow, or pass --to")


def convert_trace(
    source: str | Path,
    out: str | Path,
    *,
    to: str | None = None,
    encoding: Literal["dense", "legacy"] = "dense",
    compress: bool = False,
    events: Collection[str] | None = None,
    strict: bool = False,
    salvage: bool = False,
) -> ConvertReport:
    """Read ``source`` (any format :func:`~parsers.detect.read_trace` reads) and write it
    to ``out``.

    Args:
        source: input trace.
        out: output file (Perfetto) or directory (tables).
        to: ``perfetto``, ``parquet``, ``feather`` or ``arrow``; default from ``out``'s suffix.
        encoding: Perfetto generic-event encoding, ``dense`` (field ids described by
            ``generic_event_descriptors``, as current traced_probes writes) or ``legacy``
            (``GenericFtraceEvent`` with named fields).
        compress: Perfetto: wrap packets in zlib ``compressed_packets``.
        events, strict, salvage: as for :func:`~parsers.detect.read_trace`.

    Examples:
        >>> import tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "t.pftrace")
        >>> r = convert_trace("sample_traces/tracefs_record_tgid.txt", out)
        >>> r.target, r.events > 0
        ('perfetto', True)
    """
    target = target_for(out, to)
    if encoding not in ("dense", "legacy"):
        raise KvmMmuError(f"unknown Perfetto encoding {encoding!r}; use dense or legacy")
    trace = read_trace(source, events=events, strict=strict, salvage=salvage)
    meta = trace.metadata
    if target == "perfetto":
        written = write_perfetto(trace, out, encoding=encoding, compress=compress)
        return ConvertReport(str(source), meta.format, target, str(out), written.events,
                             [written.path], dict(written.dropped), list(meta.warnings))
    paths = write_tables(trace, out, target)
    return ConvertReport(str(source), meta.format, target, str(out), trace.events.num_rows,
                         [str(p) for p in paths], {}, list(meta.warnings))
