"""Replaying recorded traces: observed refcounts equal the trace's root_count fields, the
derived workload carries evidence, the CLI's replay command and its JSON."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLES, shared_trace
from typer.testing import CliRunner

from parsers import read_trace
from replay import policy_names, replay
from replay.cli import app
from replay.infer.observed import root_keys

runner = CliRunner()
ROOT_COUNT_EVENTS = ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page", "kvm_mmu_sync_page",
                     "kvm_mmu_unsync_page")


def _root_count_fields(trace_path: Path) -> tuple[Counter[tuple[int, int]], int]:
    """(ts, root_count) of every shadow-page event whose page is a root, counted; and how
    many events carry root_count > 0 at all."""
    trace = read_trace(trace_path)
    frames = [trace.table(n).to_pandas() for n in ROOT_COUNT_EVENTS if n in trace.names]
    fields: Counter[tuple[int, int]] = Counter()
    positive = 0
    for df in frames:
        positive += int((df["root_count"] > 0).sum())
        fields.update(zip(df["ts"].astype(int), df["root_count"].astype(int), strict=True))
    return fields, positive


@pytest.mark.shared
def test_observed_refcounts_match_every_root_count_field() -> None:
    """tracefs_default.txt (issue 5): every root_count the kernel printed for a root is a row
    of the observed history with that count, and every row is such a field."""
    path = shared_trace("real/tracefs_default.txt")
    result = replay(path, policy="sync")
    history = result.runs["observed"]["refcounts"].to_pandas()
    fields, positive = _root_count_fields(path)
    rows = Counter(zip(history["ts"].astype(int), history["refcount"].astype(int), strict=True))
    assert not rows - fields, "history rows that are no root_count field"
    trace = read_trace(path)
    # every event whose page ever held a reference (a root) is in the history, exactly
    for name in ROOT_COUNT_EVENTS:
        df = trace.table(name).to_pandas()
        df["key"] = root_keys(df)
        for row in df[df["root_count"] > 0].itertuples():
            assert rows[(int(row.ts), int(row.root_count))] >= 1, (name, row.seq)
    assert positive > 0 and len(history) >= positive
    # deltas chain per root: count[i] = count[i-1] + delta[i]
    for _, g in history.groupby("root"):
        counts, deltas = g["refcount"].tolist(), g["delta"].tolist()
        assert counts[0] == deltas[0]
        assert all(c == p + d for p, c, d in zip(counts, counts[1:], deltas[1:], strict=False))


def test_sample_replay_every_policy_and_evidence() -> None:
    result = replay(SAMPLES / "tracefs_record_tgid.txt", policy="all")
    assert result.policies == policy_names()
    assert result.threads.vms == [17504, 17505]
    assert result.derived.backend == "shadow" and result.derived.era is None
    summary = result.summary().to_pandas()
    assert set(summary["run"]) == {"observed", *policy_names()}
    assert set(summary["vcpu"]) == {0, 1, 2, 3}
    evidence = result.derived.evidence.to_pandas()
    assert evidence["evidence"].str.len().min() > 0
    assert set(evidence["confidence"]) <= {"high", "medium", "low"}
    assert (evidence["op"] == "MemslotDelete").sum() == 4  # the four kvm_mmu_zap_all_fast
    blocks = result.block_intervals.to_pandas()
    assert (blocks["end"] >= blocks["start"]).all()
    roots = result.runs["observed"]["roots"].to_pandas()
    # 22 shadow root pages: a "new" get_page of a (gfn, role, gen) seen before is a new page
    assert len(roots) == 22 and roots["created_by"].str.startswith("CPU ").all()


def test_replay_is_deterministic(tmp_path: Path) -> None:
    a = replay(SAMPLES / "tracefs_record_tgid.txt", policy=["async", "6.9"])
    b = replay(SAMPLES / "tracefs_record_tgid.txt", policy=["async", "6.9"])
    for name in ("block_intervals", "refcount_history", "roots"):
        assert getattr(a, name).equals(getattr(b, name)), name
    assert json.dumps(a.to_json_dict(), sort_keys=True) == json.dumps(b.to_json_dict(),
                                                                       sort_keys=True)


def test_lost_events_flag_blocks() -> None:
    result = replay(SAMPLES / "trace_pipe_lost_events.txt", policy="6.9")
    blocks = result.runs["observed"]["blocks"]
    assert pa.compute.any(blocks.column("lost")).as_py()
    assert any("lost-events windows" in w for w in result.warnings)


@pytest.mark.parametrize("sample", ["tracefs_record_tgid.txt", "tc_kvm.head.dat",
                                    "perfetto_kvm_dense.pftrace"])
def test_replay_cli_json_shape(sample: str) -> None:
    out = runner.invoke(app, ["replay", str(SAMPLES / sample), "--policy", "sync",
                              "--policy", "async", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert set(doc["policies"]) == {"sync", "async"}
    for block in (doc["observed"], *doc["policies"].values()):
        for per in block["vcpus"].values():
            assert {"blocks", "p50_ns", "p99_ns", "max_ns", "total_ns"} <= set(per)
    assert isinstance(doc["roots"], int) and isinstance(doc["warnings"], list)
    assert all(isinstance(w, str) for w in doc["warnings"])


def test_replay_cli_writes_tables(tmp_path: Path) -> None:
    target = tmp_path / "replayed.parquet"
    out = runner.invoke(app, ["replay", str(SAMPLES / "tracefs_record_tgid.txt"), "-p", "6.6",
                              "-o", str(target)])
    assert out.exit_code == 0, out.output
    names = sorted(p.stem for p in target.iterdir() if p.name != ".kvm-mmu-replay")
    assert names == ["block_intervals", "evidence", "refcount_history", "roots", "summary",
                     "vcpus"]
    table = pq.read_table(target / "summary.parquet")
    assert set(table.column("run").to_pylist()) == {"observed", "6.6"}
    assert "longest block per vCPU" in out.output


def test_replay_cli_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "x.txt"
    bad.write_text("hello\n")
    out = runner.invoke(app, ["replay", str(bad)])
    assert out.exit_code == 2 and "not a trace" in out.output
    out = runner.invoke(app, ["replay", str(SAMPLES / "tracefs_record_tgid.txt"), "-p", "nope"])
    assert out.exit_code == 2 and "nope" in out.output


def test_vms_without_tgid_follow_the_generation_of_their_pages() -> None:
    """With record-tgid the truth is known; hide it and the mmu_valid_gen timelines of the
    VMs' fast zaps must give the same grouping (replay/infer/generations.py)."""
    from parsers import Trace
    from replay.infer.threads import identify_threads

    trace = read_trace(SAMPLES / "tracefs_record_tgid.txt")
    truth = {v.pid: v.vm for v in identify_threads(trace).vcpus.values()}
    ev = trace.events
    hidden = ev.set_column(ev.column_names.index("tgid"), "tgid",
                           pa.nulls(ev.num_rows, ev.schema.field("tgid").type))
    blind = identify_threads(Trace(hidden, {n: trace.table(n) for n in trace.names},
                                   trace.metadata))
    assert {v.pid: v.vm for v in blind.vcpus.values()} == truth
    assert all("mmu_valid_gen" in v.evidence for v in blind.vcpus.values())
    assert any("mmu_valid_gen" in w for w in blind.warnings)


def test_a_perfetto_copy_without_vcpu_ids_replays_like_its_source(tmp_path: Path) -> None:
    """Perfetto's compiled kvm_entry/kvm_exit keep no vcpu_id: the threads entering the guest
    are still the vCPUs, so the real LKML VMX trace and its Perfetto copy give the same runs."""
    from parsers import write_perfetto

    source = SAMPLES / "quoted" / "lkml_cr0wp_vmx_tdp.txt"
    copy = tmp_path / "copy.pftrace"
    write_perfetto(read_trace(source), copy)
    assert pa.compute.all(pa.compute.is_null(read_trace(copy).table("kvm_entry")
                                             .column("vcpu_id"))).as_py()
    columns = ["run", "vcpu", "blocks", "p50_ns", "max_ns", "max_cause"]
    want, got = (replay(p, policy=["sync", "6.9"]) for p in (source, copy))
    assert got.summary().select(columns).equals(want.summary().select(columns))
    assert got.vcpus.num_rows == 2
    assert any("vCPU id unknown" in w for w in got.warnings)
