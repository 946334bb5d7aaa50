"""Several worker processes read a text trace exactly as one does: the same tables in the same
order, the same ``seq``, warnings, variants and skipped-line counts and samples, the same
error. The files are cut into several spans by a small ``chunk_bytes``."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import KvmMmuError, read_trace
from parsers.text.reader import read_ftrace_text
from parsers.text.source import iter_line_chunks
from parsers.text.workers import pick_workers, split_spans
from parsers.trace import Trace
from tests.conftest import SAMPLES, SHARED_TRACES

BUNDLED = sorted(p for p in SAMPLES.rglob("*") if p.name.endswith((".txt", ".txt.gz"))
                 and p.name != "README.md")
SHARED = sorted((SHARED_TRACES).rglob("*.txt")) if SHARED_TRACES.exists() else []


def _same(a: Trace, b: Trace) -> None:
    assert a.metadata == b.metadata
    assert a.events.equals(b.events)
    assert list(a._tables) == list(b._tables)
    for name in a._tables:
        assert a.table(name).equals(b.table(name)), name
    assert a.stacks.equals(b.stacks)


def _chunk(path: Path) -> int:
    """About seven chunks per file, so that a file is cut into several spans."""
    return max(1024, path.stat().st_size // 7)


def _check(path: Path, chunk: int, **kw: bool) -> None:
    one = read_ftrace_text(path, chunk_bytes=chunk, workers=1, **kw)
    for workers in (2, 3):
        _same(one, read_ftrace_text(path, chunk_bytes=chunk, workers=workers, **kw))


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: str(p.relative_to(SAMPLES)))
def test_bundled_traces_read_the_same_with_several_workers(path: Path) -> None:
    if path.stat().st_size > 4 * 1024:
        assert len(split_spans(path, _chunk(path))) > 1 or path.name.endswith(".gz")
    _check(path, _chunk(path))


@pytest.mark.parametrize("path", SHARED or [None],
                         ids=lambda p: str(p.relative_to(SHARED_TRACES)) if p else "absent")
def test_shared_traces_read_the_same_with_several_workers(path: Path | None) -> None:
    if path is None:
        pytest.skip(f"reference traces {SHARED_TRACES} are absent (../shared is not beside "
                    "the checkout)")
    _check(path, _chunk(path))


def test_small_chunks_and_salvage_read_the_same(tmp_path: Path) -> None:
    """Damaged lines (NUL, not UTF-8), loss markers with no record after them in their
    chunk, and headers in the middle, cut into many 1 KiB chunks."""
    lines = (SAMPLES / "trace_pipe_lost_events.txt").read_bytes().splitlines(True)[:400]
    lines[57] = b"garbage \x00 line\n"
    lines[130] = b"\xff\xfe not utf-8\n"
    lines[200:200] = [b"# tracer: nop\n", b"CPU:1 [LOST 3 EVENTS]\n"] * 3
    path = tmp_path / "damaged.txt"
    path.write_bytes(b"".join(lines) + b"CPU:0 [LOST 9 EVENTS]\n")
    _check(path, 1024, salvage=True)


def test_a_multi_input_preamble_past_the_head_reads_the_same(tmp_path: Path) -> None:
    """Spans after the head are decoded guessing from its first 64 KiB whether lines carry a
    ``name: `` input prefix; a preamble further on makes the reader decode them again."""
    lines = (SAMPLES / "tc_kvm.report.head.txt").read_text().splitlines(True)[1:]
    path = tmp_path / "multi.txt"
    path.write_text("".join(lines * 4) + "x.dat: cpus=2\n" + "".join(
        f"x.dat: {ln}" for ln in lines * 3))
    _check(path, 16384)
    trace = read_ftrace_text(path, chunk_bytes=16384, workers=2)
    assert trace.events.column("instance").to_pylist()[-1] == "x.dat"


def test_strict_errors_are_the_same(tmp_path: Path) -> None:
    lines = (SAMPLES / "tracefs_record_tgid.txt").read_text().splitlines(True)[:3000]
    lines[2500] = "this line matches no grammar\n"
    path = tmp_path / "bad.txt"
    path.write_text("".join(lines))
    errors = []
    for workers in (1, 2):
        with pytest.raises(KvmMmuError) as info:
            read_ftrace_text(path, chunk_bytes=8192, workers=workers, strict=True)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert ":2501: line matches no grammar" in errors[0]


@pytest.mark.parametrize("chunk", [700, 4096, 65536])
def test_spans_hold_the_chunks_of_the_whole_file(chunk: int) -> None:
    """A worker reading a span sees exactly the chunks one process sees (same first byte,
    same size, same lines), so every per-chunk decision is the same."""
    path = SAMPLES / "tracefs_record_tgid.txt"
    whole = [(c.first_byte, c.nbytes, len(c.lines))
             for c in iter_line_chunks(path, chunk_bytes=chunk)]
    spans = split_spans(path, chunk)
    assert len(spans) > 1
    parts = [(c.first_byte, c.nbytes, len(c.lines))
             for span in spans for c in iter_line_chunks(path, chunk_bytes=chunk, span=span)]
    assert parts == whole


def test_a_span_never_starts_at_a_stack_frame_line(tmp_path: Path) -> None:
    record = "           <...>-17549   [000] d..1.  1806.791355: kernel_stack: <stack trace>\n"
    frames = "".join(f" => frame_{i}+0x{i:x}/0x100\n" for i in range(40))
    path = tmp_path / "stacks.txt"
    path.write_text((record + frames) * 200)
    data = path.read_bytes()
    spans = split_spans(path, 512)
    assert len(spans) > 10
    for start, _ in spans[1:]:
        assert not data[start:].lstrip(b" ").startswith(b"=>")
        assert data[start - 1:start] == b"\n"


def test_workers_default_and_bounds(tmp_path: Path) -> None:
    small = SAMPLES / "tracefs_record_tgid.txt"
    assert pick_workers(small, None) == 1
    assert pick_workers(SAMPLES / "recorded_kvm_full.txt.gz", 4) == 1
    assert pick_workers(small, 3) == 3
    with pytest.raises(ValueError, match="at least 1"):
        pick_workers(small, 0)
    assert read_trace(small, workers=2).events.num_rows == 11957


_REAL = (SAMPLES / "trace_pipe_lost_events.txt").read_text().splitlines()[1:200]
_line = st.one_of(
    st.sampled_from(_REAL),
    st.sampled_from(["CPU:0 [LOST 7 EVENTS]", "CPU:1 [EVENTS DROPPED]",
                     "##### CPU 1 buffer started ####", "# tracer: nop", "", "cpus=2",
                     " => kvm_mmu_notifier_release+0x3c/0x60", "not a trace line"]),
    st.builds(lambda s: f"       CPU 0/KVM-17579   [000] .....  {s}.000001: kvm_fpu: load",
              st.integers(0, 3000)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_line, min_size=1, max_size=120), chunk=st.integers(64, 2048))
def test_generated_files_read_the_same_with_two_workers(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], chunk: int
) -> None:
    path = tmp_path_factory.mktemp("gen") / "t.txt"
    path.write_text("\n".join(lines) + "\n")
    results = []
    for workers in (1, 2):
        try:
            results.append(read_ftrace_text(path, chunk_bytes=chunk, workers=workers))
        except KvmMmuError as exc:
            results.append(str(exc))  # type: ignore[arg-type]
    if isinstance(results[0], Trace) and isinstance(results[1], Trace):
        _same(results[0], results[1])
    else:
        assert results[0] == results[1]
