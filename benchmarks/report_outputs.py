"""Benchmark: sizes and times of the HTML report and the Perfetto timeline.

Runs max-guest-memory at 1 TiB and 64 TiB under every policy and writes both outputs,
then a synthetic observed run of 1 M block rows on 8 vCPUs (no summary table, so the report
recomputes it). Prints bytes and seconds, and the HTML size against its 2 MB target.
Run: ``.venv/bin/python benchmarks/report_outputs.py``.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

# benchmarks/replay.py would shadow the ``replay`` package: drop this folder from the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from replay import run_scenario  # noqa: E402
from replay.model.recorders import BLOCKS_SCHEMA  # noqa: E402
from replay.render.html import write_report  # noqa: E402
from replay.render.timeline import write_timeline  # noqa: E402

HTML_TARGET = 2_000_000


def _synthetic(n: int) -> dict[str, pa.Table]:
    rng = np.random.default_rng(1)
    start = np.sort(rng.integers(0, 60 * 10**9, n))
    dur = rng.integers(100, 20_000, n)
    causes = np.array(["exit", "userspace", "preempted", "fault", "lock_wait"])
    cause = pa.array(causes[rng.integers(0, 5, n)]).dictionary_encode().cast(
        BLOCKS_SCHEMA.field("cause").type)
    blocks = pa.Table.from_arrays(
        [pa.array(rng.integers(0, 8, n).astype(np.int32)), pa.array(start),
         pa.array(start + dur), cause, pa.array(np.ones(n, np.int64)), pa.array(dur),
         pa.nulls(n, pa.int64())], schema=BLOCKS_SCHEMA)
    return {"blocks": blocks.append_column("lost", pa.array(rng.random(n) < 0.001))}


def _measure(name: str, runs: Mapping[str, Mapping[str, pa.Table]], out: Path) -> None:
    t0 = time.perf_counter()
    html = write_report(runs, out / "r.html", title=name, force=True).stat().st_size
    t1 = time.perf_counter()
    trace = write_timeline(runs, out / "t.pftrace", force=True).stat().st_size
    t2 = time.perf_counter()
    sys.stdout.write(f"{name:<32} html {html:>11,} B {t1 - t0:6.2f} s ({html / HTML_TARGET:.2f}"
                     f" of target)  perfetto {trace:>12,} B {t2 - t1:6.2f} s\n")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for tib in (1, 64):
            comp = run_scenario("max-guest-memory", policies=["all"], memory=tib << 40)
            _measure(f"max-guest-memory {tib}TiB, 6 policies",
                     {p: r.tables for p, r in comp.results.items()}, out)
        _measure("observed, 1M block rows", {"observed": _synthetic(1_000_000)}, out)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(f"peak RSS {rss_mb:.0f} MB\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
