"""The one output policy of every command: what may be written where, and how.

Every file or directory kvm-mmu-replay writes goes through :func:`output_file` (one file:
Perfetto traces, the HTML report, emitted kernel text, recordings) or :func:`output_dir` (a
directory of table files). The rules:

* The output is built under a temporary name beside the target and renamed when complete;
  nothing is left behind on failure.
* Nothing the tool did not create is deleted or replaced. An existing **file** is replaced
  only with ``force``. An existing **directory** is replaced only when the tool wrote it (it
  holds the marker file :data:`MARKER`, which lists the files written) and holds nothing
  else, and ``force`` is given.
* A symlink is followed: its target is written (or replaced, by the same rules).
* ``-``, ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``, character and block devices, FIFOs:
  a single-file output writes its bytes there (never replacing the special file); a
  directory output refuses them.
* Missing parent directories are never created; ``/proc`` and ``/sys`` are refused; every
  refusal is an :class:`OutputError` naming the path (the CLI prints it on one line and exits
  with status 2) raised before anything is created.
* Files get mode ``0666`` and directories ``0777``, less the umask.

A directory that grows entry by entry over a long run (a fleet dataset) is opened with
:func:`open_growing_dir`: it is created with its marker first, each entry inside is then
written under a temporary name and renamed by its writer, and an existing one is continued
(``resume``) or replaced (``force``) by the same ownership rules.

Callers check early with :func:`check_output_file` / :func:`check_output_dir` (before
long work), then write.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from parsers.errors import OutputError

__all__ = ["MARKER", "OutputTarget", "check_output_file", "check_output_dir", "output_file",
           "output_dir", "open_growing_dir"]

#: The file that marks a directory as written by kvm-mmu-replay (JSON: tool, files).
MARKER: Final = ".kvm-mmu-replay"
_STREAM_NAMES: Final = ("/dev/stdout", "/dev/stderr")
_STREAM_DIRS: Final = ("/dev/fd", "/proc/self/fd")
_KERNEL_FS: Final = ("proc", "sys")


@dataclass(frozen=True)
class OutputTarget:
    """Where an output goes once the rules are applied.

    ``stream`` is true when the bytes are written into an existing special file (or stdout
    for ``-``) instead of a new file renamed into place; ``path`` is then the special file.
    Otherwise ``path`` is the resolved target (symlinks followed) and ``replace`` says it
    exists and will be replaced.
    """

    given: str
    path: Path
    stream: bool
    replace: bool


def _is_stream_name(name: str) -> bool:
    if name == "-" or name in _STREAM_NAMES:
        return True
    head, _, tail = name.rpartition("/")
    return head in _STREAM_DIRS and tail.isdigit()


def _special(path: Path) -> str | None:
    """A description of ``path`` when it is a device, FIFO or socket (symlinks followed)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    for test, what in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return None


def _resolve(given: str) -> Path:
    """``given`` made absolute with every symlink followed; refuses the kernel filesystems
    and missing or non-directory parents."""
    path = Path(os.path.realpath(given))
    if len(path.parts) > 1 and path.parts[1] in _KERNEL_FS:
        raise OutputError(given, f"is in /{path.parts[1]}, a kernel filesystem; "
                          "write the output somewhere else")
    parent = path.parent
    if not parent.exists():
        raise OutputError(given, f"parent directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(given, f"{parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(given, f"directory {parent} is not writable")
    return path


def check_output_file(path: str | os.PathLike[str], *, force: bool = False) -> OutputTarget:
    """Apply the rules for a single-file output to ``path`` (nothing is written).

    Raises:
        OutputError: ``path`` is a directory, an existing file without ``force``, in
            ``/proc`` or ``/sys``, or its parent directory is missing or not writable.
    """
    given = str(path)
    if given == "-":
        return OutputTarget(given, Path("/dev/stdout"), True, False)
    if _is_stream_name(given) or _special(Path(given)) is not None:
        return OutputTarget(given, Path(given), True, False)
    target = _resolve(given)
    if target.is_dir():
        raise OutputError(given, "is a directory; name a file")
    if target.exists() and not force:
        raise OutputError(given, "already exists; pass --force to replace it")
    return OutputTarget(given, target, False, target.exists())


def check_output_dir(path: str | os.PathLike[str], *, force: bool = False) -> OutputTarget:
    """Apply the rules for a directory output to ``path`` (nothing is written).

    Raises:
        OutputError: ``path`` is ``-`` or a special file, an existing file, an existing
            directory not written by kvm-mmu-replay (no :data:`MARKER`) or holding other
            files, or one written by it without ``force``; in ``/proc`` or ``/sys``; or its
            parent directory is missing or not writable.
    """
    given = str(path)
    what = "standard output" if given == "-" else _special(Path(given))
    if what is None and _is_stream_name(given):
        what = "a stream"
    if what is not None:
        raise OutputError(given, f"is {what}; this output is a directory of files: name a "
                          "new directory")
    target = _resolve(given)
    if target.exists() and not target.is_dir():
        raise OutputError(given, "exists and is not a directory; this output is a directory "
                          "of files: name a new one")
    if target.is_dir():
        _check_owned(given, target, force)
    return OutputTarget(given, target, False, target.is_dir())


def _check_owned(given: str, target: Path, force: bool) -> None:
    try:
        listed = set(json.loads((target / MARKER).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise OutputError(given, "exists and was not written by kvm-mmu-replay; name a new "
                          "directory") from None
    if not force:
        raise OutputError(given, "already exists (written by kvm-mmu-replay); pass --force to "
                          "replace it")
    others = sorted(p.name for p in target.iterdir() if p.name != MARKER and p.name not in listed)
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise OutputError(given, f"holds files kvm-mmu-replay did not write ({shown}); not "
                          "replacing it")


def _temp_name(target: Path, suffix: str) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}{suffix}")


@contextmanager
def output_file(path: str | os.PathLike[str], *, force: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file whose bytes become the output ``path`` when the block ends
    without an exception (see the module rules); otherwise nothing is left behind.

    Raises:
        OutputError: the rules refuse ``path`` (before anything is created), or writing
            failed (the message names the path and the system's reason).

    Examples:
        >>> import tempfile, os
        >>> target = os.path.join(tempfile.mkdtemp(), "x.bin")
        >>> with output_file(target) as fh:
        ...     _ = fh.write(b"done")
        >>> open(target, "rb").read()
        b'done'
    """
    plan = check_output_file(path, force=force)
    if plan.stream:
        with _stream(plan) as fh:
            yield fh
        return
    tmp = _temp_name(plan.path, ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise OutputError(plan.given, f"cannot create a file in {plan.path.parent}: "
                          f"{exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, plan.path)
    except OSError as exc:
        raise OutputError(plan.given, f"cannot write: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _stream(plan: OutputTarget) -> Iterator[BinaryIO]:
    if plan.given == "-":
        out = sys.stdout.buffer
        try:
            yield out
            out.flush()
        except OSError as exc:
            raise OutputError("-", f"cannot write: {exc.strerror or exc}") from None
        return
    try:
        fh = open(plan.path, "wb")  # noqa: SIM115 - closed below; errors are ours to word
    except OSError as exc:
        raise OutputError(plan.given, f"cannot open for writing: {exc.strerror}") from None
    try:
        with fh:
            yield fh
    except OSError as exc:
        raise OutputError(plan.given, f"cannot write: {exc.strerror or exc}") from None


@contextmanager
def output_dir(path: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes the output ``path`` when the block
    ends without an exception; its files are then listed in :data:`MARKER`. A replaced
    directory (see :func:`check_output_dir`) is removed only after the new one is in place.

    Raises:
        OutputError: the rules refuse ``path`` (before anything is created), or writing
            failed.
    """
    plan = check_output_dir(path, force=force)
    tmp = _temp_name(plan.path, ".tmp")
    try:
        tmp.mkdir(0o777)
    except OSError as exc:
        raise OutputError(plan.given, f"cannot create a directory in {plan.path.parent}: "
                          f"{exc.strerror}") from None
    try:
        yield tmp
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / MARKER).write_text(json.dumps({"tool": "kvm-mmu-replay", "files": files},
                                             indent=1) + "\n", encoding="utf-8")
        _swap_in(plan, tmp)
    except OSError as exc:
        raise OutputError(plan.given, f"cannot write: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(plan: OutputTarget, tmp: Path) -> None:
    if not plan.replace:
        os.rename(tmp, plan.path)
        return
    check_output_dir(plan.path, force=True)  # still ours, still nothing else in it
    old = _temp_name(plan.path, ".old")
    os.rename(plan.path, old)
    try:
        os.rename(tmp, plan.path)
    except OSError:
        os.rename(old, plan.path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def open_growing_dir(path: str | os.PathLike[str], names: list[str], *, resume: bool = False,
                     force: bool = False) -> Path:
    """The directory ``path`` whose entries (``names``) are written one by one afterwards.

    Missing: it is created with :data:`MARKER` listing ``names``. Existing and written by
    kvm-mmu-replay, holding nothing but entries it lists: with ``resume`` it is kept (its
    marker then lists ``names`` too), else with ``force`` it is replaced by an empty one.

    Raises:
        OutputError: as :func:`check_output_dir` (not ours, foreign files, no ``force`` nor
            ``resume``, a special file, a missing parent), or it could not be created.
    """
    given = str(path)
    target = Path(os.path.realpath(given))
    if resume and target.is_dir():
        _check_owned(given, target, force=True)
        listed = json.loads((target / MARKER).read_text(encoding="utf-8"))["files"]
        names = sorted(set(listed) | set(names))
    else:
        plan = check_output_dir(path, force=force)
        target = plan.path
        if plan.replace:
            old = _temp_name(target, ".old")
            os.rename(target, old)
            shutil.rmtree(old, ignore_errors=True)
    try:
        target.mkdir(0o777, exist_ok=True)
        tmp = _temp_name(target / MARKER, ".tmp")
        tmp.write_text(json.dumps({"tool": "kvm-mmu-replay", "files": sorted(names)},
                                  indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, target / MARKER)
    except OSError as exc:
        raise OutputError(given, f"cannot write: {exc.strerror or exc}") from None
    return target
