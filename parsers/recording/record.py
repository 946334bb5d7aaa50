"""Record a kvm trace around a command: :func:`record` (the ``kvm-mmu-replay record`` command).

Two ways to capture, both configuring tracefs through a :class:`TracefsSession` (so every
setting changed is put back on success, failure, Ctrl-C and SIGTERM):

* ``trace_pipe`` (default): the events of the preset are enabled, ``options/record-tgid`` is
  set, the buffer is sized (:data:`parsers.recording.presets.BUFFER_KB`), and ``trace_pipe`` is
  streamed into the output while the command runs. The output is ftrace text (the
  ``trace_pipe`` grammar, no header), written under a temporary name and renamed at the end.
* ``trace-cmd`` (``use_trace_cmd=True``): the same settings, no reader while the command
  runs, then ``trace-cmd extract`` writes a trace.dat. ``trace-cmd record`` itself cannot be
  used on hosts that refuse the function-tracer files: it always writes
  ``options/function-trace`` or ``/proc/sys/kernel/ftrace_enabled`` and exits with "Can't
  enable ftrace". ``extract`` reads the buffer, then resets tracefs (events off, filters
  cleared, ``current_tracer`` nop); the filters and tracer are saved first and restored.

Lost events are reported two ways: the ``CPU:n [LOST n EVENTS]`` markers of the stream, and
the ``overrun`` and ``dropped events`` counters of ``per_cpu/cpuN/stats``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from parsers.errors import RecordError
from parsers.output import check_output_file, output_file
from parsers.recording.capture import TracePipeCapture
from parsers.recording.presets import default_buffer_kb, resolve_events
from parsers.recording.session import CpuStats, TracefsSession, find_trace_readers, find_tracefs

__all__ = ["RecordReport", "record"]

_KILL_GRACE_S = 5.0


@dataclass(frozen=True)
class RecordReport:
    """What a recording wrote and what it lost.

    ``lost_markers`` counts the ``[LOST n EVENTS]`` lines per CPU; ``overrun`` and ``dropped``
    are the increases of the per-CPU ring-buffer counters during the recording.
    """

    out: Path
    command: tuple[str, ...]
    returncode: int
    method: str
    preset: str
    tracefs: Path
    events_enabled: tuple[str, ...]
    missing_events: tuple[str, ...]
    buffer_kb: int
    duration_ns: int
    events_written: int
    bytes_written: int
    event_counts: dict[str, int] = field(default_factory=dict)
    lost_markers: dict[int, int] = field(default_factory=dict)
    overrun: dict[int, int] = field(default_factory=dict)
    dropped: dict[int, int] = field(default_factory=dict)
    restored: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def lost_total(self) -> int:
        """Events known lost: markers plus overruns plus drops, all CPUs."""
        return (sum(self.lost_markers.values()) + sum(self.overrun.values())
                + sum(self.dropped.values()))

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings, CPU keys as strings)."""
        return {
            "out": str(self.out), "command": list(self.command), "returncode": self.returncode,
            "method": self.method, "preset": self.preset, "tracefs": str(self.tracefs),
            "events_enabled": list(self.events_enabled),
            "missing_events": list(self.missing_events), "buffer_kb": self.buffer_kb,
            "duration_ns": self.duration_ns, "events_written": self.events_written,
            "bytes_written": self.bytes_written, "event_counts": dict(sorted(self.event_counts.items())),
            "lost_markers": {str(k): v for k, v in sorted(self.lost_markers.items())},
            "overrun": {str(k): v for k, v in sorted(self.overrun.items())},
            "dropped": {str(k): v for k, v in sorted(self.dropped.items())},
            "lost_total": self.lost_total, "restored": list(self.restored),
            "warnings": list(self.warnings),
        }


@dataclass
class _Plan:
    tracefs: Path
    events: list[str]
    missing: list[str]
    buffer_kb: int
    warnings: list[str]


def record(
    out: str | os.PathLike[str],
    command: Sequence[str],
    *,
    preset: str = "kvm",
    buffer_kb: int | None = None,
    use_trace_cmd: bool = False,
    tracefs: str | os.PathLike[str] | None = None,
    clock: str | None = None,
    euid: int | None = None,
    proc: Path = Path("/proc"),
    force: bool = False,
) -> RecordReport:
    """Record the preset's events while ``command`` runs and write them to ``out``.

    Parameters
    ----------
    out:
        Output file: ftrace text (``trace_pipe``) or trace.dat (``use_trace_cmd``). Written
        by the output policy of :func:`parsers.output.output_file` (checked before tracefs
        is touched): a temporary name renamed when complete; an existing file is replaced
        only with ``force``; a FIFO, a device or ``-`` gets the bytes as they come.
    command:
        The program and its arguments; its exit status is in the report.
    preset:
        A key of :data:`parsers.recording.presets.PRESETS`.
    buffer_kb:
        Ring-buffer size per CPU in KiB (default: the preset's rule, see ``BUFFER_KB``).
    use_trace_cmd:
        Capture with ``trace-cmd extract`` into a trace.dat instead of streaming text.
    tracefs:
        The tracefs directory (default: :func:`find_tracefs`).
    clock:
        A ``trace_clock`` to select (e.g. ``mono`` to match CLOCK_MONOTONIC logs); default
        leaves it unchanged.
    euid, proc:
        The effective uid to check (default ``os.geteuid()``) and the procfs to scan for other
        ring-buffer readers; tests inject both.

    Raises
    ------
    OutputError
        The output policy refuses ``out``.
    RecordError
        Not root, tracefs absent or locked, another reader consumes the ring buffer, the kernel
        has no kvm events, the command cannot start, or trace-cmd is missing or fails.
    """
    if not command:
        raise RecordError("no command given: kvm-mmu-replay record -o OUT -- COMMAND ...")
    if (os.geteuid() if euid is None else euid) != 0:
        raise RecordError("recording needs root (tracefs settings are root-only); run it with sudo")
    plan = _plan(Path(tracefs) if tracefs is not None else find_tracefs(), preset, buffer_kb, proc)
    check_output_file(out, force=force)
    if use_trace_cmd and shutil.which("trace-cmd") is None:
        raise RecordError("trace-cmd is not installed (Debian package trace-cmd); "
                          "or record without --trace-cmd")
    with output_file(out, force=force) as sink:
        return _record_session(Path(out), sink, list(command), preset, plan, use_trace_cmd,
                               clock)


def _plan(root: Path, preset: str, buffer_kb: int | None, proc: Path) -> _Plan:
    if not (root / "trace_pipe").exists():
        raise RecordError("not a tracefs directory (no trace_pipe)", str(root))
    events, missing = resolve_events(root, preset)
    readers = find_trace_readers(root, proc)
    if readers:
        who = ", ".join(f"pid {pid} ({comm}) has {path} open" for pid, comm, path in readers)
        raise RecordError(f"another reader already consumes the ring buffer: {who}", str(root))
    warnings = [f"event {name} not in this kernel, skipped" for name in missing]
    if buffer_kb is None:
        buffer_kb = default_buffer_kb(preset, cpus=os.cpu_count() or 1,
                                      mem_available_kb=_mem_available_kb())
    elif buffer_kb < 1:
        raise RecordError(f"--buffer-kb must be positive, got {buffer_kb}")
    return _Plan(root, events, missing, buffer_kb, warnings)


def _mem_available_kb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 20


def _record_session(target: Path, sink: BinaryIO, command: list[str], preset: str, plan: _Plan,
                    use_trace_cmd: bool, clock: str | None) -> RecordReport:
    with TracefsSession(plan.tracefs) as session:
        _configure(session, plan, clock)
        before = session.cpu_stats()
        if use_trace_cmd:
            returncode, duration, counts, nbytes = _run_then_extract(session, command, sink)
            events, lost = sum(s.entries for s in counts.values()), {}
            by_event: dict[str, int] = {}
        else:
            returncode, duration, capture = _run_streaming(session, command, sink)
            events, nbytes = capture.counts.events, capture.bytes_written
            lost, by_event = dict(capture.counts.lost), dict(capture.counts.by_event)
            counts = session.cpu_stats()
        warnings = list(plan.warnings) + _tracer_warnings(session)
    return RecordReport(
        out=target, command=tuple(command), returncode=returncode,
        method="trace-cmd" if use_trace_cmd else "trace_pipe", preset=preset,
        tracefs=plan.tracefs, events_enabled=tuple(plan.events),
        missing_events=tuple(plan.missing), buffer_kb=plan.buffer_kb, duration_ns=duration,
        events_written=events, bytes_written=nbytes, event_counts=by_event, lost_markers=lost,
        overrun=_delta(before, counts, "overrun"), dropped=_delta(before, counts, "dropped"),
        restored=tuple(session.restored), warnings=tuple(warnings),
    )


def _configure(session: TracefsSession, plan: _Plan, clock: str | None) -> None:
    session.write("tracing_on", "0")
    session.set_buffer_kb(plan.buffer_kb)
    session.write("options/record-tgid", "1")
    if clock is not None:
        session.write("trace_clock", clock)
    session.set_events(plan.events)
    session.clear_buffer()


def _tracer_warnings(session: TracefsSession) -> list[str]:
    notes = []
    if (session.root / "current_tracer").exists():
        try:
            tracer = session.read("current_tracer").strip()
        except RecordError:
            tracer = "nop"
        if tracer != "nop":
            notes.append(f"current_tracer is {tracer!r}: its lines are in the trace too")
    if (session.root / "set_event_pid").exists() and session.read("set_event_pid").strip():
        notes.append("set_event_pid is set: only those pids' events were recorded")
    return notes


def _run_streaming(session: TracefsSession, command: list[str],
                   sink: BinaryIO) -> tuple[int, int, TracePipeCapture]:
    capture = TracePipeCapture(session.root / "trace_pipe", sink)
    capture.start()
    try:
        session.write("tracing_on", "1")
        returncode, duration = _run(command)
        session.write("tracing_on", "0")
    finally:
        capture.stop()
    return returncode, duration, capture


def _run_then_extract(session: TracefsSession, command: list[str],
                      sink: BinaryIO) -> tuple[int, int, dict[int, CpuStats], int]:
    session.write("tracing_on", "1")
    returncode, duration = _run(command)
    session.write("tracing_on", "0")
    counts = session.cpu_stats()
    # extract resets tracefs when done: all events off (ours are saved already), every event
    # filter cleared, current_tracer set to nop; save what it would lose.
    session.remember_event_filters()
    session.remember("current_tracer")
    with tempfile.TemporaryDirectory(prefix="kvm-mmu-replay-") as scratch:
        part = Path(scratch) / "trace.dat"
        done = subprocess.run(["trace-cmd", "extract", "-o", str(part)], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0 or not part.exists():
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise RecordError(f"trace-cmd extract failed (status {done.returncode}): {last}")
        with part.open("rb") as extracted:
            shutil.copyfileobj(extracted, sink, 1 << 20)
        return returncode, duration, counts, part.stat().st_size


def _run(command: list[str]) -> tuple[int, int]:
    start = time.monotonic_ns()
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        raise RecordError(f"cannot run the command: {exc.strerror}", command[0]) from None
    try:
        returncode = child.wait()
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(_KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return returncode, time.monotonic_ns() - start


def _delta(before: dict[int, CpuStats], after: dict[int, CpuStats], name: str) -> dict[int, int]:
    out = {}
    for cpu, stats in after.items():
        grown = getattr(stats, name) - getattr(before.get(cpu, CpuStats(0, 0, 0)), name)
        if grown > 0:
            out[cpu] = grown
    return out
