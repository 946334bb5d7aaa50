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

:class:`TextStacks` turns the record lines into event rows (``kernel_stack`` /
``user_stack``) and hands back the frames; the reader only calls :meth:`TextStacks.split`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from parsers.stacks import STACK_EVENTS, StackFrames
from parsers.text.grammar import EventLines, split_event_lines
from parsers.trace import TraceMetadata

__all__ = ["TextStacks", "parse_frame"]

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


@dataclass
class TextStacks:
    """Per-file state: the stack record whose frames may continue into the next chunk."""

    carry_seq: int | None = None
    carry_depth: int = 0
    carry_user: bool = False
    seen: bool = False

    def split(self, lines: pa.StringArray, ev: EventLines, others: np.ndarray, base_seq: int,
              meta: TraceMetadata) -> tuple[EventLines, np.ndarray, StackFrames]:
        """Take the stack lines out of ``others`` (chunk rows no grammar matched).

        Returns the event lines with the stack records merged in (their payload null), the
        rows still unaccounted for, and the frames keyed by their record's ``seq``.
        """
        frames = StackFrames()
        if not others.size and not self._has_stack_events(ev):
            self.carry_seq = None
            return ev, others, frames
        text = lines.take(pa.array(others))
        is_head = _mask(text, _HEADER_RE)
        is_frame = _mask(text, _FRAME_RE) & ~is_head
        if is_head.any():
            ev = _merge_headers(ev, text, others, is_head)
        if not is_frame.any() and not self._has_stack_events(ev):
            self.carry_seq = None
            return ev, others, frames
        self.seen = True
        frame_rows = others[is_frame]
        ev, first = _first_frames(ev)
        self._attach(len(lines), ev, frame_rows, text.filter(pa.array(is_frame)).to_pylist(),
                     first, base_seq, frames, meta)
        return ev, others[~(is_frame | is_head)], frames

    def _has_stack_events(self, ev: EventLines) -> bool:
        if not len(ev.rows):
            return False
        return bool(pc.any(pc.is_in(ev.event, pa.array(STACK_EVENTS))).as_py())

    def _attach(self, n: int, ev: EventLines, rows: np.ndarray, texts: list[str],
                first: dict[int, str], base_seq: int, frames: StackFrames,
                meta: TraceMetadata) -> None:
        """Give each frame line its record: the stack record line just above the run of
        frame lines it is in (the previous chunk's last record for a leading run)."""
        kind = np.zeros(n, np.int8)  # 0 other line, 1 frame, 2 kernel record, 3 user record
        kind[rows] = 1
        names = ev.event.to_pylist() if len(ev.rows) else []
        for row, name in zip(ev.rows.tolist(), names, strict=True):
            kind[row] = 2 if name == "kernel_stack" else 3 if name == "user_stack" else 0
        for row, name in zip(ev.rows.tolist(), names, strict=True):
            if row in first:
                _add(frames, base_seq + row, 0, first[row], name == "user_stack")
        for row, line in zip(rows.tolist(), texts, strict=True):
            self._one(kind, row, line, base_seq, first, frames, meta)
        self._carry(kind, base_seq, first)

    def _one(self, kind: np.ndarray, row: int, line: str, base_seq: int, first: dict[int, str],
             frames: StackFrames, meta: TraceMetadata) -> None:
        head = row - 1
        while head >= 0 and kind[head] == 1:
            head -= 1
        body = line.rstrip("\r\n").split("=>", 1)[1]
        if head < 0 and self.carry_seq is not None:
            _add(frames, self.carry_seq, self.carry_depth + row, body, self.carry_user)
        elif head >= 0 and kind[head] >= 2:
            depth = row - head - 1 + (1 if head in first else 0)
            _add(frames, base_seq + head, depth, body, kind[head] == 3)
        else:
            meta.skip("stack_frame_orphan", base_seq + row + 1, line.rstrip("\r\n"))

    def _carry(self, kind: np.ndarray, base_seq: int, first: dict[int, str]) -> None:
        """Remember the chunk's last stack record when only frames follow it."""
        tail = len(kind) - 1
        while tail >= 0 and kind[tail] == 1:
            tail -= 1
        run = len(kind) - 1 - tail
        if tail < 0:
            if self.carry_seq is not None:
                self.carry_depth += run
            return
        if kind[tail] >= 2:
            self.carry_seq = base_seq + tail
            self.carry_depth = run + (1 if tail in first else 0)
            self.carry_user = bool(kind[tail] == 3)
        else:
            self.carry_seq = None


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
