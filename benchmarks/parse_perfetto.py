"""Benchmark: read a >= 2 M-event Perfetto trace written by :func:`write_perfetto`.

The trace is made from real events: ``real/tc_kvm.report_R.txt`` (``trace-cmd report -R``
of a Linux 6.18 KVM recording, raw ``name=value`` fields) parsed by a small regex here (not
the project's text reader), repeated with timestamps shifted so they keep increasing. Typed
kvmmmu/kvm events go to their typed tables; the others keep their payload as ``args``.
(``-R`` prints some fields in hex without ``0x``; values with a-f digits are read as hex, so
a few typed values are approximate; sizes and shapes are real. Events of the same microsecond
are spread over distinct nanoseconds, as a ns trace clock would have them.)

Reading runs in a child process so its peak RSS is its own:
``python benchmarks/parse_perfetto.py [--events N] [--encoding dense|legacy]``.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from parsers.schema import EVENT_FIELDS, EVENTS_SCHEMA  # noqa: E402
from parsers.trace import Trace, TraceMetadata  # noqa: E402
from parsers.typed_batch import build_typed_batch  # noqa: E402

SOURCE = ROOT.parent / "shared" / "traces" / "real" / "tc_kvm.report_R.txt"
LINE = re.compile(r"^\s*(.+)-(\d+)\s+\[(\d+)\]\s+(\d+)\.(\d{6}):\s+(\w+):\s+(.*?)\s*$")


def _num(text: str) -> int:
    return int(text, 16) if re.search(r"[a-fA-Fx]", text) else int(text)


def _parse_source() -> list[tuple[str, int, int, int, str, str]]:
    rows = []
    for line in SOURCE.read_text().splitlines():
        m = LINE.match(line)
        if m:
            comm, pid, cpu, sec, usec, name, payload = m.groups()
            rows.append((comm, int(pid), int(cpu), int(sec) * 10**9 + int(usec) * 1000, name,
                         payload))
    return rows


#: Issue 3's target for reading Perfetto.
TARGET_EVENTS_PER_S = 1_000_000


def build_trace(target: int) -> Trace:
    """A Trace of at least ``target`` events: the real events repeated, time-shifted."""
    base = _parse_source()
    span = base[-1][3] - base[0][3] + 1000
    reps = -(-target // len(base))
    n = reps * len(base)
    ts0 = np.array([r[3] for r in base], np.int64)
    ts = (ts0[None, :] + (np.arange(reps, dtype=np.int64) * span)[:, None]).ravel()
    # The text has microsecond resolution; a recorder's clock counts ns. Spread events of
    # the same microsecond over distinct ns so timestamps strictly increase, as Perfetto's do.
    same = np.concatenate([[False], ts[1:] == ts[:-1]])
    run_start = np.maximum.accumulate(np.where(~same, np.arange(n), 0))
    ts = ts + (np.arange(n) - run_start)
    seq = np.arange(n, dtype=np.int64)
    names = [r[4] for r in base] * reps
    typed_rows: dict[str, list[int]] = {}
    for i, r in enumerate(base):
        if r[4] in EVENT_FIELDS:
            typed_rows.setdefault(r[4], []).append(i)
    args = [None if r[4] in EVENT_FIELDS else r[5] for r in base] * reps
    cols = {
        "ts": pa.array(ts), "seq": pa.array(seq),
        "cpu": pa.array([r[2] for r in base] * reps, pa.int32()),
        "pid": pa.array([r[1] for r in base] * reps, pa.int32()),
        "tgid": pa.nulls(n, pa.int32()), "comm": pa.array([r[0] for r in base] * reps),
        "event": pa.array(names), "latency_flags": pa.nulls(n, pa.string()),
        "instance": pa.nulls(n, pa.string()), "args": pa.array(args, pa.string()),
    }
    arrays = [cols[f.name].dictionary_encode() if pa.types.is_dictionary(f.type)
              else cols[f.name] for f in EVENTS_SCHEMA]
    events = pa.Table.from_arrays([a.cast(f.type) for a, f in zip(arrays, EVENTS_SCHEMA,
                                                                   strict=True)],
                                  schema=EVENTS_SCHEMA)
    tables = {name: _typed(name, idx, base, reps, len(base), ts) for name, idx in
              typed_rows.items()}
    return Trace(events, tables, TraceMetadata(source=str(SOURCE), format="benchmark"))


def _typed(name: str, idx: list[int], base: list, reps: int, period: int,
           ts: np.ndarray) -> pa.Table:
    per = [dict(kv.split("=", 1) for kv in base[i][5].split() if "=" in kv) for i in idx]
    rows = (np.array(idx, np.int64)[None, :] + (np.arange(reps) * period)[:, None]).ravel()
    fields = {}
    for fname, typ in EVENT_FIELDS[name]:
        vals = [None if fname not in p else _num(p[fname]) for p in per]
        fields[fname] = pa.array(vals * reps).cast(typ, safe=False)
    rb = build_typed_batch(
        name, seq=pa.array(rows), ts=pa.array(ts[rows]),
        cpu=pa.array([base[i][2] for i in idx] * reps, pa.int32()),
        pid=pa.array([base[i][1] for i in idx] * reps, pa.int32()), fields=fields)
    return pa.Table.from_batches([rb])


def _peak_rss_mib() -> float:
    """Peak RSS of this process image (VmHWM; ru_maxrss would include the parent's peak,
    which Linux carries across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_child(path: str, mode: str, batch: int) -> None:
    """Run in the child: read ``path`` and print events/s and peak RSS."""
    from parsers.perfetto.reader import iter_perfetto, read_perfetto

    before = _peak_rss_mib()
    c0 = time.process_time()
    t0 = time.perf_counter()
    if mode == "stream":
        rows = 0
        for b in iter_perfetto(path, batch_events=batch):
            rows += b.events.num_rows
    else:
        rows = read_perfetto(path, batch_events=batch).events.num_rows
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    print(f"{mode:6s} batch={batch:>7d}: {rows} rows in {dt:.2f} s wall = "
          f"{rows / dt / 1e6:.2f} M events/s ({rows / dt / TARGET_EVENTS_PER_S:.2f}x the 1 M "
          f"target; {rows / cpu / 1e6:.2f} M/s of CPU time); "
          f"peak RSS {_peak_rss_mib():.0f} MiB (interpreter + imports {before:.0f} MiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--encoding", choices=("dense", "legacy"), default="dense")
    ap.add_argument("--out", default=None, help="keep the trace here")
    ap.add_argument("--repeat", type=int, default=2, help="runs per read mode (machine noise)")
    ap.add_argument("--read-child", nargs=3, metavar=("PATH", "MODE", "BATCH"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.read_child:
        read_child(a.read_child[0], a.read_child[1], int(a.read_child[2]))
        return
    from parsers.perfetto.writer import write_perfetto

    if not SOURCE.exists():
        sys.exit(f"{SOURCE} is absent: the benchmark needs ../shared/traces")
    t0 = time.perf_counter()
    trace = build_trace(a.events)
    print(f"built Trace: {trace.events.num_rows} events in {time.perf_counter() - t0:.1f} s")
    out = Path(a.out or tempfile.mkdtemp(prefix="pf-bench-")) / f"bench_{a.encoding}.pftrace"
    t0 = time.perf_counter()
    report = write_perfetto(trace, out, encoding=a.encoding, force=True)  # its own scratch file
    dt = time.perf_counter() - t0
    print(f"write_perfetto({a.encoding}): {report.events} events, {report.bundles} bundles, "
          f"{out.stat().st_size / 2**20:.0f} MiB in {dt:.1f} s = "
          f"{report.events / dt / 1e6:.2f} M events/s")
    del trace
    for mode, batch in (("stream", 1 << 15), ("stream", 1 << 17), ("stream", 1 << 19),
                        ("full", 1 << 17)):
        for _ in range(a.repeat):
            subprocess.run([sys.executable, __file__, "--read-child", str(out), mode, str(batch)],
                           check=True)
    if a.out is None:
        out.unlink()
        out.parent.rmdir()


if __name__ == "__main__":
    main()
