"""The cost model (kernel-semantics §2): what each unit of MMU work costs, with sources.

Every default is documented in :data:`COST_SOURCES` (and in docs/model.md). A cost model
is a frozen value; load one from TOML with :func:`load_cost_file` and override single keys
with :func:`apply_overrides` (the CLI's ``--cost KEY=VALUE``).

Per-unit costs are float nanoseconds (52.39 ns per leaf cannot be an integer without
losing 1% over 2^34 leaves); every *time* the model computes from them is rounded to
integer nanoseconds once, per run of identical units.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from replay.errors import ReplayConfigError

__all__ = ["CostModel", "COST_SOURCES", "load_cost_file", "apply_overrides", "DEFAULT_COST"]

#: 900 s for 2^34 4-KiB leaves: the seed's measurement, ≈52.39 ns per leaf.
_SEED_LEAF_NS: Final = 900e9 / 2**34


@dataclass(frozen=True)
class CostModel:
    """Costs (float ns per unit) and machine parameters of a replay.

    Attributes:
        leaf_exclusive_ns: zap of one present leaf SPTE with ``mmu_lock`` held for write.
        leaf_shared_ns: zap of one present leaf SPTE with ``mmu_lock`` held for read.
        page_table_ns: teardown of one removed page table (``handle_removed_pt``).
        frozen_entry_ns: shared-mode frozen write of one *non-present* entry of a removed table.
        tlb_flush_ns: ≤5.17 remote TLB flush issued per removed page table.
        yield_ns: one yield of a zapper (drop lock, resched, retake, restart walk).
        lock_handoff_ns: added to an ``mmu_lock`` acquisition that had to wait.
        root_alloc_ns: allocate and initialise a new root (or reuse an existing one).
        root_put_ns: ``kvm_mmu_free_roots`` for one root, without any zap.
        fault_ns: one TDP page fault that installs a leaf (exit to entry).
        invalidate_root_ns: mark one root invalid (and queue its work) in the fast zap.
        fast_zap_section_ns: the rest of ``kvm_mmu_zap_all_fast``'s write-locked section.
        scan_entry_ns: visit one non-present entry while walking (root-level passes).
        rcu_grace_ns: one RCU grace period (deferred frees, ``rcu_barrier``).
        host_cpus: host CPUs = concurrency of the system and per-VM workqueues.
        yield_on_contention: the zapper yields when a waiter appears (``rwlock_needbreak``).
    """

    leaf_exclusive_ns: float = _SEED_LEAF_NS
    leaf_shared_ns: float = _SEED_LEAF_NS
    page_table_ns: float = 0.0
    frozen_entry_ns: float = 2.0
    tlb_flush_ns: float = 2000.0
    yield_ns: float = 1000.0
    lock_handoff_ns: float = 200.0
    root_alloc_ns: float = 1000.0
    root_put_ns: float = 100.0
    fault_ns: float = 2000.0
    invalidate_root_ns: float = 100.0
    fast_zap_section_ns: float = 1000.0
    scan_entry_ns: float = 2.0
    rcu_grace_ns: float = 10_000_000.0
    host_cpus: int = 8
    yield_on_contention: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue
            if value < 0 or value != value:
                raise ReplayConfigError(f"cost {f.name}={value!r}: must be a number >= 0")
        if self.host_cpus < 1:
            raise ReplayConfigError(f"cost host_cpus={self.host_cpus}: must be >= 1")

    def leaf_ns(self, shared: bool) -> float:
        """Per-leaf zap cost in shared (read) or exclusive (write) mode."""
        return self.leaf_shared_ns if shared else self.leaf_exclusive_ns

    def to_dict(self) -> dict[str, Any]:
        """The model as a plain dict (for JSON output)."""
        return dataclasses.asdict(self)


DEFAULT_COST: Final = CostModel()

#: Where each default comes from (citations resolve in kernel-semantics' reference list).
COST_SOURCES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "leaf_exclusive_ns": "900 s / 2^34 leaves = 52.39 ns: the seed's 64 TiB 4K last-put zap "
        "(V3-22, 'Zap defunct roots via asynchronous worker')",
        "leaf_shared_ns": "same 52.39 ns; the two-pass patch's ~7 s per 4K-populated 512 GiB "
        "(1b6043e8e584) gives 52.2 ns in shared mode",
        "page_table_ns": "0: the published figures are totals divided by leaves, so table "
        "teardown is already inside the per-leaf cost",
        "frozen_entry_ns": "assumption (no published figure): one atomic xchg per non-present "
        "entry of a removed table in shared mode (handle_removed_pt)",
        "tlb_flush_ns": "assumption: one ranged remote flush per removed table on <=5.17 "
        "(removed by bb95dfb9e2df 'Defer TLB flush to caller')",
        "yield_ns": "assumption: cond_resched_rwlock_* plus a restart of the walk from the root",
        "lock_handoff_ns": "assumption: qrwlock hand-off to a waiter on another CPU",
        "root_alloc_ns": "<1 us typical root load on small VMs (6.9 cover letter, "
        "<20240111020048.844847-1-seanjc@google.com>)",
        "root_put_ns": "assumption: refcount drop and list bookkeeping",
        "fault_ns": "assumption: one EPT-violation exit to entry installing a 4K leaf; "
        "measure from kvm_page_fault -> kvm_entry deltas",
        "invalidate_root_ns": "assumption: set role.invalid and queue work for one root",
        "fast_zap_section_ns": "assumption: trace, generation toggle and all-vCPU request",
        "scan_entry_ns": "assumption: reading one non-present SPTE during a walk",
        "rcu_grace_ns": "assumption: a grace period on an idle host (a few to tens of ms)",
        "host_cpus": "assumption: workqueue concurrency; the seed's host is not described",
        "yield_on_contention": "true for PREEMPT_DYNAMIC kernels before 6.11 (rwlock_needbreak, "
        "c793a62823d1 changed it); false = yield only on need_resched",
    }
)


def _coerce(key: str, value: Any, field_type: Any) -> Any:
    if field_type in (bool, "bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise ReplayConfigError(f"cost {key}={value!r}: expected true or false")
    kind = int if field_type in (int, "int") else float
    if isinstance(value, bool):
        raise ReplayConfigError(f"cost {key}={value!r}: expected a number")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ReplayConfigError(f"cost {key}={value!r}: expected a number") from None
    return number


def _replace(base: CostModel, values: Mapping[str, Any], origin: str) -> CostModel:
    fields = {f.name: f.type for f in dataclasses.fields(CostModel)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ReplayConfigError(f"{origin}: unknown cost key {key!r}; known: {known}")
        changes[key] = _coerce(key, value, fields[key])
    return dataclasses.replace(base, **changes)


def load_cost_file(path: str | Path, base: CostModel = DEFAULT_COST) -> CostModel:
    """A cost model from a TOML file of ``key = value`` lines (keys of :class:`CostModel`).

    Keys may sit at top level or under a ``[cost]`` table.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReplayConfigError(f"{p}: cost file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ReplayConfigError(f"{p}: not valid TOML: {exc}") from None
    table = data.get("cost", data)
    if not isinstance(table, dict):
        raise ReplayConfigError(f"{p}: [cost] must be a table")
    return _replace(base, table, str(p))


def apply_overrides(base: CostModel, overrides: Iterable[str]) -> CostModel:
    """Apply ``KEY=VALUE`` strings (the CLI's ``--cost``) to ``base``."""
    values: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ReplayConfigError(f"--cost {item!r}: expected KEY=VALUE")
        values[key.strip()] = value.strip()
    return _replace(base, values, "--cost")
