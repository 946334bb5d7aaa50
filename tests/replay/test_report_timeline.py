"""The HTML report and the Perfetto timeline of a trace replay end to end: determinism,
size, atomic writes, the CLI commands, and (when installed) headless Chromium rendering.
The outputs' structure is tested in test_report_html.py and test_timeline_perfetto.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import SAMPLES
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from typer.testing import CliRunner

from parsers.errors import KvmMmuError
from replay import replay, run_scenario
from replay.cli import app
from replay.render.html import write_report

runner = CliRunner()
SAMPLE = SAMPLES / "tracefs_record_tgid.txt"


@pytest.fixture(scope="module")
def result():  # type: ignore[no-untyped-def]
    return replay(SAMPLE, policy=["sync", "async", "6.9"])


def test_report_is_deterministic_and_atomic(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = result.write_report(tmp_path / "a.html").read_bytes()
    b = result.write_report(tmp_path / "b.html").read_bytes()
    assert a == b
    with pytest.raises(KvmMmuError, match="parent directory"):
        write_report(result.runs, tmp_path / "missing" / "r.html", title="x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "b.html"]


def test_report_of_a_large_scenario_stays_small(tmp_path: Path) -> None:
    comp = run_scenario("max-guest-memory", policies=["sync", "async"], memory=1 << 40)
    runs = {p: r.tables for p, r in comp.results.items()}
    path = write_report(runs, tmp_path / "s.html", title="1 TiB")
    assert path.stat().st_size < 2 << 20


def _decode(path: Path) -> list[pb.TracePacket]:
    return list(pb.Trace.FromString(path.read_bytes()).packet)


def test_timeline_is_deterministic(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = result.write_timeline(tmp_path / "a.pftrace").read_bytes()
    b = result.write_timeline(tmp_path / "b.pftrace").read_bytes()
    assert a == b


def test_cli_report_and_export(tmp_path: Path) -> None:
    out = runner.invoke(app, ["report", str(SAMPLE), "-o", str(tmp_path / "r.html"),
                              "-p", "async"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    out = runner.invoke(app, ["export-perfetto", str(SAMPLES / "tc_kvm.head.dat"), "-o",
                              str(tmp_path / "t.pftrace"), "-p", "6.6"])
    assert out.exit_code == 0, out.output
    assert _decode(tmp_path / "t.pftrace")
    out = runner.invoke(app, ["report", str(SAMPLE), "-o", str(tmp_path / "no" / "r.html")])
    assert out.exit_code == 2 and "parent directory" in out.output


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium) to render the report")


def test_report_renders_in_headless_chromium(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exe = _chromium()
    page = result.write_report(tmp_path / "r.html")
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [exe, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1200,3000", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000, done.stderr[-2000:]
    dom = subprocess.run(
        [exe, "--headless", "--disable-gpu", "--no-sandbox",
         f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert dom.stdout.count("<svg") >= 2 * len(result.runs)
