"""Benchmark: derive + replay of a large real-shaped trace (issue 5's target: >= 1 M trace
events/s through derive + replay of one policy on a 10 M-event trace).

The input is built from the bundled real trace (sample_traces/tracefs_record_tgid.txt,
two VMs x two vCPUs): its tables are repeated back to back, each copy shifted past the end
of the previous one, so the VMs keep running the same workload for longer. Parsing is not
timed here (see parse_*.py); the figure is derive + observe + replay of the in-memory
:class:`~parsers.trace.Trace`.

    python benchmarks/replay.py [EVENTS] [POLICY]
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow
# the ``replay`` package: drop the folder before importing it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from parsers import Trace, read_trace  # noqa: E402
from replay import replay  # noqa: E402

TARGET_EVENTS_PER_S = 1_000_000
SAMPLE = "sample_traces/tracefs_record_tgid.txt"


def _repeat(table: pa.Table, copies: int, span: int, rows: int) -> pa.Table:
    parts = []
    for i in range(copies):
        t = table.set_column(table.column_names.index("ts"), "ts",
                             pc.add(table.column("ts"), i * span))
        t = t.set_column(t.column_names.index("seq"), "seq", pc.add(t.column("seq"), i * rows))
        parts.append(t.cast(table.schema))
    return pa.concat_tables(parts).unify_dictionaries().combine_chunks()


def build(events: int) -> Trace:
    """A trace of about ``events`` events made of copies of the bundled real trace."""
    base = read_trace(SAMPLE)
    rows = base.events.num_rows
    copies = max(1, -(-events // rows))
    ts = base.events.column("ts")
    span = pc.max(ts).as_py() - pc.min(ts).as_py() + 1_000_000
    ev = _repeat(base.events, copies, span, rows)
    tables = {n: _repeat(base.table(n), copies, span, rows) for n in base.names}
    return Trace(ev, tables, base.metadata)


def main() -> int:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    policy = sys.argv[2] if len(sys.argv) > 2 else "6.9"
    t0 = time.perf_counter()
    trace = build(events)
    built = time.perf_counter() - t0
    n = trace.events.num_rows
    print(f"input      {n:,} events ({n // 11957} copies of {SAMPLE}), built in {built:.1f} s")
    t0 = time.perf_counter()
    result = replay(trace, policy=policy)
    wall = time.perf_counter() - t0
    rate = n / wall
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    blocks = result.block_intervals.num_rows
    print(f"replay     {wall:.2f} s  ({policy}: derive + observe + replay, {blocks:,} block rows)")
    print(f"rate       {rate / 1e6:.2f} M events/s  target >= {TARGET_EVENTS_PER_S / 1e6:.1f} M "
          f"({rate / TARGET_EVENTS_PER_S:.2f}x target)")
    print(f"peak RSS   {rss_mb:,.0f} MB (whole process: the input trace is in memory)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
