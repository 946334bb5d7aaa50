"""Lines of a text trace that are not events: headers, preambles, loss markers, garbage.

They are rare, so each is classified on its own with Python's ``re``:

* kernel ``trace`` header (``# tracer: nop``, ``# entries-in-buffer/entries-written: A/B #P:N``,
  the legend; a legend with ``TGID`` means ``options/record-tgid``);
* ``##### CPU n buffer started ####`` (kernel/trace/trace.c, when the ring buffer overwrote);
* ``CPU:n [LOST m EVENTS]`` (kernel), ``CPU:n [m EVENTS DROPPED]`` / ``CPU:n [EVENTS DROPPED]``
  (trace-cmd), ``CPU:n [SUBBUFFER START]`` (trace-cmd --debug);
* trace-cmd preambles ``[file: ]cpus=N``, ``version = 6``, ``CPU N is empty``;
* kernel ``options/latency-format`` lines, whose relative µs stamps cannot give times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from parsers.schema import BUFFER_STARTED, LOST_EVENTS

__all__ = ["Marker", "classify_line", "LineKind"]

_LOST = re.compile(r"^CPU:(\d+) \[LOST (\d+) EVENTS\]\s*$")
_DROPPED = re.compile(r"^CPU:(\d+) \[(?:(\d+) )?EVENTS DROPPED\]\s*$")
_STARTED = re.compile(r"^#{5} CPU (\d+) buffer started #{4}\s*$")
_SUBBUF = re.compile(r"^CPU:(\d+) \[SUBBUFFER START\]\s*$")
_CPUS = re.compile(r"^\s*(?:(\S[^:]*?): +)?cpus=(\d+)\s*$")
_VERSION = re.compile(r"^version = (\d+)\s*$")
_EMPTY = re.compile(r"^CPU (\d+) is empty\s*$")
_ENTRIES = re.compile(r"^# entries-in-buffer/entries-written: (\d+)/(\d+)\s+#P:(\d+)")
_TRACER = re.compile(r"^# tracer: (\S+)")
_LATENCY = re.compile(r"^\s*\S.*-\d+\s+\d+\S{3,7}\s+\d+us\s*\S?\s*:")


class LineKind:
    """Names of the line kinds (also the ``skipped_lines`` reasons of the metadata)."""

    HEADER: Final = "header"
    BLANK: Final = "blank"
    PREAMBLE: Final = "preamble"
    MARKER: Final = "marker"
    SUBBUFFER: Final = "subbuffer_marker"
    LATENCY: Final = "latency_relative_ts"
    UNPARSED: Final = "unparsed"


@dataclass(frozen=True)
class Marker:
    """What one non-event line means.

    ``event`` is set for lines that become rows of ``events`` (lost events, buffer started);
    ``kind`` names the others; ``facts`` carries what a header or preamble told us.
    """

    kind: str
    event: str | None = None
    cpu: int | None = None
    count: int | None = None
    facts: tuple[tuple[str, str], ...] = ()


def classify_line(text: str) -> Marker:
    """Classify a line that did not match the event grammar (``text`` without its newline)."""
    if not text.strip():
        return Marker(LineKind.BLANK)
    if m := _LOST.match(text):
        return Marker(LineKind.MARKER, LOST_EVENTS, int(m[1]), int(m[2]), (("loss", "kernel"),))
    if m := _DROPPED.match(text):
        count = int(m[2]) if m[2] is not None else None
        return Marker(LineKind.MARKER, LOST_EVENTS, int(m[1]), count, (("loss", "trace-cmd"),))
    if m := _STARTED.match(text):
        return Marker(LineKind.MARKER, BUFFER_STARTED, int(m[1]))
    if text.startswith("#"):
        return Marker(LineKind.HEADER, facts=_header_facts(text))
    if m := _CPUS.match(text):
        facts = [("cpus", m[2])]
        if m[1]:
            facts.append(("input", m[1]))
        return Marker(LineKind.PREAMBLE, facts=tuple(facts))
    if m := _VERSION.match(text):
        return Marker(LineKind.PREAMBLE, facts=(("version", m[1]),))
    if m := _EMPTY.match(text):
        return Marker(LineKind.PREAMBLE, facts=(("empty_cpu", m[1]),))
    if _SUBBUF.match(text):
        return Marker(LineKind.SUBBUFFER)
    if _LATENCY.match(text):
        return Marker(LineKind.LATENCY)
    return Marker(LineKind.UNPARSED)


def _header_facts(text: str) -> tuple[tuple[str, str], ...]:
    if m := _ENTRIES.match(text):
        return (("entries", m[1]), ("written", m[2]), ("cpus", m[3]))
    if m := _TRACER.match(text):
        return (("tracer", m[1]),)
    if "TGID" in text and "TASK-PID" in text:
        return (("record-tgid", "1"),)
    return ()
