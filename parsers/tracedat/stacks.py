"""Stack records in trace.dat: the ftrace ``kernel_stack`` and ``user_stack`` events.

Their formats (``events/ftrace/{kernel,user}_stack/format``, Linux 6.18) declare
``caller[8]``, but a ``kernel_stack`` record is as long as its stack: ``struct stack_entry``
is ``int size; unsigned long caller[] __counted_by(size)`` (kernel/trace/trace_entries.h),
so its words are read up to ``size`` and the record's end, stopping at ``ULONG_MAX`` as
``trace_stack_print`` (kernel/trace/trace_output.c) and trace-cmd's ``trace_stack_handler``
do. A ``user_stack`` record has 8 words and ends at its first zero
(``trace_user_stack_print``). Kernel addresses are named from the file's saved kallsyms as
``%ps`` names them (the text symbol whose start is the closest at or below the address; of
aliases at one address, the first listed); user addresses are kept as numbers.

The decoder hook (:func:`callers`) keeps each record's words (in a worker process too: they
travel as Arrow ``binary``); the reading process's merge numbers the rows and
:func:`frames_of` turns them into :class:`~parsers.stacks.StackFrames`, naming kernel
addresses there, so one process and several give the same table.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from parsers.stacks import STACK_EVENTS, StackFrames
from parsers.tracedat.formats import EventFormat
from parsers.tracedat.header import TraceDatInfo, read_kallsyms

__all__ = ["callers", "words", "frames_of", "Kallsyms", "FrameNamer", "CALLERS"]

#: Key of the callers column in the decoder's typed rows of a stack event.
CALLERS = "caller"
#: ``FTRACE_TRAMPOLINE_MARKER`` (``(unsigned long) INT_MAX``), printed as below.
_TRAMPOLINE = 0x7FFFFFFF
_TRAMPOLINE_TEXT = "[FTRACE TRAMPOLINE]"
_TEXT_TYPES = frozenset("tTwW")


def callers(ev: EventFormat, buf: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64],
            lengths: npt.NDArray[np.int64], long_size: int, big: bool
            ) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.bool_]]:
    """Each record's caller words, ended as the kernel's printer ends them, packed as native
    ``uint64`` bytes (a column that crosses process boundaries as Arrow ``binary``; see
    :func:`words`), and which records are damaged: a ``kernel_stack`` whose ``size`` is
    negative or counts more words than the record holds (its words are kept), or a record
    too short to hold its first word."""
    field_ = ev.find(CALLERS)
    size_f = ev.find("size")
    start = field_.offset if field_ is not None else 8 + long_size
    user = ev.name == "user_stack"
    code = ("<" if not big else ">") + ("Q" if long_size == 8 else "I")
    ones = (1 << (8 * long_size)) - 1
    out = np.empty(len(offsets), dtype=object)
    bad = np.zeros(len(offsets), np.bool_)
    data = memoryview(buf.tobytes()) if not buf.flags.c_contiguous else memoryview(buf.data)
    for i, (off, length) in enumerate(zip(offsets.tolist(), lengths.tolist(), strict=True)):
        n = max(0, (length - start) // long_size)
        bad[i] = length < start + long_size
        if size_f is not None and not user and length >= size_f.offset + 4:
            declared = int.from_bytes(data[off + size_f.offset:off + size_f.offset + 4],
                                      "big" if big else "little", signed=True)
            if 0 <= declared <= n:
                n = declared
            else:
                bad[i] = True
        words = struct.unpack_from(f"{code[0]}{n}{code[1]}", data, off + start) if n else ()
        out[i] = np.array(_ended(words, 0 if user else ones), np.uint64).tobytes()
    return out, bad


def words(packed: bytes) -> list[int]:
    """The caller words :func:`callers` packed."""
    out: list[int] = np.frombuffer(packed, np.uint64).tolist()
    return out


def _ended(words: Sequence[int], end: int) -> tuple[int, ...]:
    for k, w in enumerate(words):
        if w == end:
            return tuple(words[:k])
    return tuple(words)


@dataclass
class Kallsyms:
    """Text symbols of a saved ``/proc/kallsyms``, searchable by address."""

    starts: npt.NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, np.uint64))
    names: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: bytes) -> Kallsyms:
        """Parse ``ADDRESS TYPE NAME [MODULE]`` lines, keeping text symbols.

        Examples:
            >>> k = Kallsyms.parse(b"ffffffff81000000 T _stext\\nffffffff81000000 T _text\\n"
            ...                    b"ffffffff81000100 t foo\\t[kvm]\\n")
            >>> k.name(0xffffffff81000010), k.name(0xffffffff81000104), k.name(5)
            ('_stext', 'foo', None)
        """
        addrs: list[int] = []
        names: list[str] = []
        for line in text.decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) < 3 or parts[1] not in _TEXT_TYPES:
                continue
            try:
                addrs.append(int(parts[0], 16))
            except ValueError:
                continue
            names.append(parts[2])
        if not addrs:
            return cls()
        arr = np.array(addrs, dtype=np.uint64)
        uniq, first = np.unique(arr, return_index=True)  # the first listed of aliases
        return cls(uniq, [names[i] for i in first.tolist()])

    def name(self, address: int) -> str | None:
        """The ``%ps`` name of ``address`` (``None`` outside every text symbol)."""
        if not self.names or address == 0:
            return None
        i = int(np.searchsorted(self.starts, np.uint64(address), side="right")) - 1
        return self.names[i] if i >= 0 else None


@dataclass
class FrameNamer:
    """Names kernel addresses, loading the file's kallsyms on first use."""

    data: Any
    info: TraceDatInfo
    _syms: Kallsyms | None = None

    def kernel(self, address: int) -> str | None:
        """The frame text of a kernel address (see :func:`parsers.text.stacks.parse_frame`)."""
        if address == _TRAMPOLINE:
            return _TRAMPOLINE_TEXT
        if self._syms is None:
            self._syms = Kallsyms.parse(read_kallsyms(self.data, self.info))
        return self._syms.name(address)


def frames_of(names: dict[str, tuple[list[Any], list[Any]]], namer: FrameNamer) -> StackFrames:
    """Frames of the merged stack rows: ``names[event] = (seqs, packed caller words)``."""
    out = StackFrames()
    for event in STACK_EVENTS:
        seqs, stacks = names.get(event, ([], []))
        user = event == "user_stack"
        for seq, packed in zip(seqs, stacks, strict=True):
            for depth, addr in enumerate(words(packed)):
                out.add(int(seq), depth, None if user else namer.kernel(int(addr)), int(addr))
    return out
