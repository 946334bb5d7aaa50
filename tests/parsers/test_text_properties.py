"""Hypothesis: generated lines in every layout round-trip; random bytes raise only our errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import KvmMmuError, read_trace
from parsers.text.grammar import split_event_lines
from tests.conftest import SAMPLES

COMM_CHARS = st.sampled_from(list("abcdefghijklmnopqrstuvwxyzKVMCPU0123456789 -/:_.<>"))
comms = st.text(COMM_CHARS, min_size=1, max_size=15).filter(
    lambda c: c.strip() == c and not c.endswith("-") and c[0] not in "#")
flags = st.sampled_from(["d..1.", ".....", "...1.", ".N...", "d..2", "dNh2.", ".n..."])
events = st.sampled_from(["kvm_mmu_zap_all_fast", "kvm_fpu", "sched_switch", "my@event"])


@st.composite
def records(draw: st.DrawFn) -> dict[str, object]:
    return {
        "comm": draw(comms),
        "pid": draw(st.integers(0, 4_194_304)),
        "tgid": draw(st.one_of(st.none(), st.integers(1, 9_999_999))),
        "cpu": draw(st.integers(0, 511)),
        "latency_flags": draw(flags),
        "sec": draw(st.integers(0, 10**7)),
        "usec": draw(st.integers(0, 999_999)),
        "nsec": draw(st.integers(0, 999)),
        "event": draw(events),
        "gen": draw(st.integers(0, 255)),
        "pages": draw(st.integers(0, 2**32 - 1)),
    }


def _payload(r: dict[str, object]) -> str:
    if r["event"] == "kvm_mmu_zap_all_fast":
        return f"kvm-mmu-valid-gen {r['gen']} used_pages {r['pages']:x}"
    return "load"


def kernel_line(r: dict[str, object], tgid: bool) -> str:
    """kernel/trace/trace_output.c: "%16s-%-7d", "(%7d) ", "[%03d] ", flags, " %5lu.%06lu: "."""
    t = "" if not tgid else (f"({r['tgid']:>7}) " if r["tgid"] is not None else "(-------) ")
    return (f"{r['comm']:>16}-{r['pid']:<7} {t}[{r['cpu']:03d}] {r['latency_flags']} "
            f"{r['sec']:5d}.{r['usec']:06d}: {r['event']}: {_payload(r)}")


def report_line(r: dict[str, object], variant: str) -> str:
    """trace-cmd report: "%16s-%-5d [%03d]" (+ flags in >= 3.3), -t, -l, --ts-diff."""
    ts = f"{r['sec']}.{r['usec']:06d}"
    if variant == "t":
        ts = f"{r['sec']}.{r['usec']:06d}{r['nsec']:03d}"
    head = f"{r['comm']:>16}-{r['pid']:<5} [{r['cpu']:03d}]"
    if variant == "3.3":
        head += f" {r['latency_flags']}"
    if variant == "l":
        head = f"{str(r['comm'])[:8]:>8}-{r['pid']:<5} {r['cpu']:3d}{r['latency_flags']}"
    diff = " (+12)   " if variant == "diff" else ""
    return f"{head} {ts:>12}:{diff} {r['event']:<20} {_payload(r)}".replace(
        f"{r['event']:<20} ", f"{r['event']+':':<21} ")


def _check(tmp: Path, lines: list[str], recs: list[dict[str, object]], ns: bool,
           comm_len: int = 16) -> None:
    path = tmp / "t.txt"
    path.write_text("\n".join(lines) + "\n")
    trace = read_trace(path)
    rows = trace.events.to_pylist()
    assert len(rows) == len(recs), trace.metadata.samples
    for row, r in zip(rows, recs, strict=True):
        assert row["pid"] == r["pid"] and row["cpu"] == r["cpu"]
        assert row["comm"] == str(r["comm"])[:comm_len]
        frac = int(r["usec"]) * 1000 + (int(r["nsec"]) if ns else 0)
        assert row["ts"] == int(r["sec"]) * 10**9 + frac
        assert row["event"] == r["event"]
    zaps = trace.table("kvm_mmu_zap_all_fast").to_pylist()
    want = [(r["gen"], r["pages"]) for r in recs if r["event"] == "kvm_mmu_zap_all_fast"]
    assert [(z["mmu_valid_gen"], z["mmu_used_pages"]) for z in zaps] == want


SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(recs=st.lists(records(), min_size=1, max_size=8), tgid=st.booleans())
def test_kernel_lines_round_trip(tmp_path: Path, recs: list[dict[str, object]],
                                 tgid: bool) -> None:
    _check(tmp_path, [kernel_line(r, tgid) for r in recs], recs, ns=False)
    if tgid:
        got = read_trace(tmp_path / "t.txt").events.column("tgid").to_pylist()
        assert got == [r["tgid"] for r in recs]


@SETTINGS
@given(recs=st.lists(records(), min_size=1, max_size=8),
       variant=st.sampled_from(["3.1", "3.3", "t", "l", "diff"]))
def test_report_lines_round_trip(tmp_path: Path, recs: list[dict[str, object]],
                                 variant: str) -> None:
    if variant == "l":
        recs = [r for r in recs if not str(r["comm"])[:8].strip().endswith("-")]
        if not recs:
            return
    lines = ["cpus=512", *(report_line(r, variant) for r in recs)]
    _check(tmp_path, lines, recs, ns=variant == "t", comm_len=8 if variant == "l" else 16)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_random_bytes_raise_only_project_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(data)
    try:
        trace = read_trace(path)
    except KvmMmuError:
        return
    assert trace.events.num_rows >= 0


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.text(max_size=120), max_size=30), recs=st.lists(records(), min_size=1,
                                                                         max_size=3))
def test_garbage_lines_are_counted_not_fatal(tmp_path: Path, lines: list[str],
                                             recs: list[dict[str, object]]) -> None:
    body = [kernel_line(r, False) for r in recs] + [x.replace("\n", " ").replace("\r", " ")
                                                     for x in lines]
    path = tmp_path / "mixed.txt"
    path.write_text("\n".join(body) + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        trace = read_trace(path)
    except KvmMmuError:
        return
    assert trace.events.num_rows + sum(trace.metadata.skipped.values()) == len(body)


@pytest.mark.parametrize("line", ["foo-12 [000] 12.5: \n", " 12.5: x\n", "a 1.0: :\n"])
def test_chunk_with_timestamps_but_no_event_line(line: str) -> None:
    """A chunk whose lines all have a timestamp yet match no tail grammar is left out (this
    once raised KeyError: groups of patterns that matched nothing were missing)."""
    assert split_event_lines(pa.array([line])).rows.size == 0


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=st.lists(records(), min_size=1, max_size=20), tgid=st.booleans(),
       junk=st.lists(st.text(max_size=80), max_size=5),
       report=st.sampled_from([None, "", "t", "3.3", "l", "diff"]))
def test_fixed_column_fast_path_equals_the_general_grammar(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recs: list[dict[str, object]],
        tgid: bool, junk: list[str], report: str | None) -> None:
    """parsers/text/fixed.py must give exactly what the general patterns give, on kernel
    lines and on every trace-cmd report layout (the report fast path takes "" and "t")."""
    import parsers.text.grammar as grammar

    body = [kernel_line(r, tgid) if report is None else report_line(r, report)
            for r in recs] + [j.replace("\n", " ").replace("\r", " ") for j in junk]
    path = tmp_path / "k.txt"
    path.write_text("\n".join(body) + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        fast = read_trace(path)
    except KvmMmuError:
        return
    monkeypatch.setattr(grammar, "match_fixed", lambda *args: None)
    slow = read_trace(path)
    assert fast.events.equals(slow.events)
    assert fast.names == slow.names
    assert all(fast.table(n).equals(slow.table(n)) for n in fast.names)
    assert fast.metadata == slow.metadata


_REPORTS = [SAMPLES / n for n in ("tc_kvm.report.head.txt", "tc_kvm.report_t.head.txt",
                                  "tc_kvm.report_R.head.txt", "tc_kvm.head.report_Rt.txt",
                                  "tracefs_record_tgid.txt", "trace_pipe_lost_events.txt")]


@pytest.mark.parametrize("path", _REPORTS, ids=lambda p: p.name)
def test_fixed_paths_equal_the_general_grammar_on_real_lines(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real kernel and trace-cmd report lines: the fixed-column paths take nearly all of
    them and give what the general patterns give."""
    import parsers.text.grammar as grammar
    from parsers.text.fixed import FIXED_PLAIN_RE, FIXED_REPORT_RE, FIXED_TGID_RE

    lines = pa.array(path.read_text().splitlines())
    taken = sum(pc.sum(pc.match_substring_regex(lines, rx)).as_py() or 0
                for rx in (FIXED_TGID_RE, FIXED_PLAIN_RE, FIXED_REPORT_RE))
    assert taken > 0.95 * len(lines)
    fast = read_trace(path)
    monkeypatch.setattr(grammar, "match_fixed", lambda *args: None)
    slow = read_trace(path)
    assert fast.events.equals(slow.events)
    assert all(fast.table(n).equals(slow.table(n)) for n in fast.names)
    assert fast.metadata == slow.metadata
