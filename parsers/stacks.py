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

__all__ = ["STACKS_SCHEMA", "STACK_EVENTS", "KIND_OF_EVENT", "StackFrames", "StackOwners",
           "function_name", "empty_stacks"]

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


@dataclass
class StackOwners:
    """Builds ``stacks`` batches, carrying per CPU the last owner candidate across batches.

    Readers call :meth:`batch` with each assembled ``events`` batch (rows in ``seq`` order)
    and the frames decoded for it.
    """

    last: dict[int, int | None] = field(default_factory=dict)
    #: The last stack record seen: seq → (ts, cpu, kind, owner seq).
    held: dict[int, tuple[int, int | None, str, int | None]] = field(default_factory=dict)

    def batch(self, events: pa.RecordBatch, frames: StackFrames) -> pa.RecordBatch | None:
        """The ``stacks`` rows of ``frames`` (``None`` when the batch has no stack record)."""
        names = events.column("event")
        is_stack = _name_mask(names, set(STACK_EVENTS))
        if not len(frames) and not is_stack.any():
            self._note_last(events)
            return None
        owner = self._owners(events, is_stack)
        rows = np.flatnonzero(is_stack)
        records = dict(self.held)
        seqs = events.column("seq").to_numpy()[rows].tolist()
        kinds = names.take(pa.array(rows)).cast(pa.string()).to_pylist()
        ts = events.column("ts").to_numpy()[rows].tolist()
        cpus = events.column("cpu").take(pa.array(rows)).to_pylist()
        for k, q in enumerate(seqs):
            own = int(owner[rows[k]])
            records[q] = (ts[k], cpus[k], KIND_OF_EVENT.get(str(kinds[k]), "kernel"),
                          None if own < 0 else own)
        if seqs:  # frames of the batch's last record may follow in the next batch
            self.held = {seqs[-1]: records[seqs[-1]]}
        if not len(frames):
            return None
        frames = frames.ordered()
        keep = [i for i, q in enumerate(frames.seq) if q in records]
        info = [records[frames.seq[i]] for i in keep]
        cols = [
            pa.array([frames.seq[i] for i in keep], pa.int64()),
            pa.array([r[3] for r in info], pa.int64()),
            pa.array([r[0] for r in info], pa.int64()),
            pa.array([r[1] for r in info], pa.int32()),
            pa.array([r[2] for r in info], pa.string()).dictionary_encode().cast(_DICT),
            pa.array([frames.depth[i] for i in keep], pa.int32()),
            pa.array([frames.frame[i] for i in keep], pa.string()),
            pa.array([frames.address[i] for i in keep], pa.uint64()),
        ]
        return pa.RecordBatch.from_arrays(cols, schema=STACKS_SCHEMA)

    def _note_last(self, events: pa.RecordBatch) -> None:
        """A batch without stack records: each CPU's last row is the next owner candidate."""
        if not events.num_rows:
            return
        cpu = pc.fill_null(events.column("cpu"), -1).to_numpy(zero_copy_only=False)
        seq = events.column("seq").to_numpy()
        lost = _name_mask(events.column("event"), {LOST_EVENTS})
        cpus, back = np.unique(cpu[::-1], return_index=True)
        last = len(cpu) - 1 - back
        for c, i in zip(cpus.tolist(), last.tolist(), strict=True):
            self.last[c] = None if lost[i] else int(seq[i])

    def _owners(self, events: pa.RecordBatch, is_stack: np.ndarray) -> np.ndarray:
        """Per row: the seq of the nearest earlier non-stack row on its CPU (-1: none or a
        lost-events marker); updates the carry."""
        n = events.num_rows
        seq = events.column("seq").to_numpy()
        cpu = pc.fill_null(events.column("cpu"), -1).to_numpy(zero_copy_only=False)
        lost = _name_mask(events.column("event"), {LOST_EVENTS})
        out = np.full(n, -1, np.int64)
        for c in np.unique(cpu).tolist():
            rows = np.flatnonzero(cpu == c)
            cand = np.where(is_stack[rows], -2, np.where(lost[rows], -1, seq[rows]))
            prev = self.last.get(c)
            carry = np.int64(-1 if prev is None else prev)
            idx = np.where(cand != -2, np.arange(rows.size), -1)
            last_idx = np.maximum.accumulate(idx)
            held = np.where(last_idx >= 0, cand[np.maximum(last_idx, 0)], carry)
            out[rows] = held
            self.last[c] = int(held[-1]) if rows.size else prev
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
