"""The optional trace_processor path: user-supplied binary only, our errors only."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from parsers.errors import KvmMmuError
from parsers.perfetto.sql import TraceProcessorError, query_perfetto

SAMPLE = Path(__file__).resolve().parents[2] / "sample_traces" / "perfetto_kvm_dense.pftrace"


def test_missing_binary_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(TraceProcessorError, match="none is downloaded"):
        query_perfetto(SAMPLE, "select 1", trace_processor=tmp_path / "trace_processor_shell")


def test_not_executable(tmp_path: Path) -> None:
    fake = tmp_path / "tp"
    fake.write_text("#!/bin/sh\nexit 1\n")
    with pytest.raises(TraceProcessorError, match="not executable"):
        query_perfetto(SAMPLE, "select 1", trace_processor=fake)


def test_a_failing_shell_gives_our_error(tmp_path: Path) -> None:
    fake = tmp_path / "tp"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(KvmMmuError, match="trace processor"):
        query_perfetto(SAMPLE, "select 1", trace_processor=fake, load_timeout=2)
