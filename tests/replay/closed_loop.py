"""The closed loop: a model run's emitted trace, read back, derived and replayed, against the
model run itself (issue 12). Shared by test_closed_loop.py and test_closed_loop_random.py."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from parsers import read_trace
from replay.model.cost import DEFAULT_COST, CostModel
from replay.model.ids import ActorId, Nanos, RootId
from replay.model.population import Extent
from replay.model.recorders import Recorder
from replay.model.runner import default_recorders, run
from replay.model.workload import Populate, Workload
from replay.render.kernel_text import KernelTextTrace, Layout
from replay.result import ReplayResult
from replay.trace_replay import replay
from replay.trace_result import TraceReplayResult


class Faulted(Recorder):
    """The leaves each vCPU faulted (distinct pages)."""

    name = "faulted"

    def __init__(self) -> None:
        self.pages: dict[int, set[tuple[int, int]]] = {}

    def faults(self, start: Nanos, actor: ActorId, root: RootId, faulted: list[Extent],
               installed: list[Extent], each_ns: int) -> None:
        mine = self.pages.setdefault(int(actor[4:]), set())
        for e in faulted:
            mine.update((a, e.page) for a in range(e.start, e.end, e.page))

    def table(self) -> pa.Table:
        return pa.table({"vcpu": list(self.pages)})


@dataclass
class Loop:
    """One emit -> read -> derive -> replay round."""

    direct: ReplayResult
    replayed: TraceReplayResult
    policy: str
    faulted: dict[int, set[tuple[int, int]]] = field(default_factory=dict)


def emit(workload: Workload, policy: str, path: Path, *, layout: Layout = "ns",
         cost: CostModel = DEFAULT_COST, comm: str = "closed_loop") -> tuple[ReplayResult, Faulted]:
    """Run ``workload`` under ``policy`` writing its trace to ``path``."""
    emitter = KernelTextTrace(policy=policy, comm=comm, host_cpus=cost.host_cpus, cost=cost,
                              layout=layout)
    faulted = Faulted()
    result = run(workload, policy=policy, cost=cost,
                 recorders=[*default_recorders(), emitter, faulted])
    emitter.write(path)
    return result, faulted


def loop(workload: Workload, emit_policy: str, replay_policy: str, path: Path, *,
         layout: Layout = "ns", cost: CostModel = DEFAULT_COST) -> Loop:
    """Emit under ``emit_policy``, replay under ``replay_policy``; the direct run is under
    ``replay_policy``."""
    _, faulted = emit(workload, emit_policy, path, layout=layout, cost=cost)
    direct = run(workload, policy=replay_policy, cost=cost)
    replayed = replay(read_trace(path), policy=[replay_policy], cost=cost)
    return Loop(direct, replayed, replay_policy, faulted.pages)


def loop_all(workload: Workload, emit_policy: str, path: Path, policies: list[str],
             direct: dict[str, ReplayResult], *, cost: CostModel = DEFAULT_COST
             ) -> dict[str, Loop]:
    """Emit once under ``emit_policy``; replay under each of ``policies`` (the direct runs
    are taken from, and added to, ``direct``)."""
    _, faulted = emit(workload, emit_policy, path, cost=cost)
    replayed = replay(read_trace(path), policy=policies, cost=cost)
    for q in policies:
        if q not in direct:
            direct[q] = run(workload, policy=q, cost=cost)
    return {q: Loop(direct[q], replayed, q, faulted.pages) for q in policies}


def per_vcpu(summary: pa.Table) -> dict[int, dict[str, object]]:
    rows = summary.to_pylist()
    return {int(r["vcpu"]): {k: r[k] for k in ("blocks", "max_ns", "total_ns", "max_cause")}
            for r in rows if r.get("run", "x") != "observed"}


def causes(blocks: pa.Table) -> Counter[tuple[int, str]]:
    out: Counter[tuple[int, str]] = Counter()
    for r in blocks.select(["vcpu", "cause", "n_blocks"]).to_pylist():
        out[(int(r["vcpu"]), str(r["cause"]))] += int(r["n_blocks"])
    return out


def refcount_history(table: pa.Table) -> dict[int, list[tuple[int, tuple[int, ...], int]]]:
    """Per root, per instant: the changes (deltas, sorted) and the count after them.

    Changes at one nanosecond are simultaneous: the model orders them by which process
    it happened to resume first, which a replay with other operation boundaries may not
    repeat."""
    steps: dict[int, dict[int, tuple[list[int], int]]] = {}
    for r in table.select(["ts", "root", "refcount", "delta"]).to_pylist():
        at = steps.setdefault(int(r["root"]) % 1_000_000, {})
        deltas, _ = at.get(int(r["ts"]), ([], 0))
        at[int(r["ts"])] = ([*deltas, int(r["delta"])], int(r["refcount"]))
    return {root: [(ts, tuple(sorted(d)), c) for ts, (d, c) in sorted(at.items())]
            for root, at in steps.items()}


def differences(lp: Loop, *, slack_max: int = 0, slack_each: int = 0) -> list[str]:
    """What differs between the direct run and the replay of its trace (empty: nothing).

    With slack (the µs text) lock waits are not counted: a request time truncated to the
    µs can start a step up to 999 ns early, into a lock hand-off the direct run missed."""
    out: list[str] = []
    run_ = lp.replayed.runs[lp.policy]
    want = per_vcpu(lp.direct.to_arrow("summary"))
    got = per_vcpu(run_["summary"])
    want_causes = causes(lp.direct.to_arrow("blocks"))
    got_causes = causes(run_["blocks"])
    if slack_each:
        waits_w = {v: n for (v, c), n in want_causes.items() if c == "lock_wait"}
        waits_g = {v: n for (v, c), n in got_causes.items() if c == "lock_wait"}
        for v, row in want.items():
            row["blocks"] = int(row["blocks"]) - waits_w.get(v, 0)  # type: ignore[call-overload]
        for v, row in got.items():
            row["blocks"] = int(row["blocks"]) - waits_g.get(v, 0)  # type: ignore[call-overload]
        want_causes = Counter({k: n for k, n in want_causes.items() if k[1] != "lock_wait"})
        got_causes = Counter({k: n for k, n in got_causes.items() if k[1] != "lock_wait"})
    if want_causes != got_causes:
        out.append(f"blocks per cause: direct {sorted(want_causes.items())} replayed "
                   f"{sorted(got_causes.items())}")
    for v in sorted(set(want) | set(got)):
        w, g = want.get(v), got.get(v)
        if w is None or g is None:
            out.append(f"vCPU {v}: direct {w} replayed {g}")
            continue
        non_fault = sum(n for (vv, c), n in want_causes.items() if vv == v and c != "fault")
        if w["blocks"] != g["blocks"] or w["max_cause"] != g["max_cause"] \
                or abs(int(w["max_ns"]) - int(g["max_ns"])) > slack_max \
                or abs(int(w["total_ns"]) - int(g["total_ns"])) > slack_each * max(1, non_fault):
            out.append(f"vCPU {v}: direct {w} replayed {g}")
    if slack_each == 0:
        hw = refcount_history(lp.direct.to_arrow("refcounts"))
        hg = refcount_history(run_["refcounts"])
        if hw != hg:
            bad = [r for r in sorted(set(hw) | set(hg)) if hw.get(r) != hg.get(r)]
            out.append(f"refcount history differs for roots {bad[:5]}: direct "
                       f"{hw.get(bad[0], [])[:6]} replayed {hg.get(bad[0], [])[:6]}")
    threads = lp.replayed.threads
    if len(threads.vms) != 1 or threads.warnings:
        out.append(f"VMs {threads.vms}, thread warnings {threads.warnings}")
    derived = lp.replayed.derived
    pages: dict[int, set[tuple[int, int]]] = {}
    for w in derived.workloads.values():
        for op in w.ops:
            if isinstance(op, Populate):
                pages.setdefault(op.vcpu, set()).update(
                    (a, op.page) for a in range(op.start, op.start + op.size, op.page))
    if pages != {v: p for v, p in lp.faulted.items() if p}:
        out.append(f"derived leaves {[(v, len(p)) for v, p in sorted(pages.items())]} vs "
                   f"faulted {[(v, len(p)) for v, p in sorted(lp.faulted.items())]}")
    return out
