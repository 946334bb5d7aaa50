"""Benchmark: derive + replay of large traces.

Shadow MMU (issue 5's target: >= 1 M trace events/s through derive + replay of one policy
on a 10 M-event trace). Two inputs, both built from real data so the VMs keep running the
same recorded workload for longer (each copy shifted past the end of the previous one):

1. streaming: a trace.dat repeating the ring-buffer pages of
   ../shared/traces/real/tc_kvm.v6.dat (as benchmarks/parse_tracedat.py builds it), read
   with ``load_for_replay`` (batches slimmed to what the replay reads) then replayed; the
   parse share is timed apart (after), and the peak RSS is that of load + replay alone
   (issue 14's target: at most 1 GB at 10 M events; issue 12's was 1.5 GB), beside the
   anonymous peak (the RSS without the spilled rows' mapped page cache);
2. in memory: copies of the bundled sample_traces/tracefs_record_tgid.txt tables (two VMs x
   two vCPUs, tgid known) replayed from a whole :class:`~parsers.trace.Trace`.

TDP MMU, scattered faults (issue 12's targets: >= 0.3 M trace events/s through derive +
replay at 200 k faults, and time(200 k) / time(50 k) <= 5.5, i.e. about linear): one VM
(tgid recorded) whose 2 vCPUs fault N random distinct 4 KiB pages of a 16 GiB guest, N =
50 000 and 200 000, written as kernel ftrace text (:func:`write_tdp_trace`). Each size runs
in its own process, so its peak RSS is its own (parse, derive and replay).

Memory limit (``limit``, not run by default): the same trace.dat replayed in a child
process limited to :data:`LIMIT_BYTES` (or the MB given), three ways: spilled (the
default for large sources: the trace's rows are files mapped into the process, page cache
the kernel evicts under the limit), slim rows in memory, and the whole trace. The limit
is a memory cgroup (anonymous memory and page cache, what a container or a Kubernetes
worker is given) when this process may make one, else ``RLIMIT_DATA``; the trace's own
sizes (whole tables, slim rows) are printed beside it. The limited children use the C
library's allocator for Arrow (``ARROW_DEFAULT_MEMORY_POOL=system``): mimalloc reserves
address space in large arenas it does not use, which ``RLIMIT_DATA`` would count.

    python benchmarks/replay.py [EVENTS] [POLICY] [shadow|tdp|limit][,...] [LIMIT_MB]
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would shadow
# the ``replay`` package: drop the folder before importing it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from parsers import Trace, read_trace  # noqa: E402
from replay import replay  # noqa: E402
from replay.render.kernel_text import TGID_HEADER  # noqa: E402

TARGET_EVENTS_PER_S = 1_000_000
#: Issue 14: the peak RSS of the streamed 10 M-event replay is at most 1 GB.
TARGET_PEAK_BYTES = 1_000_000_000
#: The ``limit`` case's default memory limit: below the slim rows of 10 M events (about
#: 0.46 GB) and half the whole trace's tables (0.86 GB); the spilled replay needs about
#: 0.43 GB of its own memory there.
LIMIT_BYTES = 500_000_000
SAMPLE = "sample_traces/tracefs_record_tgid.txt"
TDP_FAULTS = (50_000, 200_000)
TDP_TARGET_EVENTS_PER_S = 300_000
TDP_TARGET_SCALING = 5.5


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


def _tracedat_builder() -> Any:
    """benchmarks/parse_tracedat.py, which writes trace.dat copies of the real trace."""
    import importlib.util

    here = Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location("parse_tracedat", here / "parse_tracedat.py")
    if spec is None or spec.loader is None:
        raise SystemExit("benchmarks/parse_tracedat.py is missing")
    tracedat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tracedat)
    return tracedat


def streaming(events: int, policy: str) -> None:
    """Phase 1: trace.dat → load_for_replay → replay, peak RSS of this phase."""
    import tempfile

    tracedat = _tracedat_builder()
    if not tracedat.SOURCE.is_file():
        print(f"streaming  skipped: {tracedat.SOURCE} is absent")
        return
    from parsers import iter_trace
    from replay.trace_replay import SPILL_FROM_BYTES, load_for_replay

    copies = -(-events // tracedat.EVENTS_PER_COPY)
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        path = Path(tmp) / "big.v6.dat"
        tracedat.build(path, copies)
        spilled = path.stat().st_size >= SPILL_FROM_BYTES
        # load + replay first, from the peak-RSS mark reset, so its peak is its own (the
        # parse-only pass would leave its freed heap behind in the process)
        own_peak = _reset_peak_rss()
        with _AnonPeak() as anon:
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
          f"; {peak / TARGET_PEAK_BYTES:.2f}x the {TARGET_PEAK_BYTES / 1e9:.1f} GB target "
          f"({'met' if peak <= TARGET_PEAK_BYTES else 'NOT met'}; load {os.getloadavg()[0]:.1f})")
    print(f"  anonymous peak        {anon.bytes / 1e6:,.0f} MB (RssAnon: the process's own "
          + ("memory; the rest of the RSS is the spilled rows' page cache, which the kernel "
             "evicts under a limit: see the limit case)" if spilled else
             f"memory; a trace.dat under {SPILL_FROM_BYTES >> 20} MiB is not spilled)"))


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) so that the next reading is this phase's
    own peak (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``); False where unavailable."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes (None where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss_bytes() -> int:
    """Peak RSS since the last reset (``VmHWM``), else of the whole process (ru_maxrss)."""
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--tdp-child":
        return tdp_child(int(sys.argv[2]), sys.argv[3])
    if len(sys.argv) > 1 and sys.argv[1] == "--limit-child":
        return limit_child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    policy = sys.argv[2] if len(sys.argv) > 2 else "6.9"
    cases = sys.argv[3].split(",") if len(sys.argv) > 3 else ["shadow", "tdp"]
    if "shadow" in cases:
        shadow(events, policy)
    if "tdp" in cases:
        tdp(policy)
    if "limit" in cases:
        limit_mb = int(sys.argv[4]) if len(sys.argv) > 4 else LIMIT_BYTES // 1_000_000
        limited(events, policy, limit_mb * 1_000_000)
    return 0


def shadow(events: int, policy: str) -> None:
    """The shadow-MMU figures: streaming trace.dat, then the in-memory copies."""
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



# ---------------------------------------------------------------- TDP, scattered faults
_TGID = 5000
_GUEST_PAGES = 1 << 22  # 16 GiB of 4 KiB pages
#: (level of the page table, gfn bits it covers): 1G-level table per 512 GiB, 2M-level per
#: 1 GiB, 4K-level per 2 MiB; each is linked by a non-leaf SPTE one level up.
_TABLES = ((3, 27), (2, 18), (1, 9))


def write_tdp_trace(path: Path, faults: int, seed: int = 12) -> int:
    """Write the tracefs ``trace`` (record-tgid) of 2 vCPUs faulting ``faults`` random
    distinct 4 KiB pages on a 4-level TDP root; returns the number of events.

    The shapes are those of sample_traces/handwritten (kernel-semantics §3.1 print formats):
    vCPU 0 allocates the root (``kvm_mmu_get_page ... l4 ... new``) and both enter; per
    fault, on alternate vCPUs 5 us apart: ``kvm_exit`` (EPT_VIOLATION), ``kvm_page_fault``,
    ``kvm_mmu_spte_requested``, for each missing page table its ``kvm_mmu_get_page`` and the
    non-leaf ``kvm_tdp_mmu_spte_changed`` linking it, the leaf's ``kvm_tdp_mmu_spte_changed``
    and ``kvm_mmu_set_spte``, then ``kvm_entry``. ``replay.render.kernel_text.format_line`` has no
    tgid column, so the lines are formatted here; page payloads use its ``page_role_text``.
    """
    import numpy as np

    from replay.model.workload import TDP_ROOT_ROLE
    from replay.render.kernel_text import page_role_text

    gfns = np.random.default_rng(seed).choice(_GUEST_PAGES, size=faults, replace=False)
    heads = [f"{f'CPU {v}/KVM':>16}-{_TGID + 1 + v:<7} ({_TGID:>7}) [{v:03d}]" for v in (0, 1)]
    lines: list[str] = []

    def emit(v: int, us: int, flags: str, event: str, payload: str) -> None:
        lines.append(f"{heads[v]} {flags} {100 + us // 1_000_000:5d}.{us % 1_000_000:06d}: "
                     f"{event}: {payload}")

    def page(gfn: int, level: int) -> str:
        return page_role_text(0, gfn, (TDP_ROOT_ROLE & ~0xF) | level, 0) + " new"

    emit(0, 10, "...1.", "kvm_mmu_get_page", page(0, 4))
    for v in (0, 1):
        emit(v, 12 + 3 * v, "d..1.", "kvm_entry",
             f"vcpu {v}, rip 0xfff0 intr_info 0x{0:08x} error_code 0x{0:08x}")
    tables: dict[tuple[int, int], int] = {}
    for i, gfn in enumerate(gfns.tolist()):
        v, us, rip, pfn = i & 1, 100 + 5 * i, 0x401000 + 16 * (i % 4096), 0x200000 + i
        emit(v, us, "d..1.", "kvm_exit",
             f"vcpu {v} reason EPT_VIOLATION rip {rip:#x} info1 0x{0x181:016x} info2 0x{0:016x}"
             f" intr_info 0x{0:08x} error_code 0x{0:08x} requests 0x{0:016x}")
        emit(v, us + 1, ".....", "kvm_page_fault",
             f"vcpu {v} rip {rip:#x} address 0x{gfn << 12:016x} error_code 0x181")
        emit(v, us + 1, "...1.", "kvm_mmu_spte_requested", f"gfn {gfn:x} pfn {pfn:x} level 1")
        for level, shift in _TABLES:
            base = gfn >> shift << shift
            if (level, base) not in tables:
                tables[level, base] = table = 0x10A001 + len(tables)
                emit(v, us + 2, "...1.", "kvm_mmu_get_page", page(base, level))
                emit(v, us + 2, "...1.", "kvm_tdp_mmu_spte_changed",
                     f"as id 0 gfn {base:x} level {level + 1} old_spte 0 "
                     f"new_spte {table << 12 | 0x907:x}")
        spte, sptep = 0x600000000000B77 | pfn << 12, 0xFFFF888000000000 | tables[1, gfn >> 9 << 9] << 12
        emit(v, us + 2, "...1.", "kvm_tdp_mmu_spte_changed",
             f"as id 0 gfn {gfn:x} level 1 old_spte 0 new_spte {spte:x}")
        emit(v, us + 2, "...1.", "kvm_mmu_set_spte",
             f"gfn {gfn:x} spte {spte:x} (rwx) level 1 at {sptep + 8 * (gfn & 511):x}")
        emit(v, us + 3, "d..1.", "kvm_entry",
             f"vcpu {v}, rip {rip:#x} intr_info 0x{0:08x} error_code 0x{0:08x}")
    with path.open("w", encoding="utf-8", newline="\n") as out:
        out.write(TGID_HEADER.format(n=len(lines), cpus=2))
        out.write("\n".join(lines))
        out.write("\n")
    return len(lines)


def tdp_child(faults: int, policy: str) -> int:
    """One size, in its own process: write, parse (timed apart), then derive + replay.
    Prints one JSON line for :func:`tdp`."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-tdp-") as tmp:
        path = Path(tmp) / f"tdp_{faults}.txt"
        write_tdp_trace(path, faults)
        t0 = time.perf_counter()
        trace = read_trace(path)
        parse = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    result = replay(trace, policy=policy)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    blocks = result.block_intervals
    faulted = blocks.filter(pc.and_(pc.equal(blocks.column("run"), policy),
                                    pc.equal(blocks.column("cause"), "fault"))).column("n_blocks")
    print(json.dumps({"faults": faults, "events": trace.events.num_rows, "parse": parse,
                      "wall": wall, "cpu": cpu, "rss_mb": rss_mb, "load": os.getloadavg()[0],
                      "replayed": pc.sum(faulted).as_py()}))
    return 0


def tdp(policy: str) -> None:
    """Scattered TDP faults at each of :data:`TDP_FAULTS`, each size in a fresh process."""
    import json
    import subprocess

    rows = []
    for faults in TDP_FAULTS:
        out = subprocess.run([sys.executable, __file__, "--tdp-child", str(faults), policy],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"tdp        2 vCPUs fault N random distinct 4 KiB pages of a 16 GiB guest "
          f"(text, record-tgid; {policy})")
    print("  faults     events  parse s  derive+replay s (CPU s)  M events/s (CPU)  peak RSS MB"
          "  faults replayed  load")
    for r in rows:
        print(f"  {r['faults']:>7,} {r['events']:>10,} {r['parse']:>8.2f} {r['wall']:>16.2f} "
              f"({r['cpu']:5.2f}) {r['events'] / r['wall'] / 1e6:>11.3f} "
              f"({r['events'] / r['cpu'] / 1e6:.3f}) {r['rss_mb']:>12,.0f} {r['replayed']:>16,}"
              f"  {r['load']:4.1f}")
    last = rows[-1]
    rate = last["events"] / last["wall"]
    cpu_rate = last["events"] / last["cpu"]
    scaling = rows[-1]["wall"] / rows[0]["wall"]
    cpu_scaling = rows[-1]["cpu"] / rows[0]["cpu"]
    print(f"  rate at {last['faults']:,}: {rate / 1e6:.3f} M events/s, target >= "
          f"{TDP_TARGET_EVENTS_PER_S / 1e6:.1f} M ({rate / TDP_TARGET_EVENTS_PER_S:.2f}x target); "
          f"per CPU-second {cpu_rate / 1e6:.3f} M ({cpu_rate / TDP_TARGET_EVENTS_PER_S:.2f}x)")
    print(f"  time({rows[-1]['faults'] // 1000}k)/time({rows[0]['faults'] // 1000}k) "
          f"{scaling:.2f} (CPU {cpu_scaling:.2f}), target <= {TDP_TARGET_SCALING} "
          f"({scaling / TDP_TARGET_SCALING:.2f} of the bound; linear is "
          f"{rows[-1]['faults'] / rows[0]['faults']:.1f})")
    print("  (wall time is the figure; CPU time shows what a machine shared with other work "
          "took from it; load = the 1-minute load average as each size finished)")


# ---------------------------------------------------------------- memory limit
def limited(events: int, policy: str, limit: int) -> None:
    """The replay of an ``events``-event trace.dat under a memory limit of ``limit`` bytes,
    three ways: spilled (``load_for_replay``'s default for large sources), slim in memory
    (``spill=False``) and the whole trace (``read_trace``); beside the trace's own sizes."""
    import json
    import subprocess
    import tempfile

    tracedat = _tracedat_builder()
    if not tracedat.SOURCE.is_file():
        print(f"limit      skipped: {tracedat.SOURCE} is absent")
        return
    # one malloc arena and one BLAS thread: each more reserves writable memory it may not use
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "2",
           "OPENBLAS_NUM_THREADS": "1"}
    runs: dict[str, dict[str, Any]] = {}
    how = _memory_cgroup_kind()
    with tempfile.TemporaryDirectory(prefix="bench-limit-") as tmp:
        path = Path(tmp) / "big.v6.dat"
        tracedat.build(path, -(-events // tracedat.EVENTS_PER_COPY))
        file_bytes = path.stat().st_size
        for mode in ("size", "spilled", "memory", "whole"):
            with _limited_group(0 if mode == "size" else limit) as group:
                t0 = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, __file__, "--limit-child", str(path), policy,
                     str(limit if group is None and mode != "size" else 0), mode],
                    capture_output=True, text=True, env=env,
                    preexec_fn=(lambda g=group: _join_group(g)) if group else None)
                wall = time.perf_counter() - t0
                used = _group_peak(group)
            lines = done.stdout.strip().splitlines()
            runs[mode] = json.loads(lines[-1]) if done.returncode == 0 and lines else {
                "error": (done.stderr.strip().splitlines() or
                          [f"killed by signal {-done.returncode} (the OOM killer)"
                           if done.returncode < 0 else f"exit {done.returncode}"])[-1]}
            runs[mode].update(wall=wall, group_peak=used)
    size = runs["size"]
    print(f"limit      {events:,}-event trace.dat ({file_bytes / 1e6:,.0f} MB), memory limited to "
          f"{limit / 1e6:,.0f} MB by {how or 'RLIMIT_DATA (no writable memory cgroup)'}")
    if "error" not in size:
        print(f"  the trace's own size:  whole tables {size['trace_bytes'] / 1e6:,.0f} MB, slim "
              f"rows (load_for_replay) {size['slim_bytes'] / 1e6:,.0f} MB: the limit is "
              f"{limit / size['trace_bytes']:.2f}x and {limit / size['slim_bytes']:.2f}x of them")
    for mode, what in (("spilled", "spilled replay (default)"),
                       ("memory", "slim rows in memory (spill=False)"),
                       ("whole", "whole-trace replay (read_trace)")):
        r = runs[mode]
        used = f", cgroup peak {r['group_peak'] / 1e6:,.0f} MB" if r.get("group_peak") else ""
        print(f"  {what:34s} " + (
            f"completed in {r['wall']:.1f} s, {r['blocks']:,} block rows, anonymous peak "
            f"{r['anon_peak'] / 1e6:,.0f} MB{used}, load {r['load']:.1f}"
            if "error" not in r else f"failed: {r['error'][:90]}"))


#: cgroup v1 and v2 memory controllers, where this process may make a group.
_CGROUP_V1 = Path("/sys/fs/cgroup/memory")
_CGROUP_V2 = Path("/sys/fs/cgroup")


def _memory_cgroup_kind() -> str | None:
    """How a limit is set here: a cgroup v1 or v2 memory controller we may write, or None."""
    if (_CGROUP_V1 / "memory.limit_in_bytes").is_file() and os.access(_CGROUP_V1, os.W_OK):
        return "a memory cgroup (v1 memory.limit_in_bytes: anonymous memory + page cache)"
    controllers = _CGROUP_V2 / "cgroup.controllers"
    if controllers.is_file() and "memory" in controllers.read_text().split() and \
            os.access(_CGROUP_V2, os.W_OK):
        return "a memory cgroup (v2 memory.max: anonymous memory + page cache)"
    return None


class _limited_group:  # noqa: N801 - a context manager used like a function
    """A new memory cgroup limited to ``limit`` bytes (None inside when there is none to
    make, or ``limit`` is 0); removed on exit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.path: Path | None = None

    def __enter__(self) -> Path | None:
        kind = _memory_cgroup_kind() if self.limit else None
        if kind is None:
            return None
        v1 = "v1" in kind
        self.path = (_CGROUP_V1 if v1 else _CGROUP_V2) / f"kvm-mmu-bench-{os.getpid()}"
        self.path.mkdir()
        (self.path / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(
            str(self.limit))
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            for _ in range(50):  # the child's pages are uncharged just after it exits
                try:
                    self.path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def _join_group(group: Path) -> None:
    (group / "cgroup.procs").write_text(str(os.getpid()))


def _group_peak(group: Path | None) -> int | None:
    if group is None:
        return None
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        if (group / name).is_file():
            return int((group / name).read_text())
    return None


def limit_child(path: Path, policy: str, limit: int, mode: str) -> int:
    """One run of :func:`limited`, in its own process: ``size`` reads the trace whole and
    slim and prints their Arrow sizes; the others replay it (under ``limit`` as
    ``RLIMIT_DATA`` when no cgroup limits them)."""
    import json

    from replay.trace_replay import load_for_replay

    if limit:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    if mode == "size":
        trace = read_trace(path)
        size = sum(trace.table(n).nbytes for n in ["events", *trace.names])
        del trace
        slim = load_for_replay(path, spill=False)
        print(json.dumps({"trace_bytes": size, "slim_bytes": sum(
            slim.table(n).nbytes for n in ["events", *slim.names])}))
        return 0
    with _AnonPeak() as peak:
        trace = read_trace(path) if mode == "whole" else load_for_replay(
            path, spill=mode == "spilled")
        result = replay(trace, policy=policy)
    print(json.dumps({"blocks": result.block_intervals.num_rows, "anon_peak": peak.bytes,
                      "load": os.getloadavg()[0]}))
    return 0


class _AnonPeak:
    """The largest ``RssAnon`` (the process's own memory, not the mapped files' page cache)
    seen while the block runs, sampled every 5 ms by a thread."""

    def __init__(self) -> None:
        self.bytes = 0
        self._stop = False
        self._thread: Any = None

    @staticmethod
    def now() -> int:
        return _status_bytes("RssAnon") or 0

    def _run(self) -> None:
        while not self._stop:
            self.bytes = max(self.bytes, self.now())
            time.sleep(0.005)

    def __enter__(self) -> _AnonPeak:
        import threading

        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()
        self.bytes = max(self.bytes, self.now())


if __name__ == "__main__":
    sys.exit(main())
