"""Benchmark of the text reader: MB/s, events/s and peak RSS against pyarrow's line split.

Builds a >= 500 MB kernel-text trace from the real lines of
sample_traces/tracefs_record_tgid.txt (repeated, timestamps rewritten to stay monotonic),
then, each in a fresh process so peak RSS is its own:

* ``floor``: pyarrow.csv splitting the file into one string column of lines;
* ``read_trace``: the whole parse into the declared Arrow tables.

Targets on the 2-core machines: >= 100 MB/s, within 3x of the floor, peak RSS <= 2x the
resulting tables plus one batch. Usage: python benchmarks/parse_text.py [--mb 500] [--keep PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "sample_traces" / "tracefs_record_tgid.txt"
TS = re.compile(r" (\d+)\.(\d{6}): ")


def build(path: Path, megabytes: int) -> int:
    """Write the synthetic trace; returns its event count."""
    lines = [ln for ln in SOURCE.read_text().splitlines(keepends=True) if not ln.startswith("#")]
    parsed = []
    for ln in lines:
        m = TS.search(ln)
        assert m, ln
        parsed.append((ln[: m.start()], int(m[1]) * 1_000_000 + int(m[2]), ln[m.end():]))
    span = parsed[-1][1] - parsed[0][1] + 1
    target, written, count, rep = megabytes << 20, 0, 0, 0
    with open(path, "w") as out:
        out.write("".join(ln for ln in SOURCE.read_text().splitlines(True)[:12]))
        while written < target:
            shift = rep * span
            block = "".join(
                f"{head} {(us + shift) // 1_000_000:5d}.{(us + shift) % 1_000_000:06d}: {tail}"
                for head, us, tail in parsed)
            out.write(block)
            written += len(block)
            count += len(parsed)
            rep += 1
    return count


FLOOR = """
import sys, time, resource, pyarrow as pa, pyarrow.csv as csv
t = time.perf_counter()
table = csv.read_csv(sys.argv[1], read_options=csv.ReadOptions(column_names=["line"], block_size=8<<20),
    parse_options=csv.ParseOptions(delimiter="\\x1f", quote_char=False, escape_char=False),
    convert_options=csv.ConvertOptions(column_types={"line": pa.string()}))
print(time.perf_counter() - t, table.num_rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""

READ = """
import sys, time, resource
from parsers import read_trace
t = time.perf_counter()
trace = read_trace(sys.argv[1])
d = time.perf_counter() - t
nbytes = trace.events.nbytes + sum(trace.table(n).nbytes for n in trace.names)
print(d, trace.events.num_rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, nbytes)
"""


def run(code: str, path: Path) -> list[float]:
    out = subprocess.run([sys.executable, "-c", code, str(path)], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout
    return [float(x) for x in out.split()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "big.txt"
        t = time.perf_counter()
        events = build(path, args.mb)
        size = path.stat().st_size
        print(f"built {size / 1e6:.0f} MB, {events} events in {time.perf_counter() - t:.1f} s")
        floor_s, floor_rows, floor_rss = run(FLOOR, path)
        read_s, rows, rss, nbytes = run(READ, path)
        batch = 8 << 20
        result = {
            "input_mb": round(size / 1e6, 1),
            "events": int(rows),
            "read_trace_s": round(read_s, 2),
            "read_trace_mb_per_s": round(size / 1e6 / read_s, 1),
            "read_trace_events_per_s": round(rows / read_s),
            "floor_line_split_s": round(floor_s, 2),
            "floor_mb_per_s": round(size / 1e6 / floor_s, 1),
            "ratio_to_floor": round(read_s / floor_s, 2),
            "peak_rss_mb": round(rss / 1e6, 1),
            "tables_mb": round(nbytes / 1e6, 1),
            "rss_over_tables_plus_batch": round(rss / (nbytes + batch), 2),
            "targets": {"mb_per_s": 100, "ratio_to_floor": 3, "rss_over_tables_plus_batch": 2},
        }
        print(json.dumps(result, indent=2))
        if args.keep is None:
            os.unlink(path)


if __name__ == "__main__":
    main()
