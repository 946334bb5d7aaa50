"""Bounded memory, composed: a trace loaded with ``spill`` (its rows mapped from files)
replays to exactly the tables of the same trace loaded in memory, and observe read a few
rows at a time (segments of 1, 3 or 7 rows, each thread's open window carried) finds
exactly the windows it finds reading the trace in one piece.

The window finder itself is checked against the one-piece functions on random event
sequences cut at random points.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import replay.infer.observed as observed
from parsers import read_trace
from replay import replay
from replay.infer.threads import identify_threads
from replay.trace_replay import load_for_replay
from tests.conftest import SAMPLES, SHARED_TRACES

#: Real shapes: kvm_pvm host windows (no entry/exit), lost events, trace.dat, Perfetto,
#: kernel stacks, a TDP trace with a worker, and a syscall-traced recording.
REAL = ["tracefs_record_tgid.txt", "trace_pipe_lost_events.txt", "tc_kvm.head.dat",
        "perfetto_kvm_dense.pftrace", "stacks_teardown.dat", "recorded_kvm.dat",
        "handwritten/tdp_5.18_workqueue.txt", "recorded_kvm_full.txt.gz"]


def _bytes(tables: dict[str, pa.Table]) -> dict[str, bytes]:
    out = {}
    for name, table in sorted(tables.items()):
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.combine_chunks())
        out[name] = sink.getvalue()
    return out


@pytest.mark.parametrize("name", REAL)
def test_a_spilled_load_replays_to_the_same_tables(name: str, tmp_path: Path) -> None:
    path = SAMPLES / name
    memory = replay(load_for_replay(path, spill=False), policy="all")
    spilled = replay(load_for_replay(path, spill=True, spill_dir=tmp_path), policy="all")
    assert _bytes(spilled.tables()) == _bytes(memory.tables())
    assert spilled.warnings == memory.warnings
    assert list(tmp_path.iterdir()) == []


def test_the_largest_recorded_trace_spills_by_default(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """A source of SPILL_FROM_BYTES or more spills with no argument (the threshold lowered
    to the real trace's size)."""
    import replay.trace_replay as trace_replay

    path = SHARED_TRACES / "real" / "tc_kvm.v6.dat"
    if not path.is_file():
        path = SAMPLES / "recorded_kvm.dat"
    monkeypatch.setattr(trace_replay, "SPILL_FROM_BYTES", path.stat().st_size)
    made: list[object] = []
    real = trace_replay.Trace.from_batches

    def spy(*args: object, **kwargs: object) -> object:
        made.append(kwargs.get("spill"))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trace_replay.Trace, "from_batches", spy)
    load_for_replay(path, spill_dir=tmp_path)
    smaller = SAMPLES / "handwritten" / "tdp_5.18_workqueue.txt"
    assert smaller.stat().st_size < path.stat().st_size
    load_for_replay(smaller)  # in memory
    assert made == [tmp_path, None]


@pytest.mark.parametrize("segment", [1, 3, 7])
@pytest.mark.parametrize("name", REAL)
def test_observe_by_segments_finds_the_same_tables(name: str, segment: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    trace = read_trace(SAMPLES / name)
    threads = identify_threads(trace)
    whole = observed.observe(trace, threads)
    monkeypatch.setattr(observed, "SEGMENT_ROWS", segment)
    pieces = observed.observe(trace, threads)
    assert _bytes(pieces.tables) == _bytes(whole.tables)
    assert pieces.warnings == whole.warnings


_CODES = [observed._ZAP, observed._ROOT, observed._USER, observed._PREEMPT, observed._FAULT,
          observed._OTHER, observed._ENTRY, observed._EXIT]


@st.composite
def _thread(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, list[int]]:
    n = draw(st.integers(1, 60))  # a thread observed has at least one event
    gaps = draw(st.lists(st.integers(0, 40_000), min_size=n, max_size=n))
    cats = draw(st.lists(st.sampled_from(_CODES), min_size=n, max_size=n))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    return (np.cumsum(np.array(gaps, dtype=np.int64)), np.array(cats, dtype=np.int8), cuts)


@settings(max_examples=300, deadline=None)
@given(_thread(), st.booleans())
def test_the_window_finder_over_pieces_equals_one_piece(
        case: tuple[np.ndarray, np.ndarray, list[int]], entries: bool) -> None:
    ts, cat, cuts = case
    gap = observed.BURST_GAP_NS
    want = (observed._exit_to_entry(ts, cat) if entries
            else observed._host_windows(ts, cat, gap))
    finder = observed._WindowFinder(entries, gap)
    for lo, hi in zip([0, *cuts], [*cuts, ts.size], strict=True):
        finder.feed(ts[lo:hi], cat[lo:hi])
    got = finder.finish()

    def rows(windows: tuple[np.ndarray, ...]) -> list[tuple[int, ...]]:
        return sorted(zip(*(w.tolist() for w in windows), strict=True))

    assert rows(got) == rows(want)


def test_a_spill_directory_that_cannot_be_written_is_one_line_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from typer.testing import CliRunner

    import replay.trace_replay as trace_replay
    from replay.cli import app

    missing = tmp_path / "gone"
    monkeypatch.setattr(tempfile, "tempdir", str(missing))
    monkeypatch.setattr(trace_replay, "SPILL_FROM_BYTES", 0)  # the bundled sample spills
    out = tmp_path / "tables"
    got = CliRunner().invoke(app, ["replay", str(SAMPLES / "tracefs_record_tgid.txt"),
                                   "-o", str(out)])
    assert got.exit_code == 2, got.output
    assert str(missing) in got.output and "Traceback" not in got.output
    assert "spill" in got.output
    assert not out.exists()
