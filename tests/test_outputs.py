"""The one output policy (parsers/output.py), through every command that writes.

Never delete or replace what the tool did not create: existing directories without the
marker, existing files without --force, devices, FIFOs and symlinks are kept; bad places
give one line and exit 2 with nothing created. These run as root as CI does; the cases that
need root (device nodes) skip with the reason when not.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import SAMPLES
from typer.testing import CliRunner

from parsers.errors import OutputError
from parsers.output import MARKER, check_output_dir, check_output_file, output_dir, output_file
from replay.cli import app

runner = CliRunner()
TRACE = str(SAMPLES / "tracefs_record_tgid.txt")

#: Commands writing one file, as argv builders.
FILE_COMMANDS: dict[str, Callable[[str], list[str]]] = {
    "report": lambda out: ["report", TRACE, "-o", out, "--policy", "6.9"],
    "export-perfetto": lambda out: ["export-perfetto", TRACE, "-o", out, "--policy", "6.9"],
    "convert": lambda out: ["convert", TRACE, "-o", out, "--to", "perfetto"],
    "scenario": lambda out: ["scenario", "max-guest-memory", "--memory", "4GiB", "--vcpus", "1",
                             "--policy", "sync", "--emit-trace", out],
}
#: Commands writing a directory of tables.
DIR_COMMANDS: dict[str, Callable[[str], list[str]]] = {
    "parse": lambda out: ["parse", TRACE, "-o", out],
    "convert": lambda out: ["convert", TRACE, "-o", out, "--to", "parquet"],
    "replay": lambda out: ["replay", TRACE, "--policy", "6.9", "-o", out],
}


def _run(argv: list[str]) -> tuple[int, str]:
    result = runner.invoke(app, argv)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit), result.exception  # never a traceback
    return result.exit_code, result.output


def _snapshot(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every entry under ``root``: kind bits and content (or link target)."""
    out: dict[str, tuple[int, bytes | str]] = {}
    for p in sorted(root.rglob("*")):
        mode = os.lstat(p).st_mode
        body: bytes | str = (os.readlink(p) if stat.S_ISLNK(mode) else
                             p.read_bytes() if stat.S_ISREG(mode) else b"")
        out[str(p.relative_to(root))] = (stat.S_IFMT(mode), body)
    return out


def _one_error_line(output: str, path: str) -> None:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and path in lines[0], output
    assert "Traceback" not in output


def _mknod(path: Path, minor: int) -> None:
    """A memory character device (1, minor) at ``path``, or skip saying why."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except PermissionError:
        pytest.skip("creating a device node needs root (CI runs as root)")


# ---------------------------------------------------------------- directory outputs

@pytest.mark.parametrize("command", DIR_COMMANDS)
def test_existing_user_directory_is_never_touched(tmp_path: Path, command: str) -> None:
    mine = tmp_path / "mydir"
    (mine / "sub").mkdir(parents=True)
    (mine / "precious.txt").write_text("keep me")
    (mine / "sub" / "more.txt").write_text("me too")
    before = _snapshot(tmp_path)
    for extra in ([], ["--force"]):
        code, output = _run(DIR_COMMANDS[command](str(mine)) + extra)
        assert code == 2
        _one_error_line(output, str(mine))
        assert "not written by kvm-mmu-replay" in output
        assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("command", DIR_COMMANDS)
def test_own_directory_needs_force_and_holds_nothing_else(tmp_path: Path, command: str) -> None:
    out = tmp_path / "t.parquet"
    assert _run(DIR_COMMANDS[command](str(out)))[0] == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["tool"] == "kvm-mmu-replay"
    assert sorted(marker["files"]) == sorted(p.name for p in out.iterdir() if p.name != MARKER)
    code, output = _run(DIR_COMMANDS[command](str(out)))
    assert code == 2 and "pass --force" in output
    assert _run(DIR_COMMANDS[command](str(out)) + ["--force"])[0] == 0
    (out / "notes.txt").write_text("mine")
    code, output = _run(DIR_COMMANDS[command](str(out)) + ["--force"])
    assert code == 2 and "notes.txt" in output
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]  # nothing stray


@pytest.mark.parametrize("command", DIR_COMMANDS)
def test_existing_file_is_not_replaced_by_a_directory(tmp_path: Path, command: str) -> None:
    target = tmp_path / "afile.parquet"
    target.write_bytes(b"user data")
    for extra in ([], ["--force"]):
        code, output = _run(DIR_COMMANDS[command](str(target)) + extra)
        assert code == 2 and "not a directory" in output
        assert target.read_bytes() == b"user data"


def test_dot_is_refused_without_a_traceback_or_stray_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("x")
    for argv in (DIR_COMMANDS["parse"](".") + ["--force"], DIR_COMMANDS["replay"](".")):
        code, output = _run(argv)
        assert code == 2
        _one_error_line(output, ".")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


@pytest.mark.parametrize("command", DIR_COMMANDS)
def test_directory_outputs_refuse_streams(tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for out in ("-", str(fifo), "/dev/null"):
        code, output = _run(DIR_COMMANDS[command](out))
        assert code == 2 and "directory" in output, output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


@pytest.mark.parametrize("command", DIR_COMMANDS)
def test_directory_output_follows_a_symlink(tmp_path: Path, command: str) -> None:
    (tmp_path / "real").mkdir()
    link = tmp_path / "link.parquet"
    link.symlink_to(tmp_path / "real" / "t.parquet")
    assert _run(DIR_COMMANDS[command](str(link)))[0] == 0
    assert link.is_symlink() and (tmp_path / "real" / "t.parquet" / MARKER).is_file()


# ---------------------------------------------------------------- single-file outputs

@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_existing_file_is_replaced_only_with_force(tmp_path: Path, command: str) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"user data")
    code, output = _run(FILE_COMMANDS[command](str(out)))
    assert code == 2 and "--force" in output
    _one_error_line(output, str(out))
    assert out.read_bytes() == b"user data"
    assert _run(FILE_COMMANDS[command](str(out)) + ["--force"])[0] == 0
    assert out.read_bytes() != b"user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_symlink_is_followed_not_replaced(tmp_path: Path, command: str) -> None:
    link = tmp_path / "link.out"
    link.symlink_to("target.out")
    assert _run(FILE_COMMANDS[command](str(link)))[0] == 0
    assert link.is_symlink() and os.readlink(link) == "target.out"
    assert (tmp_path / "target.out").stat().st_size > 0
    code, _ = _run(FILE_COMMANDS[command](str(link)))  # the target now exists
    assert code == 2
    assert _run(FILE_COMMANDS[command](str(link)) + ["--force"])[0] == 0
    assert link.is_symlink()


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_fifo_gets_the_bytes_and_stays_a_fifo(tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    code, output = _run(FILE_COMMANDS[command](str(fifo)))
    reader.join(30)
    assert code == 0, output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert len(got[0]) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_devices_are_written_never_replaced(tmp_path: Path, command: str) -> None:
    full, null = tmp_path / "full", tmp_path / "null"
    _mknod(full, 7)
    _mknod(null, 3)
    assert _run(FILE_COMMANDS[command](str(null)))[0] == 0
    code, output = _run(FILE_COMMANDS[command](str(full)))
    assert code == 2 and "No space left on device" in output
    _one_error_line(output, str(full))
    for dev in (full, null):
        assert stat.S_ISCHR(os.lstat(dev).st_mode), dev
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "null"]


def test_report_to_the_real_dev_full_and_dev_stdout_keeps_them() -> None:
    """The issue's own cases, against the system's files, in a child process."""
    cli = [sys.executable, "-c", "from replay.cli import main; main()"]
    full = subprocess.run([*cli, *FILE_COMMANDS["report"]("/dev/full")], capture_output=True,
                          text=True, check=False)
    assert full.returncode == 2 and "/dev/full" in full.stderr
    assert stat.S_ISCHR(os.lstat("/dev/full").st_mode)
    out = subprocess.run([*cli, *FILE_COMMANDS["report"]("/dev/stdout")], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("<!DOCTYPE html>")
    assert os.path.islink("/dev/stdout")
    dash = subprocess.run([*cli, *FILE_COMMANDS["export-perfetto"]("-")], capture_output=True,
                          check=False)
    assert dash.returncode == 0 and len(dash.stdout) > 1000


# ---------------------------------------------------------------- bad places, every command

ALL = [("file", c) for c in FILE_COMMANDS] + [("dir", c) for c in DIR_COMMANDS]


@pytest.mark.parametrize(("kind", "command"), ALL)
def test_missing_parent_is_one_line_and_nothing_created(tmp_path: Path, kind: str,
                                                        command: str) -> None:
    argv = (FILE_COMMANDS if kind == "file" else DIR_COMMANDS)[command]
    out = tmp_path / "nonexist" / "dir" / ("out.pftrace" if kind == "file" else "out")
    code, output = _run(argv(str(out)))
    assert code == 2
    _one_error_line(output, str(out))
    assert "does not exist" in output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("place", ["/proc/kvm-mmu-replay-test",
                                   "/sys/kvm-mmu-replay-test",
                                   "/proc/self/comm"])
@pytest.mark.parametrize(("kind", "command"), ALL)
def test_proc_and_sys_are_refused(place: str, kind: str, command: str) -> None:
    argv = (FILE_COMMANDS if kind == "file" else DIR_COMMANDS)[command]
    code, output = _run(argv(place) + ["--force"])
    assert code == 2
    _one_error_line(output, place)
    assert "kernel filesystem" in output
    assert not Path(place).exists() or place == "/proc/self/comm"


def test_unwritable_place_is_one_line(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):
        # root writes anywhere on a normal filesystem; a file as parent is unwritable to all
        (tmp_path / "plain").write_text("x")
        ro = tmp_path / "plain"
    for argv in (FILE_COMMANDS["report"](str(ro / "r.html")),
                 DIR_COMMANDS["parse"](str(ro / "t.parquet"))):
        code, output = _run(argv)
        assert code == 2
        _one_error_line(output, str(ro))


def test_permissions_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert _run(FILE_COMMANDS["report"](str(tmp_path / "r.html")))[0] == 0
        assert _run(DIR_COMMANDS["parse"](str(tmp_path / "t.parquet")))[0] == 0
        os.umask(0o027)
        assert _run(FILE_COMMANDS["convert"](str(tmp_path / "t.pftrace")))[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.html").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "t.parquet").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "t.parquet" / "events.parquet").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "t.pftrace").stat().st_mode) == 0o640


# ---------------------------------------------------------------- scenario --emit-trace

def test_emit_trace_with_several_policies_needs_the_placeholder(tmp_path: Path) -> None:
    base = ["scenario", "max-guest-memory", "--memory", "4GiB", "--vcpus", "1",
            "--policy", "sync", "--policy", "6.9"]
    code, output = _run([*base, "--emit-trace", str(tmp_path / "e.txt")])
    assert code == 2 and "{policy}" in output
    assert list(tmp_path.iterdir()) == []
    assert _run([*base, "--emit-trace", str(tmp_path / "e.{policy}.txt")])[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.6.9.txt", "e.sync.txt"]


def test_emit_trace_never_creates_parents(tmp_path: Path) -> None:
    out = tmp_path / "nonexist" / "e.txt"
    code, output = _run(FILE_COMMANDS["scenario"](str(out)))
    assert code == 2 and not (tmp_path / "nonexist").exists()


# ---------------------------------------------------------------- the library itself

def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "x.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError), output_file(out, force=True) as fh:
        fh.write(b"half")
        raise RuntimeError("stop")
    assert out.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [out]
    with pytest.raises(RuntimeError), output_dir(tmp_path / "d") as tmp:
        (tmp / "a.parquet").write_bytes(b"x")
        raise RuntimeError("stop")
    assert sorted(tmp_path.iterdir()) == [out]


def test_checks_write_nothing(tmp_path: Path) -> None:
    assert check_output_file(tmp_path / "a").replace is False
    assert check_output_dir(tmp_path / "b").stream is False
    with pytest.raises(OutputError, match="is a directory"):
        check_output_file(tmp_path)
    assert list(tmp_path.iterdir()) == []
