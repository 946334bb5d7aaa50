"""The same trace read from every format gives the same tables, and every command reads
every format (format detected from content)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import SAMPLES, shared_trace
from typer.testing import CliRunner

from parsers import Trace, convert_trace, detect_format, read_trace
from parsers.errors import KvmMmuError
from replay.cli import app

runner = CliRunner()

#: Columns no two renderings share by construction: ``seq`` is the line number in text and
#: the record index in binary files.
NOT_COMPARED = {"seq"}


def _plain(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.cast(arr.type.value_type) if pa.types.is_dictionary(arr.type) else arr


def _round_us(arr: pa.Array) -> pa.Array:
    """ns → the µs trace-cmd prints without -t (rounded half up, as trace-cmd does)."""
    return pc.multiply(pc.divide(pc.add(arr, 500), 1000), 1000)


def assert_tables_agree(native: Trace, text: Trace, *, ts_us: bool = False,
                        skip: frozenset[str] = frozenset()) -> None:
    """Row for row, on every column the text keeps (non-null there): the native value is
    the same. Columns null in the text (dropped by its rendering) are not compared."""
    assert sorted(native.names) == sorted(text.names)
    for name in ["events", *native.names]:
        a, b = native.table(name), text.table(name)
        assert a.num_rows == b.num_rows, name
        for col in a.column_names:
            if col in NOT_COMPARED or f"{name}.{col}" in skip:
                continue
            x, y = _plain(a[col]), _plain(b[col])
            if col == "ts" and ts_us:
                x = _round_us(x)
            kept = pc.is_valid(y)
            same = pc.fill_null(pc.equal(x.filter(kept), y.filter(kept)), False)
            bad = pc.sum(pc.invert(same)).as_py() or 0
            assert bad == 0, (name, col, bad)


@pytest.mark.shared
@pytest.mark.parametrize("dat", ["tc_kvm.dat", "tc_kvm.v6.dat", "tc_kvm.v7.dat"])
def test_tracedat_equals_report_t_text(dat: str) -> None:
    native = read_trace(shared_trace(f"real/{dat}"))
    text = read_trace(shared_trace("real/tc_kvm.report_t.txt"))
    # -t keeps the kvm plugin's rendering: args of untyped events are worded differently.
    assert_tables_agree(native, text, skip=frozenset({"events.args"}))


@pytest.mark.shared
@pytest.mark.parametrize("dat", ["tc_kvm.dat", "tc_kvm.v6.dat", "tc_kvm.v7.dat"])
def test_tracedat_equals_report_R_text(dat: str) -> None:
    native = read_trace(shared_trace(f"real/{dat}"))
    text = read_trace(shared_trace("real/tc_kvm.report_R.txt"))
    assert_tables_agree(native, text, ts_us=True)


def test_sample_tracedat_equals_its_report() -> None:
    native = read_trace(SAMPLES / "tc_kvm.head.dat")
    text = read_trace(SAMPLES / "tc_kvm.head.report_Rt.txt")
    assert_tables_agree(native, text)
    assert native.events.num_rows == 278


@pytest.mark.shared
def test_trappy_tracedat_has_the_525_events_trace_cmd_reports() -> None:
    trace = read_trace(shared_trace("third_party/trappy/trace.dat"))
    assert sum(trace.event_counts().values()) == 525


@pytest.mark.parametrize(("sample", "fmt", "flavour"), [
    ("tracefs_record_tgid.txt", "ftrace-text", "ftrace-text"),
    ("tc_kvm.report_R.head.txt", "ftrace-text", "trace-cmd-report"),
    ("tc_kvm.head.dat", "trace.dat", "trace.dat"),
    ("perfetto_kvm_dense.pftrace", "perfetto", "perfetto"),
    ("perfetto_kvm_legacy.pftrace", "perfetto", "perfetto"),
    ("perfetto_builder_kvm.pftrace", "perfetto", "perfetto"),
])
def test_every_command_reads_every_format(tmp_path: Path, sample: str, fmt: str,
                                          flavour: str) -> None:
    """``fmt`` picks the reader; ``info`` names the flavour (kernel text or trace-cmd's)."""
    path = SAMPLES / sample
    assert detect_format(path) == fmt
    # a file's name never decides its format
    renamed = tmp_path / "trace.bin"
    shutil.copy(path, renamed)
    assert detect_format(renamed) == fmt

    info = runner.invoke(app, ["info", str(renamed), "--json"])
    assert info.exit_code == 0, info.output
    summary = json.loads(info.output)
    assert summary["format"] == flavour and summary["events"] > 0

    parsed = runner.invoke(app, ["parse", str(renamed), "-o", str(tmp_path / "t.parquet")])
    assert parsed.exit_code == 0, parsed.output
    assert (tmp_path / "t.parquet" / "events.parquet").is_file()

    for out in ("c.pftrace", "c.feather", "c.arrow"):
        done = runner.invoke(app, ["convert", str(renamed), "-o", str(tmp_path / out)])
        assert done.exit_code == 0, done.output
    back = read_trace(tmp_path / "c.pftrace")
    assert back.events.num_rows == read_trace(path).events.num_rows - _unwritable(path)


def _unwritable(path: Path) -> int:
    """Rows Perfetto has no packet for (``buffer_started`` markers)."""
    events = read_trace(path).events.column("event").cast(pa.string())
    return pc.sum(pc.equal(events, "buffer_started")).as_py() or 0


@pytest.mark.parametrize("encoding", ["dense", "legacy"])
def test_tracedat_to_perfetto_keeps_typed_tables(tmp_path: Path, encoding: str) -> None:
    original = read_trace(SAMPLES / "tc_kvm.head.dat")
    out = tmp_path / "t.pftrace"
    report = convert_trace(SAMPLES / "tc_kvm.head.dat", out, encoding=encoding)  # type: ignore[arg-type]
    assert report.source_format == "trace.dat" and report.target == "perfetto"
    back = read_trace(out)
    kept = [n for n in original.names if n not in ("kvm_entry", "kvm_exit", "kvm_userspace_exit",
                                                   "lost_events")]
    assert kept
    for name in kept:
        want = original.table(name).drop_columns(["seq"])
        got = back.table(name).drop_columns(["seq"])
        assert got.equals(want), name


def test_convert_refuses_unknown_targets(tmp_path: Path) -> None:
    with pytest.raises(KvmMmuError, match="suffix"):
        convert_trace(SAMPLES / "tc_kvm.head.dat", tmp_path / "out.csv")
    result = runner.invoke(app, ["convert", str(SAMPLES / "tc_kvm.head.dat"), "-o",
                                 str(tmp_path / "x"), "--to", "csv"])
    assert result.exit_code == 2 and "unknown conversion target" in result.output
    assert not (tmp_path / "x").exists()


def test_truncated_v7_names_the_offset(tmp_path: Path) -> None:
    """v7 keeps its section index at the end: a cut loses it, and the error says where."""
    data = (SAMPLES / "tc_kvm.head.dat").read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: len(data) - 3000])
    failed = runner.invoke(app, ["info", str(cut)])
    assert failed.exit_code == 2
    assert f"{cut}: byte " in failed.output.replace("\n", ""), failed.output
    salvaged = runner.invoke(app, ["info", str(cut), "--salvage", "--json"])
    assert salvaged.exit_code == 0, salvaged.output
    assert json.loads(salvaged.output)["warnings"]


@pytest.mark.shared
def test_salvage_through_the_cli(tmp_path: Path) -> None:
    data = shared_trace("real/tc_kvm.v6.dat").read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: len(data) - 3000])
    failed = runner.invoke(app, ["info", str(cut)])
    assert failed.exit_code == 2
    assert "byte" in failed.output and "the file ends first" in failed.output, failed.output
    salvaged = runner.invoke(app, ["info", str(cut), "--salvage", "--json"])
    assert salvaged.exit_code == 0, salvaged.output
    summary = json.loads(salvaged.output)
    assert 0 < summary["events"] < sum(read_trace(shared_trace("real/tc_kvm.v6.dat"))
                                       .event_counts().values())
    assert any("salvaged" in w for w in summary["warnings"])
