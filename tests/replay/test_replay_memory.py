"""Memory of one trace's replay against the trace's size (issue 14 item 4).

Each size runs in a fresh interpreter, so its Arrow pool peak is its own. Not timed: sizes
are compared, never durations. The benchmark (``benchmarks/replay.py``) reports RSS at
10 M events; this pins the shape at small sizes. (Python and NumPy memory is not bounded
this way: the derived workload holds one operation object per fault run, so it grows with
the trace; the traced peak is in the payload's ``traced_peak`` for inspection.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "replay.py"

#: Loads the trace once (its Arrow size), then replays it from the path with tracemalloc on.
CHILD = """
import importlib.util, json, sys, tempfile, tracemalloc
from pathlib import Path
import pyarrow as pa
spec = importlib.util.spec_from_file_location("bench_replay", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
from replay import replay
from replay.trace_replay import load_for_replay
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "tdp.txt"
    events = bench.write_tdp_trace(path, int(sys.argv[2]), seed=3)
    pool = pa.default_memory_pool()
    trace = load_for_replay(path)
    size = pool.bytes_allocated()
    del trace
    tracemalloc.start()
    result = replay(path, policy="6.9")
    traced = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"events": events, "trace": size, "arrow_peak": pool.max_memory(),
                      "traced_peak": traced, "blocks": result.block_intervals.num_rows}))
"""


def _measure(faults: int) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(BENCH), str(faults)], check=True,
                         capture_output=True, text=True).stdout
    row: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return row


@pytest.fixture(scope="module")
def sizes() -> tuple[dict[str, int], dict[str, int]]:
    return _measure(6_000), _measure(24_000)


def test_arrow_memory_grows_only_by_the_trace(
        sizes: tuple[dict[str, int], dict[str, int]]) -> None:
    """Each event added to the trace adds to Arrow's peak little more than its own slim row
    (the result tables and one column being concatenated grow too): no copy of the whole
    events table, which would add at least as much again (a filtered copy for event
    counts or syscalls was one: 1.40x before; 1.24x now)."""
    small, big = sizes
    assert big["events"] > 3.5 * small["events"]
    assert big["trace"] > 3 * small["trace"]
    added_peak = big["arrow_peak"] - small["arrow_peak"]
    added_trace = big["trace"] - small["trace"]
    assert added_peak <= 1.3 * added_trace, (small, big)
    assert big["arrow_peak"] <= 1.6 * big["trace"], big
