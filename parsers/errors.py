"""The project's exceptions: one base, a few specific subclasses that carry their evidence.

Every error a user can provoke with bad input is a :class:`KvmMmuError`; the CLI prints its
message on one line and exits with status 2, never with a traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "KvmMmuError",
    "TraceFormatError",
    "TraceParseError",
    "TraceTruncatedError",
    "SchemaError",
    "UnknownEventError",
    "MissingExtraError",
    "TraceProcessorError",
    "QueryError",
    "RecordError",
    "OutputError",
    "EventNameError",
    "SpillError",
]


class KvmMmuError(Exception):
    """Base class of every error raised by kvm-mmu-replay."""


class TraceFormatError(KvmMmuError):
    """The input is not a trace in any format we read (empty, binary garbage, unknown magic)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class TraceParseError(KvmMmuError):
    """A line (text) or a byte range (binary) did not match the grammar it must follow."""

    def __init__(
        self,
        path: str,
        reason: str,
        *,
        lineno: int | None = None,
        line: str | None = None,
        offset: int | None = None,
    ) -> None:
        self.path = path
        self.reason = reason
        self.lineno = lineno
        self.line = line
        self.offset = offset
        where = path
        if lineno is not None:
            where = f"{path}:{lineno}"
        elif offset is not None:
            where = f"{path}: byte {offset}"
        text = f"{where}: {reason}"
        if line is not None:
            shown = line if len(line) <= 160 else line[:157] + "..."
            text += f": {shown!r}"
        super().__init__(text)


class TraceTruncatedError(TraceParseError):
    """A binary trace ends (or a size field points) before the data it announces."""


class SchemaError(KvmMmuError):
    """A table does not match the declared schema it claims to follow."""


class UnknownEventError(KvmMmuError):
    """A typed table was asked for an event that has no declared schema."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(
            f"no typed table for event {name!r}; known: {', '.join(sorted(known))}"
        )


class MissingExtraError(KvmMmuError):
    """An optional dependency is needed for this input (e.g. zstd-compressed trace.dat)."""

    def __init__(self, module: str, extra: str, why: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(
            f"{why} needs the '{module}' module: pip install 'kvm-mmu-replay[{extra}]'"
        )


class TraceProcessorError(KvmMmuError):
    """The user-supplied trace_processor_shell is missing, not runnable, or failed."""

    def __init__(self, binary: str, reason: str) -> None:
        self.binary = binary
        self.reason = reason
        super().__init__(f"trace processor {binary}: {reason}")


class QueryError(KvmMmuError):
    """DuckDB refused or failed a query, or its input holds no table (``where`` names the
    trace or dataset queried)."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


class RecordError(KvmMmuError):
    """Recording a trace could not start or finish (not root, tracefs absent or locked, ...).

    ``path`` names the tracefs file or output the reason is about, when there is one.
    """

    def __init__(self, reason: str, path: str | None = None) -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


class OutputError(KvmMmuError):
    """An output cannot be written where it was asked to go (see :mod:`parsers.output`).

    ``path`` is the output as given; the message names it and the reason.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class EventNameError(KvmMmuError):
    """An event name asked for (``--event``) is in neither the trace nor the known events."""

    def __init__(self, name: str, suggestion: str | None) -> None:
        self.name = name
        self.suggestion = suggestion
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        super().__init__(f"--event {name}: no event of that name in this trace, and no known "
                         f"kvm event is called so{hint}")


class SpillError(KvmMmuError):
    """A trace's rows could not be spilled to disk (:mod:`parsers.spill`): the directory is
    missing or not writable, or the disk is full. ``path`` is the spill directory."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: cannot spill the trace's rows there: {reason} (set TMPDIR "
                         f"or spill_dir to a directory with room, or load with spill=False)")
