"""Benchmark: read a >= 2 M-event Perfetto trace written by :func:`write_perfetto`.

The trace is made from real events: ``real/tc_kvm.report_R.txt`` (``trace-cmd report -R``
of a Linux 6.18 KVM recording, raw ``name=value`` fields) parsed by a small regex here (not
the project's text reader), repeated with timestamps shifted so they keep increasing. Typed
kvmmmu/kvm events go to their typed tables; the others keep their payload as ``args``.
(``-R`` prints some fields in hex without ``0x``; values with a-f digits are read as hex, so
a few typed values are approximate; sizes and shapes are real. Events of the same microsecond
are spread over distinct nanoseconds, as a ns trace clock would have them.)

Each figure comes from a child process of its own (its CPU time and peak RSS are its own;
the writer's child builds the Trace before its clock starts), ``--runs`` times (3): writing
(dense and legacy generic events), reading streamed (32 Ki and 128 Ki-event batches) and
into a whole Trace. Each line gives wall and CPU seconds, events per second with the ratio
to the target, events per CPU-second, peak RSS and the load average before and after (the
machine is shared): ``python benchmarks/parse_perfetto.py [--events N] [--runs 3]
[--encoding dense|legacy|both]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


#: Issue 13's targets: reading Perfetto (streamed), and writing it.
TARGET_EVENTS_PER_S = 1_000_000
TARGET_WRITE_EVENTS_PER_S = 500_000


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


def _typed(name: str, idx: list[int], base: list[tuple[str, int, int, int, str, str]], reps: int, period: int,
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


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _measure(label: str, target: float, work: Callable[[], int]) -> None:
    """Run ``work`` (returns its event count) and print one JSON line of figures."""
    before_rss, load0 = _peak_rss_mib(), _load()
    c0, t0 = time.process_time(), time.perf_counter()
    rows = work()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"label": label, "events": rows, "wall": wall, "cpu": cpu,
                      "rate": rows / wall, "cpu_rate": rows / cpu, "ratio": rows / wall / target,
                      "rss": _peak_rss_mib(), "base_rss": before_rss, "load0": load0,
                      "load1": _load()}), flush=True)


def read_child(path: str, mode: str, batch: int) -> None:
    """Run in the child: read ``path`` (streamed batches or a whole Trace)."""
    from parsers.perfetto.reader import iter_perfetto, read_perfetto

    def work() -> int:
        if mode == "stream":
            return sum(int(b.events.num_rows) for b in iter_perfetto(path, batch_events=batch))
        return int(read_perfetto(path, batch_events=batch).events.num_rows)

    _measure(f"read {mode} batch={batch}", TARGET_EVENTS_PER_S, work)


def write_child(path: str, encoding: str, events: int) -> None:
    """Run in the child: build the Trace (not timed), write it to ``path``."""
    from parsers.perfetto.encode import Encoding
    from parsers.perfetto.writer import write_perfetto

    trace = build_trace(events)
    enc: Encoding = "legacy" if encoding == "legacy" else "dense"
    _measure(f"write {encoding}", TARGET_WRITE_EVENTS_PER_S,
             lambda: write_perfetto(trace, path, encoding=enc, force=True).events)


def _child(args: list[str]) -> dict[str, object]:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True,
                         text=True).stdout
    fig: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return fig


def _line(f: dict[str, Any]) -> str:
    return (f"{f['label']:33s} {f['events']} events: {f['wall']:5.2f} s wall, "
            f"{f['cpu']:5.2f} CPU-s = {f['rate'] / 1e6:.2f} M events/s "
            f"({f['ratio']:.2f}x target), {f['cpu_rate'] / 1e6:.2f} M events/CPU-s; "
            f"peak RSS {f['rss']:.0f} MiB (imports {f['base_rss']:.0f}); "
            f"load {f['load0']} -> {f['load1']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--encoding", choices=("dense", "legacy", "both"), default="both",
                    help="encodings to write and read")
    ap.add_argument("--out", default=None, help="keep the traces in this directory")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (machine noise)")
    ap.add_argument("--read-child", nargs=3, metavar=("PATH", "MODE", "BATCH"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--write-child", nargs=3, metavar=("PATH", "ENCODING", "EVENTS"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.read_child:
        read_child(a.read_child[0], a.read_child[1], int(a.read_child[2]))
        return
    if a.write_child:
        write_child(a.write_child[0], a.write_child[1], int(a.write_child[2]))
        return
    if not SOURCE.exists():
        sys.exit(f"{SOURCE} is absent: the benchmark needs ../shared/traces")
    out_dir = Path(a.out or tempfile.mkdtemp(prefix="pf-bench-"))
    print(f"{os.cpu_count()} CPUs; load average {_load()} (1/5/15 min) at start; "
          f"targets: read {TARGET_EVENTS_PER_S / 1e6:.1f} M events/s, write "
          f"{TARGET_WRITE_EVENTS_PER_S / 1e6:.1f} M events/s", flush=True)
    figures: list[dict[str, Any]] = []
    for encoding in (("dense", "legacy") if a.encoding == "both" else (a.encoding,)):
        path = out_dir / f"bench_{encoding}.pftrace"
        jobs = [["--write-child", str(path), encoding, str(a.events)]]
        jobs += [["--read-child", str(path), mode, str(batch)]
                 for mode, batch in (("stream", 1 << 15), ("stream", 1 << 17), ("full", 1 << 17))]
        for job in jobs:
            for _ in range(a.runs):
                fig = _child(job)
                fig["label"] = f"{encoding:6s} {fig['label']}"
                figures.append(fig)
                print(_line(fig), flush=True)
        print(f"{path.name}: {path.stat().st_size / 2**20:.0f} MiB", flush=True)
    _summary(figures)
    if a.out is None:
        for f in out_dir.iterdir():
            f.unlink()
        out_dir.rmdir()


def _summary(figures: list[dict[str, Any]]) -> None:
    print(f"\nsummary (load average {_load()} at end): best / median / worst of each")
    labels = list(dict.fromkeys(str(f["label"]) for f in figures))
    for label in labels:
        runs = sorted((f for f in figures if f["label"] == label), key=lambda f: -f["rate"])
        rates = " / ".join(f"{f['rate'] / 1e6:.2f}" for f in runs)
        ratios = " / ".join(f"{f['ratio']:.2f}x" for f in runs)
        cpu = " / ".join(f"{f['cpu_rate'] / 1e6:.2f}" for f in runs)
        print(f"  {label:33s} M events/s {rates} ({ratios} target); "
              f"M events/CPU-s {cpu}; peak RSS {max(f['rss'] for f in runs):.0f} MiB")


if __name__ == "__main__":
    main()
