"""The edges a user touches: unknown event names and suffixes, traces without KVM events,
--version, help texts, --salvage everywhere a trace is read, a wrong trace processor."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main
from conftest import SAMPLES
from typer.testing import CliRunner

from parsers import read_trace
from parsers.errors import EventNameError
from replay.cli import app

runner = CliRunner()
KVM = str(SAMPLES / "tracefs_record_tgid.txt")
NO_KVM = str(SAMPLES / "trappy" / "trace_sched.txt")


def _lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.strip()]


@pytest.mark.parametrize("command", ["parse", "convert"])
def test_a_misspelt_event_is_one_error_and_writes_nothing(tmp_path: Path, command: str) -> None:
    out = tmp_path / "x.parquet"
    result = runner.invoke(app, [command, KVM, "-o", str(out), "--event", "kvm_mmu_get_pgae"])
    assert result.exit_code == 2
    assert _lines(result.output) == [
        "error: --event kvm_mmu_get_pgae: no event of that name in this trace, and no known kvm "
        "event is called so (did you mean kvm_mmu_get_page?)"]
    assert list(tmp_path.iterdir()) == []


def test_a_known_event_absent_from_the_trace_is_a_warning(tmp_path: Path) -> None:
    result = runner.invoke(app, ["parse", KVM, "-o", str(tmp_path / "x.parquet"),
                                 "--event", "kvm_mmu_get_page", "--event", "kvm_exit"])
    assert result.exit_code == 0
    assert "warning: --event kvm_exit: no such event in this trace" in result.output


def test_read_trace_checks_event_names_too() -> None:
    with pytest.raises(EventNameError, match="did you mean kvm_mmu_get_page"):
        read_trace(KVM, events=["kvm_mmu_get_pgae"])


@pytest.mark.parametrize("command", ["parse", "convert"])
def test_unknown_suffix_is_refused_alike(tmp_path: Path, command: str) -> None:
    result = runner.invoke(app, [command, KVM, "-o", str(tmp_path / "x.xyz")])
    assert result.exit_code == 2
    assert len(_lines(result.output)) == 1 and "suffix .xyz" in result.output
    assert list(tmp_path.iterdir()) == []


def test_replay_refuses_unknown_table_suffix_before_replaying(tmp_path: Path) -> None:
    result = runner.invoke(app, ["replay", KVM, "-p", "6.9", "-o", str(tmp_path / "t.xyz")])
    assert result.exit_code == 2 and "suffix .xyz" in result.output


@pytest.mark.parametrize("command", ["replay", "report", "export-perfetto"])
def test_no_kvm_events_is_an_error_where_there_is_nothing_to_replay(tmp_path: Path,
                                                                     command: str) -> None:
    argv = [command, NO_KVM] + ([] if command == "replay" else ["-o", str(tmp_path / "o")])
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert _lines(result.output) == [f"error: {NO_KVM}: no KVM events (kvm, kvmmmu) in this "
                                     "trace: it holds nothing to replay; record with "
                                     "kvm-mmu-replay record (preset kvm)"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["info"], ["parse", "-o", "{tmp}/t.parquet"],
                                  ["convert", "-o", "{tmp}/t.pftrace"]])
def test_no_kvm_events_is_a_warning_where_the_rest_is_true(tmp_path: Path,
                                                           argv: list[str]) -> None:
    full = [argv[0], NO_KVM, *[a.format(tmp=tmp_path) for a in argv[1:]]]
    result = runner.invoke(app, full)
    assert result.exit_code == 0
    assert "warning: no KVM events (kvm, kvmmmu) in this trace" in result.output


def test_version() -> None:
    from parsers import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"kvm-mmu-replay {__version__}\n"
    assert __version__[0].isdigit()


def test_record_help_shows_the_command_separator() -> None:
    result = runner.invoke(app, ["record", "--help"])
    assert result.exit_code == 0
    assert "record [OPTIONS] -- COMMAND [ARGS]..." in result.output


def test_every_command_that_reads_a_trace_takes_salvage_and_strict() -> None:
    group = typer.main.get_group(app)
    for name, command in group.commands.items():
        params = {p.name for p in command.params}
        if "trace" in params:
            assert {"salvage", "strict"} <= params, name


def test_report_and_export_salvage_a_damaged_tracedat(tmp_path: Path) -> None:
    from parsers.tracedat.header import read_info

    data = bytearray((SAMPLES / "tc_kvm.head.dat").read_bytes())
    cpu1 = read_info(bytes(data), "head").buffers[0].cpus[1]
    at = cpu1.offset + 4 + 8 + 20  # inside CPU 1's first compressed chunk
    data[at:at + 4] = bytes(b ^ 0xFF for b in data[at:at + 4])
    bad = tmp_path / "cut.dat"
    bad.write_bytes(bytes(data))
    for command in ("report", "export-perfetto"):
        out = tmp_path / f"{command}.out"
        refused = runner.invoke(app, [command, str(bad), "-o", str(out), "-p", "6.9"])
        assert refused.exit_code == 2 and len(_lines(refused.output)) == 1
        kept = runner.invoke(app, [command, str(bad), "-o", str(out), "-p", "6.9",
                                   "--salvage"])
        assert kept.exit_code == 0, kept.output
        assert out.stat().st_size > 0


def test_query_with_a_program_that_is_no_trace_processor_is_one_line() -> None:
    result = runner.invoke(app, ["query", KVM, "select 1", "--trace-processor", "/bin/true"])
    assert result.exit_code == 2
    lines = _lines(result.output)
    assert len(lines) == 1 and lines[0].startswith("error: trace processor /bin/true: ")
    assert "load_timeout" not in result.output and "network" not in result.output


def test_convert_of_a_tick_clock_trace_to_perfetto_says_what_is_lost(tmp_path: Path) -> None:
    result = runner.invoke(app, ["convert", str(SAMPLES / "tracefs_clock_counter.head.txt"),
                                 "-o", str(tmp_path / "c.pftrace")])
    assert result.exit_code == 0
    assert "Perfetto has no field for a tick unit" in result.output
    back = runner.invoke(app, ["info", str(tmp_path / "c.pftrace")])
    assert "FTRACE_CLOCK_UNKNOWN" in back.output


def test_export_perfetto_of_a_tick_clock_trace_warns(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export-perfetto", str(SAMPLES / "tracefs_clock_counter.head.txt"),
                                 "-o", str(tmp_path / "t.pftrace"), "-p", "6.9"])
    assert result.exit_code == 0
    assert "Perfetto shows the observed run's times as ns" in result.output
