"""Run one scenario under several policies: the library side of ``kvm-mmu-replay scenario``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parsers.output import check_output_file
from replay.errors import ReplayConfigError
from replay.model.cost import DEFAULT_COST, CostModel
from replay.model.policies import ALL, get_policy, policy_names
from replay.model.recorders import Recorder
from replay.model.runner import default_recorders, run
from replay.model.scenarios import SELFTEST_BINARIES, build_scenario
from replay.model.workload import Populate, Workload
from replay.result import ReplayResult

if TYPE_CHECKING:
    from replay.render.kernel_text import Layout

__all__ = ["Comparison", "run_scenario", "expand_policies", "MAX_EMITTED_FAULTS"]

#: Faults a run may print whole without ``sample_every`` (tens of millions of lines).
MAX_EMITTED_FAULTS = 4_000_000


def expand_policies(names: Sequence[str] | None) -> list[str]:
    """Policy names with ``all`` expanded (None or empty = all), duplicates dropped."""
    out: list[str] = []
    for name in names or [ALL]:
        for n in policy_names() if name == ALL else [get_policy(name).name]:
            if n not in out:
                out.append(n)
    return out


@dataclass(frozen=True)
class Comparison:
    """Results of one workload under several policies."""

    workload: Workload
    cost: CostModel
    results: Mapping[str, ReplayResult]

    def to_json_dict(self) -> dict[str, Any]:
        """``{"policies": {p: {"vcpus": {v: {blocks, p50_ns, p99_ns, max_ns, total_ns}}, ...}}}``
        plus ``scenario``, ``params``, ``cost`` and per-policy ``kernel``, ``commits``,
        ``end_ns``, ``max_block_ns``, ``worst_vcpu``, ``roots``, ``anomalies``."""
        policies: dict[str, Any] = {}
        for name, res in self.results.items():
            pol = get_policy(name)
            vcpus = res.vcpu_summary()
            worst = max(vcpus, key=lambda v: (int(vcpus[v]["max_ns"] or 0), -int(v)), default=None)
            policies[name] = {
                "vcpus": vcpus,
                "kernel": pol.kernel,
                "commits": list(pol.commits),
                "end_ns": res.end_ns,
                "max_block_ns": vcpus[worst]["max_ns"] if worst is not None else 0,
                "worst_vcpu": worst,
                "roots": res.to_arrow("roots").num_rows if "roots" in res.tables else None,
                "anomalies": res.anomalies,
            }
        return {
            "scenario": self.workload.name,
            "params": dict(self.workload.params),
            "cost": self.cost.to_dict(),
            "policies": policies,
        }


#: The placeholder ``--emit-trace`` needs when several policies run.
POLICY_PLACEHOLDER = "{policy}"


def emit_trace_paths(emit_trace: str | Path, policies: Sequence[str]) -> dict[str, str]:
    """The file each policy's emitted trace goes to: ``{policy}`` in ``emit_trace`` is
    replaced by the policy name; several policies need the placeholder (one file cannot hold
    several traces, and names the user did not write are never invented).

    Examples:
        >>> emit_trace_paths("e.{policy}.txt", ["sync", "6.9"])
        {'sync': 'e.sync.txt', '6.9': 'e.6.9.txt'}
        >>> emit_trace_paths("e.txt", ["sync"])
        {'sync': 'e.txt'}
    """
    text = str(emit_trace)
    if len(policies) > 1 and POLICY_PLACEHOLDER not in text:
        raise ReplayConfigError(
            f"{text}: {len(policies)} policies but one trace file; put {POLICY_PLACEHOLDER} "
            f"in the name (e.g. e.{POLICY_PLACEHOLDER}.txt) or choose one policy")
    return {p: text.replace(POLICY_PLACEHOLDER, p) for p in policies}


def run_scenario(
    name: str,
    *,
    policies: Sequence[str] | None = None,
    cost: CostModel = DEFAULT_COST,
    memory: int | None = None,
    slot_size: int | None = None,
    vcpus: int | None = None,
    page_size: int | None = None,
    emit_trace: str | Path | None = None,
    sample_every: int | None = None,
    force: bool = False,
    emit_layout: Layout = "tracefs",
    emit_tgid: bool = True,
) -> Comparison:
    """Build scenario ``name`` and run it under each of ``policies`` (default: all).

    With ``emit_trace`` each run also writes the kernel-text trace its era would print
    (:func:`emit_trace_paths`: ``{policy}`` in the name is replaced by the policy, and is
    required for several policies): every event, unless ``sample_every`` N > 1 keeps one in
    N faults and zapped SPTEs (said in the file's header). ``emit_layout`` ``"tracefs"`` (µs,
    the kernel's ``trace`` file) or ``"ns"`` (``trace-cmd report -t``); ``emit_tgid`` adds
    the record-tgid column. Every output path is checked by the output policy
    (:func:`parsers.output.check_output_file`, ``force`` to replace) before any run.
    """
    from replay.render.kernel_text import KernelTextTrace

    names = expand_policies(policies)
    paths = emit_trace_paths(emit_trace, names) if emit_trace is not None else {}
    for target in paths.values():
        check_output_file(target, force=force)
    workload = build_scenario(
        name, memory=memory, slot_size=slot_size, vcpus=vcpus, page_size=page_size,
        host_cpus=cost.host_cpus,
    )
    if emit_trace is not None and sample_every is None:
        leaves = sum(op.size // op.page for op in workload.ops if isinstance(op, Populate))
        if leaves > MAX_EMITTED_FAULTS:
            raise ReplayConfigError(
                f"--emit-trace would print every one of {leaves:,} faults (about "
                f"{10 * leaves:,} lines per policy); pass --sample-every N to keep one in N, "
                f"or a smaller --memory")
    results: dict[str, ReplayResult] = {}
    for pol in names:
        recs: list[Recorder] = default_recorders()
        emitter = None
        if emit_trace is not None:
            comm = SELFTEST_BINARIES.get(workload.name, workload.name)
            emitter = KernelTextTrace(policy=pol, sample_every=sample_every or 1, comm=comm,
                                      host_cpus=cost.host_cpus, cost=cost, layout=emit_layout,
                                      tgid=emit_tgid)
            recs.append(emitter)
        results[pol] = run(workload, policy=pol, cost=cost, recorders=recs)
        if emitter is not None:
            emitter.write(paths[pol], force=force)
    return Comparison(workload=workload, cost=cost, results=results)
