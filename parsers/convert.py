"""Convert a trace of any readable format to Perfetto or to Arrow table files.

One entry point, :func:`convert_trace`, behind ``kvm-mmu-replay convert``. The output kind
comes from ``to`` or from the output's suffix: ``.pftrace``/``.perfetto-trace`` write a
Perfetto trace (one file); ``.parquet``/``.feather``/``.arrow`` write a directory of one
file per table (see :mod:`parsers.table_files`). Both follow the output policy of
:mod:`parsers.output`, checked before the input is read.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from parsers.detect import iter_trace
from parsers.errors import KvmMmuError
from parsers.output import check_output_dir, check_output_file
from parsers.perfetto.writer import write_perfetto
from parsers.table_files import TABLE_FORMATS, TABLE_SUFFIXES, write_tables
from parsers.trace import Trace, TraceBatch, TraceStream, check_event_filter, kvm_warnings

__all__ = ["CONVERT_TARGETS", "ConvertReport", "convert_trace", "target_for"]

#: What :func:`convert_trace` writes, by name.
CONVERT_TARGETS: Final = ("perfetto", *TABLE_FORMATS)
_PERFETTO_SUFFIXES: Final = (".pftrace", ".perfetto-trace", ".perfetto")


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
    if suffix in TABLE_SUFFIXES:
        return TABLE_SUFFIXES[suffix]
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
    force: bool = False,
    batches: Callable[[TraceStream], Iterable[TraceBatch]] | None = None,
    workers: int | None = None,
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
        events, strict, salvage, workers: as for :func:`~parsers.detect.read_trace`.
        force: replace an existing output (a directory only when kvm-mmu-replay wrote it).
        batches: wraps the reader's batch stream (the CLI draws its progress bar there).

    Raises:
        OutputError: the output policy refuses ``out`` (checked before reading).
        KvmMmuError: the input cannot be read, or an ``events`` name is unknown.

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
    if target == "perfetto":
        check_output_file(out, force=force)
    else:
        check_output_dir(out, force=force)
    stream = iter_trace(source, events=events, strict=strict, salvage=salvage, workers=workers)
    trace = stream.complete(Trace.from_batches(batches(stream) if batches else stream,
                                               stream.metadata))
    meta = trace.metadata
    warnings = [*meta.warnings, *check_event_filter(trace, events), *kvm_warnings(trace)]
    if target == "perfetto":
        written = write_perfetto(trace, out, encoding=encoding, compress=compress, force=force)
        return ConvertReport(str(source), meta.format, target, str(out), written.events,
                             [written.path], dict(written.dropped), warnings + written.notes)
    paths = write_tables(trace, out, target, force=force)
    return ConvertReport(str(source), meta.format, target, str(out), trace.events.num_rows,
                         [str(p) for p in paths], {}, warnings)
