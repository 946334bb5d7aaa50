"""Decode a trace.dat file's windows in worker processes, with the output of one process.

Every window of every per-CPU stream (:func:`~parsers.tracedat.stream.plan_spans`: a run of
ring-buffer pages, or of compressed chunks found from their headers alone) is one task. A
worker decodes it with a journaling :class:`~parsers.tracedat.stream.Decoder` and sends the
rows back as Arrow IPC streams, with the journal: the warnings and event-name lookups of that
window, in order. The parent replays a window's journal when the merge asks that stream for its
next block — exactly where one process would have decoded the window — so event names get the
same codes, warnings the same order and batches the same boundaries. A window whose journal
holds a failure (damage, a corrupt chunk), or whose worker could not decode it at all, is
decoded again in the parent, which then raises or salvages exactly as one process does.
Threads would not help: the decode is NumPy calls strung together by Python under the GIL.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Collection, Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from parsers.errors import TraceParseError
from parsers.schema import LOST_EVENTS
from parsers.tracedat.header import read_info
from parsers.tracedat.source import make_decoder, open_mapped
from parsers.tracedat.stream import Block, Decoder, Named, Span, decode_span, keyed, plan_spans

__all__ = ["parallel_streams", "default_workers", "MIN_PARALLEL_BYTES"]

#: Below this much per-CPU data (compressed bytes count 8 times, about trace-cmd's zstd ratio
#: on kvm events), ``workers=None`` reads in one process. Measured on the 2-core machines
#: (benchmarks/parse_tracedat.py, 2.58 M events, 77 MiB v6 / 11 MiB v7-zstd): 2 workers were
#: slower than one process (0.9-1.9 vs 1.5-2.7 M events/s): the one process already keeps a
#: core busy, the parent's merge and Arrow assembly stay serial, and starting the workers
#: (forkserver, numpy and pyarrow imports) costs ~1 s. Hence a high threshold.
MIN_PARALLEL_BYTES = 1 << 30
_COMPRESSED_RATIO = 8

Journal = list[str | Named]
#: What a worker returns for one task: its journal, its names, and per decoded window the
#: journal length when it was yielded and its Arrow IPC payloads (``None``: decode it here).
Result = tuple[Journal, list[str], list[tuple[int, list[tuple[str, bytes]]]]]

_STATE: dict[str, Any] = {}


def default_workers(dec: Decoder) -> int:
    """Worker processes for ``workers=None``: the usable cores for big files, else 1."""
    size = sum(c.size * (_COMPRESSED_RATIO if b.compressed else 1)
               for b in dec.info.buffers for c in b.cpus)
    if size < MIN_PARALLEL_BYTES:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores)


@dataclass(frozen=True)
class _Task:
    buf: int
    cpu: int
    span: Span


class _Pool:
    """Worker processes fed tasks in the order the merge will want them, a few ahead."""

    def __init__(self, dec: Decoder, tasks: list[_Task], workers: int) -> None:
        self.tasks = tasks
        self.next = 0
        self.ahead = 2 * workers
        self.futures: dict[_Task, Future[Result | None]] = {}
        self.exe: ProcessPoolExecutor | None = None
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            ctx.set_forkserver_preload([__name__])
        try:
            self.exe = ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_init,
                initargs=(dec.path, dec.wanted, dec.salvage, dec.window_pages))
        except (OSError, ValueError):
            self.exe = None  # no processes here: every task is decoded in the parent

    def result(self, task: _Task) -> Result | None:
        """The worker's result for ``task`` (``None``: decode it in the parent)."""
        while self.exe is not None and self.next < len(self.tasks) and (
                task not in self.futures or len(self.futures) < self.ahead):
            nxt = self.tasks[self.next]
            self.next += 1
            try:
                self.futures[nxt] = self.exe.submit(_decode_task, nxt.buf, nxt.cpu, nxt.span)
            except RuntimeError:  # the pool broke: the parent decodes what is left
                self.close()
        fut = self.futures.pop(task, None)
        if fut is None:
            return None
        try:
            return fut.result()
        except Exception:  # noqa: BLE001 - a worker that died: this window is decoded here
            return None

    def close(self) -> None:
        if self.exe is not None:
            self.exe.shutdown(wait=True, cancel_futures=True)
            self.exe = None
        self.futures.clear()


def parallel_streams(
    dec: Decoder, data: Any, workers: int
) -> tuple[list[Iterator[Block]], _Pool | None]:
    """One block iterator per stream (as :func:`~parsers.tracedat.stream.iter_blocks`), their
    windows decoded by ``workers`` processes; close the returned pool when done."""
    plans = [(i, j, plan_spans(dec, data, buf, cpu)) for i, buf in enumerate(dec.info.buffers)
             for j, cpu in enumerate(buf.cpus)]
    tasks = [(k / len(spans), _Task(i, j, s)) for i, j, spans in plans if spans
             for k, s in enumerate(spans)]
    tasks.sort(key=lambda t: t[0])
    pool = _Pool(dec, [t for _, t in tasks], workers) if len(tasks) > 1 else None
    streams = [_stream(dec, data, pool, i, j, spans) for i, j, spans in plans]
    return streams, pool


def _stream(
    dec: Decoder, data: Any, pool: _Pool | None, i: int, j: int, spans: list[Span] | None
) -> Iterator[Block]:
    buf = dec.info.buffers[i]
    cpu = buf.cpus[j]
    carry = [np.iinfo(np.int64).min]
    for span in spans or [None]:  # type: ignore[list-item]
        res = None if pool is None or span is None else pool.result(_Task(i, j, span))
        blocks = (decode_span(dec, data, i, buf, cpu, span) if res is None
                  else _replay(dec, i, cpu.cpu, res))
        if (yield from keyed(blocks, carry)):
            return


def _replay(dec: Decoder, inst: int, cpu: int, res: Result) -> Generator[Block, None, bool]:
    journal, names, windows = res
    done = 0
    for upto, payload in windows:
        _apply(dec, journal[done:upto])
        done = upto
        yield _block(dec, inst, cpu, names, payload)
    _apply(dec, journal[done:])
    return False


def _apply(dec: Decoder, entries: Journal) -> None:
    for e in entries:
        if isinstance(e, Named):
            dec.code(e.name)
        else:
            dec.warn(e)


def _init(path: str, events: Collection[str] | None, salvage: bool, window_pages: int) -> None:
    """Worker start: map the file and build the decoder once."""
    data = open_mapped(path)
    info = read_info(data, path, salvage=salvage)
    _STATE.update(data=data, dec=make_decoder(path, info, events, salvage, window_pages))


def _decode_task(buf_index: int, cpu_index: int, span: Span) -> Result | None:
    """Decode one task in a worker (``None``: it met a failure; the parent decodes it)."""
    dec: Decoder = _STATE["dec"]
    dec.journal, dec.names, dec.warnings = [], [LOST_EVENTS], []
    buf = dec.info.buffers[buf_index]
    windows: list[tuple[int, list[tuple[str, bytes]]]] = []
    try:
        for block in decode_span(dec, _STATE["data"], buf_index, buf, buf.cpus[cpu_index], span):
            windows.append((len(dec.journal), _to_ipc(block)))
    except Exception:  # noqa: BLE001 - anything unexpected: the parent decodes it and reports
        return None
    if dec.warnings or any(isinstance(e, TraceParseError) for e in dec.journal):
        return None  # a failure, or a warning appended past the journal: decode it here
    return [e for e in dec.journal if not isinstance(e, TraceParseError)], dec.names, windows


def _ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue())


def _to_ipc(block: Block) -> list[tuple[str, bytes]]:
    rows = pa.record_batch({"ts": block.ts, "pid": block.pid, "code": block.code,
                            "flag": block.flag, "lost": block.lost, "keep": block.keep,
                            "args": block.args})
    out = [("", _ipc(rows)), ("", _ipc(pa.record_batch({"text": pa.array(block.texts,
                                                                           pa.string())})))]
    for name, (at, cols) in block.typed.items():
        out.append((name, _ipc(pa.record_batch({"\0row": at, **cols}))))
    return out


def _read(payload: bytes) -> pa.RecordBatch:
    return pa.ipc.open_stream(payload).read_next_batch()


def _block(dec: Decoder, inst: int, cpu: int, names: list[str],
           payload: list[tuple[str, bytes]]) -> Block:
    rows, texts = _read(payload[0][1]), _read(payload[1][1])
    col = {n: rows.column(n).to_numpy(zero_copy_only=False) for n in rows.schema.names}
    known = {n: k for k, n in enumerate(dec.names)}
    lut = np.array([known.get(n, -1) for n in names], np.int32)
    typed = {}
    for name, blob in payload[2:]:
        rb = _read(blob)
        arrays = [c.to_numpy(zero_copy_only=False) for c in rb.columns]
        typed[name] = (arrays[0], dict(zip(rb.schema.names[1:], arrays[1:], strict=True)))
    return Block(inst, cpu, col["ts"], np.zeros(len(col["ts"]), np.int64), col["pid"],
                 lut[col["code"]], col["flag"], col["lost"], col["keep"], col["args"],
                 texts.column(0).to_pylist(), typed)
