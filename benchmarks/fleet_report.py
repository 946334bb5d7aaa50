"""Benchmark: the fleet report over a large synthetic dataset, time and peak memory.

The dataset (default 1,000 traces x 20,000 block rows = 20 M rows) is written straight
through :func:`replay.fleets.store.commit`, no replay: per trace a ``block_intervals``
partition (runs observed, sync, 6.9; 8 vCPUs; causes drawn like a replay's, fault runs with
``n_blocks`` > 1; durations log-uniform from 100 ns to 1 s), a ``vcpus`` partition and its
``traces`` row. Then, each in a fresh child process so its peak RSS is its own:

* ``fleet_page`` (the report's figures: two passes, one trace's partition at a time);
* for scale, ``read_table(block_intervals)`` of the columns the report reads: what holding
  every block at once would cost.

    python benchmarks/fleet_report.py [TRACES] [ROWS_PER_TRACE]
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/replay.py would shadow the replay package: import the project, not this folder
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

CAUSES = ("fault", "fault", "fault", "zap", "lock_wait", "root_alloc", "root_put", "userspace")
RUNS = ("observed", "sync", "6.9")


def build(root: Path, traces: int, rows: int) -> None:
    import numpy as np
    import pyarrow as pa

    from replay.fleets.store import commit, open_dataset
    from replay.fleets.task import RESULT_TABLES, TRACES_SCHEMA

    open_dataset(root, [*RESULT_TABLES, "traces"], resume=False, force=False)
    rng = np.random.default_rng(14)
    for i in range(traces):
        start = np.sort(rng.integers(0, 10**12, rows))
        each = (10 ** rng.uniform(2, 9, rows)).astype(np.int64)
        cause = np.array(CAUSES)[rng.integers(0, len(CAUSES), rows)]
        count = np.where(cause == "fault", rng.integers(1, 50, rows), 1)
        blocks = pa.table({
            "run": pa.array(np.array(RUNS)[rng.integers(0, len(RUNS), rows)]),
            "vcpu": pa.array(rng.integers(0, 8, rows), pa.int32()),
            "start": start, "end": start + each * count,
            "cause": pa.array(cause).dictionary_encode(), "n_blocks": count, "each_ns": each,
            "root": pa.array(rng.integers(0, 4, rows))})
        vcpus = pa.table({"vcpu": pa.array(range(8), pa.int32()), "vm": [1000 + i] * 8,
                          "vcpu_id": pa.array(range(8), pa.int32()),
                          "pid": pa.array([2000 + v for v in range(8)], pa.int32()),
                          "comm": [f"CPU {v}/KVM" for v in range(8)]})
        row = {f.name: None for f in TRACES_SCHEMA}
        row.update(path=f"/fleet/host-{i:05d}.txt", format="ftrace-text", ts_unit="ns",
                   era="6.6", status="ok", policies=["sync", "6.9"], events=rows, vcpus=8,
                   event_counts=[])
        commit(root, f"{i:032x}", {"block_intervals": blocks, "vcpus": vcpus,
                                   "traces": pa.Table.from_pylist([row], schema=TRACES_SCHEMA)})


_CHILD = """
import resource, sys, time
from pathlib import Path
what, root = sys.argv[1], Path(sys.argv[2])
start = time.perf_counter()
if what == "report":
    from replay.fleets.report import fleet_page
    page = fleet_page(root)
    detail = f"{sum(r.blocks for r in page.runs):,} MMU blocks"
else:
    import pyarrow.dataset as ds
    table = ds.dataset(root / "block_intervals", format="parquet").to_table(
        columns=["run", "vcpu", "cause", "n_blocks", "each_ns"])
    detail = f"{table.num_rows:,} rows, {table.nbytes / 2**20:,.0f} MiB of Arrow"
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{what:8s} {seconds:8.2f} s  peak RSS {rss:7.0f} MiB  ({detail})")
"""


def main() -> None:
    traces = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    folder = Path(tempfile.mkdtemp(prefix="fleet-report-bench-"))
    try:
        root = folder / "ds"
        start = time.perf_counter()
        build(root, traces, rows)
        size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
        print(f"dataset: {traces:,} traces x {rows:,} block rows, {size / 2**20:,.0f} MiB of "
              f"Parquet, built in {time.perf_counter() - start:.1f} s; load "
              f"{os.getloadavg()[0]:.1f}")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        for what in ("report", "whole"):
            subprocess.run([sys.executable, "-c", _CHILD, what, str(root)], check=True,
                           env=env, cwd=folder)
        print(f"load after {os.getloadavg()[0]:.1f}; this process's peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
