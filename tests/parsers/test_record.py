"""`record` against a fake tracefs tree: settings restored on success, failure, Ctrl-C and
SIGTERM; clear errors (not root, no tracefs, locked, busy ring buffer, no kvm events).

The opt-in test at the end records for real (KVM_MMU_REPLAY_RECORD=1, root, /dev/kvm).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from fake_tracefs import EVENT_LINES, INITIAL, emitting_command, make_fake_tracefs, settings
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

import parsers.recording.capture as capture_module
import parsers.recording.session as session_module
from parsers import RecordError, read_trace
from parsers.recording.capture import StreamCounts
from parsers.recording.presets import PRESETS, resolve_events
from parsers.recording.record import RecordReport, record
from parsers.recording.session import TracefsSession, find_trace_readers, find_tracefs
from replay.cli import app


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    return make_fake_tracefs(tmp_path / "tracing")


def _normal(settings_now: dict[str, str]) -> dict[str, str]:
    """Settings as the kernel would show them: the selected clock of ``trace_clock``."""
    out = {rel: text.strip() for rel, text in settings_now.items()}
    clock = out["trace_clock"]
    if "[" in clock:
        out["trace_clock"] = clock[clock.index("[") + 1:clock.index("]")]
    return out


def _expected_after(fake: Path) -> dict[str, str]:
    """What every settings file must read after a recording: as before, except that an
    unexpanded buffer size is put back as its expanded size (documented in TracefsSession)."""
    before = _normal(settings(fake))
    before["buffer_size_kb"] = "1408"
    return before


def _after(fake: Path) -> dict[str, str]:
    return _normal(settings(fake))


def _record(fake: Path, out: Path, command: list[str], *, preset: str = "kvm",
            clock: str | None = None) -> RecordReport:
    return record(out, command, tracefs=fake, euid=0, proc=fake.parent / "no-proc", preset=preset,
                  clock=clock)


def test_record_streams_counts_and_restores(fake: Path, tmp_path: Path) -> None:
    expected = _expected_after(fake)
    dump = tmp_path / "live.json"
    out = tmp_path / "t.txt"
    report = _record(fake, out, emitting_command(fake, dump), clock="mono")
    assert out.read_text() == EVENT_LINES
    assert report.events_written == 3
    assert report.event_counts == {"kvm_mmu_get_page": 1, "kvm_userspace_exit": 1,
                                   "kvm_mmu_zap_all_fast": 1}
    assert report.lost_markers == {1: 5}
    assert report.overrun == {1: 2} and report.dropped == {1: 1}
    assert report.lost_total == 8
    assert report.missing_events == ("kvm/kvm_page_fault",)
    live = json.loads(dump.read_text())
    assert live["tracing_on"] == "1" and live["options/record-tgid"] == "1"
    assert live["buffer_size_kb"] == "16384" and live["trace_clock"] == "mono"
    assert live["events/kvmmmu/kvm_mmu_get_page/enable"] == "1"
    assert live["events/sched/sched_switch/enable"] == "0"  # enabled before, not in the preset
    assert live["trace"] == ""  # buffer cleared before recording
    assert _after(fake) == expected
    assert not list(tmp_path.glob(".*.part"))


def test_command_failure_keeps_trace_and_restores(fake: Path, tmp_path: Path) -> None:
    expected = _expected_after(fake)
    report = _record(fake, tmp_path / "t.txt", emitting_command(fake, tmp_path / "d", exit_code=3))
    assert report.returncode == 3
    assert (tmp_path / "t.txt").read_text() == EVENT_LINES
    assert _after(fake) == expected


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_restores_and_writes_nothing(fake: Path, tmp_path: Path, sig: int) -> None:
    expected = _expected_after(fake)
    command = [sys.executable, "-c",
               f"import os, time; os.kill(os.getppid(), {int(sig)}); time.sleep(30)"]
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        _record(fake, tmp_path / "t.txt", command)
    assert signal.getsignal(signal.SIGTERM) == previous
    assert _after(fake) == expected
    assert not (tmp_path / "t.txt").exists() and not list(tmp_path.glob(".*.part"))


def test_locked_file_is_named_and_earlier_changes_restored(
        fake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _expected_after(fake)
    real_write = session_module._write_file

    def refuse_clock(path: Path, value: str) -> None:
        if path.name == "trace_clock":
            raise PermissionError(errno.EPERM, "Operation not permitted")
        real_write(path, value)

    monkeypatch.setattr(session_module, "_write_file", refuse_clock)
    with pytest.raises(RecordError, match=r"trace_clock: write refused \(EPERM") as info:
        _record(fake, tmp_path / "t.txt", ["true"], clock="mono")
    assert info.value.path == str(fake / "trace_clock")
    assert _after(fake) == expected
    assert not (tmp_path / "t.txt").exists()


def test_not_root(fake: Path, tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="needs root"):
        record(tmp_path / "t.txt", ["true"], tracefs=fake, euid=1000)


def test_no_kvm_events(fake: Path, tmp_path: Path) -> None:
    shutil.rmtree(fake / "events" / "kvmmmu")
    with pytest.raises(RecordError, match="no kvm events") as info:
        _record(fake, tmp_path / "t.txt", ["true"])
    assert info.value.path == str(fake / "events" / "kvmmmu")
    assert settings(fake)["tracing_on"] == INITIAL["tracing_on"]  # nothing was touched


def test_unknown_preset_and_missing_command(fake: Path, tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="unknown preset 'nope'; choose one of kvm, "):
        _record(fake, tmp_path / "t.txt", ["true"], preset="nope")
    with pytest.raises(RecordError, match="no command given"):
        _record(fake, tmp_path / "t.txt", [])


def test_command_not_found_restores(fake: Path, tmp_path: Path) -> None:
    expected = _expected_after(fake)
    with pytest.raises(RecordError, match="cannot run the command"):
        _record(fake, tmp_path / "t.txt", [str(tmp_path / "no-such-program")])
    assert _after(fake) == expected


def test_other_reader_found_in_proc(fake: Path, tmp_path: Path) -> None:
    # find_trace_readers skips its own process, so the fake pid must not be ours.
    pid = 4242 if os.getpid() != 4242 else 4243
    proc = tmp_path / "proc"
    (proc / str(pid) / "fd").mkdir(parents=True)
    (proc / str(pid) / "comm").write_text("trace-cmd\n")
    os.symlink(fake / "trace_pipe", proc / str(pid) / "fd" / "3")
    os.symlink("/dev/null", proc / str(pid) / "fd" / "4")
    assert find_trace_readers(fake, proc) == [(pid, "trace-cmd", str((fake / "trace_pipe").resolve()))]
    with pytest.raises(RecordError, match=rf"already consumes the ring buffer: pid {pid} \(trace-cmd\)"):
        record(tmp_path / "t.txt", ["true"], tracefs=fake, euid=0, proc=proc)


def test_busy_trace_pipe(fake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _expected_after(fake)
    real_open = os.open

    def busy(path: object, flags: int, *args: int) -> int:
        if str(path).endswith("trace_pipe"):
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(capture_module.os, "open", busy)
    with pytest.raises(RecordError, match="another reader already consumes the ring buffer"):
        _record(fake, tmp_path / "t.txt", ["true"])
    monkeypatch.undo()
    assert _after(fake) == expected


def test_find_tracefs_from_mount_table(tmp_path: Path) -> None:
    mnt = make_fake_tracefs(tmp_path / "my tracing")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"proc /proc proc rw 0 0\nnodev {str(mnt).replace(' ', chr(92) + '040')} "
                      "tracefs rw 0 0\n")
    assert find_tracefs(mounts, candidates=()) == mnt
    mounts.write_text("proc /proc proc rw 0 0\n")
    with pytest.raises(RecordError, match="tracefs is not mounted"):
        find_tracefs(mounts, candidates=(tmp_path / "nowhere",))


def test_per_cpu_buffer_sizes_restored(fake: Path) -> None:
    (fake / "buffer_size_kb").write_text("X\n")
    (fake / "per_cpu/cpu1/buffer_size_kb").write_text("2048\n")
    with TracefsSession(fake) as session:
        session.set_buffer_kb(4096)
    assert (fake / "per_cpu/cpu0/buffer_size_kb").read_text() == "1408"
    assert (fake / "per_cpu/cpu1/buffer_size_kb").read_text() == "2048"


def test_event_filters_saved_for_tools_that_clear_them(fake: Path) -> None:
    (fake / "events/kvm/kvm_exit/filter").write_text("vcpu_id == 1\n")
    (fake / "events/kvm/kvm_entry/filter").write_text("none\n")
    (fake / "events/kvm/filter").write_text("### global filter ###\n# Use this to set filters\n")
    (fake / "events/sched/filter").write_text("prev_pid == 1\n")
    with TracefsSession(fake) as session:
        session.remember_event_filters()
        for path in fake.glob("events/**/filter"):  # what trace-cmd extract does
            path.write_text("none")
    assert session.restored == ["events/sched/filter", "events/kvm/kvm_exit/filter"]
    assert (fake / "events/kvm/kvm_exit/filter").read_text() == "vcpu_id == 1"
    assert (fake / "events/kvm/kvm_entry/filter").read_text() == "none"


def test_presets_resolve_against_the_tree(fake: Path) -> None:
    events, missing = resolve_events(fake, "kvm-sched")
    assert events[:3] == ["kvmmmu/kvm_mmu_get_page", "kvmmmu/kvm_mmu_prepare_zap_page",
                          "kvmmmu/kvm_mmu_zap_all_fast"]
    assert "sched/sched_switch" in events and missing == ["kvm/kvm_page_fault"]
    _, missing = resolve_events(fake, "kvm-full")
    assert "workqueue/workqueue_queue_work" in missing
    assert all(entry.count("/") == 1 for preset in PRESETS.values() for entry in preset)


@given(st.lists(st.integers(min_value=0, max_value=len(EVENT_LINES)), max_size=6))
def test_stream_counts_do_not_depend_on_chunking(cuts: list[int]) -> None:
    data = EVENT_LINES.encode()
    counts = StreamCounts()
    start = 0
    for cut in sorted(cuts):
        counts.feed(data[start:cut])
        start = cut
    counts.feed(data[start:])
    counts.finish()
    assert dict(counts.by_event) == {"kvm_mmu_get_page": 1, "kvm_userspace_exit": 1,
                                     "kvm_mmu_zap_all_fast": 1}
    assert dict(counts.lost) == {1: 5}


# --- the CLI -----------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_record(fake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    out = tmp_path / "t.txt"
    command = emitting_command(fake, tmp_path / "live.json")
    result = runner.invoke(app, ["record", "-o", str(out), "--tracefs", str(fake), "--json",
                                 "--", *command])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["events_written"] == 3 and report["lost_total"] == 8
    assert "lost (LOST markers): cpu1 5" in result.stderr
    assert out.read_text() == EVENT_LINES


def test_cli_record_errors(fake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    failing = emitting_command(fake, tmp_path / "live.json", exit_code=4)
    result = runner.invoke(app, ["record", "-o", str(tmp_path / "t.txt"), "--tracefs", str(fake),
                                 "--", *failing])
    assert result.exit_code == 1 and "exited with status 4 (trace kept)" in result.stderr
    shutil.rmtree(fake / "events" / "kvmmmu")
    result = runner.invoke(app, ["record", "-o", str(tmp_path / "u.txt"), "--tracefs", str(fake),
                                 "--", "true"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "no kvm events" in result.stderr


# --- opt-in: record for real -------------------------------------------------------------------
REAL = os.environ.get("KVM_MMU_REPLAY_RECORD") == "1"


@pytest.mark.skipif(not REAL, reason="set KVM_MMU_REPLAY_RECORD=1 to record for real (root, /dev/kvm)")
@pytest.mark.parametrize("use_trace_cmd", [False, True], ids=["trace_pipe", "trace-cmd"])
def test_record_for_real(tmp_path: Path, use_trace_cmd: bool) -> None:
    if use_trace_cmd and shutil.which("trace-cmd") is None:
        pytest.skip("trace-cmd is not installed")
    workloads = ROOT / "sample_traces" / "workloads"
    subprocess.run(["make", "-s", "-C", str(workloads)], check=True)
    tracefs = find_tracefs()
    before = {rel: (tracefs / rel).read_text() for rel in
              ("tracing_on", "buffer_size_kb", "trace_clock", "options/record-tgid", "set_event")}
    out = tmp_path / ("t.dat" if use_trace_cmd else "t.txt")
    report = record(out, [str(workloads / "tinyvmm"), "-v", "2", "-c", "2", "-p", "8"],
                    use_trace_cmd=use_trace_cmd)
    after = {rel: (tracefs / rel).read_text() for rel in before}
    assert report.returncode == 0
    assert after == before or "expanded" in before["buffer_size_kb"]
    trace = read_trace(out)
    counts = trace.events.group_by("event").aggregate([("seq", "count")]).to_pylist()
    by_name = {row["event"]: row["seq_count"] for row in counts}
    assert by_name.get("kvm_mmu_get_page", 0) > 0
    assert by_name.get("kvm_mmu_zap_all_fast", 0) >= 2 * 3  # delete, move, move back per VM
    assert sum(by_name.values()) == report.events_written


# --- the samples regenerate.sh recorded -------------------------------------------------------
@pytest.mark.parametrize("name,trace_file,vms", [
    ("recorded_kvm_full", "recorded_kvm_full.txt.gz", 3),
    ("recorded_kvm", "recorded_kvm.dat", 2),
])
def test_recorded_samples_read_back(name: str, trace_file: str, vms: int) -> None:
    samples = ROOT / "sample_traces"
    report = json.loads((samples / f"{name}.record.json").read_text())
    trace = read_trace(samples / trace_file)
    assert trace.events.num_rows == report["events_written"]
    assert report["lost_total"] == 0 and report["returncode"] == 0
    names = trace.events.column("event").to_pylist()
    assert names.count("kvm_mmu_zap_all_fast") == 3 * vms  # delete, move, move back per VM
    zappers = {pid for pid, e in zip(trace.events.column("pid").to_pylist(), names, strict=True)
               if e == "kvm_mmu_zap_all_fast"}  # each VM's main thread
    assert len(zappers) == vms
    log = (samples / f"{name}.workload.log").read_text()
    assert "done rc 0" in log and "_exit with vCPUs in KVM_RUN" in log


def test_record_output_policy_is_checked_before_tracefs_is_touched(fake: Path,
                                                                   tmp_path: Path) -> None:
    from parsers.errors import OutputError

    before = settings(fake)
    out = tmp_path / "t.txt"
    out.write_text("my own notes")
    with pytest.raises(OutputError, match="--force"):
        _record(fake, out, ["true"])
    with pytest.raises(OutputError, match="does not exist"):
        _record(fake, tmp_path / "no" / "t.txt", ["true"])
    assert out.read_text() == "my own notes" and settings(fake) == before
    assert not (tmp_path / "no").exists()
    report = record(out, emitting_command(fake, tmp_path / "d.json"), tracefs=fake, euid=0,
                    proc=fake.parent / "no-proc", force=True)
    assert out.read_text() == EVENT_LINES and report.events_written == 3
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_record_into_a_fifo_streams_the_text(fake: Path, tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    _record(fake, fifo, emitting_command(fake, tmp_path / "d.json"))
    reader.join(30)
    assert got == [EVENT_LINES] and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
