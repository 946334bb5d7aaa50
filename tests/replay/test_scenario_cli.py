"""The ``scenario`` command through typer's CliRunner, including the headline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from replay.cli import app

runner = CliRunner()


def test_headline_sync_blocks_900s_async_stays_under_100ms() -> None:
    result = runner.invoke(app, ["scenario", "max-guest-memory", "--memory", "64TiB",
                                 "--page-size", "4K", "--policy", "sync", "--policy", "async",
                                 "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    sync = data["policies"]["sync"]["vcpus"]
    async_ = data["policies"]["async"]["vcpus"]
    assert set(data["policies"]) == {"sync", "async"}
    assert max(v["max_ns"] for v in sync.values()) >= 900 * 10**9
    assert max(v["max_ns"] for v in async_.values()) < 100 * 10**6
    for v in [*sync.values(), *async_.values()]:
        assert set(v) >= {"blocks", "p50_ns", "p99_ns", "max_ns", "total_ns"}
        assert v["p50_ns"] <= v["p99_ns"] <= v["max_ns"] <= v["total_ns"]
    worst = data["policies"]["sync"]["worst_vcpu"]
    assert sync[worst]["max_cause"] == "zap"  # the last vCPU to unload paid the whole zap


def test_table_output_names_every_policy() -> None:
    result = runner.invoke(app, ["scenario", "max-guest-memory", "--memory", "8GiB",
                                 "--vcpus", "2", "--policy", "all"])
    assert result.exit_code == 0, result.output
    for name in ("sync", "async", "5.18", "6.4", "6.6", "6.9"):
        assert re.search(rf"│ {re.escape(name)} +│", result.output)


def test_json_is_deterministic() -> None:
    args = ["scenario", "memslot-stress", "--vcpus", "2", "--policy", "all", "--json"]
    assert runner.invoke(app, args).output == runner.invoke(app, args).output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memory", "64XB"], "--memory"),
        (["--page-size", "3K"], "page size"),
        (["--policy", "5.17"], "unknown policy"),
        (["--cost", "leaf_ns=1"], "unknown cost key"),
        (["--cost", "fault_ns=fast"], "expected a number"),
        (["--cost-file", "/nonexistent.toml"], "cost file not found"),
    ],
)
def test_bad_values_give_one_line_errors(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["scenario", "max-guest-memory", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_unknown_scenario() -> None:
    result = runner.invoke(app, ["scenario", "nope"])
    assert result.exit_code == 2 and "unknown scenario" in result.output


def test_cost_file_and_overrides_change_the_result(tmp_path: Path) -> None:
    costs = tmp_path / "costs.toml"
    costs.write_text("[cost]\nleaf_exclusive_ns = 104.77\n")
    base = ["scenario", "max-guest-memory", "--memory", "16GiB", "--vcpus", "2",
            "--policy", "sync", "--json"]
    plain = json.loads(runner.invoke(app, base).output)["policies"]["sync"]["max_block_ns"]
    slower = json.loads(runner.invoke(app, [*base, "--cost-file", str(costs)]).output)
    assert slower["policies"]["sync"]["max_block_ns"] > 1.9 * plain
    no_tlb = json.loads(runner.invoke(app, [*base, "--cost", "tlb_flush_ns=0"]).output)
    assert no_tlb["policies"]["sync"]["max_block_ns"] < plain
