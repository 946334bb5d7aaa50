# ruff: noqa: T201  (a benchmark script prints its figures)
"""Benchmark of the text reader per layout: MB/s with 1 and N workers, CPU, peak RSS.

Each layout's input is built from real lines (repeated, timestamps shifted to stay monotonic,
columns kept at their printed widths): kernel text with record-tgid
(sample_traces/tracefs_record_tgid.txt), kernel text (../shared/traces/real/tracefs_default.txt)
and the three ``trace-cmd report`` layouts (default, ``-t``, ``-R``) of
../shared/traces/real/tc_kvm.report*.txt; without ../shared the bundled heads stand in.

Each measurement runs in a fresh process so its peak RSS is its own:

* ``floor``: pyarrow.csv splitting the file into one string column of lines (the peer in the
  same run; LISA's text parser is measured too when ``lisa`` is importable);
* ``read_trace(workers=N)``: the whole parse into the declared Arrow tables.

Printed per layout and worker count: MB/s and its ratio to the 100 MB/s target and to the
peers, CPU seconds of the parent and its workers (the machine is shared: MB per CPU-second
shows what the cores would give unloaded), peak RSS of the parent and of the largest worker,
and RSS over (tables + one 8 MiB batch per worker) against the 2x target, both as measured
and above the RSS the process has after importing the package (the workers' too). The load average
is printed before and after. Usage:
``python benchmarks/parse_text.py [--mb 200] [--workers 1 2] [--layout kernel ...]``.
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
SHARED = ROOT.parent / "shared" / "traces" / "real"
SAMPLES = ROOT / "sample_traces"
#: layout -> (real source, bundled stand-in)
LAYOUTS = {
    "kernel-tgid": (SAMPLES / "tracefs_record_tgid.txt", SAMPLES / "tracefs_record_tgid.txt"),
    "kernel": (SHARED / "tracefs_default.txt", SAMPLES / "trace_pipe_lost_events.txt"),
    "report": (SHARED / "tc_kvm.report.txt", SAMPLES / "tc_kvm.report.head.txt"),
    "report-t": (SHARED / "tc_kvm.report_t.txt", SAMPLES / "tc_kvm.report_t.head.txt"),
    "report-R": (SHARED / "tc_kvm.report_R.txt", SAMPLES / "tc_kvm.report_R.head.txt"),
}
TS = re.compile(r"( +)(\d+)\.(\d+): ")
TARGET_MB_S = 100.0
BATCH = 8 << 20


def build(source: Path, path: Path, megabytes: int) -> int:
    """Repeat ``source``'s event lines into ``path`` (its header lines once, first); each
    repetition's timestamps move past the previous one's, padded to the printed width."""
    lines = source.read_text().splitlines(keepends=True)
    head = [ln for ln in lines[:40] if not TS.search(ln)]
    parsed = []
    for ln in lines:
        m = TS.search(ln)
        if m:
            digits = len(m[3])
            width = len(m[1]) + len(m[2])
            value = int(m[2]) * 10**digits + int(m[3])
            parsed.append((ln[: m.start()], value, digits, width, ln[m.end():]))
    span = max(p[1] for p in parsed) - min(p[1] for p in parsed) + 1
    target, written, count, rep = megabytes << 20, 0, 0, 0
    with open(path, "w") as out:
        out.write("".join(head))
        while written < target:
            shift = rep * span
            block = "".join(
                f"{pre} {str((v + shift) // 10**d).rjust(w - 1)}.{(v + shift) % 10**d:0{d}d}: "
                f"{tail}" for pre, v, d, w, tail in parsed)
            out.write(block)
            written += len(block)
            count += len(parsed)
            rep += 1
    return count


_USAGE = """
import resource
def usage():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime, s.ru_maxrss * 1024, c.ru_maxrss * 1024
"""

FLOOR = _USAGE + """
import sys, time, pyarrow as pa, pyarrow.csv as csv
t = time.perf_counter()
table = csv.read_csv(sys.argv[1], read_options=csv.ReadOptions(column_names=["line"], block_size=8<<20),
    parse_options=csv.ParseOptions(delimiter="\\x1f", quote_char=False, escape_char=False),
    convert_options=csv.ConvertOptions(column_types={"line": pa.string()}))
print(0, time.perf_counter() - t, table.num_rows, *usage(), 0)
"""

READ = _USAGE + """
import sys, time
from parsers import read_trace
cpu0, base, _ = usage()
t = time.perf_counter()
trace = read_trace(sys.argv[1], workers=int(sys.argv[2]))
d = time.perf_counter() - t
nbytes = trace.events.nbytes + sum(trace.table(n).nbytes for n in trace.names)
cpu, rss, child = usage()
print(base, d, trace.events.num_rows, cpu - cpu0, rss, child, nbytes)
"""

LISA = _USAGE + """
import sys, time
from lisa.trace import Trace
t = time.perf_counter()
df = Trace(sys.argv[1], parser=None).df_event("kvm_mmu_get_page")
print(0, time.perf_counter() - t, len(df), *usage(), 0)
"""


def run(code: str, *args: str, python: str = sys.executable) -> dict[str, float]:
    out = subprocess.run([python, "-c", code, *args], check=True, capture_output=True,
                         text=True, cwd=ROOT).stdout.split()
    keys = ("base_rss", "s", "rows", "cpu_s", "rss", "child_rss", "tables")
    return dict(zip(keys, (float(x) for x in out[-7:]), strict=True))


def _lisa_available(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import lisa.trace"], capture_output=True)
    return probe.returncode == 0


def _slice(path: Path, megabytes: int) -> Path:
    """The first ``megabytes`` of ``path`` (whole lines): LISA is too slow for all of it
    (its figure is MB/s on that slice, including its start-up)."""
    out = path.with_suffix(".lisa.txt")
    with open(path, "rb") as f:
        data = f.read(megabytes << 20)
    out.write_bytes(data[: data.rfind(b"\n") + 1])
    return out


def measure(layout: str, path: Path, workers: list[int], lisa: str | None
            ) -> dict[str, object]:
    size = path.stat().st_size
    mb = size / 1e6
    floor = run(FLOOR, str(path))
    floor_mb_s = mb / floor["s"]
    result: dict[str, object] = {"layout": layout, "input_mb": round(mb, 1),
                                 "floor_mb_per_s": round(floor_mb_s, 1)}
    lisa_mb_s = None
    if lisa:
        part = _slice(path, 4)
        try:
            peer = run(LISA, str(part), python=lisa)
            lisa_mb_s = part.stat().st_size / 1e6 / peer["s"]
            result["lisa_mb_per_s_on_4_mb"] = round(lisa_mb_s, 2)
        except subprocess.CalledProcessError as exc:
            last = (exc.stderr or "").strip().splitlines()[-1:] or ["?"]
            result["lisa"] = f"fails on this layout: {last[0][:160]}"
        part.unlink()
    for n in workers:
        r = run(READ, str(path), str(n))
        mb_s = mb / r["s"]
        base = r["base_rss"]  # the process after importing parsers, before reading
        data_rss = r["rss"] - base + n * max(r["child_rss"] - base, 0) * (n > 1)
        batches = r["tables"] + BATCH * max(n, 1)
        result[f"workers={n}"] = {
            "s": round(r["s"], 2), "events": int(r["rows"]), "mb_per_s": round(mb_s, 1),
            "ratio_to_target": round(mb_s / TARGET_MB_S, 2),
            "ratio_to_floor": round(mb_s / floor_mb_s, 3),
            "ratio_to_lisa": round(mb_s / lisa_mb_s, 1) if lisa_mb_s else "no LISA",
            "cpu_s": round(r["cpu_s"], 2), "mb_per_cpu_s": round(mb / r["cpu_s"], 1),
            "import_rss_mb": round(base / 1e6), "peak_rss_mb": round(r["rss"] / 1e6),
            "worker_peak_rss_mb": round(r["child_rss"] / 1e6),
            "tables_mb": round(r["tables"] / 1e6, 1),
            "rss_over_tables_plus_batches": round(r["rss"] / batches, 2),
            "rss_above_import_over_tables_plus_batches": round(data_rss / batches, 2),
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--layout", choices=sorted(LAYOUTS), nargs="+", default=list(LAYOUTS))
    ap.add_argument("--keep", type=Path, default=None, help="directory to keep inputs in")
    ap.add_argument("--lisa-python", default=sys.executable,
                    help="a Python with lisa (pip install lisa-linux) for the peer figure")
    args = ap.parse_args()
    lisa = args.lisa_python if _lisa_available(args.lisa_python) else None
    print(f"load before: {os.getloadavg()}; cores {os.cpu_count()}; LISA "
          f"{lisa or 'not importable (no LISA figure)'}")
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        for layout in args.layout:
            real, standin = LAYOUTS[layout]
            source = real if real.exists() else standin
            path = where / f"{layout}.txt"
            t = time.perf_counter()
            events = build(source, path, args.mb)
            print(f"{layout}: built {path.stat().st_size / 1e6:.0f} MB, {events} events from "
                  f"{source.name} in {time.perf_counter() - t:.1f} s")
            print(json.dumps(measure(layout, path, args.workers, lisa)))
            if args.keep is None:
                path.unlink()
    print(f"load after: {os.getloadavg()}; targets: {TARGET_MB_S} MB/s, "
          "rss_over_tables_plus_batches <= 2")


if __name__ == "__main__":
    main()
