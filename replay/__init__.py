"""Deterministic discrete-event model of KVM's x86 TDP MMU root lifecycle.

``run(workload, policy=..., cost=..., recorders=...) -> ReplayResult`` replays a
:class:`Workload` under one root-zap policy (``sync``, ``async``, ``5.18``, ``6.4``,
``6.6``, ``6.9``); :func:`run_scenario` builds a selftest-like workload and runs it under
several. :func:`replay` observes a recorded trace and replays the workload derived from it
under each policy. :func:`fleet` does that for many traces on Dask (the ``fleet`` extra;
without it ``import replay`` still works and :func:`fleet` raises
:class:`~parsers.errors.MissingExtraError`) into a dataset, a :class:`FleetResult`. See
docs/model.md, docs/replay.md and docs/fleet.md.
"""

from replay.compare import Comparison, run_scenario
from replay.errors import ReplayConfigError, ReplayInvariantError, WorkloadError
from replay.fleets import FleetResult, fleet
from replay.model.cost import COST_SOURCES, DEFAULT_COST, CostModel, apply_overrides, load_cost_file
from replay.model.policies import (
    AsyncZap,
    InlineZap,
    LeafGranularZap,
    PreservedRootsZap,
    SyncZap,
    WorkqueueZap,
    ZapPolicy,
    get_policy,
    policy_names,
)
from replay.model.recorders import Anomalies, BlockLatency, Recorder, RefcountHistory, RootLifecycle
from replay.model.records import BlockInterval, RefChange, Root
from replay.model.runner import default_recorders, run
from replay.model.scenarios import SCENARIOS, build_scenario
from replay.model.workload import Workload
from replay.render.kernel_text import KernelTextTrace
from replay.result import ReplayResult
from replay.trace_replay import replay
from replay.trace_result import TraceReplayResult

__all__ = [
    "Anomalies",
    "AsyncZap",
    "BlockInterval",
    "BlockLatency",
    "COST_SOURCES",
    "Comparison",
    "CostModel",
    "DEFAULT_COST",
    "FleetResult",
    "InlineZap",
    "KernelTextTrace",
    "LeafGranularZap",
    "PreservedRootsZap",
    "Recorder",
    "RefChange",
    "RefcountHistory",
    "ReplayConfigError",
    "ReplayInvariantError",
    "ReplayResult",
    "Root",
    "RootLifecycle",
    "SCENARIOS",
    "SyncZap",
    "TraceReplayResult",
    "Workload",
    "WorkloadError",
    "WorkqueueZap",
    "ZapPolicy",
    "apply_overrides",
    "build_scenario",
    "replay",
    "default_recorders",
    "fleet",
    "get_policy",
    "load_cost_file",
    "policy_names",
    "run",
    "run_scenario",
]
