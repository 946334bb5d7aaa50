# ruff: noqa: T201  (a benchmark script prints its figures)
"""Benchmark the trace.dat reader on >= 2 million real kvm events; compare with trace-cmd.

The input is built from real data: a v6 file whose per-CPU data repeats the ring-buffer pages
of ../shared/traces/real/tc_kvm.v6.dat, each repetition's page timestamps shifted past the
previous one so time stays monotonic (the records inside the pages are untouched).

With trace-cmd installed the same data is also converted (``trace-cmd convert``) to v7 with
zstd, the format trace-cmd 3.x records by default, and both files are read.

Run: ``.venv/bin/python benchmarks/parse_tracedat.py [--events N] [--runs 3] [--workers 1 2]``.
Prints, per run, file and worker count: events/s streaming and into a whole Trace, the ratio to
the 1.5 M events/s target and to ``trace-cmd report`` of the same file to /dev/null measured
in the same run, and peak RSS (each read in its own process).
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


TARGET = 1.5e6  # events/s into a whole Trace (issue 13 item 2), and 2x trace-cmd report


def reset_peak() -> None:
    """Reset the peak-RSS mark (VmHWM) so each figure is that read's own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mib() -> float:
    """This process's peak RSS since the last reset (VmHWM), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trace_cmd_seconds(path: Path) -> float | None:
    """Wall time of ``trace-cmd report`` of ``path`` to /dev/null (None: not installed)."""
    exe = shutil.which("trace-cmd")
    if exe is None:
        return None
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as null:
        subprocess.run([exe, "report", "-i", str(path)], stdout=null, stderr=null, check=True)
    return time.perf_counter() - t0


def to_v7_zstd(v6: Path, out: Path) -> bool:
    """``trace-cmd convert`` to v7 with zstd, the format trace-cmd 3.x records by default."""
    exe = shutil.which("trace-cmd")
    if exe is None:
        return False
    done = subprocess.run([exe, "convert", "-i", str(v6), "-o", str(out), "--file-version",
                           "7", "--compression", "zstd"], capture_output=True, check=False)
    return done.returncode == 0 and out.exists()


def measure(path: Path, workers: int, stream: bool) -> tuple[int, float, float]:
    """Rows, seconds and peak RSS (MiB) of one read of ``path``, in a fresh child process so
    the peak is that read's own (timed after the imports)."""
    out = subprocess.run([sys.executable, __file__, "--child", str(path), str(workers),
                          "stream" if stream else "trace"], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), float(out[1]), float(out[2])


def child(path: Path, workers: int, stream: bool) -> None:
    """In the child: one read, printing rows, seconds and peak RSS."""
    reset_peak()
    t0 = time.perf_counter()
    if stream:
        n = sum(b.events.num_rows for b in iter_tracedat(path, workers=workers))
    else:
        n = read_tracedat(path, workers=workers).events.num_rows
    print(n, time.perf_counter() - t0, peak_mib())


def report(path: Path, label: str, workers: list[int]) -> None:
    """One run on ``path``: trace-cmd report, then each way of reading it."""
    tc_s = trace_cmd_seconds(path)
    for w in workers:
        for stream in (True, False):
            n, secs, rss = measure(path, w, stream)
            rate = n / secs
            what = "iter_tracedat (streaming)" if stream else "read_tracedat (whole Trace)"
            vs_tc = (f"{tc_s / secs:.2f}x trace-cmd report ({n / tc_s / 1e6:.2f} M/s, "
                     f"{tc_s:.2f}s)") if tc_s else "no trace-cmd"
            print(f"  {label} workers={w} {what}: {n:,} rows in {secs:.2f}s = "
                  f"{rate / 1e6:.2f} M events/s = {rate / TARGET:.2f}x target; {vs_tc}; "
                  f"peak RSS {rss:.0f} MiB")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "stream")
        return
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=2_570_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--keep", type=Path, default=None, help="write the input here and keep it")
    args = ap.parse_args()
    if not SOURCE.exists():
        sys.exit(f"{SOURCE} is absent: the benchmark builds its input from it")
    copies = -(-args.events // EVENTS_PER_COPY)
    tmp = Path(tempfile.mkdtemp(prefix="bench-tracedat-"))
    path = args.keep or tmp / "big.v6.dat"
    try:
        build(path, copies)
        files = [(path, "v6")]
        v7 = tmp / "big.v7zstd.dat"
        if to_v7_zstd(path, v7):
            files.insert(0, (v7, "v7/zstd"))
        for p, label in files:
            print(f"input {label}: {p} ({p.stat().st_size / 2**20:.1f} MiB, {copies} copies of "
                  f"{SOURCE.name}, {copies * EVENTS_PER_COPY:,} events)")
        print(f"target: {TARGET / 1e6:.1f} M events/s and 2x trace-cmd report; "
              f"load: {os.getloadavg()}")
        for run in range(1, args.runs + 1):
            print(f"run {run} (load {os.getloadavg()[0]:.2f}):")
            for p, label in files:
                report(p, label, args.workers)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
