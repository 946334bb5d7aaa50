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
from parsers.stacks import StackOwners
from parsers.text.grammar import EventLines, split_event_lines
from parsers.text.markers import LineKind, Marker, classify_line
from parsers.text.payloads import decode_payloads
from parsers.text.source import CHUNK_BYTES, LineChunk, iter_line_chunks
from parsers.text.stacks import TextStacks
from parsers.trace import Trace, TraceBatch, TraceMetadata, TraceStream
from parsers.typed_batch import build_typed_batch

__all__ = ["read_ftrace_text", "iter_ftrace_text"]

_NOT_EVENTS = {LineKind.HEADER, LineKind.BLANK, LineKind.PREAMBLE}


@dataclass
class _Pending:
    """A lost-events or buffer-started marker waiting for the timestamp of the next record."""

    seq: int
    marker: Marker


@dataclass
class _State:
    path: str
    strict: bool
    events: frozenset[str] | None
    meta: TraceMetadata
    prefixed: bool = False
    last_ts: int | None = None
    pending: list[_Pending] = field(default_factory=list)
    cpu_last: dict[int, int] = field(default_factory=dict)
    out_of_order: int = 0
    undecoded: dict[str, int] = field(default_factory=dict)
    units: set[str] = field(default_factory=set)
    salvage: bool = False
    # stack records (parsers.text.stacks): frame runs across chunks, owners per CPU
    stacks: TextStacks = field(default_factory=TextStacks)
    owners: StackOwners = field(default_factory=StackOwners)


def read_ftrace_text(
    source: str | Path,
    *,
    events: Collection[str] | None = None,
    strict: bool = False,
    salvage: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
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

    Examples:
        >>> t = read_ftrace_text("sample_traces/tracefs_record_tgid.txt")
        >>> t.metadata.format, t.table("kvm_mmu_get_page").column("created")[0].as_py()
        ('ftrace-text', True)
    """
    return Trace.from_stream(
        iter_ftrace_text(source, events=events, strict=strict, salvage=salvage,
                         chunk_bytes=chunk_bytes))


def iter_ftrace_text(
    source: str | Path,
    *,
    events: Collection[str] | None = None,
    strict: bool = False,
    salvage: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> TraceStream:
    """Stream a text trace as :class:`~parsers.trace.TraceBatch` es of about ``chunk_bytes``.

    A line holding a NUL byte is an error naming its line and byte; with ``salvage`` it is
    skipped and counted (``skipped_lines["nul_byte"]``, sampled with its line number), as is
    a line that is not UTF-8 (``not_utf8``; without ``salvage`` it is read with U+FFFD and
    counted as ``not_utf8_replaced``), and a truncated compressed file gives its complete
    lines plus a warning naming the offset where it breaks off.
    """
    meta = TraceMetadata(source=str(source), format="ftrace-text")
    state = _State(str(source), strict, frozenset(events) if events is not None else None, meta,
                   salvage=salvage)
    return TraceStream(_batches(source, state, chunk_bytes), meta)


def _batches(source: str | Path, state: _State, chunk_bytes: int) -> Iterator[TraceBatch]:
    for chunk in iter_line_chunks(source, chunk_bytes=chunk_bytes, salvage=state.salvage,
                                  notes=state.meta.warnings):
        batch = _chunk_batch(chunk, state)
        if batch is not None:
            yield batch
    if state.pending:
        yield _marker_only_batch(state)
    _finish(state)


def _chunk_batch(chunk: LineChunk, state: _State) -> TraceBatch | None:
    lines, dropped = _damaged_lines(chunk, state)
    base_seq = chunk.first_line - 1
    ev = split_event_lines(lines)
    others = np.setdiff1d(np.arange(len(lines)), np.union1d(ev.rows, dropped),
                          assume_unique=True)
    ev, others, frames = state.stacks.split(lines, ev, others, base_seq, state.meta)  # stacks
    markers = _classify_others(lines, others, chunk.first_line, state)
    if state.prefixed:
        ev = _split_prefix(ev)
    ev = _filter_events(ev, state.events)
    if ev.rows.size:
        _note_variants(ev, state)
    ts = ev.ts
    seq = base_seq + ev.rows.astype(np.int64)
    marker_rows = _resolve_markers(markers, seq, ts, base_seq, state)
    _check_order(ev, seq, state)
    if len(ts):
        state.last_ts = int(ts[-1])
    batch = _assemble(ev, seq, marker_rows, state)
    if batch is None and not len(frames):
        return None
    if batch is None:  # only frames of an earlier chunk's record
        batch = TraceBatch(pa.RecordBatch.from_pylist([], schema=EVENTS_SCHEMA))
    stacks = state.owners.batch(batch.events, frames)  # stack frames (parsers.stacks)
    return replace(batch, source_bytes=chunk.nbytes, stacks=stacks)


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
        state.meta.skip("nul_byte", chunk.first_line + i,
                        f"line with a NUL byte at byte {chunk.first_byte + starts[i]}")
    for i in chunk.not_utf8:
        if i in dropped:
            continue
        if state.salvage:
            dropped.add(i)
            state.meta.skip("not_utf8", chunk.first_line + i,
                            f"line not UTF-8, at byte {chunk.first_byte + starts[i]}")
        else:
            state.meta.skip("not_utf8_replaced", chunk.first_line + i, "line decoded with U+FFFD")
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
        state.meta.skip(m.kind, lineno, text)
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
    """Multi-input ``trace-cmd report``: move the ``name: `` prefix out of ``comm``."""
    parts = pc.split_pattern(ev.comm, ": ", max_splits=1)
    has = pc.greater(pc.list_value_length(parts), 1)
    inst = pc.utf8_trim_whitespace(pc.list_element(parts, 0))
    inst = pc.if_else(pc.and_(has, pc.not_equal(inst, "")), inst, pa.scalar(None, pa.string()))
    rest = pc.utf8_ltrim_whitespace(pc.list_element(pc.list_slice(parts, 1, 2, 1), 0))
    return replace(ev, comm=pc.if_else(has, rest, ev.comm), instance=inst)


def _filter_events(ev: EventLines, keep: frozenset[str] | None) -> EventLines:
    if keep is None:
        return ev
    mask = pc.is_in(ev.event, pa.array(sorted(keep), pa.string()))
    return ev.take(np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False))))


def _note_variants(ev: EventLines, state: _State) -> None:
    meta = state.meta
    digits = set(np.unique(ev.frac_digits).tolist())
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
    """Give each marker the timestamp of the next record in the file (the kernel prints a
    loss marker just before the first record after the loss)."""
    resolved: list[tuple[int, int, Marker]] = []
    first_ts = int(ts[0]) if len(ts) else None
    if first_ts is not None:
        resolved += [(p.seq, first_ts, p.marker) for p in state.pending]
        state.pending.clear()
    for row, m in markers:
        s = base_seq + row
        nxt = int(np.searchsorted(seq, s))
        if nxt < len(seq):
            resolved.append((s, int(ts[nxt]), m))
        else:
            state.pending.append(_Pending(s, m))
    return resolved


def _check_order(ev: EventLines, seq: np.ndarray, state: _State) -> None:
    """Per-CPU timestamps must not go backwards; count and report where they do."""
    if not len(seq):
        return
    cpu = pc.fill_null(ev.cpu, -1).to_numpy(zero_copy_only=False)
    for c in np.unique(cpu).tolist():
        sel = np.flatnonzero(cpu == c)
        t = ev.ts[sel]
        prev = state.cpu_last.get(c)
        series = t if prev is None else np.concatenate([[prev], t])
        back = np.flatnonzero(np.diff(series) < 0)
        if back.size:
            state.out_of_order += int(back.size)
            line = int(seq[sel[back[0] + (0 if prev is None else -1) + 1]]) + 1
            if state.out_of_order == back.size:
                state.meta.warnings.append(
                    f"{state.path}:{line}: timestamp goes backwards on CPU {c}")
        state.cpu_last[c] = int(t[-1])


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


def _marker_only_batch(state: _State) -> TraceBatch:
    ts = state.last_ts if state.last_ts is not None else 0
    markers = [(p.seq, ts, p.marker) for p in state.pending]
    state.pending.clear()
    empty = EventLines(
        rows=np.array([], np.int64), comm=pa.array([], pa.string()), pid=pa.array([], pa.int32()),
        tgid=pa.array([], pa.int32()), cpu=pa.array([], pa.int32()), flags=pa.array([], pa.string()),
        sec=pa.array([], pa.string()), frac_digits=np.array([], np.int64),
        ts=np.array([], np.int64), event=pa.array([], pa.string()), payload=pa.array([], pa.string()))
    batch = _assemble(empty, np.array([], np.int64), markers, state)
    assert batch is not None
    return batch


def _finish(state: _State) -> None:
    meta = state.meta
    if len(state.units) > 1:
        meta.warnings.append("timestamps mix integer ticks and seconds.fraction")
    meta.ts_unit = "ticks" if state.units == {"ticks"} else "ns"
    if meta.ts_unit == "ticks":
        meta.clock = "counter-or-tsc"
    if state.out_of_order:
        meta.warnings.append(f"{state.out_of_order} timestamps go backwards within a CPU")
    for name, count in sorted(state.undecoded.items()):
        meta.warnings.append(
            f"{count} {name} payloads match no known rendering; kept as args text")
    if "kernel-trace-header" not in meta.variants and meta.format == "ftrace-text":
        meta.add_variant("trace_pipe (no header)")
