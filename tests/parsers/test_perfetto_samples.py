"""The Perfetto files in sample_traces/ are exactly what the generators make today.

``perfetto_kvm_{dense,legacy}.pftrace``: :func:`write_perfetto` of the first 400 lines of
``sample_traces/tracefs_record_tgid.txt`` (read with the text reader);
``perfetto_builder_kvm.pftrace``: ``TraceProtoBuilder`` output of
:func:`perfetto_traces.builder_trace`. Rewrite them with ``pytest --update-golden``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SAMPLES
from perfetto_traces import builder_trace

from parsers.perfetto.reader import is_perfetto, read_perfetto
from parsers.perfetto.writer import write_perfetto

HEAD_LINES = 400


def _text_head(tmp_path: Path) -> Path:
    lines = (SAMPLES / "tracefs_record_tgid.txt").read_text().splitlines(keepends=True)
    head = tmp_path / "tracefs_record_tgid.head.txt"
    head.write_text("".join(lines[:HEAD_LINES]))
    return head


def _check(path: Path, data: bytes, update: bool) -> None:
    if update:
        path.write_bytes(data)
    assert path.exists(), f"{path} is missing: run pytest --update-golden"
    assert path.read_bytes() == data, f"{path} differs from the generator (--update-golden)"


@pytest.mark.parametrize("encoding", ["dense", "legacy"])
def test_writer_samples(tmp_path: Path, encoding: str, update_golden: bool) -> None:
    from parsers import read_trace

    out = tmp_path / f"perfetto_kvm_{encoding}.pftrace"
    write_perfetto(read_trace(_text_head(tmp_path)), out, encoding=encoding)  # type: ignore[arg-type]
    _check(SAMPLES / out.name, out.read_bytes(), update_golden)
    trace = read_perfetto(SAMPLES / out.name)
    assert trace.metadata.format == "perfetto" and trace.table("kvm_mmu_get_page").num_rows


def test_builder_sample(update_golden: bool) -> None:
    _check(SAMPLES / "perfetto_builder_kvm.pftrace", builder_trace("dense"), update_golden)
    assert is_perfetto((SAMPLES / "perfetto_builder_kvm.pftrace").read_bytes()[:4096])
