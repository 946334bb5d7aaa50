"""Read trace-cmd's binary ``trace.dat`` (versions 6 and 7) into the declared Arrow tables.

Rows come out merged in time order across CPUs and buffer instances the way
``trace-cmd report`` merges them (``tracecmd_peek_next_data`` in trace-cmd's
``lib/trace-cmd/trace-input.c``: the earliest head record wins, ties go to the lower CPU),
with ``seq`` numbering that merged order from 0. Streaming holds one window of pages per CPU.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from parsers.errors import TraceFormatError, TraceParseError
from parsers.schema import EVENTS_SCHEMA, LOST_EVENTS
from parsers.stacks import STACK_EVENTS, StackOwners
from parsers.trace import Trace, TraceBatch, TraceMetadata, TraceStream
from parsers.tracedat.fields import irq_flags
from parsers.tracedat.header import TraceDatInfo, is_tracedat, read_info
from parsers.tracedat.parallel import default_workers, parallel_streams
from parsers.tracedat.source import make_decoder, open_mapped
from parsers.tracedat.stacks import CALLERS, FrameNamer, frames_of
from parsers.tracedat.stream import Block, Decoder, iter_blocks
from parsers.typed_batch import build_typed_batch

__all__ = ["read_tracedat", "iter_tracedat", "is_tracedat"]

#: Clocks whose timestamps count nanoseconds (kernel/trace/trace.c ``trace_clocks[]``).
NS_CLOCKS = frozenset({"local", "global", "perf", "mono", "mono_raw", "boot", "tai"})
_DICT = pa.dictionary(pa.int32(), pa.string())


def read_tracedat(
    source: str | Path, *, events: Collection[str] | None = None, salvage: bool = False,
    workers: int | None = None,
) -> Trace:
    """Read a trace.dat file into a :class:`~parsers.trace.Trace`.

    Args:
        source: path of a trace.dat file (version 6 or 7; zlib or zstd compressed sections).
        events: keep only these event names (lost-event markers are always kept).
        salvage: on damage, keep the events decoded before it and record a warning in
            ``metadata.warnings`` instead of raising.
        workers: processes decoding the per-CPU data: ``None`` = the usable cores when the
            file holds at least :data:`~parsers.tracedat.parallel.MIN_PARALLEL_BYTES` of
            event data, else 1; 1 = this process only. The result is the same for any value.

    Raises:
        TraceFormatError: not a trace.dat file, or an unsupported version.
        TraceParseError, TraceTruncatedError: damaged input (with the byte offset).
        MissingExtraError: zstd compression without the ``zstd`` extra installed.

    Examples:
        >>> trace = read_tracedat("sample_traces/tc_kvm.head.dat")
        >>> trace.info()["format"], trace.table("kvm_mmu_get_page").num_rows > 0
        ('trace.dat', True)
    """
    return Trace.from_stream(iter_tracedat(source, events=events, salvage=salvage,
                                           workers=workers))


def iter_tracedat(
    source: str | Path, *, events: Collection[str] | None = None, salvage: bool = False,
    window_pages: int = 2048, workers: int | None = None,
) -> TraceStream:
    """Stream a trace.dat file as :class:`~parsers.trace.TraceBatch` es in merged order.

    Memory is bounded by ``window_pages`` pages per CPU plus one batch of rows, and with
    ``workers`` > 1 (see :func:`read_tracedat`) by twice as many decoded windows in flight.
    """
    path = str(source)
    data = open_mapped(path)
    info = read_info(data, path, salvage=salvage)
    if info.latency:
        raise TraceFormatError(path, "latency-tracer trace.dat data (not flyrecord) is not read")
    dec = make_decoder(path, info, events, salvage, window_pages)
    meta = _metadata(info, path)
    n = default_workers(dec) if workers is None else max(1, workers)
    return TraceStream(_batches(dec, data, meta, n), meta)


def _metadata(info: TraceDatInfo, path: str) -> TraceMetadata:
    variants = [f"v{info.version}", f"long{info.long_size * 8}",
                "big-endian" if info.big_endian else "little-endian"]
    if info.compression:
        variants.append(info.compression)
    if any(b.name for b in info.buffers):
        variants.append("instances")
    clock = info.trace_clock
    ticks = clock is not None and clock not in NS_CLOCKS and info.tsc2nsec is None
    if info.tsc2nsec is not None:
        variants.append("tsc2nsec")
    return TraceMetadata(source=path, format="trace.dat", variants=variants, clock=clock,
                         ts_unit="ticks" if ticks else "ns", cpus=info.cpus,
                         warnings=list(info.warnings))


def _batches(dec: Decoder, data: Any, meta: TraceMetadata, workers: int
             ) -> Iterator[TraceBatch]:
    pool = None
    if workers > 1:
        streams, pool = parallel_streams(dec, data, workers)
    else:
        streams = [iter_blocks(dec, data, i, buf, cpu)
                   for i, buf in enumerate(dec.info.buffers) for cpu in buf.cpus]
    instances = [b.name for b in dec.info.buffers]
    comms = _cmdlines(dec.info.cmdlines)
    seq0 = 0
    stacks = (StackOwners(), FrameNamer(data, dec.info))
    try:
        for parts in _merge(streams):
            batch = _emit(dec, parts, seq0, instances, comms, stacks)
            seq0 += sum(len(p) for p in parts)
            if batch is not None:
                yield batch
    finally:
        if pool is not None:
            pool.close()
        meta.warnings.extend(w for w in _dedup(dec.warnings) if w not in meta.warnings)


def _dedup(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _merge(streams: list[Iterator[Block]]) -> Iterator[list[Block]]:
    """Groups of stream prefixes, each group wholly before everything not yet yielded."""
    held: list[Block | None] = [None] * len(streams)
    done = [False] * len(streams)
    while True:
        for i, it in enumerate(streams):
            while not done[i] and (held[i] is None or not len(held[i])):  # type: ignore[arg-type]
                nxt = next(it, None)
                if nxt is None:
                    done[i] = True
                else:
                    held[i] = nxt
        live = [b for b in held if b is not None and len(b)]
        if not live:
            return
        open_ends = [int(b.key[-1]) for i, b in enumerate(held)
                     if b is not None and len(b) and not done[i]]
        limit = min(open_ends) if open_ends else None
        parts: list[Block] = []
        for i, b in enumerate(held):
            if b is None or not len(b):
                continue
            cut = len(b) if limit is None else int(np.searchsorted(b.key, limit, side="right"))
            head, tail = b.split(cut)
            held[i] = tail
            if len(head):
                parts.append(head)
        yield parts


def _emit(
    dec: Decoder, parts: list[Block], seq0: int, instances: list[str], comms: dict[int, str],
    stacks: tuple[StackOwners, FrameNamer],
) -> TraceBatch | None:
    key = np.concatenate([p.key for p in parts])
    inst = np.concatenate([np.full(len(p), p.inst, np.int64) for p in parts])
    cpu = np.concatenate([np.full(len(p), p.cpu, np.int64) for p in parts])
    pos = np.concatenate([np.arange(len(p), dtype=np.int64) for p in parts])
    order = np.lexsort((pos, cpu, inst, key))
    where = np.empty_like(order)
    where[order] = np.arange(len(order))
    cat = {name: np.concatenate([getattr(p, name) for p in parts])[order]
           for name in ("ts", "pid", "code", "flag", "lost", "keep")}
    cat["args"] = _args_index(parts)[order]
    cpu = cpu[order]
    inst = inst[order]
    seq = np.arange(seq0, seq0 + len(order), dtype=np.int64)
    keep = cat["keep"]
    events = _events_batch(dec, parts, cat, (seq, cpu, inst), instances, comms)
    frames = frames_of(_stack_rows(parts, where, seq), stacks[1])  # stack records
    typed = _typed_batches(dec, parts, where, cat, seq, cpu, keep)
    if events.num_rows == 0 and not typed:
        return None
    return TraceBatch(events, typed, stacks=stacks[0].batch(events, frames))


def _stack_rows(parts: list[Block], where: Any, seq: Any) -> dict[str, tuple[list[Any], list[Any]]]:
    """Take the stack events' caller words out of the parts' typed rows, by merged seq."""
    out: dict[str, tuple[list[Any], list[Any]]] = {}
    base = 0
    for p in parts:
        for name in STACK_EVENTS:
            found = p.typed.pop(name, None)
            if found is not None:
                rows, cols = found
                seqs, words = out.setdefault(name, ([], []))
                seqs.extend(seq[where[base + rows]].tolist())
                words.extend(cols[CALLERS].tolist())
        base += len(p)
    return out


def _events_batch(
    dec: Decoder, parts: list[Block], cat: dict[str, Any], place: tuple[Any, Any, Any],
    instances: list[str], comms: dict[int, str],
) -> pa.RecordBatch:
    seq, cpu, inst = place
    keep = cat["keep"]
    pid = cat["pid"][keep]
    marker = pid < 0
    flag = cat["flag"][keep]
    tg = dec.info.tgids
    tgid = (pa.array([tg.get(int(p)) for p in pid.tolist()], pa.int32()) if tg
            else pa.nulls(len(pid), pa.int32()))
    inst_k = inst[keep]
    cols = [
        pa.array(cat["ts"][keep], pa.int64()),
        pa.array(seq[keep], pa.int64()),
        pa.array(cpu[keep].astype(np.int32), pa.int32()),
        pa.array(pid.astype(np.int32), pa.int32(), mask=marker),
        tgid,
        _dict_by(pid, marker, lambda p: _comm(comms, p)),
        pa.DictionaryArray.from_arrays(pa.array(cat["code"][keep], pa.int32()),
                                       pa.array(dec.names, pa.string())),
        _dict_by(flag, marker, lambda f: irq_flags(f >> 8, f & 0xFF)),
        _dict_by(inst_k, np.array([not n for n in instances], bool)[inst_k],
                 lambda i: instances[i]),
        _args_column(parts, cat["args"][keep]),
    ]
    return pa.RecordBatch.from_arrays(cols, schema=EVENTS_SCHEMA)


def _args_index(parts: list[Block]) -> Any:
    """Every row's index into the parts' texts laid end to end (-1: no text)."""
    out, base = [], 0
    for p in parts:
        out.append(np.where(p.args < 0, -1, p.args.astype(np.int64) + base))
        base += len(p.texts)
    return np.concatenate(out)


def _args_column(parts: list[Block], index: Any) -> pa.Array:
    """The ``args`` strings, gathered in Arrow from the parts' distinct texts."""
    texts = pa.array([t for p in parts for t in p.texts], pa.string())
    return texts.take(pa.array(index, pa.int64(), mask=index < 0))


def _dict_by(values: Any, null: Any, name: Any) -> pa.Array:
    """A dictionary column naming each distinct value once (``null`` rows are null); values
    with one name (two threads both ``CPU 0/KVM``) share one dictionary word."""
    enc = pa.array(values).dictionary_encode()
    named = [name(int(v)) for v in enc.dictionary.to_pylist()]
    unique = list(dict.fromkeys(named))
    where = {w: i for i, w in enumerate(unique)}
    remap = np.array([where[w] for w in named], np.int32)
    codes = enc.indices.to_numpy(zero_copy_only=False)
    indices = pa.array(remap[codes] if len(remap) else codes.astype(np.int32), pa.int32(),
                       mask=np.asarray(null))
    return pa.DictionaryArray.from_arrays(indices, pa.array(unique, pa.string()))


def _comm(comms: dict[int, str], pid: int) -> str:
    if pid == 0:
        return "<idle>"
    return comms.get(pid, "<...>")


def _cmdlines(text: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for line in text.splitlines():
        pid, _, comm = line.partition(" ")
        if pid.isdigit():
            out[int(pid)] = comm
    return out


def _typed_batches(
    dec: Decoder, parts: list[Block], where: Any, cat: dict[str, Any], seq: Any, cpu: Any,
    keep: Any,
) -> dict[str, pa.RecordBatch]:
    rows: dict[str, list[Any]] = {}
    cols: dict[str, dict[str, list[Any]]] = {}
    base = 0
    for p in parts:
        for name, (r, fields) in p.typed.items():
            rows.setdefault(name, []).append(where[base + r])
            for k, v in fields.items():
                cols.setdefault(name, {}).setdefault(k, []).append(v)
        base += len(p)
    lost_rows = np.flatnonzero((cat["pid"] < 0) & keep)
    out: dict[str, pa.RecordBatch] = {}
    if lost_rows.size:
        counts = cat["lost"][lost_rows]
        out[LOST_EVENTS] = _typed(LOST_EVENTS, lost_rows, cat, seq, cpu, {
            "lost": pa.array(np.maximum(counts, 0).astype(np.uint64), pa.uint64(),
                              mask=counts < 0)})
    for name, chunks in rows.items():
        at = np.concatenate(chunks)
        order = np.argsort(at, kind="stable")
        # an event whose embedded format declares none of its typed fields (a damaged or
        # foreign format) still gets its typed rows, fields null
        fields = {k: pa.array(np.concatenate(v)[order]) for k, v in cols.get(name, {}).items()}
        out[name] = _typed(name, at[order], cat, seq, cpu, fields)
    return out


def _typed(name: str, at: Any, cat: dict[str, Any], seq: Any, cpu: Any,
           fields: dict[str, pa.Array]) -> pa.RecordBatch:
    pid = cat["pid"][at]
    try:
        return build_typed_batch(
            name, seq=pa.array(seq[at], pa.int64()), ts=pa.array(cat["ts"][at], pa.int64()),
            cpu=pa.array(cpu[at].astype(np.int32), pa.int32()),
            pid=pa.array(pid.astype(np.int32), pa.int32(), mask=pid < 0), fields=fields)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise TraceParseError("trace.dat", f"{name}: field does not fit its declared type: {exc}"
                              ) from None
