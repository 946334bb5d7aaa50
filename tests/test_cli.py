"""The CLI through typer's runner, and the README's examples executed."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, SAMPLES
from typer.testing import CliRunner

from replay.cli import app

runner = CliRunner()


def test_every_command_has_help() -> None:
    import typer.main

    group = typer.main.get_group(app)
    for name, command in group.commands.items():
        assert command.help, name
        assert f"kvm-mmu-replay {name}" in (ROOT / "README.md").read_text(), name


def test_info_json_keys() -> None:
    result = runner.invoke(app, ["info", str(SAMPLES / "trace_pipe_lost_events.txt"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    for key in ("format", "clock", "cpus", "first_ts", "last_ts", "event_counts",
                "lost_events", "skipped_lines"):
        assert key in info
    assert info["lost_events"] == {"0": 16496, "1": 15154}
    assert "lost_events" not in info["event_counts"]


def test_info_human() -> None:
    result = runner.invoke(app, ["info", str(SAMPLES / "tracefs_record_tgid.txt")])
    assert result.exit_code == 0
    assert "kvm_mmu_get_page" in result.stdout and "11957 events" in result.stdout


@pytest.mark.parametrize("suffix", [".parquet", ".feather", ".arrow"])
def test_parse_writes_one_file_per_table(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"out{suffix}"
    result = runner.invoke(app, ["parse", str(SAMPLES / "tc_kvm.report_R.head.txt"),
                                 "-o", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert f"events{suffix}" in files and f"kvm_mmu_get_page{suffix}" in files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_parse_round_trips_through_parquet(tmp_path: Path) -> None:
    from parsers import read_trace

    out = tmp_path / "o.parquet"
    assert runner.invoke(app, ["parse", str(SAMPLES / "tracefs_record_tgid.txt"),
                               "-o", str(out)]).exit_code == 0
    trace = read_trace(SAMPLES / "tracefs_record_tgid.txt")
    back = pq.read_table(out / "kvm_mmu_get_page.parquet")
    assert back.equals(trace.with_metadata(trace.table("kvm_mmu_get_page")))
    assert b"kvm_mmu_replay" in back.schema.metadata


@pytest.mark.parametrize("content,message", [
    (None, "no such file"), (b"", "empty file"), (b"\x00\x01\x02garbage", "binary data"),
    (b"hello\nworld\n", "not a trace")])
def test_bad_input_one_line_exit_2(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "in.txt"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["parse", str(path), "-o", str(out)])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_strict_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    lines = (SAMPLES / "trace_pipe_lost_events.txt").read_text().splitlines()
    path.write_text("\n".join(lines[:5] + ["garbage here"] + lines[5:10]) + "\n")
    result = runner.invoke(app, ["info", str(path), "--strict"])
    assert result.exit_code == 2
    assert f"{path}:6" in result.output.replace("\n", "")


def _readme_blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_console_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    commands = [line[2:] for block in _readme_blocks("console") for line in block.splitlines()
                if line.startswith("$ kvm-mmu-replay ")]
    assert commands
    for command in commands:
        args = shlex.split(command)[1:]
        args = [str(tmp_path / a) if a.startswith("out.") else a for a in args]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (command, result.output)


def test_readme_python_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    for block in _readme_blocks("python"):
        exec(compile(block, "README.md", "exec"), {})


def test_makefile_run_target_uses_an_existing_sample() -> None:
    sample = re.search(r"^SAMPLE \?= (\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert sample and (ROOT / sample[1]).exists()


def test_info_with_workers_says_what_one_process_says() -> None:
    """--workers reaches the reader (the equality over several spans is
    tests/parsers/test_text_workers.py's); 0 is refused."""
    outputs = []
    for workers in ("1", "2"):
        result = runner.invoke(app, ["info", str(SAMPLES / "tracefs_record_tgid.txt"),
                                     "--json", "--workers", workers])
        assert result.exit_code == 0, result.output
        outputs.append(json.loads(result.stdout))
    assert outputs[0] == outputs[1]
    assert outputs[0]["events"] == 11957
    bad = runner.invoke(app, ["info", str(SAMPLES / "tracefs_record_tgid.txt"),
                              "--workers", "0"])
    assert bad.exit_code == 2
