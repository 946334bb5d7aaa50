"""Read kernel ftrace text (``trace``, ``trace_pipe``) and ``trace-cmd report`` output.

Public entry points: :func:`read_ftrace_text` (a whole :class:`~parsers.trace.Trace`) and
:func:`iter_ftrace_text` (a :class:`~parsers.trace.TraceStream` of bounded batches).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from parsers.errors import TraceParseError
from parsers.schema import EVENT_FIELDS, EVENTS_SCHEMA, LOST_EVENTS
from parsers.stacks import LocalStacks, local_stacks
from parsers.text.fold import (
    ChunkOptions,
    ChunkResult,
    CpuOrder,
    Fold,
    ParseFailure,
    Pending,
)
from parsers.text.grammar import EventLines, split_event_lines
from parsers.text.markers import LineKind, Marker, classify_line
from parsers.text.payloads import decode_payloads
from parsers.text.source import CHUNK_BYTES, LineChunk, iter_line_chunks
from parsers.text.stacks import split_stacks
from parsers.text.workers import parallel_batches, pick_workers
from parsers.trace import Trace, TraceBatch, TraceMetadata, TraceStream
from parsers.typed_batch import build_typed_batch

__all__ = ["read_ftrace_text", "iter_ftrace_text"]

_NOT_EVENTS = {LineKind.HEADER, LineKind.BLANK, LineKind.PREAMBLE}


@dataclass
class _State:
    """What decoding one chunk needs and records (the file-wide state is :class:`Fold`'s)."""

    path: str
    strict: bool
    events: frozenset[str] | None
    meta: TraceMetadata
    prefixed: bool = False
    pending: list[Pending] = field(default_factory=list)
    undecoded: dict[str, int] = field(default_factory=dict)
    units: set[str] = field(default_factory=set)
    salvage: bool = False
    skips: list[tuple[str, int, str]] = field(default_factory=list)

    def skip(self, reason: str, lineno: int, text: str) -> None:
        self.skips.append((reason, lineno, text))


def read_ftrace_text(
    source: str | Path,
    *,
    events: Collection[str] | None = None,
    strict: bool = False,
    salvage: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    workers: int | None = 1,
) -> Trace:
    """Read a kernel ftrace or ``trace-cmd report`` text file (plain, .gz, .xz or .zst).

    Args:
        source: path of the text trace.
        events: keep only these event names (markers are always kept).
        strict: raise :class:`~parsers.errors.TraceParseError` naming ``file:line`` on the
            first line that matches no grammar, instead of counting and sampling it.
        salvage: skip (and count) lines with a NUL byte or not UTF-8, and keep the complete
            lines of a truncated compressed file (see :func:`iter_ftrace_text`).
        chunk_bytes: input bytes per streamed batch.
        workers: processes decoding chunks (see :func:`iter_ftrace_text`); ``None`` picks
            the machine's cores for files over :data:`~parsers.text.workers.PARALLEL_BYTES`.

    Examples:
        >>> t = read_ftrace_text("sample_traces/tracefs_record_tgid.txt")
        >>> t.metadata.format, t.table("kvm_mmu_get_page").column("created")[0].as_py()
        ('ftrace-text', True)
    """
    return Trace.from_stream(
        iter_ftrace_text(source, events=events, strict=strict, salvage=salvage,
                         chunk_bytes=chunk_bytes, workers=workers))


def iter_ftrace_text(
    source: str | Path,
    *,
    events: Collection[str] | None = None,
    strict: bool = False,
    salvage: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    workers: int | None = 1,
) -> TraceStream:
    """Stream a text trace as :class:`~parsers.trace.TraceBatch` es of about ``chunk_bytes``.

    A line holding a NUL byte is an error naming its line and byte; with ``salvage`` it is
    skipped and counted (``skipped_lines["nul_byte"]``, sampled with its line number), as is
    a line that is not UTF-8 (``not_utf8``; without ``salvage`` it is read with U+FFFD and
    counted as ``not_utf8_replaced``), and a truncated compressed file gives its complete
    lines plus a warning naming the offset where it breaks off.

    With ``workers`` > 1 an uncompressed file is cut at chunk boundaries into byte ranges
    decoded in that many processes (:mod:`parsers.text.workers`); the tables, ``seq``,
    warnings and skipped lines are the same as with one. ``None``: the machine's cores for
    files over :data:`~parsers.text.workers.PARALLEL_BYTES`, else one.
    """
    meta = TraceMetadata(source=str(source), format="ftrace-text")
    opts = ChunkOptions(str(source), strict, salvage,
                        frozenset(events) if events is not None else None)
    fold = Fold(str(source), meta, _marker_batch)
    n = pick_workers(source, workers)
    batches = (_batches(source, opts, fold, chunk_bytes) if n <= 1 else
               parallel_batches(source, opts, fold, decode_chunk, n, chunk_bytes))
    return TraceStream(batches, meta)


def _batches(
    source: str | Path, opts: ChunkOptions, fold: Fold, chunk_bytes: int
) -> Iterator[TraceBatch]:
    for chunk in iter_line_chunks(source, chunk_bytes=chunk_bytes, salvage=opts.salvage,
                                  notes=fold.meta.warnings):
        yield from fold.add(decode_chunk(chunk, opts, fold.prefixed), 0)
    yield from fold.finish()


def decode_chunk(chunk: LineChunk, opts: ChunkOptions, prefixed: bool) -> ChunkResult:
    """Decode one chunk on its own; ``prefixed``: a multi-input preamble came before it.

    A :class:`~parsers.errors.TraceParseError` is returned in the result (after what the
    chunk recorded before it), so that it is raised in file order by :class:`Fold`.
    """
    meta = TraceMetadata(source=opts.path, format="ftrace-text")
    state = _State(opts.path, opts.strict, opts.events, meta, prefixed=prefixed,
                   salvage=opts.salvage)
    res = ChunkResult(None, len(chunk.lines), prefixed)
    try:
        _decode_into(chunk, state, res)
    except TraceParseError as exc:
        res.failure = ParseFailure(exc.path, exc.reason, exc.lineno, exc.line, exc.offset)
    res.skips, res.variants, res.warnings = state.skips, meta.variants, meta.warnings
    res.cpus, res.report = meta.cpus, meta.format == "trace-cmd-report"
    res.prefixed_out, res.pending = state.prefixed, state.pending
    res.units, res.undecoded = state.units, state.undecoded
    return res


def _decode_into(chunk: LineChunk, state: _State, res: ChunkResult) -> None:
    lines, dropped = _damaged_lines(chunk, state)
    base_seq = chunk.first_line - 1
    ev = split_event_lines(lines)
    left = np.ones(len(lines), dtype=bool)
    left[ev.rows] = False
    left[dropped] = False
    others = np.flatnonzero(left)
    split = split_stacks(lines, ev, others, base_seq, state.skip)  # stack records
    ev, others = split.ev, split.others
    markers = _classify_others(lines, others, chunk.first_line, state)
    if state.prefixed:
        ev = _split_prefix(ev)
    ev = _filter_events(ev, state.events)
    if ev.rows.size:
        _note_variants(ev, state)
    ts = ev.ts
    seq = base_seq + ev.rows.astype(np.int64)
    marker_rows = _resolve_markers(markers, seq, ts, base_seq, state)
    res.order = _cpu_order(ev, seq)
    if len(ts):
        res.first_ts, res.last_ts = int(ts[0]), int(ts[-1])
    batch = _assemble(ev, seq, marker_rows, state)
    local = LocalStacks() if batch is None else local_stacks(batch.events, split.frames)
    split.pieces.keep(_with_pending(local, state.pending))  # stacks (parsers.stacks)
    res.stacks = split.pieces
    res.batch = None if batch is None else replace(batch, source_bytes=chunk.nbytes,
                                                   stacks=local.rows)


def _with_pending(local: LocalStacks, pending: list[Pending]) -> LocalStacks:
    """Markers after the chunk's last record are rows of its CPU too (emitted later, by the
    fold, with the next record's timestamp): the last ones for the next chunk's owners."""
    for p in pending:
        cpu = -1 if p.marker.cpu is None else p.marker.cpu
        local.last[cpu] = None if p.marker.event == LOST_EVENTS else p.seq
    return local


def _damaged_lines(chunk: LineChunk, state: _State) -> tuple[pa.StringArray, np.ndarray]:
    """The chunk's lines, those with a NUL byte (and, salvaging, those not UTF-8) blanked
    after being counted with their line numbers (also returned, to count nothing else);
    a NUL without ``salvage`` is an error."""
    lines = chunk.lines
    starts = chunk.line_starts or {}
    if chunk.nul and not state.salvage:
        i = chunk.nul[0]
        raise TraceParseError(state.path, f"a NUL byte (binary data) in the line starting at "
                              f"byte {chunk.first_byte + starts[i]}; --salvage skips such "
                              "lines", lineno=chunk.first_line + i)
    dropped = set(chunk.nul)
    for i in chunk.nul:
        state.skip("nul_byte", chunk.first_line + i,
                        f"line with a NUL byte at byte {chunk.first_byte + starts[i]}")
    for i in chunk.not_utf8:
        if i in dropped:
            continue
        if state.salvage:
            dropped.add(i)
            state.skip("not_utf8", chunk.first_line + i,
                            f"line not UTF-8, at byte {chunk.first_byte + starts[i]}")
        else:
            state.skip("not_utf8_replaced", chunk.first_line + i, "line decoded with U+FFFD")
    rows = np.array(sorted(dropped), dtype=np.int64)
    if not dropped:
        return lines, rows
    mask = np.zeros(len(lines), np.bool_)
    mask[rows] = True
    return pc.if_else(pa.array(mask), pa.scalar("\n"), lines), rows


def _classify_others(
    lines: pa.StringArray, rows: np.ndarray, first_line: int, state: _State
) -> list[tuple[int, Marker]]:
    found: list[tuple[int, Marker]] = []
    for row, text in zip(rows.tolist(), lines.take(pa.array(rows)).to_pylist(), strict=True):
        text = text.rstrip("\r\n")
        m = classify_line(text)
        lineno = first_line + row
        if m.event is not None:
            found.append((row, m))
            for key, value in m.facts:
                state.meta.add_variant(f"{key}-marker:{value}")
            continue
        _apply_facts(m, state)
        if m.kind not in _NOT_EVENTS and state.strict:
            raise TraceParseError(state.path, f"line matches no grammar ({m.kind})",
                                  lineno=lineno, line=text)
        state.skip(m.kind, lineno, text)
    return found


def _apply_facts(m: Marker, state: _State) -> None:
    facts = dict(m.facts)
    meta = state.meta
    if "cpus" in facts:
        meta.cpus = max(meta.cpus or 0, int(facts["cpus"]))
    if "tracer" in facts:
        meta.add_variant("kernel-trace-header")
    if "record-tgid" in facts:
        meta.add_variant("record-tgid")
    if m.kind == LineKind.PREAMBLE:
        meta.format = "trace-cmd-report"
    if "input" in facts:
        state.prefixed = True
        meta.add_variant("multi-input-prefix")
    if "version" in facts:
        meta.add_variant(f"version-line:{facts['version']}")
    if "empty_cpu" in facts:
        meta.add_variant("cpu-empty-line")
    if "entries" in facts and facts["entries"] != facts["written"]:
        meta.warnings.append(
            f"ring buffer overwrote events: entries-in-buffer {facts['entries']} < "
            f"entries-written {facts['written']}")


def _split_prefix(ev: EventLines) -> EventLines:
    """Multi-input ``trace-cmd report``: move the ``name: `` prefix out of ``comm`` (a line
    without one, before the preamble in the same chunk, keeps its ``comm``)."""
    parts = pc.split_pattern(ev.comm, ": ", max_splits=1)
    has = pc.fill_null(pc.greater(pc.list_value_length(parts), 1), False)
    inst = pc.utf8_trim_whitespace(pc.list_element(parts, 0))
    inst = pc.if_else(pc.and_(has, pc.not_equal(inst, "")), inst, pa.scalar(None, pa.string()))
    # rows without a prefix split ": " instead, so every list has an element 1 to take
    two = pc.split_pattern(pc.if_else(has, ev.comm, ": "), ": ", max_splits=1)
    rest = pc.utf8_ltrim_whitespace(pc.list_element(two, 1))
    return replace(ev, comm=pc.if_else(has, rest, ev.comm), instance=inst)


def _filter_events(ev: EventLines, keep: frozenset[str] | None) -> EventLines:
    if keep is None:
        return ev
    mask = pc.is_in(ev.event, pa.array(sorted(keep), pa.string()))
    return ev.take(np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False))))


def _note_variants(ev: EventLines, state: _State) -> None:
    meta = state.meta
    digits = set(_distinct(ev.frac_digits).tolist())
    for d in digits:
        unit = "ticks" if d == 0 else "ns"
        state.units.add(unit)
        meta.add_variant({0: "integer-timestamps", 6: "usec-timestamps",
                          9: "nsec-timestamps"}.get(d, f"{d}-digit-timestamps"))
    if pc.any(pc.is_valid(ev.tgid)).as_py():
        meta.add_variant("record-tgid")
    if ev.flags.null_count == len(ev.flags):
        meta.add_variant("no-flags-column")
    if pc.any(pc.starts_with(pc.fill_null(ev.payload, ""), "[FAILED TO PARSE]")).as_py():
        meta.add_variant("failed-to-parse")


def _resolve_markers(
    markers: list[tuple[int, Marker]], seq: np.ndarray, ts: np.ndarray, base_seq: int,
    state: _State,
) -> list[tuple[int, int, Marker]]:
    """Give each marker the timestamp of the next record in the chunk (the kernel prints a
    loss marker just before the first record after the loss); those after the chunk's last
    record wait in ``state.pending`` for the next chunk's first."""
    resolved: list[tuple[int, int, Marker]] = []
    for row, m in markers:
        s = base_seq + row
        nxt = int(np.searchsorted(seq, s))
        if nxt < len(seq):
            resolved.append((s, int(ts[nxt]), m))
        else:
            state.pending.append(Pending(s, m))
    return resolved


def _distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of small integers (>= -1): a count, not a sort."""
    if values.size and values.min() >= -1 and values.max() < (1 << 16):
        return np.flatnonzero(np.bincount(values.astype(np.int64) + 1)) - 1
    return np.unique(values)


def _cpu_order(ev: EventLines, seq: np.ndarray) -> list[CpuOrder]:
    """Per CPU: first and last timestamps, and the backward steps within the chunk."""
    if not len(seq):
        return []
    cpu = pc.fill_null(ev.cpu, -1).to_numpy(zero_copy_only=False)
    out: list[CpuOrder] = []
    for c in _distinct(cpu).tolist():
        sel = np.flatnonzero(cpu == c)
        t = ev.ts[sel]
        back = np.flatnonzero(np.diff(t) < 0)
        first_back = int(seq[sel[back[0] + 1]]) + 1 if back.size else -1
        out.append(CpuOrder(c, int(t[0]), int(t[-1]), int(back.size), first_back,
                            int(seq[sel[0]]) + 1))
    return out


def _typed_batches(
    ev: EventLines, seq: np.ndarray, state: _State
) -> tuple[dict[str, pa.RecordBatch], np.ndarray]:
    """Decode every known event's payloads; returns the batches and a mask of decoded rows."""
    typed: dict[str, pa.RecordBatch] = {}
    decoded = np.zeros(len(seq), dtype=bool)
    names = ev.event.dictionary_encode()
    codes = names.indices.to_numpy(zero_copy_only=False)
    for code, name in enumerate(names.dictionary.to_pylist()):
        if name not in EVENT_FIELDS or name == LOST_EVENTS:
            continue
        idx = np.flatnonzero(codes == code)
        sel = pa.array(idx)
        fields, missed, used = decode_payloads(name, ev.payload.take(sel))
        for r in used:
            state.meta.add_variant(f"{r}-rendering")
        ok = idx[~missed]
        if missed.any():
            state.undecoded[name] = state.undecoded.get(name, 0) + int(missed.sum())
        if not ok.size:
            continue
        decoded[ok] = True
        keep = pa.array(np.flatnonzero(~missed))
        okp = pa.array(ok)
        typed[name] = build_typed_batch(
            name, seq=pa.array(seq[ok]), ts=pa.array(ev.ts[ok]), cpu=ev.cpu.take(okp),
            pid=ev.pid.take(okp), fields={k: v.take(keep) for k, v in fields.items()})
    return typed, decoded


def _dict(arr: pa.Array) -> pa.Array:
    return pc.dictionary_encode(arr.cast(pa.string())).cast(pa.dictionary(pa.int32(), pa.string()))


def _assemble(
    ev: EventLines, seq: np.ndarray, markers: list[tuple[int, int, Marker]], state: _State
) -> TraceBatch | None:
    typed, decoded = _typed_batches(ev, seq, state)
    args = pc.if_else(pa.array(decoded), pa.scalar(None, pa.string()), ev.payload)
    instance = ev.instance if ev.instance is not None else pa.nulls(len(seq), pa.string())
    cols = {
        "ts": pa.array(ev.ts, pa.int64()), "seq": pa.array(seq, pa.int64()), "cpu": ev.cpu,
        "pid": ev.pid, "tgid": ev.tgid, "comm": ev.comm, "event": ev.event,
        "latency_flags": ev.flags, "instance": instance, "args": args,
    }
    if markers:
        cols = _with_markers(cols, markers)
        lost = [(s, t, m) for s, t, m in markers if m.event == LOST_EVENTS]
        if lost:
            typed[LOST_EVENTS] = build_typed_batch(
                LOST_EVENTS, seq=pa.array([s for s, _, _ in lost], pa.int64()),
                ts=pa.array([t for _, t, _ in lost], pa.int64()),
                cpu=pa.array([m.cpu for _, _, m in lost], pa.int32()),
                pid=pa.nulls(len(lost), pa.int32()),
                fields={"lost": pa.array([m.count for _, _, m in lost], pa.uint64())})
    if not len(cols["seq"]):
        return None
    arrays = [
        _dict(cols[f.name]) if pa.types.is_dictionary(f.type) else cols[f.name].cast(f.type)
        for f in EVENTS_SCHEMA
    ]
    return TraceBatch(pa.RecordBatch.from_arrays(arrays, schema=EVENTS_SCHEMA), typed)


def _with_markers(
    cols: dict[str, pa.Array], markers: list[tuple[int, int, Marker]]
) -> dict[str, pa.Array]:
    """Merge marker rows into the event columns, in file order."""
    k = len(markers)
    extra = {
        "ts": pa.array([t for _, t, _ in markers], pa.int64()),
        "seq": pa.array([s for s, _, _ in markers], pa.int64()),
        "cpu": pa.array([m.cpu for _, _, m in markers], pa.int32()),
        "event": pa.array([m.event for _, _, m in markers], pa.string()),
    }
    merged: dict[str, pa.Array] = {}
    for name, col in cols.items():
        col = col.cast(pa.string()) if pa.types.is_dictionary(col.type) else col
        add = extra.get(name, pa.nulls(k, col.type))
        merged[name] = pa.concat_arrays([col, add.cast(col.type)])
    order = pa.array(np.argsort(merged["seq"].to_numpy(), kind="stable"))
    return {name: col.take(order) for name, col in merged.items()}


def _marker_batch(markers: list[tuple[int, int, Marker]]) -> TraceBatch:
    """A batch of marker rows only (``(seq, ts, marker)``)."""
    state = _State("", False, None, TraceMetadata(source="", format="ftrace-text"))
    empty = EventLines(
        rows=np.array([], np.int64), comm=pa.array([], pa.string()), pid=pa.array([], pa.int32()),
        tgid=pa.array([], pa.int32()), cpu=pa.array([], pa.int32()), flags=pa.array([], pa.string()),
        sec=pa.array([], pa.string()), frac_digits=np.array([], np.int64),
        ts=np.array([], np.int64), event=pa.array([], pa.string()), payload=pa.array([], pa.string()))
    batch = _assemble(empty, np.array([], np.int64), markers, state)
    assert batch is not None
    return batch
