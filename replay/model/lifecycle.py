"""The replay's state and the era-independent primitives of the root lifecycle (§1.2).

:class:`Replay` holds everything of one run (no globals): the event loop, ``mmu_lock``,
the workqueues, the roots and the vCPUs. Policies (:mod:`replay.model.policies`) and the
operation handlers (:mod:`replay.model.actors`) compose its primitives: GET/PUT with holders,
ALLOC/REUSE, INVALIDATE, ZAP (shared by every zapper of a root, yielding at unit
boundaries when ``mmu_lock`` is contended), and RCU-deferred FREE. Invariants of
kernel-semantics §5 are checked where they can break.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from replay.errors import ReplayInvariantError
from replay.model.cost import CostModel
from replay.model.engine import Signal, Sim, Wait
from replay.model.ids import ActorId, Nanos, RootId, VcpuId
from replay.model.lock import READ, WRITE, Mode, RwLock
from replay.model.population import Granularity, WorkCursor, counts_of, zap_segments
from replay.model.recorders import Recorder, ZapShape
from replay.model.records import Anomaly, BlockCause, BlockInterval, RefChange
from replay.model.roots import RootState
from replay.model.workqueue import Workqueue

__all__ = ["Replay", "VcpuState", "OnViolation", "LifecyclePolicy"]

log = logging.getLogger(__name__)

OnViolation = Literal["raise", "record"]


class LifecyclePolicy(Protocol):
    """What :class:`Replay` asks of a zap policy (:class:`replay.model.policies.ZapPolicy`).

    A protocol, so that the policies may import :class:`Replay` without this module
    importing them back.
    """

    @property
    def initial_refcount(self) -> int: ...
    @property
    def preserves_roots(self) -> bool: ...
    @property
    def role_has_cr0_wp(self) -> bool: ...
    @property
    def granularity(self) -> Granularity: ...
    @property
    def fast_zap_granularity(self) -> Granularity: ...
    @property
    def tlb_flush_per_table(self) -> bool: ...
    @property
    def root_lock(self) -> Mode: ...

    def fast_zap(self, rp: Replay, actor: ActorId) -> Wait:
        """Invalidate and zap every root of the VM (``kvm_mmu_zap_all_fast``)."""
        ...

    def uninit(self, rp: Replay, actor: ActorId) -> Wait:
        """Tear the VM's roots down at VM destruction."""
        ...

    def on_last_put(
        self, rp: Replay, root: RootState, putter: ActorId, mode: Mode | None
    ) -> Wait:
        """The count of ``root`` just reached 0."""
        ...


class VcpuState:
    """A vCPU: its current root, guest CR0.WP, pending request and a kick signal."""

    __slots__ = ("id", "actor", "root", "cr0_wp", "role_override", "request", "kick", "gone")

    def __init__(self, vid: int, actor: ActorId, sim: Sim) -> None:
        self.id = VcpuId(vid)
        self.actor = actor
        self.root: RootState | None = None
        self.cr0_wp = True
        self.role_override: int | None = None
        self.request = False
        self.kick = Signal(sim)
        self.gone = False


class Replay:
    """One run of a workload under one policy."""

    def __init__(
        self,
        policy: LifecyclePolicy,
        cost: CostModel,
        recorders: Sequence[Recorder],
        *,
        root_role: int,
        on_violation: OnViolation = "raise",
        fast: bool = True,
    ) -> None:
        self.sim = Sim()
        #: take the engine's shortcuts (:meth:`replay.model.actors._Driver._fast_populate`,
        #: :class:`~replay.model.engine.Wakeup`); False runs every step through the heap
        self.fast = fast
        self.policy = policy
        self.cost = cost
        self.recorders = list(recorders)
        self.root_role = root_role
        self.on_violation = on_violation
        self.lock = RwLock(self.sim)
        self.system_wq = Workqueue(self.sim, "events", cost.host_cpus, "kworker/")
        self.vm_wq = Workqueue(self.sim, "kvm", cost.host_cpus, "kworker/u:")
        self.roots: list[RootState] = []
        #: the linked roots (``tdp_mmu_roots``) by id, in creation order: a long trace makes
        #: thousands of roots, and every load and fast zap looks at the linked ones only
        self._linked: dict[RootId, RootState] = {}
        self.vcpus: dict[int, VcpuState] = {}
        self.mmu_valid_gen = 0
        self.vm_dying = False
        self.fast_zap_busy = False
        self.rcu_pending = 0
        self._rcu_idle = Signal(self.sim)
        self.end_ts = 0
        self.anomalies = 0
        self.zap_shapes: dict[RootId, ZapShape] = {}

    @property
    def now(self) -> Nanos:
        """Current simulated time."""
        return Nanos(self.sim.now)

    # ---------------------------------------------------------------- reporting
    def violate(
        self, reason: str, *, root: RootState | None = None, holder: str | None = None,
        invariant: int | None = None,
    ) -> None:
        """Raise :class:`ReplayInvariantError`, or record it as an anomaly."""
        rid = None if root is None else root.id
        if self.on_violation == "raise":
            raise ReplayInvariantError(self.now, rid, holder, reason, invariant=invariant)
        self.anomalies += 1
        item = Anomaly(self.now, rid, holder, invariant, reason)
        for r in self.recorders:
            r.anomaly(item)

    def block(
        self, actor: str, start: int, cause: BlockCause, *, count: int = 1, each: int | None = None,
        root: RootState | None = None,
    ) -> None:
        """Report that vCPU ``actor`` was blocked from ``start`` until now (vCPUs only)."""
        v = self._vcpu_of(actor)
        end = self.sim.now
        if v is None or (end <= start and count <= 1):
            return
        iv = BlockInterval(
            vcpu=v.id, start=Nanos(start), end=Nanos(end), cause=cause, count=count,
            each_ns=(end - start) if each is None else each,
            root=None if root is None else root.id,
        )
        for r in self.recorders:
            r.block(iv)

    def _vcpu_of(self, actor: str) -> VcpuState | None:
        if not actor.startswith("vcpu"):
            return None
        return self.vcpus.get(int(actor[4:]))

    def _ref(self, root: RootState, delta: int, holder: str, reason: str) -> None:
        change = RefChange(self.now, root.id, root.refcount, delta, holder, reason)
        for r in self.recorders:
            r.refcount(change)

    # ---------------------------------------------------------------- references
    def new_root(self, role: int, actor: ActorId) -> RootState:
        """ALLOC: a new linked root with the era's initial references (§1.2)."""
        for other in self._linked.values():
            if not other.invalid and other.role == role:
                self.violate("second valid root with the same role", root=other, holder=actor,
                             invariant=10)
        root = RootState(RootId(len(self.roots)), role, self.now, actor)
        self.roots.append(root)
        self._linked[root.id] = root
        for r in self.recorders:
            r.root_created(self.now, root.id, role, actor)
        root.refcount = 1
        root.holders[actor] += 1
        self._ref(root, +1, actor, "alloc")
        if self.policy.initial_refcount == 2:
            root.refcount = 2
            root.holders["tdp_mmu"] += 1
            self._ref(root, +1, "tdp_mmu", "alloc: TDP MMU reference (edbdb43fc96b)")
        return root

    def get(self, root: RootState, holder: str, reason: str) -> bool:
        """GET = ``refcount_inc_not_zero``: False on a root whose count already hit 0."""
        if root.refcount <= 0:
            return False
        root.refcount += 1
        root.holders[holder] += 1
        self._ref(root, +1, holder, reason)
        return True

    def transfer(self, root: RootState, old: str, new: str, reason: str) -> None:
        """A reference changes hands (a gift): count unchanged."""
        if root.holders[old] <= 0:
            self.violate(f"{old} gives away a reference it does not hold", root=root,
                         holder=old, invariant=5)
        root.holders[old] -= 1
        root.holders[new] += 1
        self._ref(root, 0, new, f"{reason} (from {old})")

    def resurrect(self, root: RootState, holder: str) -> None:
        """Eras B/C: the putter that saw 0 on a valid root sets the count back to 1."""
        if root.refcount != 0 or not root.linked:
            self.violate("resurrecting a root that is not at 0 or not listed", root=root,
                         holder=holder, invariant=1)
        root.refcount = 1
        root.holders[holder] += 1
        self._ref(root, +1, holder, "resurrect defunct root for its zap work")

    def put(
        self, root: RootState, holder: str, reason: str, mode: Mode | None, by: str | None = None
    ) -> Wait:
        """PUT ``holder``'s reference; on reaching 0 run the era's action in thread ``by``
        (default: the holder itself), which holds ``mmu_lock`` in ``mode``."""
        if root.refcount <= 0:
            self.violate("put after the refcount reached 0", root=root, holder=holder,
                         invariant=1)
            return None
        if root.holders[holder] <= 0:
            self.violate(f"{holder} puts a reference it does not hold", root=root,
                         holder=holder, invariant=5)
        root.holders[holder] -= 1
        root.refcount -= 1
        self._ref(root, -1, holder, reason)
        if root.refcount == 0:
            if self.policy.preserves_roots and not root.invalid:
                self.violate("a valid root reached refcount 0 (the TDP MMU holds one)",
                             root=root, holder=holder, invariant=4)
            yield from self.policy.on_last_put(self, root, ActorId(by or holder), mode)
        return None

    def invalidate(self, root: RootState, actor: str) -> None:
        """INVALIDATE: set ``role.invalid`` (never cleared)."""
        if not root.invalid:
            root.invalid = True
            root.invalidated = self.now

    def unlink(self, root: RootState) -> None:
        """``list_del_rcu`` (under ``tdp_mmu_pages_lock``)."""
        if root.linked:
            root.linked = False
            root.unlinked = self.now
            del self._linked[root.id]

    def free_rcu(self, root: RootState) -> None:
        """``call_rcu(tdp_mmu_free_sp_rcu_callback)``: free after a grace period."""
        self.call_rcu(lambda: self._free(root))

    def unlink_and_free(self, root: RootState) -> None:
        """Unlink now and free after a grace period (the last put of an invalid root)."""
        self.unlink(root)
        self.free_rcu(root)

    def _free(self, root: RootState) -> None:
        if root.freed is not None:
            self.violate("root freed twice", root=root, invariant=2)
        if root.refcount != 0 or root.linked:
            self.violate("root freed with references or still listed", root=root, invariant=2)
        root.freed = self.now

    def call_rcu(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after one RCU grace period."""
        self.rcu_pending += 1

        def done() -> None:
            fn()
            self.rcu_pending -= 1
            self.end_ts = max(self.end_ts, self.sim.now)
            if self.rcu_pending == 0:
                idle, self._rcu_idle = self._rcu_idle, Signal(self.sim)
                idle.fire(None)

        self.sim.schedule(round(self.cost.rcu_grace_ns), done)

    def rcu_barrier(self) -> Signal:
        """Fires when every pending RCU callback has run."""
        if self.rcu_pending == 0:
            sig = Signal(self.sim)
            sig.fire(None)
            return sig
        return self._rcu_idle

    def live_roots(self) -> list[RootState]:
        """Roots on ``tdp_mmu_roots``, in creation order."""
        return list(self._linked.values())

    # ---------------------------------------------------------------- mmu_lock
    def acquire(self, actor: str, mode: Mode) -> Wait:
        """Take ``mmu_lock``; a vCPU that waits gets a ``lock_wait`` block."""
        t0 = self.sim.now
        waited = yield self.lock.acquire(mode, actor)
        if waited:
            yield self.sim.timeout(round(self.cost.lock_handoff_ns))
            self.block(actor, t0, "lock_wait")

    def release(self, actor: str, mode: Mode) -> None:
        """Drop ``mmu_lock``."""
        self.lock.release(mode, actor)

    def relock(self, actor: str, mode: Mode) -> Wait:
        """Yield the lock (``cond_resched_rwlock_*``) and take it again."""
        self.release(actor, mode)
        yield self.sim.timeout(round(self.cost.yield_ns))
        yield from self.acquire(actor, mode)

    def run_cursor(self, cur: WorkCursor, yieldable: bool) -> Wait:
        """Do work from ``cur`` while holding the lock: until done, or (``yieldable``) until
        the first unit boundary after somebody starts waiting. Returns True when done."""
        t0 = self.sim.now
        rem = cur.remaining_ns()
        if yieldable:
            which, _ = yield self.sim.first_of(self.sim.timeout(rem), self.lock.contended())
        else:
            yield self.sim.timeout(rem)
            which = 0
        if which == 0:
            cur.finish()
            return True
        step = cur.advance(self.sim.now - t0)
        yield self.sim.timeout(t0 + step - self.sim.now)
        return cur.finished

    # ---------------------------------------------------------------- zap
    def zap(
        self, root: RootState, actor: str, mode: Mode | None, *, granularity: Granularity,
        yieldable: bool,
    ) -> Wait:
        """ZAP (``tdp_mmu_zap_root``) with ``mmu_lock`` held in ``mode`` (None: held by the
        caller in a mode that never yields). Several zappers of one root share its work:
        one runs, the others wait for it to park or finish (yielding the lock if contended).
        """
        if root.refcount <= 0 and root.linked:
            self.violate("zapping a listed root without holding a reference", root=root,
                         holder=actor, invariant=6)
        can_yield = yieldable and mode is not None and self.cost.yield_on_contention
        if root.zap is None:
            segments = zap_segments(
                root.population, granularity, self.cost, shared=mode == READ,
                tlb_per_table=self.policy.tlb_flush_per_table,
            )
            root.zap = WorkCursor(segments)
            self.zap_shapes[root.id] = ZapShape(granularity, mode == READ,
                                                self.policy.tlb_flush_per_table, tuple(segments))
            if root.zap_start is None:
                root.zap_start = self.now
                root.zapped_by = ActorId(actor)
        while root.zap is not None and not root.zap.finished:
            if root.zap_active:
                waits = [root.zap_changed] if root.zap_changed is not None else []
                if can_yield:
                    waits.append(self.lock.contended())
                which, _ = yield self.sim.first_of(*waits)
                if which == 1 and mode is not None:
                    yield from self.relock(actor, mode)
                continue
            done = yield from self._zap_stretch(root, actor, can_yield)
            if done:
                self._zap_done(root)
                return None
            if mode is not None:
                yield from self.relock(actor, mode)
        return None

    def _zap_stretch(self, root: RootState, actor: str, can_yield: bool) -> Wait:
        cur = root.zap
        assert cur is not None
        root.zap_active = True
        root.zap_changed = Signal(self.sim)
        t0 = self.sim.now
        total = max(1, cur.total_ns)
        f0 = 1.0 - cur.remaining_ns() / total
        done = yield from self.run_cursor(cur, can_yield)
        f1 = 1.0 - cur.remaining_ns() / total
        self.block(actor, t0, "zap", root=root)
        for r in self.recorders:
            r.zapped(Nanos(t0), self.now, ActorId(actor), root.id, root.population, f0, f1,
                     shape=self.zap_shapes.get(root.id))
        root.zap_active = False
        changed, root.zap_changed = root.zap_changed, None
        changed.fire(None)
        return done

    def _zap_done(self, root: RootState) -> None:
        counts = counts_of(root.population)
        root.leaves_zapped += counts.leaves
        root.tables_zapped += counts.tables
        root.population.clear()
        root.zap = None
        root.zap_end = self.now
        self.end_ts = max(self.end_ts, self.sim.now)
        if counts.tables:
            self.call_rcu(lambda: None)  # removed child tables are freed via call_rcu

    def queue_zap(self, wq: Workqueue, root: RootState, holder: str, by: str) -> None:
        """Thread ``by`` queues ``root``'s zap on ``wq``; the work puts ``holder``'s reference."""
        if root.queued:
            self.violate("root queued for zapping twice", root=root, holder=holder,
                         invariant=5)
        root.queued = True
        for r in self.recorders:
            r.work(self.now, ActorId(by), "queue", root.id, wq.name)

        def work(worker: str) -> Wait:
            for r in self.recorders:
                r.work(self.now, ActorId(worker), "start", root.id, wq.name)
            yield from self.acquire(worker, READ)
            yield from self.zap(root, worker, READ, granularity=self.policy.granularity,
                                yieldable=True)
            yield from self.put(root, holder, "zap work done", READ, by=worker)
            self.release(worker, READ)
            for r in self.recorders:
                r.work(self.now, ActorId(worker), "end", root.id, wq.name)
            self.end_ts = max(self.end_ts, self.sim.now)

        wq.queue(work)

    def zap_gifted(self, roots: list[RootState], actor: str, holder: str) -> Wait:
        """``R{ for r: zap(r, shared); put(r) }`` by the invalidating task (eras A, B)."""
        yield from self.acquire(actor, READ)
        for root in roots:
            yield from self.zap(root, actor, READ, granularity=self.policy.fast_zap_granularity,
                                yieldable=True)
            yield from self.put(root, holder, "fast zap: put gifted reference", READ, by=actor)
        self.release(actor, READ)

    def request_all(self) -> None:
        """Make ``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS`` (≤5.17 ``RELOAD``) and kick every vCPU."""
        for v in self.vcpus.values():
            v.request = True
            kick, v.kick = v.kick, Signal(self.sim)
            kick.fire(None)

    def vcpu_root_role(self, v: VcpuState) -> int:
        """The role word vCPU ``v`` loads (CR0.WP included only where the era's role has it)."""
        if v.role_override is not None:
            return v.role_override
        role = self.root_role
        if self.policy.role_has_cr0_wp and v.cr0_wp:
            role |= 1 << 13
        return role

    def write_section(self, actor: str, body: Callable[[], None], extra_ns: float = 0.0) -> Wait:
        """``W{ body }`` of the fast zap: take the lock for write, run, charge, release."""
        yield from self.acquire(actor, WRITE)
        for r in self.recorders:  # trace_kvm_mmu_zap_all_fast: first thing under the lock
            r.fast_zap(self.now, ActorId(actor), self.mmu_valid_gen)
        body()
        yield self.sim.timeout(round(self.cost.fast_zap_section_ns + extra_ns))
        self.release(actor, WRITE)
