"""Decode a large text trace in several processes.

The file is cut into byte ranges at the places where the one-process reader's chunks start
(:func:`parsers.text.source.iter_line_chunks` reads up to multiples of ``chunk_bytes`` and
cuts at the last newline), never before a ``=>`` stack-frame line, which belongs to the
record before it (a chunk inside a range may still start with one: the fold gives such lines
their record, :class:`~parsers.text.stacks.StackFold`). Each range is decoded in a worker
process chunk by chunk, exactly as one process would decode it; the batches (their
``stacks`` rows too) come back as Arrow IPC streams, and the parent applies
the :class:`~parsers.text.fold.ChunkResult` s in file order with the same
:class:`~parsers.text.fold.Fold` as the one-process path, so the outputs are identical.
Threads would not help: most of a chunk's decode holds the GIL between Arrow calls.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa

from parsers.errors import TraceParseError
from parsers.text.fold import ChunkOptions, ChunkResult, Fold, ParseFailure
from parsers.text.markers import classify_line
from parsers.text.source import LineChunk, is_compressed, iter_line_chunks, open_raw, sniff
from parsers.trace import TraceBatch

__all__ = ["PARALLEL_BYTES", "pick_workers", "parallel_batches", "split_spans"]

#: Files larger than this are read with one process per core when ``workers`` is None
#: (below it, starting the processes costs more than they save; see benchmarks/parse_text.py).
PARALLEL_BYTES = 32 << 20

#: Where workers leave their batches for the parent (memory-backed; else the temp dir).
_SPOOL = "/dev/shm"

#: Bytes before a chunk boundary searched for the newline the chunk is cut at.
_WINDOW = 64 << 10

Decode = Callable[[LineChunk, ChunkOptions, bool], ChunkResult]


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def pick_workers(source: str | Path, workers: int | None) -> int:
    """How many processes read ``source``: ``workers``, or for None the machine's cores when
    the file is over :data:`PARALLEL_BYTES`; always one for compressed input.

    Raises:
        ValueError: ``workers`` is below 1.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if workers == 1:
        return 1
    try:
        size = os.stat(source).st_size
        if is_compressed(source):
            return 1
    except OSError:
        return 1  # the reader names the problem
    if workers is None:
        return cores() if size > PARALLEL_BYTES else 1
    return workers


def split_spans(source: str | Path, chunk_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges covering the file, each starting where a chunk of the one-process reader
    starts and none starting at a stack-frame line (``=>``)."""
    with open_raw(source) as f:
        size = os.fstat(f.fileno()).st_size
        cuts = [0]
        for end in range(chunk_bytes, size, chunk_bytes):
            width = min(_WINDOW, chunk_bytes)
            f.seek(end - width)
            nl = f.read(width).rfind(b"\n")
            if nl < 0:
                continue  # a long line: the chunk is cut further back, or not at all
            cut = end - width + nl + 1
            f.seek(cut)
            if cut > cuts[-1] and not f.read(256).lstrip(b" \t").startswith(b"=>"):
                cuts.append(cut)
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def _head_prefixed(source: str | Path) -> bool:
    """Whether the file starts as a multi-input ``trace-cmd report`` (``name: cpus=N``): the
    guess each range after the first is decoded with (checked when the ranges are joined)."""
    for raw in sniff(source).split(b"\n"):
        if b"cpus=" in raw:
            marker = classify_line(raw.decode("utf-8", "replace").rstrip("\r"))
            if "input" in dict(marker.facts):
                return True
    return False


@dataclass(frozen=True)
class _Task:
    path: str
    opts: ChunkOptions
    span: tuple[int, int]
    chunk_bytes: int
    prefixed: bool
    index: int
    spool: str


_DECODE: list[Decode] = []


def _init(decode: Decode) -> None:
    _DECODE[:] = [decode]
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """Let glibc keep the memory a chunk's decode frees for the next chunk: a fresh worker
    otherwise maps and unmaps its NumPy buffers chunk after chunk (on 100 MB, 126K page
    faults and a third of a CPU-second, against 34K). Its peak RSS is a chunk's anyway."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (glibc's largest)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _decode_span(task: _Task, decode: Decode) -> Iterator[ChunkResult]:
    """The chunks of ``task.span``, decoded in order (line numbers from 1 at its start)."""
    prefixed = task.prefixed
    try:
        for chunk in iter_line_chunks(task.path, chunk_bytes=task.chunk_bytes,
                                      salvage=task.opts.salvage, span=task.span):
            res = decode(chunk, task.opts, prefixed)
            prefixed = prefixed or res.prefixed_out
            yield res
            if res.failure is not None:
                return
    except TraceParseError as exc:
        yield ChunkResult(None, 0, prefixed, failure=ParseFailure(
            exc.path, exc.reason, exc.lineno, exc.line, exc.offset))


_Packed = tuple[ChunkResult, str | None, list[str]]
#: The stream name of a batch's ``stacks`` rows (no event is named so).
_STACKS = "\0stacks"


def _run(task: _Task) -> list[_Packed]:
    """Worker: decode a span; each chunk's tables go to one Arrow IPC file in the spool
    directory (memory-backed where /dev/shm exists), read back by the parent without a copy
    (a pipe would copy each batch four times)."""
    out: list[_Packed] = []
    for i, res in enumerate(_decode_span(task, _DECODE[0])):
        if res.batch is None:
            out.append((res, None, []))
            continue
        stacks = [] if res.batch.stacks is None else [res.batch.stacks]
        names = ["", *res.batch.typed, *([_STACKS] if stacks else [])]
        file = os.path.join(task.spool, f"{task.index}-{i}.arrow")
        with pa.OSFile(file, "wb") as sink:
            for rb in [res.batch.events, *res.batch.typed.values(), *stacks]:
                with pa.ipc.new_stream(sink, rb.schema) as writer:
                    writer.write_batch(rb)
        # an empty batch, not a slice: a pickled slice carries its whole buffers (6 MB a
        # chunk through the result pipe, beside the file)
        empty = pa.RecordBatch.from_pylist([], schema=res.batch.events.schema)
        out.append((replace(res, batch=replace(res.batch, events=empty, typed={}, stacks=None)),
                    file, names))
    return out


def _unpack(res: ChunkResult, file: str | None, names: list[str]) -> ChunkResult:
    if res.batch is None or file is None:
        return res
    source = pa.memory_map(file)
    os.unlink(file)  # the mapping keeps the data until its batches are freed
    tables = {}
    for name in names:  # one stream per table, one batch each (iterating reads its end)
        (tables[name],) = list(pa.ipc.open_stream(source))
    source.close()  # the descriptor; the batches keep the mapping (the Trace's chunks)
    events = tables.pop("")
    stacks = tables.pop(_STACKS, None)
    return replace(res, batch=TraceBatch(events, tables, res.batch.source_bytes, stacks))


def parallel_batches(
    source: str | Path, opts: ChunkOptions, fold: Fold, decode: Decode, workers: int,
    chunk_bytes: int,
) -> Iterator[TraceBatch]:
    """The file's batches, its spans decoded by ``workers`` processes, joined in order."""
    spans = split_spans(source, chunk_bytes)
    guess = _head_prefixed(source) if len(spans) > 1 else False
    spool = tempfile.mkdtemp(prefix="kvm-mmu-text-",
                             dir=_SPOOL if os.path.isdir(_SPOOL) else None)
    tasks = [_Task(str(source), opts, span, chunk_bytes, guess if i else False, i, spool)
             for i, span in enumerate(spans)]
    ctx = multiprocessing.get_context("fork")
    base = 0
    try:
        with ctx.Pool(min(workers, len(tasks)), initializer=_init, initargs=(decode,)) as pool:
            for task, packed in zip(tasks, pool.imap(_run, tasks), strict=True):
                results = [_unpack(*p) for p in packed]
                if results and results[0].prefixed_in != fold.prefixed:  # the guess was wrong
                    results = list(_decode_span(replace(task, prefixed=fold.prefixed), decode))
                for res in results:
                    yield from fold.add(res, base)
                base += sum(res.lines for res in results)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    yield from fold.finish()
