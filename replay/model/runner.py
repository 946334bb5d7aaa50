"""``run(workload, policy=..., cost=..., recorders=...) -> ReplayResult``: the entry point."""

from __future__ import annotations

from collections.abc import Sequence

from replay.model.actors import start_actors
from replay.model.cost import DEFAULT_COST, CostModel
from replay.model.lifecycle import OnViolation, Replay
from replay.model.policies import ZapPolicy, get_policy
from replay.model.recorders import Anomalies, BlockLatency, Recorder, RefcountHistory, RootLifecycle
from replay.model.workload import Workload
from replay.result import ReplayResult, summarize_blocks

__all__ = ["run", "default_recorders"]


def default_recorders() -> list[Recorder]:
    """Block latency, refcount history, root lifecycle and anomalies."""
    return [BlockLatency(), RefcountHistory(), RootLifecycle(), Anomalies()]


def run(
    workload: Workload,
    *,
    policy: str | ZapPolicy = "sync",
    cost: CostModel = DEFAULT_COST,
    recorders: Sequence[Recorder] | None = None,
    on_violation: OnViolation = "raise",
    fast: bool = True,
) -> ReplayResult:
    """Replay ``workload`` under ``policy`` and return its tables.

    Args:
        workload: the operations to run (see :mod:`replay.model.workload`).
        policy: a registry name (``"sync"``, ``"async"``, ``"5.18"``, ``"6.4"``, ``"6.6"``,
            ``"6.9"``) or a :class:`~replay.model.policies.ZapPolicy` instance.
        cost: the cost model.
        recorders: observers; :func:`default_recorders` when None. A
            :class:`~replay.model.recorders.BlockLatency` is added if missing (the summary needs it).
        on_violation: ``"raise"`` a :class:`~replay.errors.ReplayInvariantError`, or
            ``"record"`` it in the ``anomalies`` table and go on.
        fast: let uncontended operations run without a round trip through the event heap
            (same results, step count included); False is the plain engine, for tests.

    Returns:
        A :class:`~replay.result.ReplayResult` with ``blocks``, ``summary`` and one table per
        recorder.

    Examples:
        >>> from replay.model.workload import Populate, SetSregs, Workload
        >>> w = Workload.of([Populate(vcpu=0, start=0, size=1 << 30),
        ...                  SetSregs(vcpu=0, cr0_wp=False)])
        >>> r = run(w, policy="sync")
        >>> r.vcpu_summary()["0"]["blocks"]
        262147
    """
    pol = get_policy(policy)
    recs = list(default_recorders() if recorders is None else recorders)
    blocks = next((r for r in recs if isinstance(r, BlockLatency)), None)
    if blocks is None:
        blocks = BlockLatency()
        recs.append(blocks)
    rp = Replay(pol, cost, recs, root_role=workload.root_role, on_violation=on_violation,
                fast=fast)
    start_actors(rp, workload)
    rp.sim.run()
    for root in rp.roots:
        snap = root.snapshot()
        for r in recs:
            r.root_final(snap)
    tables = {r.name: r.table() for r in recs}
    tables["summary"] = summarize_blocks(tables[blocks.name], sorted(rp.vcpus))
    return ReplayResult(
        policy=pol.name, tables=tables, end_ns=rp.end_ts, steps=rp.sim.steps,
        anomalies=rp.anomalies,
    )
