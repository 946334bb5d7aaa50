"""The ``stacks`` table: the frames of kernel and user stack records, one row per frame.

With ``options/stacktrace`` (or ``trace-cmd record -T``) the kernel writes a ``kernel_stack``
record right after each event, on the same CPU; ``options/userstacktrace`` adds a
``user_stack`` record (kernel/trace/trace.c ``__ftrace_trace_stack``,
``ftrace_trace_userstack``). Each record is a row of ``events`` (event ``kernel_stack`` or
``user_stack``, ``args`` null) and its frames are rows of ``stacks``:

* ``seq``: the stack record's ``seq`` in ``events``;
* ``event_seq``: the event it belongs to: the nearest earlier row of ``events`` on the same
  CPU that is not itself a stack record (a ``user_stack`` follows the ``kernel_stack`` of the
  same event); null when that row is a lost-events marker or there is none;
* ``ts``, ``cpu``: those of the stack record; ``kind``: ``kernel`` or ``user``;
* ``depth``: 0 for the innermost frame (the first printed), counting outwards;
* ``frame``: the symbol as printed (``%ps``: ``kvm_mmu_zap_all_fast``; with
  ``options/sym-offset`` ``name+0x1c/0x40``; a user frame with ``options/sym-userobj``:
  ``/usr/lib/libc.so.6[+0x1234]``), null when only an address is known;
* ``address``: the instruction pointer when the rendering gives it (trace.dat always; text
  for user frames, and kernel frames with ``options/sym-addr``), else null.

Frames in text (kernel/trace/trace_output.c ``trace_stack_print``, ``trace_user_stack_print``)
and in trace.dat (``caller[]`` words, symbols from the file's kallsyms) give the same rows.

Examples
--------
>>> function_name("kvm_set_memslot+0x1c/0x40 [kvm]")
'kvm_set_memslot'
>>> STACKS_SCHEMA.names
['seq', 'event_seq', 'ts', 'cpu', 'kind', 'depth', 'frame', 'address']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from parsers.schema import LOST_EVENTS

__all__ = ["STACKS_SCHEMA", "STACK_EVENTS", "KIND_OF_EVENT", "StackFrames", "StackRecord",
           "LocalStacks", "local_stacks", "stack_rows", "StackOwners", "function_name",
           "empty_stacks"]

#: The ftrace events of stack records (``events/ftrace/kernel_stack``, ``user_stack``).
STACK_EVENTS: Final = ("kernel_stack", "user_stack")
#: Stack event name → ``kind`` in ``stacks``.
KIND_OF_EVENT: Final = {"kernel_stack": "kernel", "user_stack": "user"}

_DICT = pa.dictionary(pa.int32(), pa.string())

STACKS_SCHEMA: Final = pa.schema([
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("event_seq", pa.int64()),
    pa.field("ts", pa.int64(), nullable=False),
    pa.field("cpu", pa.int32()),
    pa.field("kind", _DICT, nullable=False),
    pa.field("depth", pa.int32(), nullable=False),
    pa.field("frame", pa.string()),
    pa.field("address", pa.uint64()),
])


def empty_stacks() -> pa.Table:
    """A ``stacks`` table with no rows."""
    return STACKS_SCHEMA.empty_table()


def function_name(frame: str) -> str:
    """The function of a printed kernel frame: ``name+off/size [module]`` → ``name``."""
    return frame.split(" ", 1)[0].split("+", 1)[0]


@dataclass
class StackFrames:
    """Frames a reader decoded for one batch: parallel lists, one item per frame."""

    seq: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    frame: list[str | None] = field(default_factory=list)
    address: list[int | None] = field(default_factory=list)

    def add(self, seq: int, depth: int, frame: str | None, address: int | None) -> None:
        """One frame of the stack record ``seq``."""
        self.seq.append(seq)
        self.depth.append(depth)
        self.frame.append(frame)
        self.address.append(address)

    def __len__(self) -> int:
        return len(self.seq)

    def ordered(self) -> StackFrames:
        """The frames sorted by (``seq``, ``depth``)."""
        order = np.lexsort((np.asarray(self.depth, np.int64), np.asarray(self.seq, np.int64)))
        if not len(order) or (np.diff(order) > 0).all():
            return self
        pick = order.tolist()
        return StackFrames([self.seq[i] for i in pick], [self.depth[i] for i in pick],
                           [self.frame[i] for i in pick], [self.address[i] for i in pick])


@dataclass(frozen=True)
class StackRecord:
    """A stack record's own columns and its owner (``event_seq``); ``carried``: the owner is
    the last row of its CPU before the batch it was decoded in (resolved by
    :meth:`StackOwners.settle`, in order)."""

    seq: int
    ts: int
    cpu: int | None
    kind: str
    owner: int | None
    carried: bool = False

    def moved(self, base: int, last: dict[int, int | None]) -> StackRecord:
        """The record with ``base`` added to its seqs and a carried owner resolved."""
        if self.carried:
            return StackRecord(self.seq + base, self.ts, self.cpu, self.kind,
                               last.get(-1 if self.cpu is None else self.cpu))
        return StackRecord(self.seq + base, self.ts, self.cpu, self.kind,
                           None if self.owner is None else self.owner + base)


@dataclass
class LocalStacks:
    """The stack rows of one batch of ``events`` decoded on its own (in any process).

    ``rows``: the ``stacks`` rows of the frames whose record is in the batch (``event_seq``
    null where ``carried`` holds the record's seq: the owner is before the batch);
    ``records``: the batch's stack records by seq; ``last``: per CPU (null: -1), the seq
    of the batch's last row that is not a stack record (``None``: a lost-events marker).
    """

    rows: pa.RecordBatch | None = None
    records: dict[int, StackRecord] = field(default_factory=dict)
    carried: list[int] = field(default_factory=list)
    last: dict[int, int | None] = field(default_factory=dict)


def local_stacks(events: pa.RecordBatch, frames: StackFrames) -> LocalStacks:
    """What ``events`` (rows in ``seq`` order) and the frames decoded with them tell alone."""
    names = events.column("event")
    is_stack = _name_mask(names, set(STACK_EVENTS))
    out = LocalStacks(last=_last_rows(events, is_stack))
    if not is_stack.any():
        return out
    owner = _owners(events, is_stack)
    rows = np.flatnonzero(is_stack)
    seqs = events.column("seq").to_numpy()[rows].tolist()
    kinds = names.take(pa.array(rows)).cast(pa.string()).to_pylist()
    ts = events.column("ts").to_numpy()[rows].tolist()
    cpus = events.column("cpu").take(pa.array(rows)).to_pylist()
    for k, q in enumerate(seqs):
        own = int(owner[rows[k]])
        out.records[q] = StackRecord(q, ts[k], cpus[k], KIND_OF_EVENT.get(str(kinds[k]), "kernel"),
                                     own if own >= 0 else None, own == -2)
    out.carried = [q for q, r in out.records.items() if r.carried]
    out.rows = stack_rows(out.records, frames)
    return out


def stack_rows(records: dict[int, StackRecord], frames: StackFrames) -> pa.RecordBatch | None:
    """The ``stacks`` rows of ``frames`` whose record is in ``records`` (``None``: none);
    a carried owner is left null."""
    if not len(frames):
        return None
    frames = frames.ordered()
    keep = [i for i, q in enumerate(frames.seq) if q in records]
    if not keep:
        return None
    info = [records[frames.seq[i]] for i in keep]
    cols = [
        pa.array([frames.seq[i] for i in keep], pa.int64()),
        pa.array([None if r.carried else r.owner for r in info], pa.int64()),
        pa.array([r.ts for r in info], pa.int64()),
        pa.array([r.cpu for r in info], pa.int32()),
        pa.array([r.kind for r in info], pa.string()).dictionary_encode().cast(_DICT),
        pa.array([frames.depth[i] for i in keep], pa.int32()),
        pa.array([frames.frame[i] for i in keep], pa.string()),
        pa.array([frames.address[i] for i in keep], pa.uint64()),
    ]
    return pa.RecordBatch.from_arrays(cols, schema=STACKS_SCHEMA)


@dataclass
class StackOwners:
    """The per-CPU owner candidate carried from batch to batch, applied in ``seq`` order."""

    last: dict[int, int | None] = field(default_factory=dict)

    def settle(self, rows: pa.RecordBatch | None, local: LocalStacks, base: int = 0
               ) -> pa.RecordBatch | None:
        """``rows`` (``local.rows`` as decoded) with ``base`` added to ``seq`` and
        ``event_seq`` and the carried owners filled in; then ``local.last`` is the carry."""
        if rows is not None:
            rows = _settled(rows, local.carried, self.last, base)
        for cpu, seq in local.last.items():
            self.last[cpu] = None if seq is None else seq + base
        return rows

    def batch(self, events: pa.RecordBatch, frames: StackFrames) -> pa.RecordBatch | None:
        """The ``stacks`` rows of a batch whose frames all came with it (trace.dat)."""
        local = local_stacks(events, frames)
        return self.settle(local.rows, local)


def _settled(rows: pa.RecordBatch, carried: list[int], last: dict[int, int | None],
             base: int) -> pa.RecordBatch:
    seq = rows.column("seq").to_numpy() + base
    owner = pc.add(rows.column("event_seq"), pa.scalar(base, pa.int64()))
    if carried:
        cpu = pc.fill_null(rows.column("cpu"), -1).to_numpy(zero_copy_only=False)
        mask = np.isin(rows.column("seq").to_numpy(), np.asarray(carried, np.int64))
        found = [last.get(int(c)) for c in cpu[mask].tolist()]
        values = owner.to_pylist()
        for i, v in zip(np.flatnonzero(mask).tolist(), found, strict=True):
            values[i] = v
        owner = pa.array(values, pa.int64())
    return (rows.set_column(0, STACKS_SCHEMA.field(0), pa.array(seq, pa.int64()))
            .set_column(1, STACKS_SCHEMA.field(1), owner))


def _last_rows(events: pa.RecordBatch, is_stack: np.ndarray) -> dict[int, int | None]:
    """Per CPU, the seq of the last row that is not a stack record (``None``: lost-events)."""
    keep = np.flatnonzero(~is_stack)
    if not keep.size:
        return {}
    cpu = pc.fill_null(events.column("cpu"), -1).to_numpy(zero_copy_only=False)[keep]
    seq = events.column("seq").to_numpy()[keep]
    lost = _name_mask(events.column("event"), {LOST_EVENTS})[keep]
    cpus, back = np.unique(cpu[::-1], return_index=True)
    at = len(cpu) - 1 - back
    return {int(c): None if lost[i] else int(seq[i])
            for c, i in zip(cpus.tolist(), at.tolist(), strict=True)}


def _owners(events: pa.RecordBatch, is_stack: np.ndarray) -> np.ndarray:
    """Per row: the seq of the nearest earlier non-stack row on its CPU (-1: a lost-events
    marker; -2: none in the batch, the owner is carried)."""
    n = events.num_rows
    seq = events.column("seq").to_numpy()
    cpu = pc.fill_null(events.column("cpu"), -1).to_numpy(zero_copy_only=False)
    lost = _name_mask(events.column("event"), {LOST_EVENTS})
    out = np.full(n, -2, np.int64)
    for c in np.unique(cpu[is_stack]).tolist():
        rows = np.flatnonzero(cpu == c)
        cand = np.where(is_stack[rows], -2, np.where(lost[rows], -1, seq[rows]))
        idx = np.where(cand != -2, np.arange(rows.size), -1)
        last_idx = np.maximum.accumulate(idx)
        out[rows] = np.where(last_idx >= 0, cand[np.maximum(last_idx, 0)], -2)
    return out


def _name_mask(names: pa.Array, wanted: set[str]) -> np.ndarray:
    """Rows whose name is in ``wanted``, matched on dictionary codes when encoded."""
    look = pa.array(sorted(wanted), pa.string())
    if pa.types.is_dictionary(names.type):
        hit = np.asarray(pc.fill_null(pc.is_in(names.dictionary, look), False)
                         .to_numpy(zero_copy_only=False), bool)
        if not hit.any():
            return np.zeros(len(names), bool)
        codes = np.asarray(pc.fill_null(names.indices, 0).to_numpy(zero_copy_only=False))
        valid = np.asarray(names.is_valid().to_numpy(zero_copy_only=False), bool)
        out: np.ndarray = hit[codes] & valid
        return out
    return np.asarray(pc.fill_null(pc.is_in(names, look), False)
                      .to_numpy(zero_copy_only=False), bool)
