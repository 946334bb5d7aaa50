"""A tracefs session: change tracing settings, and put every one of them back.

:func:`find_tracefs` locates the tracefs mount (``/sys/kernel/tracing``,
``/sys/kernel/debug/tracing``, then the mount table). :class:`TracefsSession` is a context
manager that snapshots each file the first time it writes it and restores all of them, newest
first, when the block ends: on success, on an exception, on Ctrl-C (``KeyboardInterrupt``) and
on SIGTERM (turned into ``KeyboardInterrupt`` while the session is open in the main thread).

Only event files are touched (``events/*/*/enable``, ``options/record-tgid``,
``buffer_size_kb``, ``tracing_on``, ``trace_clock``): some hosts refuse writes to the
function-tracer files, and a kvm recording needs none of them. A refused write raises
:class:`~parsers.errors.RecordError` naming the file.

Examples
--------
>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> _ = (root / "tracing_on").write_text("1\\n")
>>> with TracefsSession(root) as session:
...     session.write("tracing_on", "0")
...     (root / "tracing_on").read_text()
'0'
>>> (root / "tracing_on").read_text()
'1'
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

from parsers.errors import RecordError

__all__ = ["CpuStats", "TracefsSession", "find_tracefs", "find_trace_readers"]

_log = logging.getLogger(__name__)

_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
_EXPANDED = re.compile(r"\(expanded:\s*(\d+)\)")
_SELECTED_CLOCK = re.compile(r"\[(\S+)\]")


def find_tracefs(mounts: Path = Path("/proc/self/mounts"),
                 candidates: Iterable[Path] = _CANDIDATES) -> Path:
    """Return the tracefs directory, or raise :class:`RecordError` when none is mounted.

    The usual places (``candidates``) come first; then any ``tracefs`` entry of ``mounts``,
    then a debugfs mount's ``tracing`` directory.
    """
    for place in candidates:
        if (place / "trace_pipe").exists():
            return place
    found = _from_mount_table(mounts)
    if found is not None:
        return found
    raise RecordError(
        "tracefs is not mounted (looked in /sys/kernel/tracing, /sys/kernel/debug/tracing and "
        "the mount table); mount it with: mount -t tracefs nodev /sys/kernel/tracing")


def _from_mount_table(mounts: Path) -> Path | None:
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        where = Path(fields[1].replace("\\040", " "))
        if fields[2] == "tracefs" and (where / "trace_pipe").exists():
            return where
        if fields[2] == "debugfs" and (where / "tracing" / "trace_pipe").exists():
            return where / "tracing"
    return None


def find_trace_readers(tracefs: Path, proc: Path = Path("/proc")) -> list[tuple[int, str, str]]:
    """Processes holding a consuming reader of ``tracefs``'s ring buffer open.

    Returns ``(pid, comm, path)`` for every open ``trace_pipe`` or ``per_cpu/cpuN/trace_pipe_raw``
    of the top-level buffer (trace-cmd record, another ``cat trace_pipe``): a second consumer
    would take events away from the recording.
    """
    wanted = str(tracefs.resolve()) if tracefs.exists() else str(tracefs)
    pattern = re.compile(re.escape(wanted) + r"/(trace_pipe|per_cpu/cpu\d+/trace_pipe_raw)$")
    readers: list[tuple[int, str, str]] = []
    for entry in _pid_dirs(proc):
        for target in _fd_targets(entry):
            if pattern.match(target):
                readers.append((int(entry.name), _comm(entry), target))
    return sorted(set(readers))


def _pid_dirs(proc: Path) -> Iterable[Path]:
    try:
        return [p for p in proc.iterdir() if p.name.isdigit() and int(p.name) != os.getpid()]
    except OSError:
        return []


def _fd_targets(pid_dir: Path) -> list[str]:
    try:
        fds = list((pid_dir / "fd").iterdir())
    except OSError:
        return []
    targets = []
    for fd in fds:
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue
    return targets


def _comm(pid_dir: Path) -> str:
    try:
        return (pid_dir / "comm").read_text().strip()
    except OSError:
        return "?"


@dataclass(frozen=True)
class CpuStats:
    """The counters of one ``per_cpu/cpuN/stats`` file that tell about lost events."""

    entries: int
    overrun: int
    dropped: int


def _write_file(path: Path, value: str) -> None:
    """Write ``value`` to a tracefs file in one write (tracefs parses each write)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class TracefsSession:
    """Change tracefs settings and restore every changed file when the session ends.

    Parameters
    ----------
    root:
        The tracefs directory (see :func:`find_tracefs`), or an instance directory.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._saved: dict[str, str] = {}
        self._order: list[str] = []
        self._old_sigterm: signal.Handlers | None | object = None
        self.restored: list[str] = []

    # -- reading ------------------------------------------------------------------------------
    def read(self, rel: str) -> str:
        """The text of ``rel`` (relative to the root), without the trailing newline."""
        try:
            return (self.root / rel).read_text().rstrip("\n")
        except PermissionError as exc:
            raise RecordError(f"reading refused ({exc.strerror}); tracefs is locked on this host",
                              str(self.root / rel)) from None
        except OSError as exc:
            raise RecordError(f"cannot read: {exc.strerror}", str(self.root / rel)) from None

    def cpu_stats(self) -> dict[int, CpuStats]:
        """``per_cpu/cpuN/stats`` of every CPU: entries, overrun and dropped events."""
        stats: dict[int, CpuStats] = {}
        per_cpu = self.root / "per_cpu"
        if not per_cpu.is_dir():
            return stats
        for cpu_dir in sorted(per_cpu.glob("cpu[0-9]*"), key=lambda p: int(p.name[3:])):
            values = dict(_stat_pairs(self.read(f"per_cpu/{cpu_dir.name}/stats")))
            stats[int(cpu_dir.name[3:])] = CpuStats(
                values.get("entries", 0), values.get("overrun", 0), values.get("dropped events", 0))
        return stats

    def enabled_events(self) -> list[str]:
        """Events enabled now, as ``system/event`` (from ``set_event``)."""
        if not (self.root / "set_event").exists():
            return []
        return [line.replace(":", "/", 1) for line in self.read("set_event").splitlines() if line]

    # -- writing ------------------------------------------------------------------------------
    def write(self, rel: str, value: str) -> None:
        """Write ``value`` to ``rel``, first saving the value to restore."""
        self.remember(rel)
        self._write(rel, value)

    def remember(self, rel: str) -> None:
        """Save ``rel``'s value to restore, without writing it (for a tool run in between)."""
        if rel not in self._saved:
            self._saved[rel] = self._restorable(rel)
            self._order.append(rel)

    def remember_event_filters(self) -> None:
        """Save every event filter that is set (``trace-cmd extract`` clears them all).

        Per-event filters are saved before system filters, so that restoring (newest first)
        writes a system's filter first and lets per-event filters override it.
        """
        events = self.root / "events"
        per_event = sorted(events.glob("*/*/filter"))
        per_system = sorted(events.glob("*/filter"))
        for path in per_event + per_system:
            rel = str(path.relative_to(self.root))
            text = self.read(rel).strip()
            if text != "none" and not text.startswith("###"):  # unset: "none" / "### global..."
                self.remember(rel)

    def _write(self, rel: str, value: str) -> None:
        path = self.root / rel
        try:
            _write_file(path, value)
        except PermissionError as exc:
            raise RecordError(
                f"write refused ({errno.errorcode.get(exc.errno or 0, '?')}: {exc.strerror}); "
                "tracefs is locked on this host or you are not root", str(path)) from None
        except OSError as exc:
            raise RecordError(f"cannot write {value!r}: {exc.strerror}", str(path)) from None

    def _restorable(self, rel: str) -> str:
        text = self.read(rel)
        if rel == "trace_clock":
            match = _SELECTED_CLOCK.search(text)
            return match.group(1) if match else text.strip()
        if rel.endswith("buffer_size_kb"):
            # "7 (expanded: 1408)": the buffer has not been allocated yet; restoring 7 would
            # shrink it for everyone, so restore the size it expands to.
            match = _EXPANDED.search(text)
            return match.group(1) if match else text.split()[0]
        return text.strip()

    def set_buffer_kb(self, kb: int) -> None:
        """Size the ring buffer (KiB per CPU); per-CPU sizes are saved when they differ."""
        if self.read("buffer_size_kb").startswith("X"):
            for cpu_dir in sorted((self.root / "per_cpu").glob("cpu[0-9]*")):
                rel = f"per_cpu/{cpu_dir.name}/buffer_size_kb"
                self._saved.setdefault(rel, self._restorable(rel))
                if rel not in self._order:
                    self._order.append(rel)
        self.write("buffer_size_kb", str(kb))

    def set_events(self, events: Iterable[str]) -> None:
        """Enable exactly ``events`` (``system/event``); disable the others enabled now."""
        wanted = list(dict.fromkeys(events))
        for name in self.enabled_events():
            if name not in wanted and (self.root / "events" / name / "enable").exists():
                self.write(f"events/{name}/enable", "0")
        for name in wanted:
            self.write(f"events/{name}/enable", "1")

    def clear_buffer(self) -> None:
        """Empty the ring buffer (truncate ``trace``); not a setting, nothing to restore."""
        self._write("trace", "")

    # -- restoring ----------------------------------------------------------------------------
    def restore(self) -> None:
        """Write back every saved value, newest change first; raise if any write fails."""
        failed: list[str] = []
        for rel in reversed(self._order):
            try:
                self._write(rel, self._saved[rel])
                self.restored.append(rel)
            except RecordError as exc:
                failed.append(str(exc))
        self._order.clear()
        if failed:
            raise RecordError("could not restore tracefs settings: " + "; ".join(failed),
                              str(self.root))

    def __enter__(self) -> TracefsSession:
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc is None:
                self.restore()
            else:
                try:
                    self.restore()
                except RecordError as failure:
                    _log.debug("restore after %r failed: %s", exc, failure)
                    exc.add_note(str(failure))
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)  # type: ignore[arg-type]
                self._old_sigterm = None


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stat_pairs(text: str) -> Iterable[tuple[str, int]]:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if value.isdigit():
            yield key.strip(), int(value)
