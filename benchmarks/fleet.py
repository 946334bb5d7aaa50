"""Benchmark: a fleet of traces, serial loop vs a Dask LocalCluster of 2 worker processes.

The fleet (default 200 traces): copies of bundled text samples, each under its own host name
(a first ``# kvm-mmu-replay benchmark copy: host-NNN`` comment line, which the readers count
as a header line, so each copy has its own bytes and so its own trace id), plus a few traces
the model emitted (``scenario max-guest-memory --emit-trace``, 2 MiB guest, 1-4 vCPUs).

Both runs do the same work per trace (:func:`replay.fleets.task.identify` then
:func:`replay.fleets.task.process`: read, observe, derive, replay under POLICIES, write the
partitions): the serial one in this process, the other on the cluster. Printed: traces/s,
events/s, the speed-up (issue 14's target: >= 1.7x on 2 cores), per-event cost, and the
peak RSS of each worker process.

    python benchmarks/fleet.py [TRACES] [WORKERS]
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/replay.py would shadow the replay package: import the project, not this folder
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"
COPIED = ("tracefs_record_tgid.txt", "trace_pipe_lost_events.txt", "tc_kvm.report_R.head.txt",
          "handwritten/tdp_5.17_sync.txt", "handwritten/tdp_5.18_workqueue.txt",
          "handwritten/tdp_6.6_inline.txt")
POLICIES = ["sync", "6.9"]
EMITTED = 4


def build(folder: Path, n: int) -> list[str]:
    from replay.compare import run_scenario

    out: list[str] = []
    for i in range(EMITTED):
        path = folder / f"host-emitted-{i:03d}.txt"
        run_scenario("max-guest-memory", policies=["6.9"], memory=2 << 20, slot_size=1 << 20,
                     vcpus=1 + i, emit_trace=path)
        out.append(str(path))
    bodies = [(SAMPLES / name).read_bytes() for name in COPIED]
    for i in range(n - EMITTED):
        path = folder / f"host-{i:03d}.txt"
        path.write_bytes(f"# kvm-mmu-replay benchmark copy: host-{i:03d}\n".encode()
                         + bodies[i % len(bodies)])
        out.append(str(path))
    return out


def _cpu_s() -> float:
    """CPU seconds of this process so far (all its threads: the client and, on a
    LocalCluster, the scheduler)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serial(sources: list[str], root: Path) -> tuple[float, float, int]:
    from replay.fleets.store import open_dataset
    from replay.fleets.task import identify, process

    open_dataset(root, [], resume=False, force=False)
    start, cpu, events = time.perf_counter(), _cpu_s(), 0
    for source in sources:
        got = identify(source, str(root))
        row = process(source, got["trace"], got["size"], str(root), POLICIES)
        events += row["events"] or 0
    return time.perf_counter() - start, _cpu_s() - cpu, events


def _warm() -> None:
    import replay.fleets.task  # noqa: F401 - the import a worker's first task would pay


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def on_cluster(sources: list[str], root: Path,
               workers: int) -> tuple[float, int, list[float], float, list[float]]:
    """Wall seconds, events, peak RSS per worker, CPU seconds of the client and scheduler,
    CPU seconds of each worker: on the LocalCluster `kvm-mmu-replay fleet` itself starts."""
    from replay.fleets import fleet
    from replay.fleets.engine import local_client

    with local_client(workers) as client:
        client.run(_warm)  # workers up and the project imported before the clock starts
        before = client.run(_cpu_s)
        start, cpu = time.perf_counter(), _cpu_s()
        result = fleet(sources, root, policies=POLICIES, client=client)
        took, cpu = time.perf_counter() - start, _cpu_s() - cpu
        after = client.run(_cpu_s)
        rss = sorted(client.run(_peak_rss_mb).values())
    assert len(result.rows) == len(sources), (len(result.rows), len(sources))
    return took, result.events, rss, cpu, sorted(after[w] - before[w] for w in before)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    with tempfile.TemporaryDirectory(prefix="kvm-fleet-bench.") as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        sources = build(folder, n)
        size = sum(Path(s).stat().st_size for s in sources)
        print(f"fleet: {len(sources)} traces, {size / 1e6:.1f} MB, policies {POLICIES}; "
              f"os.cpu_count() {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
        s_took, s_cpu, s_events = serial(sources, Path(tmp) / "serial")
        print(f"serial loop:        {s_took:7.2f} s  {len(sources) / s_took:6.2f} traces/s  "
              f"{s_events / s_took:10,.0f} events/s  {s_took / s_events * 1e6:.1f} µs/event; "
              f"{s_cpu:.2f} CPU-s; peak RSS {_peak_rss_mb():.0f} MB")
        shutil.rmtree(Path(tmp) / "serial")
        c_took, c_events, rss, c_cpu, w_cpu = on_cluster(sources, Path(tmp) / "cluster", workers)
        assert c_events == s_events, (c_events, s_events)
        print(f"LocalCluster x{workers}:    {c_took:7.2f} s  {len(sources) / c_took:6.2f} traces/s "
              f"  {c_events / c_took:10,.0f} events/s; CPU-s: workers "
              f"{', '.join(f'{c:.2f}' for c in w_cpu)}, client and scheduler {c_cpu:.2f}; "
              f"peak RSS per worker {', '.join(f'{r:.0f}' for r in rss)} MB")
        spent = sum(w_cpu) + c_cpu
        print(f"speed-up: {s_took / c_took:.2f}x (target >= 1.7x on 2 cores); CPU the cluster "
              f"spent over the serial loop's: {spent / s_cpu:.2f}x (the speed-up it allows on "
              f"{workers} idle cores: {workers * s_cpu / max(spent, workers * max(w_cpu)):.2f}x); "
              f"load after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
