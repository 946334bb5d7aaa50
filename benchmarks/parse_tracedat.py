# ruff: noqa: T201  (a benchmark script prints its figures)
"""Benchmark the trace.dat reader on >= 2 million real kvm events; compare with trace-cmd.

The input is built from real data: a v6 file whose per-CPU data repeats the ring-buffer pages
of ../shared/traces/real/tc_kvm.v6.dat, each repetition's page timestamps shifted past the
previous one so time stays monotonic (the records inside the pages are untouched).

Run: ``.venv/bin/python benchmarks/parse_tracedat.py [--events 2000000] [--keep PATH]``.
Prints events/s (streaming and whole-table), peak RSS, and ``trace-cmd report`` of the same
file to /dev/null when trace-cmd is installed, with the ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from parsers.tracedat.header import read_info  # noqa: E402
from parsers.tracedat.reader import iter_tracedat, read_tracedat  # noqa: E402

SOURCE = ROOT.parent / "shared" / "traces" / "real" / "tc_kvm.v6.dat"
EVENTS_PER_COPY = 18836


def build(out: Path, copies: int) -> None:
    """Write a v6 trace.dat repeating the source's pages ``copies`` times."""
    raw = SOURCE.read_bytes()
    info = read_info(raw, str(SOURCE))
    page = info.page_size
    fly = raw.rindex(b"flyrecord\0", 0, info.buffers[0].cpus[0].offset) + 10
    cpus = info.buffers[0].cpus
    after_pairs = fly + 16 * len(cpus)
    (clock_len,) = struct.unpack_from("<Q", raw, after_pairs)
    tail = raw[after_pairs:after_pairs + 8 + clock_len]
    pages = {c.cpu: [raw[c.offset + i:c.offset + i + page] for i in range(0, c.size, page)]
             for c in cpus}
    first = min(struct.unpack_from("<Q", p[0])[0] for p in pages.values())
    last = max(struct.unpack_from("<Q", p[-1])[0] for p in pages.values())
    span = last - first + 10_000_000  # each copy starts 10 ms after the previous one ends
    head_len = after_pairs + len(tail)
    start = -(-head_len // page) * page
    sizes = {c.cpu: c.size * copies for c in cpus}
    offsets, pos = {}, start
    for c in cpus:
        offsets[c.cpu] = pos
        pos += sizes[c.cpu]
    with out.open("wb") as fh:
        fh.write(raw[:fly])
        for c in cpus:
            fh.write(struct.pack("<QQ", offsets[c.cpu], sizes[c.cpu]))
        fh.write(tail)
        fh.write(bytes(start - head_len))
        for c in cpus:
            for k in range(copies):
                shift = k * span
                for p in pages[c.cpu]:
                    (ts,) = struct.unpack_from("<Q", p)
                    fh.write(struct.pack("<Q", ts + shift) + p[8:])


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="write the input here and keep it")
    args = ap.parse_args()
    if not SOURCE.exists():
        sys.exit(f"{SOURCE} is absent: the benchmark builds its input from it")
    copies = -(-args.events // EVENTS_PER_COPY)
    tmp = Path(tempfile.mkdtemp(prefix="bench-tracedat-"))
    path = args.keep or tmp / "big.v6.dat"
    try:
        t0 = time.perf_counter()
        build(path, copies)
        print(f"input: {path} ({path.stat().st_size / 2**20:.1f} MiB, {copies} copies of "
              f"{SOURCE.name}, {copies * EVENTS_PER_COPY:,} events) built in "
              f"{time.perf_counter() - t0:.1f}s")
        base = rss_mib()
        t0 = time.perf_counter()
        n = sum(b.events.num_rows for b in iter_tracedat(path))
        stream_s = time.perf_counter() - t0
        print(f"iter_tracedat (streaming batches): {n:,} rows in {stream_s:.2f}s = "
              f"{n / stream_s / 1e6:.2f} M events/s; peak RSS {rss_mib():.0f} MiB "
              f"(before: {base:.0f} MiB)")
        t0 = time.perf_counter()
        trace = read_tracedat(path)
        full_s = time.perf_counter() - t0
        n = trace.events.num_rows
        print(f"read_tracedat (whole Trace): {n:,} rows in {full_s:.2f}s = "
              f"{n / full_s / 1e6:.2f} M events/s; peak RSS {rss_mib():.0f} MiB")
        del trace
        exe = shutil.which("trace-cmd")
        if exe is None:
            print("trace-cmd not installed: no ratio")
            return
        t0 = time.perf_counter()
        with open(os.devnull, "wb") as null:
            subprocess.run([exe, "report", "-i", str(path)], stdout=null, stderr=null,
                           check=True)
        tc_s = time.perf_counter() - t0
        print(f"trace-cmd report > /dev/null: {tc_s:.2f}s = {n / tc_s / 1e6:.2f} M events/s")
        print(f"ratio (trace-cmd time / ours): streaming {tc_s / stream_s:.1f}x, "
              f"whole Trace {tc_s / full_s:.1f}x")
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
