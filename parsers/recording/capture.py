"""Stream ``trace_pipe`` into a file while a command runs, counting events and lost-event markers.

``trace_pipe`` is a consuming reader: what it returns leaves the ring buffer, so the buffer
only has to absorb bursts. The kernel allows one reader at a time (a second open fails with
EBUSY); :class:`TracePipeCapture` reports that as "another reader already consumes the ring
buffer". When the reader falls behind, the kernel writes ``CPU:n [LOST n EVENTS]`` lines into
the stream; they are counted per CPU.

Examples
--------
>>> counts = StreamCounts()
>>> counts.feed(b"  a-1 [000] ..... 1.000001: kvm_mmu_get_page: x\\nCPU:1 [LOST 7 EVENTS]\\n")
>>> counts.events, dict(counts.lost)
(1, {1: 7})
"""

from __future__ import annotations

import errno
import os
import re
import threading
from collections import Counter
from pathlib import Path
from typing import BinaryIO

from parsers.errors import RecordError

__all__ = ["StreamCounts", "TracePipeCapture"]

_LOST = re.compile(rb"^CPU:(\d+) \[LOST (\d+) EVENTS\]")
_EVENT = re.compile(rb"\s(\d+(?:\.\d+)?): ([A-Za-z_][\w]*):")
_CHUNK = 1 << 20
_IDLE_S = 0.05


class StreamCounts:
    """Events per name and lost events per CPU, counted from raw trace text fed in chunks."""

    def __init__(self) -> None:
        self.by_event: Counter[str] = Counter()
        self.lost: Counter[int] = Counter()
        self._tail = b""

    @property
    def events(self) -> int:
        """Event lines seen so far."""
        return sum(self.by_event.values())

    def feed(self, chunk: bytes) -> None:
        """Count the complete lines of ``chunk`` (a partial last line waits for the next)."""
        data = self._tail + chunk
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        for line in data[:cut].splitlines():
            self._count(line)

    def finish(self) -> None:
        """Count a last line that had no newline."""
        if self._tail:
            self._count(self._tail)
            self._tail = b""

    def _count(self, line: bytes) -> None:
        lost = _LOST.match(line)
        if lost:
            self.lost[int(lost.group(1))] += int(lost.group(2))
            return
        event = _EVENT.search(line)
        if event:
            self.by_event[event.group(2).decode()] += 1


class TracePipeCapture:
    """A thread copying ``trace_pipe`` to ``sink`` until :meth:`stop`; the pipe is drained first.

    Parameters
    ----------
    pipe:
        The ``trace_pipe`` file (opened non-blocking at construction, so EBUSY shows at once).
    sink:
        Binary file the text is appended to.
    """

    def __init__(self, pipe: Path, sink: BinaryIO) -> None:
        try:
            self._fd = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise RecordError("another reader already consumes the ring buffer (trace_pipe "
                                  "is busy: a trace-cmd record or cat trace_pipe is running); "
                                  "stop it first", str(pipe)) from None
            raise RecordError(f"cannot open for reading: {exc.strerror}", str(pipe)) from None
        self._sink = sink
        self.counts = StreamCounts()
        self.bytes_written = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="trace_pipe reader", daemon=True)

    def start(self) -> None:
        """Start copying in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Drain what is left, stop the thread, close the pipe; re-raise a reader error."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.counts.finish()
        if self._error is not None:
            raise RecordError(f"reading trace_pipe failed: {self._error}")

    def _run(self) -> None:
        try:
            while True:
                chunk = self._read()
                if chunk:
                    self._sink.write(chunk)
                    self.bytes_written += len(chunk)
                    self.counts.feed(chunk)
                elif self._stop.is_set():
                    return
                else:
                    self._stop.wait(_IDLE_S)
        except BaseException as exc:  # reported by stop() in the caller's thread
            self._error = exc

    def _read(self) -> bytes:
        try:
            return os.read(self._fd, _CHUNK)
        except BlockingIOError:
            return b""
