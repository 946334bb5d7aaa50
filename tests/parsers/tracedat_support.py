"""Helpers shared by the trace.dat tests: where the traces are, and a minimal report parser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_traces" / "tc_kvm.head.dat"
SAMPLE_REPORT = ROOT / "sample_traces" / "tc_kvm.head.report_Rt.txt"
SHARED = ROOT.parent / "shared" / "traces"
REAL = SHARED / "real"
TRAPPY = SHARED / "third_party" / "trappy" / "trace.dat"

#: One `trace-cmd report` (3.1) event line: comm-pid [cpu] secs.frac: event: payload.
LINE = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<s>\d+)\.(?P<f>\d+):"
    r"\s+(?P<event>\S+):\s?(?P<args>.*)$")


def shared(path: Path) -> Path:
    """``path`` under ../shared/traces, or skip the test saying why."""
    if not path.exists():
        pytest.skip(f"{path} is absent (tests read ../shared/traces beside the repository)")
    return path


def report_rows(text: str) -> list[dict[str, object]]:
    """Event lines of a report text as dicts; ``ts`` in ns when the fraction has 9 digits."""
    rows = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            scale = 10 ** (9 - len(m["f"]))
            rows.append({
                "comm": m["comm"].strip(), "pid": int(m["pid"]), "cpu": int(m["cpu"]),
                "ts": int(m["s"]) * 10**9 + int(m["f"]) * scale, "event": m["event"],
                "args": m["args"].strip()})
    return rows


def trace_cmd_report(path: Path, *flags: str) -> str:
    """``trace-cmd report <flags> -i path`` output, or skip when trace-cmd is not installed."""
    exe = shutil.which("trace-cmd")
    if exe is None:
        pytest.skip("trace-cmd is not on PATH (apt-get install trace-cmd) for the live comparison")
    done = subprocess.run([exe, "report", *flags, "-i", str(path)], capture_output=True,
                          text=True, check=True)
    return done.stdout
