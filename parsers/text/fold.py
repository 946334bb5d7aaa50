"""The file-wide part of reading text: what one chunk's decode leaves for the chunks after it.

A chunk of lines decodes on its own (:func:`parsers.text.reader.decode_chunk`, in this
process or in a worker) into a :class:`ChunkResult`: its batch, with ``seq`` counted from the
first line of the range it was read in, and what the file-wide state needs from it (skipped
lines, variants, per-CPU first and last timestamps, markers still waiting for a timestamp).
:class:`Fold` applies the results in file order, so one process and several give the same
tables, ``seq``, warnings and skipped-line counts by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.compute as pc

from parsers.errors import TraceParseError
from parsers.schema import EVENTS_SCHEMA
from parsers.text.markers import Marker
from parsers.text.stacks import StackFold, StackPieces
from parsers.trace import TraceBatch, TraceMetadata

__all__ = ["ChunkOptions", "ChunkResult", "CpuOrder", "Fold", "Pending", "ParseFailure"]


@dataclass(frozen=True)
class ChunkOptions:
    """The reading options every chunk of a file is decoded with."""

    path: str
    strict: bool = False
    salvage: bool = False
    events: frozenset[str] | None = None


@dataclass(frozen=True)
class Pending:
    """A lost-events or buffer-started marker waiting for the timestamp of the next record."""

    seq: int
    marker: Marker


@dataclass(frozen=True)
class CpuOrder:
    """One CPU's timestamps in a chunk: first and last, and the backward steps inside it
    (with the line of the first one, -1 when none, and the line of the CPU's first row)."""

    cpu: int
    first_ts: int
    last_ts: int
    back: int
    first_back_line: int
    first_line: int


@dataclass(frozen=True)
class ParseFailure:
    """A :class:`~parsers.errors.TraceParseError` raised while decoding, in a form that
    crosses process boundaries (the line number is relative like ``seq``)."""

    path: str
    reason: str
    lineno: int | None
    line: str | None
    offset: int | None

    def error(self, base: int) -> TraceParseError:
        """The error, its line number moved by ``base`` lines."""
        lineno = None if self.lineno is None else self.lineno + base
        return TraceParseError(self.path, self.reason, lineno=lineno, line=self.line,
                               offset=self.offset)


@dataclass
class ChunkResult:
    """What decoding one chunk gives (line numbers and ``seq`` relative to its range)."""

    batch: TraceBatch | None
    lines: int
    prefixed_in: bool
    prefixed_out: bool = False
    skips: list[tuple[str, int, str]] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cpus: int | None = None
    report: bool = False
    pending: list[Pending] = field(default_factory=list)
    first_ts: int | None = None
    last_ts: int | None = None
    order: list[CpuOrder] = field(default_factory=list)
    units: set[str] = field(default_factory=set)
    undecoded: dict[str, int] = field(default_factory=dict)
    failure: ParseFailure | None = None
    #: The chunk's stack records and frame lines (:mod:`parsers.text.stacks`).
    stacks: StackPieces | None = None


MarkerBatch = Callable[[list[tuple[int, int, Marker]]], TraceBatch]


class Fold:
    """The file-wide state, fed :class:`ChunkResult` s in file order."""

    def __init__(self, path: str, meta: TraceMetadata, marker_batch: MarkerBatch) -> None:
        self.path = path
        self.meta = meta
        self.marker_batch = marker_batch
        self.prefixed = False
        self.last_ts: int | None = None
        self.pending: list[Pending] = []
        self.cpu_last: dict[int, int] = {}
        self.out_of_order = 0
        self.units: set[str] = set()
        self.undecoded: dict[str, int] = {}
        self.stacks = StackFold()

    def add(self, res: ChunkResult, base: int) -> Iterator[TraceBatch]:
        """Apply ``res``, whose relative line 1 is line ``base + 1`` of the file; yields its
        batches (a batch of markers resolved by its first record, then its own)."""
        meta = self.meta
        stacks = None if res.stacks is None else self.stacks.add(
            res.stacks, None if res.batch is None else res.batch.stacks, base, meta)
        for reason, line, text in res.skips:
            meta.skip(reason, line + base, text)
        for name in res.variants:
            meta.add_variant(name)
        if res.failure is not None:
            raise res.failure.error(base)
        meta.warnings.extend(res.warnings)
        if res.cpus is not None:
            meta.cpus = max(meta.cpus or 0, res.cpus)
        if res.report:
            meta.format = "trace-cmd-report"
        self.prefixed = self.prefixed or res.prefixed_out
        self.units |= res.units
        for name, count in res.undecoded.items():
            self.undecoded[name] = self.undecoded.get(name, 0) + count
        self._order(res.order, base)
        if res.first_ts is not None and self.pending:
            yield self.marker_batch([(p.seq, res.first_ts, p.marker) for p in self.pending])
            self.pending.clear()
        self.pending += [Pending(p.seq + base, p.marker) for p in res.pending]
        if res.last_ts is not None:
            self.last_ts = res.last_ts
        if res.batch is not None:
            yield replace(_shift(res.batch, base), stacks=stacks)
        elif stacks is not None:  # frame lines only, of an earlier chunk's record
            yield TraceBatch(pa.RecordBatch.from_pylist([], schema=EVENTS_SCHEMA), {},
                             stacks=stacks)

    def _order(self, order: list[CpuOrder], base: int) -> None:
        """Per-CPU timestamps must not go backwards; count and report where they do."""
        for o in order:
            prev = self.cpu_last.get(o.cpu)
            edge = prev is not None and o.first_ts < prev
            back = o.back + int(edge)
            if back:
                first = self.out_of_order == 0
                self.out_of_order += back
                if first:
                    line = (o.first_line if edge else o.first_back_line) + base
                    self.meta.warnings.append(
                        f"{self.path}:{line}: timestamp goes backwards on CPU {o.cpu}")
            self.cpu_last[o.cpu] = o.last_ts

    def finish(self) -> Iterator[TraceBatch]:
        """The markers no record followed, then the file-wide warnings and facts."""
        if self.pending:
            ts = self.last_ts if self.last_ts is not None else 0
            yield self.marker_batch([(p.seq, ts, p.marker) for p in self.pending])
            self.pending.clear()
        meta = self.meta
        if len(self.units) > 1:
            meta.warnings.append("timestamps mix integer ticks and seconds.fraction")
        meta.ts_unit = "ticks" if self.units == {"ticks"} else "ns"
        if meta.ts_unit == "ticks":
            meta.clock = "counter-or-tsc"
        if self.out_of_order:
            meta.warnings.append(f"{self.out_of_order} timestamps go backwards within a CPU")
        for name, count in sorted(self.undecoded.items()):
            meta.warnings.append(
                f"{count} {name} payloads match no known rendering; kept as args text")
        if "kernel-trace-header" not in meta.variants and meta.format == "ftrace-text":
            meta.add_variant("trace_pipe (no header)")


def _shift(batch: TraceBatch, base: int) -> TraceBatch:
    """``batch`` with ``base`` added to the ``seq`` of every table."""
    if not base:
        return batch
    return replace(batch, events=_shift_seq(batch.events, base),
                   typed={n: _shift_seq(rb, base) for n, rb in batch.typed.items()})


def _shift_seq(rb: pa.RecordBatch, base: int) -> pa.RecordBatch:
    i = rb.schema.get_field_index("seq")
    return rb.set_column(i, rb.schema.field(i), pc.add(rb.column(i), pa.scalar(base, pa.int64())))
