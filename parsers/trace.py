"""`Trace`: the set of Arrow tables a reader produces, and the metadata that goes with them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from parsers.errors import EventNameError, SchemaError, UnknownEventError
from parsers.schema import (
    BUFFER_STARTED,
    EVENT_FIELDS,
    EVENTS_SCHEMA,
    LOST_EVENTS,
    METADATA_KEY,
    typed_event_names,
    typed_schema,
)
from parsers.spill import SpillTable
from parsers.stacks import STACKS_SCHEMA

#: Rows of ``events`` that mark the trace itself rather than record a kernel event.
MARKERS = (LOST_EVENTS, BUFFER_STARTED)

__all__ = ["Trace", "TraceBatch", "TraceMetadata", "TraceStream", "event_mask", "rows_named"]

#: How many offending lines per skip reason are kept as samples.
SAMPLES_PER_REASON = 5


@dataclass
class TraceMetadata:
    """What a reader learnt about its input besides the events themselves.

    ``skipped`` counts input lines (or records) not turned into rows, by reason; ``samples``
    keeps the first few of each reason as ``"<line>: <text>"`` so a user can see them.
    """

    source: str
    format: str
    variants: list[str] = field(default_factory=list)
    clock: str | None = None
    ts_unit: str = "ns"
    cpus: int | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: int, text: str, count: int = 1) -> None:
        """Count ``count`` skipped inputs of ``reason``; keep ``text`` as a sample."""
        self.skipped[reason] = self.skipped.get(reason, 0) + count
        kept = self.samples.setdefault(reason, [])
        if len(kept) < SAMPLES_PER_REASON:
            kept.append(f"{where}: {text[:200]}")

    def add_variant(self, name: str) -> None:
        """Record that a format variant (e.g. ``record-tgid``) was seen."""
        if name not in self.variants:
            self.variants.append(name)

    def to_json(self) -> str:
        """The metadata as a JSON object (stored in the schema metadata of written files)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TraceMetadata:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


@dataclass
class TraceBatch:
    """One streamed slice of a trace: rows of ``events`` and the typed rows that belong to them."""

    events: pa.RecordBatch
    typed: dict[str, pa.RecordBatch] = field(default_factory=dict)
    #: Input bytes (decompressed) this batch consumed, for progress reporting.
    source_bytes: int = 0
    #: Rows of the ``stacks`` table (:mod:`parsers.stacks`) whose records are in ``events``.
    stacks: pa.RecordBatch | None = None


class TraceStream:
    """An iterable of :class:`TraceBatch` whose :attr:`metadata` is complete once exhausted."""

    def __init__(self, batches: Iterator[TraceBatch], metadata: TraceMetadata) -> None:
        self._batches = batches
        self.metadata = metadata

    def __iter__(self) -> Iterator[TraceBatch]:
        return self._batches

    def complete(self, trace: Trace) -> Trace:
        """Finish a whole trace collected from this stream once it is exhausted.

        Streams whose later data completes earlier rows (Perfetto's thread descriptors
        follow the events that reveal a thread) override this; the default returns
        ``trace`` unchanged.
        """
        return trace


class Trace:
    """A parsed trace: the common ``events`` table plus one typed table per known event.

    Examples:
        >>> from parsers import read_trace
        >>> trace = read_trace("sample_traces/tracefs_record_tgid.txt")
        >>> trace.table("kvm_mmu_get_page").num_rows > 0
        True
    """

    def __init__(
        self, events: pa.Table, tables: dict[str, pa.Table], metadata: TraceMetadata,
        stacks: pa.Table | None = None,
    ) -> None:
        if not events.schema.equals(EVENTS_SCHEMA):
            raise SchemaError(f"events table does not match EVENTS_SCHEMA: {events.schema}")
        for name, table in tables.items():
            if not table.schema.equals(typed_schema(name)):
                raise SchemaError(f"typed table {name!r} does not match its declared schema")
        if stacks is not None and not stacks.schema.equals(STACKS_SCHEMA):
            raise SchemaError(f"stacks table does not match STACKS_SCHEMA: {stacks.schema}")
        self.events = events
        self._tables = tables
        self.metadata = metadata
        #: Frames of the stack records (:mod:`parsers.stacks`); no rows without any.
        self.stacks = stacks if stacks is not None else STACKS_SCHEMA.empty_table()

    @classmethod
    def from_stream(cls, stream: TraceStream) -> Trace:
        """Collect a :class:`TraceStream` into whole tables (then :meth:`TraceStream.complete`)."""
        return stream.complete(cls.from_batches(stream, stream.metadata))

    @classmethod
    def from_batches(cls, batches: Iterable[TraceBatch], metadata: TraceMetadata, *,
                     contiguous: bool = False, spill: str | Path | None = None) -> Trace:
        """Concatenate streamed batches into a :class:`Trace`.

        Large batches stay the tables' chunks (see :func:`_concatenate`); ``contiguous``
        copies every column into one buffer instead, for a reader that takes NumPy views of
        whole columns (a chunked column is copied by each ``to_numpy``). ``spill`` (a
        directory) writes each batch to files there as it comes and maps the tables from
        them (:class:`~parsers.spill.SpillTable`): contiguous columns whose pages are the
        kernel's page cache, so the trace's size is not held in the process's memory.

        Raises:
            SpillError: ``spill`` is given and its files could not be written.
        """
        if spill is not None:
            return cls._spilled(batches, metadata, Path(spill))
        events: list[pa.RecordBatch] = []
        typed: dict[str, list[pa.RecordBatch]] = {}
        stacks: list[pa.RecordBatch] = []
        for batch in batches:
            events.append(batch.events)
            for name, rb in batch.typed.items():
                typed.setdefault(name, []).append(rb)
            if batch.stacks is not None:
                stacks.append(batch.stacks)
        tables = {name: _concatenate(rbs, typed_schema(name), contiguous)
                  for name, rbs in typed.items()}
        return cls(_concatenate(events, EVENTS_SCHEMA, contiguous), tables, metadata,
                   _concatenate(stacks, STACKS_SCHEMA, contiguous) if stacks else None)

    @classmethod
    def _spilled(cls, batches: Iterable[TraceBatch], metadata: TraceMetadata,
                 directory: Path) -> Trace:
        events = SpillTable(EVENTS_SCHEMA, directory)
        typed: dict[str, SpillTable] = {}
        stacks: SpillTable | None = None
        try:
            for batch in batches:
                events.append(batch.events)
                for name, rb in batch.typed.items():
                    if name not in typed:
                        typed[name] = SpillTable(typed_schema(name), directory)
                    typed[name].append(rb)
                if batch.stacks is not None:
                    if stacks is None:
                        stacks = SpillTable(STACKS_SCHEMA, directory)
                    stacks.append(batch.stacks)
                del batch
        except BaseException:
            for table in (events, *typed.values(), *([stacks] if stacks else [])):
                table.discard()
            raise
        return cls(events.finish(), {name: t.finish() for name, t in typed.items()}, metadata,
                   stacks.finish() if stacks is not None else None)

    @property
    def names(self) -> list[str]:
        """Typed tables that have at least one row, sorted."""
        return sorted(n for n, t in self._tables.items() if t.num_rows)

    def table(self, name: str = "events") -> pa.Table:
        """The table ``name``: ``"events"``, ``"stacks"`` (:mod:`parsers.stacks`) or a typed
        event table (empty when the trace has none).

        Raises:
            UnknownEventError: no schema is declared for ``name``.
        """
        if name == "events":
            return self.events
        if name == "stacks":
            return self.stacks
        if name not in EVENT_FIELDS:
            raise UnknownEventError(name, ["events", "stacks", *EVENT_FIELDS])
        found = self._tables.get(name)
        return found if found is not None else typed_schema(name).empty_table()

    def to_pandas(self, name: str = "events") -> pd.DataFrame:
        """The table ``name`` as a pandas DataFrame (nullable integer columns stay integers)."""
        return table_to_pandas(self.table(name))

    def with_metadata(self, table: pa.Table) -> pa.Table:
        """``table`` with this trace's metadata attached to its schema (for writing files)."""
        meta = dict(table.schema.metadata or {})
        meta[METADATA_KEY] = self.metadata.to_json().encode()
        return table.replace_schema_metadata(meta)

    def _is_record(self) -> pa.ChunkedArray:
        """Mask of ``events`` rows that are kernel events, not :data:`MARKERS`."""
        return event_mask(self.events, lambda name: name not in MARKERS)

    def event_counts(self) -> dict[str, int]:
        """Rows of ``events`` per event name, markers excluded, sorted by name."""
        counts: dict[str, int] = {}
        for chunk in self.events.column("event").chunks:
            # counted on dictionary codes: no per-row string, no copy of the table
            if not pa.types.is_dictionary(chunk.type):
                chunk = chunk.dictionary_encode()
            words = chunk.dictionary.to_pylist()
            for row in pc.value_counts(chunk.indices).to_pylist():
                code, n = row["values"], int(row["counts"])
                if code is not None and words[code] is not None and words[code] not in MARKERS:
                    counts[str(words[code])] = counts.get(str(words[code]), 0) + n
        return dict(sorted(counts.items()))

    def has_kvm_events(self) -> bool:
        """Whether any record is a kvm or kvmmmu event (a typed event, or ``kvm_*``)."""
        known = set(typed_event_names())
        return any(n.startswith("kvm") or n in known for n in self.event_counts()
                   if n != LOST_EVENTS)

    def lost_events(self) -> dict[int, int | None]:
        """Lost events per CPU: the sum of the counts its markers give; ``None`` where no
        marker of that CPU gave a count (see :meth:`lost_markers_uncounted` for the rest)."""
        out: dict[int, int | None] = {}
        for cpu, count in self._lost_rows():
            out[cpu] = (out.get(cpu) or 0) + count if count is not None else out.get(cpu)
        return dict(sorted(out.items()))

    def lost_markers_uncounted(self) -> dict[int, int]:
        """Per CPU, how many lost-event markers give no count (each lost one event or more,
        so the CPU lost at least ``lost_events()[cpu] + this``); CPUs without any omitted."""
        out: dict[int, int] = {}
        for cpu, count in self._lost_rows():
            if count is None:
                out[cpu] = out.get(cpu, 0) + 1
        return dict(sorted(out.items()))

    def _lost_rows(self) -> list[tuple[int, int | None]]:
        rows = self.table(LOST_EVENTS).select(["cpu", "lost"]).to_pylist()
        return [(int(r["cpu"]) if r["cpu"] is not None else -1,
                 None if r["lost"] is None else int(r["lost"])) for r in rows]

    def info(self) -> dict[str, Any]:
        """A JSON-ready summary: format, clock, CPUs, time range, counts, losses, skips."""
        real = self.events.column("ts").filter(self._is_record())
        cpus = self.metadata.cpus
        if cpus is None and self.events.num_rows:
            top = pc.max(self.events.column("cpu")).as_py()
            cpus = None if top is None else int(top) + 1
        return {
            "source": self.metadata.source,
            "format": self.metadata.format,
            "variants": list(self.metadata.variants),
            "clock": self.metadata.clock,
            "ts_unit": self.metadata.ts_unit,
            "cpus": cpus,
            "events": int(sum(self.event_counts().values())),
            "first_ts": pc.min(real).as_py() if len(real) else None,
            "last_ts": pc.max(real).as_py() if len(real) else None,
            "event_counts": self.event_counts(),
            "lost_events": {str(k): v for k, v in self.lost_events().items()},
            "lost_markers_uncounted": {str(k): v for k, v in
                                       self.lost_markers_uncounted().items()},
            "stack_frames": self.stacks.num_rows,
            "skipped_lines": dict(sorted(self.metadata.skipped.items())),
            "skipped_samples": dict(sorted(self.metadata.samples.items())),
            "warnings": list(self.metadata.warnings) + kvm_warnings(self),
        }


#: The warning (or, for replay, the error) of a trace with no kvm event.
NO_KVM_EVENTS = ("no KVM events (kvm, kvmmmu) in this trace: it holds nothing to replay; "
                 "record with kvm-mmu-replay record (preset kvm)")


def kvm_warnings(trace: Trace) -> list[str]:
    """:data:`NO_KVM_EVENTS` when ``trace`` has no kvm event (and any record at all or none)."""
    return [] if trace.has_kvm_events() else [NO_KVM_EVENTS]


def check_event_filter(trace: Trace, events: Iterable[str] | None) -> list[str]:
    """Check the names a trace was filtered to: a name in neither the trace nor the known
    kvm events is an error (a typo, with the closest known name suggested); a known event
    absent from the trace is a warning.

    Raises:
        EventNameError: a name matches nothing.
    """
    if not events:
        return []
    import difflib

    counts = trace.event_counts()
    known = typed_event_names()
    notes = []
    for name in events:
        if counts.get(name):
            continue
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise EventNameError(name, close[0] if close else None)
        notes.append(f"--event {name}: no such event in this trace")
    return notes


def table_to_pandas(table: pa.Table) -> pd.DataFrame:
    """``table`` as a DataFrame whose integer and bool columns use pandas' nullable dtypes
    (``Int64``, ``Int32``, ``UInt64``, ``boolean``): a null stays null and an int64 timestamp
    keeps every nanosecond, where ``pa.Table.to_pandas()`` would give float64.

    Examples:
        >>> t = pa.table({"ts": pa.array([1_700_000_000_123_456_789, None], pa.int64())})
        >>> df = table_to_pandas(t)
        >>> str(df["ts"].dtype), int(df["ts"][0])
        ('Int64', 1700000000123456789)
    """
    return table.to_pandas(types_mapper=_pandas_type)


def event_mask(events: pa.Table, wanted: Callable[[str], bool]) -> pa.ChunkedArray:
    """Boolean mask of the ``events`` rows whose event name is ``wanted`` (never null).

    ``wanted`` is asked once per distinct name (each chunk's dictionary) and the rows are
    matched on their dictionary codes: no per-row string is built, so a 10 M-event table
    costs a 10 M-bit mask instead of a 10 M-string column.
    """
    column = events.column("event")
    chunks: list[pa.Array] = []
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_encode()
        words = chunk.dictionary.to_pylist()
        codes = [i for i, w in enumerate(words) if w is not None and wanted(str(w))]
        if not codes:
            chunks.append(pa.repeat(False, len(chunk)))
        elif len(codes) == len(words):
            chunks.append(pc.is_valid(chunk.indices))
        else:
            hit = pc.is_in(chunk.indices, pa.array(codes, chunk.indices.type))
            chunks.append(pc.fill_null(hit, False))
    return pa.chunked_array(chunks, pa.bool_())


def rows_named(events: pa.Table, names: Iterable[str],
               columns: list[str] | None = None) -> pa.Table:
    """The rows of ``events`` whose event is one of ``names`` (in table order), optionally
    only ``columns``; matched on dictionary codes (see :func:`event_mask`)."""
    wanted = frozenset(names)
    table = events if columns is None else events.select(columns)
    return table.filter(event_mask(events, wanted.__contains__))


def _pandas_type(t: pa.DataType) -> Any:
    """Map Arrow integer and bool types to pandas' nullable dtypes so nulls stay nulls."""
    mapping = {
        pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
        pa.int64(): pd.Int64Dtype(), pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(),
        pa.uint32(): pd.UInt32Dtype(), pa.uint64(): pd.UInt64Dtype(), pa.bool_(): pd.BooleanDtype(),
    }
    return mapping.get(t)


#: Batches of at least this many rows on average stay chunks of the whole table (with one
#: dictionary per column); smaller ones are copied into one contiguous chunk.
KEEP_CHUNK_ROWS: Final = 1 << 13


def _concatenate(batches: list[pa.RecordBatch], schema: pa.Schema,
                 contiguous: bool = False) -> pa.Table:
    """The table of ``batches``, emptying the list as it goes.

    Large batches (:data:`KEEP_CHUNK_ROWS` rows on average: the text and trace.dat readers'
    8 MiB chunks) stay the table's chunks, their dictionary columns unified: copying them
    into one buffer per column cost a tenth of a 100 MB text read (fresh pages, written
    once) and, for batches decoded in worker processes, replaced memory-mapped data the
    workers had written by a copy of it. Small batches (a stream of a few rows at a time)
    are combined, column by column, so that at most one column exists twice (as batch
    chunks and as its contiguous copy) instead of the whole table; so are large ones when
    ``contiguous``.
    """
    if not contiguous and batches and sum(b.num_rows for b in batches) >= KEEP_CHUNK_ROWS * len(batches):
        table = pa.Table.from_batches(batches, schema=schema)
        batches.clear()
        return table.unify_dictionaries()
    columns: list[list[pa.Array]] = [[b.column(i) for b in batches] for i in range(len(schema))]
    batches.clear()
    out: list[pa.Array] = []
    for i, column in enumerate(schema):
        chunks, columns[i] = columns[i], []
        if not chunks:
            out.append(pa.array([], column.type))
            continue
        chunked = pa.chunked_array(chunks, column.type)
        del chunks
        if pa.types.is_dictionary(column.type):
            chunked = pa.table({column.name: chunked}).unify_dictionaries().column(0)
        out.append(chunked.combine_chunks())
        del chunked
        # the pool keeps the freed chunks' pages, which a whole column never fits in: give
        # them back before the next column, or the copies add up to the table's size again
        pa.default_memory_pool().release_unused()
    return pa.Table.from_arrays(out, schema=schema)

