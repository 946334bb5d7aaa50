"""Stack records in text: ``<stack trace>`` / ``<user stack trace>`` and their ``=>`` lines.

Two renderings (see :mod:`parsers.stacks` for the table):

* the kernel's ``trace`` / ``trace_pipe`` (kernel/trace/trace_output.c ``trace_stack_print``,
  ``trace_user_stack_print``): the record's line has the usual context and timestamp, then
  ``<stack trace>`` or ``<user stack trace>`` where an event name would be; each frame is a
  line `` => SYMBOL`` (``seq_print_ip_sym``: ``%ps``, ``name+0x1c/0x40`` with
  ``sym-offset``, `` <ffffffff81000000>`` appended with ``sym-addr``, ``0x%08lx`` when no
  symbol, ``0`` for a zero ip) or, for user frames, `` =>  <00007f...>`` (``seq_print_user_ip``:
  the object and ``[+0x..]`` offset with ``sym-userobj``);
* ``trace-cmd report``: an ordinary ``kernel_stack: <stack trace >`` event followed by
  ``=> SYMBOL (ADDRESS)`` lines (trace-cmd's ``trace_stack_handler``), and ``user_stack:``
  whose print format puts the first ``\\t=> 0x...`` on the event line and the rest, zero
  padding included, on their own lines.

:func:`split_stacks` turns a chunk's record lines into event rows (``kernel_stack`` /
``user_stack``) and hands back the frames of its records, on its own (in a worker process
too). What only the file's order tells — the frame lines a chunk starts with belong to the
previous chunk's last record; a record's owner may be the last row of its CPU in an earlier
chunk — is left in :class:`StackPieces` for :class:`StackFold`, which the reader's
:class:`~parsers.text.fold.Fold` feeds in file order.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from parsers.stacks import (
    STACK_EVENTS,
    LocalStacks,
    StackFrames,
    StackOwners,
    StackRecord,
    stack_rows,
)
from parsers.text.grammar import EventLines, split_event_lines
from parsers.trace import TraceMetadata

__all__ = ["split_stacks", "StackSplit", "StackPieces", "OpenRun", "StackFold", "parse_frame"]

_HEADER_RE: Final = r": +<(?:user )?stack trace>\s*$"
_FRAME_RE: Final = r"^\s*=>"
_RENAME: Final = ((r": +<stack trace>\s*$", ": kernel_stack: "),
                  (r": +<user stack trace>\s*$", ": user_stack: "))
_ADDR_TAIL = re.compile(r"^(?P<sym>.*?) ?(?:<(?P<lt>[0-9a-fA-F]+)>|\((?P<par>[0-9a-fA-F]+)\))$")
_HEX = re.compile(r"^(?:0x(?P<x>[0-9a-fA-F]+)|(?P<bare>[0-9a-fA-F]{8,})|(?P<zero>0))$")


def parse_frame(text: str) -> tuple[str | None, int | None]:
    """``(frame, address)`` of the text after ``=>`` (see the module doc for the shapes).

    Examples:
        >>> parse_frame(" kvm_mmu_zap_all_fast")
        ('kvm_mmu_zap_all_fast', None)
        >>> parse_frame("  <00007ff4577449a0>")
        (None, 140687415986592)
        >>> parse_frame(" do_exit (ffffffff8127dc5c)")
        ('do_exit', 18446744071581457500)
        >>> parse_frame("\\t0x0")
        (None, 0)
    """
    s = text.strip()
    m = _ADDR_TAIL.match(s)
    if m is not None:
        addr = int(m["lt"] or m["par"], 16)
        sym = m["sym"].strip()
        return (sym or None), addr
    h = _HEX.match(s)
    if h is not None:
        return None, int(h["x"] or h["bare"] or "0", 16)
    return (s or None), None


@dataclass(frozen=True)
class OpenRun:
    """A chunk's last stack record when only its frames follow it: they may go on in the
    next chunk (``depth``: the next frame's; ``user``: a ``user_stack``)."""

    seq: int
    depth: int
    user: bool


@dataclass
class StackPieces:
    """What one chunk's decode leaves to :class:`StackFold` (line numbers and ``seq``
    relative to the chunk's range, like the rest of a ``ChunkResult``; the chunk's own rows
    travel in its batch's ``stacks``).

    ``lead``: the frame lines the chunk starts with, which continue the previous chunk's
    record (``(line, frame, address, text)``, their depths counted from the run's start);
    ``tail``: the chunk's open record and ``record`` its columns (``None``: the event filter
    dropped it); ``through``: the chunk holds nothing but frame lines, so the open run goes
    on; ``carried`` and ``last``: as in :class:`~parsers.stacks.LocalStacks`.
    """

    lead: list[tuple[int, str | None, int | None, str]] = field(default_factory=list)
    tail: OpenRun | None = None
    record: StackRecord | None = None
    through: bool = False
    carried: list[int] = field(default_factory=list)
    last: dict[int, int | None] = field(default_factory=dict)

    def keep(self, local: LocalStacks) -> None:
        """Keep what the fold needs of the chunk's :func:`~parsers.stacks.local_stacks`."""
        self.carried, self.last = local.carried, local.last
        if self.tail is not None:
            self.record = local.records.get(self.tail.seq)


@dataclass
class StackSplit:
    """A chunk's lines once the stack lines are taken out (see :func:`split_stacks`)."""

    ev: EventLines
    others: np.ndarray
    frames: StackFrames
    pieces: StackPieces


def split_stacks(lines: pa.StringArray, ev: EventLines, others: np.ndarray, base_seq: int,
                 skip: Callable[[str, int, str], None]) -> StackSplit:
    """Take the stack lines out of ``others`` (chunk rows no grammar matched).

    Returns the event lines with the stack records merged in (their payload null), the
    rows still unaccounted for, the frames of the chunk's records keyed by ``seq``, and the
    pieces only the file's order can settle. A frame line after a line that is neither a
    record nor a frame is counted with ``skip`` as ``stack_frame_orphan``.
    """
    out = StackSplit(ev, others, StackFrames(), StackPieces())
    if not others.size and not _has_stack_events(ev):
        return out
    text = lines.take(pa.array(others))
    is_head = _mask(text, _HEADER_RE)
    is_frame = _mask(text, _FRAME_RE) & ~is_head
    if is_head.any():
        out.ev = _merge_headers(ev, text, others, is_head)
    if not is_frame.any() and not _has_stack_events(out.ev):
        return out
    out.ev, first = _first_frames(out.ev)
    kind = _line_kinds(len(lines), out.ev, others[is_frame])
    for row, name in zip(out.ev.rows.tolist(), out.ev.event.to_pylist(), strict=True):
        if row in first:
            _add(out.frames, base_seq + row, 0, first[row], name == "user_stack")
    texts = text.filter(pa.array(is_frame)).to_pylist()
    for row, line in zip(others[is_frame].tolist(), texts, strict=True):
        _one(kind, row, line, base_seq, first, out, skip)
    out.pieces.tail, out.pieces.through = _tail(kind, base_seq, first)
    out.others = others[~(is_frame | is_head)]
    return out


def _has_stack_events(ev: EventLines) -> bool:
    if not len(ev.rows):
        return False
    return bool(pc.any(pc.is_in(ev.event, pa.array(STACK_EVENTS))).as_py())


def _line_kinds(n: int, ev: EventLines, frame_rows: np.ndarray) -> np.ndarray:
    """Per chunk line: 0 other, 1 frame, 2 kernel stack record, 3 user stack record."""
    kind = np.zeros(n, np.int8)
    kind[frame_rows] = 1
    names = ev.event.to_pylist() if len(ev.rows) else []
    for row, name in zip(ev.rows.tolist(), names, strict=True):
        kind[row] = 2 if name == "kernel_stack" else 3 if name == "user_stack" else 0
    return kind


def _one(kind: np.ndarray, row: int, line: str, base_seq: int, first: dict[int, str],
         out: StackSplit, skip: Callable[[str, int, str], None]) -> None:
    """Give a frame line its record: the stack record line just above its run of frame
    lines (for the run the chunk starts with: the previous chunk's, left to the fold)."""
    head = row - 1
    while head >= 0 and kind[head] == 1:
        head -= 1
    body = line.rstrip("\r\n").split("=>", 1)[1]
    if head < 0:
        frame, address = parse_frame(body)
        out.pieces.lead.append((base_seq + row + 1, frame, address, line.rstrip("\r\n")))
    elif kind[head] >= 2:
        depth = row - head - 1 + (1 if head in first else 0)
        _add(out.frames, base_seq + head, depth, body, kind[head] == 3)
    else:
        skip("stack_frame_orphan", base_seq + row + 1, line.rstrip("\r\n"))


def _tail(kind: np.ndarray, base_seq: int, first: dict[int, str]) -> tuple[OpenRun | None, bool]:
    """The chunk's last stack record when only frames follow it, and whether the chunk is
    frame lines only."""
    tail = len(kind) - 1
    while tail >= 0 and kind[tail] == 1:
        tail -= 1
    if tail < 0:
        return None, True
    if kind[tail] < 2:
        return None, False
    run = len(kind) - 1 - tail
    return OpenRun(base_seq + tail, run + (1 if tail in first else 0), bool(kind[tail] == 3)), False


@dataclass
class StackFold:
    """The file-wide part of text stacks, fed each chunk's :class:`StackPieces` in order:
    the open run from one chunk to the next and the owner candidate of each CPU."""

    owners: StackOwners = field(default_factory=StackOwners)
    #: The open record (absolute seqs; ``None`` when a record the event filter dropped) and
    #: its next frame's depth and kind.
    open: tuple[StackRecord | None, int, bool] | None = None

    def add(self, pieces: StackPieces, rows: pa.RecordBatch | None, base: int,
            meta: TraceMetadata) -> pa.RecordBatch | None:
        """The ``stacks`` rows of a chunk whose line 1 is line ``base + 1`` of the file
        (``rows``: those of its own records, as decoded)."""
        lead = self._lead(pieces, base, meta)
        last = dict(self.owners.last)  # the owners before this chunk, for its open record
        rows = self.owners.settle(rows, LocalStacks(None, {}, pieces.carried, pieces.last), base)
        if pieces.through:
            if self.open is not None:
                rec, depth, user = self.open
                self.open = (rec, depth + len(pieces.lead), user)
        elif pieces.tail is None:
            self.open = None
        else:
            t, rec = pieces.tail, pieces.record
            self.open = (None if rec is None else rec.moved(base, last), t.depth, t.user)
        parts = [b for b in (lead, rows) if b is not None]
        if len(parts) < 2:
            return parts[0] if parts else None
        return pa.Table.from_batches(parts).combine_chunks().to_batches()[0]

    def _lead(self, pieces: StackPieces, base: int, meta: TraceMetadata
              ) -> pa.RecordBatch | None:
        """Rows of the frame lines continuing the previous chunk's open record (orphans
        when there is none)."""
        if not pieces.lead:
            return None
        if self.open is None:
            for line, _, _, text in pieces.lead:
                meta.skip("stack_frame_orphan", line + base, text)
            return None
        rec, depth, user = self.open
        if rec is None:
            return None
        frames = StackFrames()
        for k, (_, frame, address, _) in enumerate(pieces.lead):
            if not (user and address == 0 and frame is None):  # user padding (see _add)
                frames.add(rec.seq, depth + k, frame, address)
        return stack_rows({rec.seq: rec}, frames)


def _add(frames: StackFrames, seq: int, depth: int, body: str, user: bool) -> None:
    frame, address = parse_frame(body)
    if user and address == 0 and frame is None:
        return  # a user stack ends at its first zero entry (trace-cmd prints the padding)
    frames.add(seq, depth, frame, address)


def _mask(text: pa.Array, pattern: str) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.match_substring_regex(text, pattern), False)
                      .to_numpy(zero_copy_only=False), bool)


def _merge_headers(ev: EventLines, text: pa.Array, others: np.ndarray,
                   is_head: np.ndarray) -> EventLines:
    """Parse the kernel's record lines with the event grammar, named as the ftrace events."""
    heads = text.filter(pa.array(is_head))
    for pattern, name in _RENAME:
        heads = pc.replace_substring_regex(heads, pattern, name)
    heads = pc.binary_join_element_wise(heads, "\n", "")  # each line keeps its newline
    parsed = split_event_lines(heads.cast(pa.string()))
    parsed = dataclasses.replace(parsed, rows=others[is_head][parsed.rows])
    if not len(ev.rows):
        return parsed
    return _merge(ev, parsed)


def _merge(a: EventLines, b: EventLines) -> EventLines:
    from parsers.text.grammar import _merge as merge_rows

    if a.instance is not None and b.instance is None:
        b = dataclasses.replace(b, instance=pa.nulls(len(b.rows), pa.string()))
    return merge_rows(a, b)


def _first_frames(ev: EventLines) -> tuple[EventLines, dict[int, str]]:
    """Null the payload of stack records; a ``trace-cmd report`` ``user_stack`` line holds
    its first frame there (returned by row)."""
    is_stack = pc.fill_null(pc.is_in(ev.event, pa.array(STACK_EVENTS)), False)
    if not pc.any(is_stack).as_py():
        return ev, {}
    first: dict[int, str] = {}
    mask = np.asarray(is_stack.to_numpy(zero_copy_only=False), bool)
    for i in np.flatnonzero(mask).tolist():
        payload = ev.payload[i].as_py()
        if payload is not None and "=>" in payload:
            first[int(ev.rows[i])] = payload.split("=>", 1)[1]
    payload = pc.if_else(is_stack, pa.scalar(None, pa.string()), ev.payload.cast(pa.string()))
    return dataclasses.replace(ev, payload=payload), first
