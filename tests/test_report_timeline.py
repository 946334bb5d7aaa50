"""The HTML report and the Perfetto timeline of a replay: structure, determinism, size,
atomic writes, the CLI commands, and (when installed) headless Chromium rendering."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter, defaultdict
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from typer.testing import CliRunner

from parsers.errors import KvmMmuError
from replay import replay, run_scenario
from replay.cli import app
from replay.recorders import BLOCKS_SCHEMA
from replay.report_html import render_report, write_report
from replay.timeline_perfetto import SEQUENCE_ID, write_timeline

runner = CliRunner()
SAMPLE = SAMPLES / "tracefs_record_tgid.txt"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: Counter[str] = Counter()
        self.titles: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self._in_title = tag == "title"

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.titles.append(data)
            self._in_title = False


@pytest.fixture(scope="module")
def result():  # type: ignore[no-untyped-def]
    return replay(SAMPLE, policy=["sync", "async", "6.9"])


def test_report_structure(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = result.write_report(tmp_path / "r.html")
    html = path.read_text()
    tags = _Tags()
    tags.feed(html)
    runs = list(result.runs)
    cdfs = [t for t in tags.titles if t.endswith("block latency CDF per vCPU")]
    assert [t.split(":")[0] for t in cdfs] == runs
    assert sum(t.endswith("blocks per vCPU and zaps per thread") for t in tags.titles) == len(runs)
    assert any(t == "observed: refcount per root" for t in tags.titles)
    summary_rows = result.summary().num_rows
    assert tags.tags["tr"] == summary_rows + 1  # header + one row per (run, vcpu)
    assert "<script" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    for warning in result.warnings:
        assert warning.split(":")[0] in html


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


def test_timeline_structure(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    packets = _decode(result.write_timeline(tmp_path / "t.pftrace"))
    assert packets[0].sequence_flags & pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    assert {p.trusted_packet_sequence_id for p in packets} == {SEQUENCE_ID}
    tracks = {p.track_descriptor.uuid: p.track_descriptor for p in packets
              if p.HasField("track_descriptor")}
    assert len(tracks) == sum(p.HasField("track_descriptor") for p in packets)  # unique uuids
    for d in tracks.values():
        assert not d.HasField("parent_uuid") or d.parent_uuid in tracks
    groups = [d.name for d in tracks.values() if d.HasField("process")]
    assert groups == list(result.runs)
    open_slices: dict[int, int] = defaultdict(int)
    last_ts: dict[int, int] = {}
    slices = 0
    for p in packets:
        if not p.HasField("track_event"):
            continue
        ev = p.track_event
        assert ev.track_uuid in tracks
        assert p.timestamp >= last_ts.get(ev.track_uuid, 0)
        last_ts[ev.track_uuid] = p.timestamp
        if ev.type == pb.TrackEvent.TYPE_SLICE_BEGIN:
            open_slices[ev.track_uuid] += 1
            slices += 1
            assert ev.name
        elif ev.type == pb.TrackEvent.TYPE_SLICE_END:
            open_slices[ev.track_uuid] -= 1
            assert open_slices[ev.track_uuid] == 0
        else:
            assert ev.type == pb.TrackEvent.TYPE_COUNTER
            assert tracks[ev.track_uuid].HasField("counter")
    assert not any(open_slices.values())
    observed = result.runs["observed"]["blocks"].num_rows
    assert slices >= observed
    counters = [d for d in tracks.values() if d.HasField("counter")]
    assert len(counters) >= result.runs["observed"]["roots"].num_rows


def test_timeline_is_deterministic(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = result.write_timeline(tmp_path / "a.pftrace").read_bytes()
    b = result.write_timeline(tmp_path / "b.pftrace").read_bytes()
    assert a == b


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**9), st.integers(0, 10**7),
                          st.sampled_from(["zap", "fault", "lock_wait", "userspace"]),
                          st.integers(1, 5)), max_size=40))
def test_any_block_table_renders(rows: list[tuple[int, int, int, str, int]]) -> None:
    import pyarrow as pa

    cols = {"vcpu": [r[0] for r in rows], "start": [r[1] for r in rows],
            "end": [r[1] + r[2] * r[4] for r in rows], "cause": [r[3] for r in rows],
            "count": [r[4] for r in rows], "each_ns": [r[2] for r in rows],
            "root": [None] * len(rows)}
    blocks = pa.Table.from_pydict({**cols, "cause": pa.array(cols["cause"]).dictionary_encode()
                                   .cast(BLOCKS_SCHEMA.field("cause").type)}, schema=BLOCKS_SCHEMA)
    html = render_report({"observed": {"blocks": blocks}}, title="t")
    tags = _Tags()
    tags.feed(html)
    assert tags.tags["svg"] >= 1
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        packets = _decode(write_timeline({"observed": {"blocks": blocks}}, Path(tmp) / "t.pb"))
    begins = sum(p.track_event.type == pb.TrackEvent.TYPE_SLICE_BEGIN for p in packets)
    ends = sum(p.track_event.type == pb.TrackEvent.TYPE_SLICE_END for p in packets)
    assert begins == ends <= len(rows)


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
