"""Benchmark: derive + replay of a large real-shaped trace (issue 5's target: >= 1 M trace
events/s through derive + replay of one policy on a 10 M-event trace).

Two inputs, both built from real data so the VMs keep running the same recorded workload
for longer (each copy shifted past the end of the previous one):

1. streaming: a trace.dat repeating the ring-buffer pages of
   ../shared/traces/real/tc_kvm.v6.dat (as benchmarks/parse_tracedat.py builds it), read
   with ``load_for_replay`` (batches slimmed to what the replay reads) then replayed; the
   parse share is timed apart (after), and the peak RSS is that of load + replay alone
   (issue 12's target: under 1.5 GB at 10 M events);
2. in memory: copies of the bundled sample_traces/tracefs_record_tgid.txt tables (two VMs x
   two vCPUs, tgid known) replayed from a whole :class:`~parsers.trace.Trace`.

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
#: Issue 12: the peak RSS of the streamed 10 M-event replay stays under 1.5 GB.
TARGET_PEAK_BYTES = 1_500_000_000
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


def streaming(events: int, policy: str) -> None:
    """Phase 1: trace.dat → load_for_replay → replay, peak RSS of this phase."""
    import importlib.util
    import tempfile

    here = Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location("parse_tracedat", here / "parse_tracedat.py")
    if spec is None or spec.loader is None:
        raise SystemExit("benchmarks/parse_tracedat.py is missing")
    tracedat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tracedat)
    if not tracedat.SOURCE.is_file():
        print(f"streaming  skipped: {tracedat.SOURCE} is absent")
        return
    from parsers import iter_trace
    from replay.trace_replay import load_for_replay

    copies = -(-events // tracedat.EVENTS_PER_COPY)
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        path = Path(tmp) / "big.v6.dat"
        tracedat.build(path, copies)
        # load + replay first, from the peak-RSS mark reset, so its peak is its own (the
        # parse-only pass would leave its freed heap behind in the process)
        own_peak = _reset_peak_rss()
        t0 = time.perf_counter()
        trace = load_for_replay(path)
        loaded = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = replay(trace, policy=policy)
        wall = time.perf_counter() - t0
        peak = _peak_rss_bytes()
        blocks = result.block_intervals.num_rows
        del trace, result
        t0 = time.perf_counter()
        rows = sum(b.events.num_rows for b in iter_trace(path))
        parse = time.perf_counter() - t0
    print(f"streaming  {rows:,} events from a {copies}-copy trace.dat of tc_kvm.v6.dat")
    print(f"  parse only            {parse:6.2f} s = {rows / parse / 1e6:.2f} M events/s")
    print(f"  load_for_replay       {loaded:6.2f} s (parse + slim batches)")
    print(f"  derive+observe+replay {wall:6.2f} s = {rows / wall / 1e6:.2f} M events/s "
          f"({policy}; {rows / wall / TARGET_EVENTS_PER_S:.2f}x the 1 M target)")
    print(f"  end to end            {loaded + wall:6.2f} s = {rows / (loaded + wall) / 1e6:.2f} "
          f"M events/s ({blocks:,} block rows)")
    print(f"  peak RSS              {peak / 1e6:,.0f} MB "
          f"{'of load_for_replay + replay alone' if own_peak else 'of the whole process so far'}"
          f"; {peak / TARGET_PEAK_BYTES:.2f}x the {TARGET_PEAK_BYTES / 1e9:.1f} GB target")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) so that the next reading is this phase's
    own peak (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``); False where unavailable."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_bytes() -> int:
    """Peak RSS since the last reset (``VmHWM``), else of the whole process (ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> int:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    policy = sys.argv[2] if len(sys.argv) > 2 else "6.9"
    streaming(events, policy)
    t0 = time.perf_counter()
    trace = build(events)
    built = time.perf_counter() - t0
    n = trace.events.num_rows
    print(f"in memory  {n:,} events ({n // 11957} copies of {SAMPLE}), built in {built:.1f} s")
    t0 = time.perf_counter()
    result = replay(trace, policy=policy)
    wall = time.perf_counter() - t0
    rate = n / wall
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    blocks = result.block_intervals.num_rows
    print(f"replay     {wall:.2f} s  ({policy}: derive + observe + replay, {blocks:,} block rows)")
    print(f"rate       {rate / 1e6:.2f} M events/s  target >= {TARGET_EVENTS_PER_S / 1e6:.1f} M "
          f"({rate / TARGET_EVENTS_PER_S:.2f}x target)")
    print(f"peak RSS   {rss_mb:,.0f} MB (max of the process so far; the whole input Trace, "
          f"payload text included, is in memory)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
