"""Operation handlers: what each workload operation does to the model, as processes.

vCPU operations run in the vCPU's thread (``kvm_mmu_reload`` on entry, faults, MMU
resets); VMM operations in the VMM thread that issued the ioctl or parameter write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from replay.errors import WorkloadError
from replay.model.engine import LATE, NORMAL, URGENT, Signal, Wait, Wakeup
from replay.model.ids import ActorId, Nanos, vcpu_actor
from replay.model.lifecycle import Replay, VcpuState
from replay.model.lock import READ, WRITE
from replay.model.population import (
    Extent,
    Segment,
    WorkCursor,
    add_extent,
    counts_of,
    remove_range,
    split_extents,
    unmapped_parts,
)
from replay.model.recorders import Recorder
from replay.model.records import fault_run
from replay.model.workload import (
    LoadRoot,
    MemslotCreate,
    MemslotDelete,
    MemslotMove,
    Op,
    Populate,
    Rendezvous,
    Run,
    SetNxHugePages,
    SetSregs,
    Sleep,
    Unload,
    VcpuOp,
    VmDestroy,
    Workload,
    WriteProtect,
    ZapLeafs,
)

__all__ = ["start_actors"]


class _Hooks:
    """The recorders' bound hooks the fast path calls, without those left as the base
    class's no-ops (same calls, same order, fewer of them)."""

    def __init__(self, recorders: list[Recorder]) -> None:
        def bound(name: str) -> list[Any]:
            return [getattr(r, name) for r in recorders
                    if getattr(type(r), name) is not getattr(Recorder, name)]

        self.enter_guest = bound("enter_guest")
        self.block = bound("block")
        self.populated = bound("populated")
        self.faults = bound("faults")


class _Driver:
    """Starts one process per actor and runs each actor's operations in order."""

    def __init__(self, rp: Replay, workload: Workload) -> None:
        self.rp = rp
        self.workload = workload
        self.barriers: dict[str, list[tuple[int, int, int, Signal]]] = {}
        self.vcpu_done: list[Signal] = []
        self.slots_lock_free = True
        self.slots_waiters: list[Signal] = []
        #: roots given extents since last seen empty: a superset of the roots that map
        #: something, which the fast zap's check reads instead of every root ever made
        self.mapped: dict[int, Any] = {}
        self.hooks = _Hooks(rp.recorders)
        self.fault_each = round(rp.cost.fault_ns)  # as _fault charges each fault

    def start(self) -> None:
        per_actor: dict[str, list[tuple[int, Op]]] = {}
        for i, op in enumerate(self.workload.ops):
            mine = per_actor.get(op.actor)
            if mine is None:
                mine = per_actor[op.actor] = []
            mine.append((i, op))
        # a VcpuOp's actor is its vCPU's: an actor's first one names its vCPU
        vids = {v for ops in per_actor.values()
                if (v := next((op.vcpu for _, op in ops if isinstance(op, VcpuOp)), None))
                is not None}
        # vCPUs in id order: kvm_for_each_vcpu (kicks, vCPU destroy) walks them by index
        for vid in sorted(vids):
            self.rp.vcpus[vid] = VcpuState(vid, vcpu_actor(vid), self.rp.sim)
        for actor, ops in per_actor.items():
            proc = self.rp.sim.process(self._actor(ActorId(actor), ops), actor)
            if actor.startswith("vcpu"):
                self.vcpu_done.append(proc.done)

    def _actor(self, actor: ActorId, ops: list[tuple[int, Op]]) -> Wait:
        rp = self.rp
        sim = rp.sim
        for index, op in ops:
            due = op.at > sim.now or op.at == sim.now > 0
            if rp.fast and type(op) is Populate:
                # the first check only when no callback comes before the wait would end
                if (not due or sim.quiet_until(op.at, LATE + index)) \
                        and self._fast_populate(index, op, due):
                    if sim.now > rp.end_ts:
                        rp.end_ts = sim.now
                    continue
                if due:
                    yield Wakeup(op.at - sim.now, LATE + index)
                    due = False
                    if self._fast_populate(index, op, due):
                        if sim.now > rp.end_ts:
                            rp.end_ts = sim.now
                        continue
            if due:
                # an operation due at `at` starts after whatever else happens at that instant
                # (a kick, a lock grant): a trace-derived step was asked for then, so the
                # state it reacts to is the one those left; operations due at the same
                # instant start in workload order (a derived workload's is the trace's)
                wake = Signal(sim)
                sim.schedule(op.at - sim.now, wake.fire, LATE + index)
                yield wake
            handler = _HANDLERS.get(type(op))
            if handler is None:
                raise WorkloadError(index, actor, f"no handler for {type(op).__name__}")
            yield from handler(self, index, op)
            rp.end_ts = max(rp.end_ts, rp.sim.now)

    # ------------------------------------------------------------ vCPU side
    def vcpu(self, index: int, op: Op) -> VcpuState:
        assert isinstance(op, VcpuOp)
        v = self.rp.vcpus[op.vcpu]
        if v.gone:
            raise WorkloadError(index, op.actor, "vCPU used after VM destroy")
        return v

    def enter_guest(self, v: VcpuState) -> Wait:
        """``kvm_mmu_reload``: service the request (drop an obsolete root), load a root."""
        rp = self.rp
        work = v.root is None or v.root.invalid or v.request
        for r in rp.recorders:
            r.enter_guest(rp.now, v.actor, work)
        while v.root is None or v.root.invalid or v.request:
            v.request = False
            if v.root is not None and v.root.invalid:
                yield from self.unload(v, "free obsolete root (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)")
            if v.root is None:
                yield from self.load(v)
        if v.root.invalid:
            rp.violate("vCPU enters the guest on an invalid root", root=v.root,
                       holder=v.actor, invariant=8)

    def load(self, v: VcpuState) -> Wait:
        """``mmu_alloc_direct_roots``: reuse a valid root with the role, or allocate one."""
        rp = self.rp
        mode = rp.policy.root_lock
        yield from rp.acquire(v.actor, mode)
        t0 = rp.sim.now
        role = rp.vcpu_root_role(v)
        root = None
        for r in rp.live_roots():
            if not r.invalid and r.role == role and rp.get(r, v.actor, "reuse"):
                root = r
                break
        if root is None:
            root = rp.new_root(role, v.actor)
        yield rp.sim.timeout(round(rp.cost.root_alloc_ns))
        rp.block(v.actor, t0, "root_alloc", root=root)
        rp.release(v.actor, mode)
        v.root = root

    def unload(self, v: VcpuState, reason: str, by: str | None = None) -> Wait:
        """``kvm_mmu_unload`` → ``kvm_mmu_free_roots``: put the current root.

        ``by`` is the thread doing it when not the vCPU's own (vCPU destroy at VM exit):
        then nothing is charged to the vCPU as a block.
        """
        rp = self.rp
        root = v.root
        if root is None:
            return
        actor = by or v.actor
        mode = rp.policy.root_lock
        yield from rp.acquire(actor, mode)
        t0 = rp.sim.now
        yield rp.sim.timeout(round(rp.cost.root_put_ns))
        rp.block(actor, t0, "root_put", root=root)
        v.root = None
        yield from rp.put(root, v.actor, reason, mode, by=actor)
        rp.release(actor, mode)

    def populate(self, index: int, op: Op) -> Wait:
        assert isinstance(op, Populate)
        v = self.vcpu(index, op)
        todo = [Extent(op.start, op.size, op.page)]
        while todo:
            yield from self.enter_guest(v)
            root = v.root
            assert root is not None
            fresh: list[Extent] = []
            for e in todo:
                fresh.extend(unmapped_parts(root.population, e))
            n = counts_of(fresh).leaves
            if n == 0:
                return
            todo = yield from self._fault(v, root, fresh, n)

    def _fast_populate(self, index: int, op: Populate, due: bool) -> bool:
        """Run ``op`` at once, without yielding, when nothing else could run before its
        faults end; False (nothing changed) when it must take the plain path.

        The plain path (:meth:`populate`, started after a wait at ``(op.at, LATE +
        index)`` when ``due``) would, on a loaded valid root with ``mmu_lock`` free for
        read and nobody queued, take the lock at once, fault for ``n * fault_ns`` and
        release it; if no callback sorts before that end (``quiet_until``), nothing else
        runs meanwhile, so nobody can contend, kick, invalidate or map: the faults install
        exactly the unmapped parts, in one :meth:`~replay.model.population.Population.add`.
        The clock jumps to the end and the engine's step count takes the heap steps the
        plain path takes (the wait's two, the lock grant's resume, the timer and its
        resume). Test: tests/replay/test_model_fast_path.py runs both and compares."""
        rp = self.rp
        sim = rp.sim
        v = rp.vcpus.get(op.vcpu)
        if v is None or v.gone or v.request or rp.lock.writer is not None or rp.lock.waiting:
            return False
        root = v.root
        if root is None or root.invalid:
            return False
        each = self.fault_each
        start = op.at if due else sim.now
        if each <= 0 or not sim.quiet_until(start + round(op.size // op.page * float(each)),
                                            NORMAL):
            return False
        sim.now = start
        hooks = self.hooks
        for enter in hooks.enter_guest:
            enter(Nanos(start), v.actor, False)
        fresh = root.population.add(Extent(op.start, op.size, op.page))
        n = fresh[0].size // fresh[0].page if len(fresh) == 1 else sum(
            e.size // e.page for e in fresh)
        if n == 0:
            sim.steps += 2 * due
            return True
        sim.now = end = start + round(n * float(each))
        self.mapped[root.id] = root
        iv = fault_run(v.id, Nanos(start), Nanos(end), n, each, root.id)
        for block in hooks.block:
            block(iv)
        for populated in hooks.populated:
            populated(Nanos(start), Nanos(end), v.actor, root.id, fresh)
        for faults in hooks.faults:
            faults(Nanos(start), v.actor, root.id, list(fresh), fresh, each)
        sim.steps += 3 + 2 * due
        return True

    def _fault(self, v: VcpuState, root: Any, fresh: list[Extent], n: int) -> Wait:
        """Fault ``fresh`` into ``root`` under ``mmu_lock`` read, one fault per unit;
        returns what is left when the root became invalid."""
        rp = self.rp
        each = round(rp.cost.fault_ns)
        cur = WorkCursor([Segment(n, float(each))])
        asked = rp.now
        yield from rp.acquire(v.actor, READ)
        while not root.invalid:
            t0, u0 = rp.sim.now, cur.units_done
            done = yield from rp.run_cursor(cur, yieldable=True)
            head, fresh = split_extents(fresh, cur.units_done - u0)
            installed: list[Extent] = []
            for e in head:  # another vCPU may have installed some meanwhile: spurious faults
                installed += add_extent(root.population, e)
            if installed:
                self.mapped[root.id] = root
            rp.block(v.actor, t0, "fault", count=cur.units_done - u0, each=each, root=root)
            for r in rp.recorders:
                r.populated(Nanos(t0), rp.now, v.actor, root.id, installed)
                r.faults(Nanos(t0), v.actor, root.id, head, installed, each)
            if done:
                fresh = []
                break
            rp.release(v.actor, READ)  # the fault ends; the next one takes the lock again
            asked = rp.now
            yield from rp.acquire(v.actor, READ)
        rp.release(v.actor, READ)
        if fresh:  # the fault asked for at `asked` found the root obsolete: retry after reload
            first, _ = split_extents(fresh, 1)
            for r in rp.recorders:
                r.fault_retry(Nanos(asked), v.actor, root.id, first[0])
        return fresh

    def run(self, index: int, op: Op) -> Wait:
        assert isinstance(op, Run)
        v = self.vcpu(index, op)
        end = self.rp.sim.now + op.duration
        while True:
            yield from self.enter_guest(v)
            left = end - self.rp.sim.now
            if left <= 0:
                return
            yield self.rp.sim.first_of(self.rp.sim.timeout(left), v.kick)

    def load_root(self, index: int, op: Op) -> Wait:
        assert isinstance(op, LoadRoot)
        v = self.vcpu(index, op)
        if op.role is not None:
            v.role_override = op.role
        yield from self.enter_guest(v)

    def set_sregs(self, index: int, op: Op) -> Wait:
        assert isinstance(op, SetSregs)
        v = self.vcpu(index, op)
        v.cr0_wp = op.cr0_wp
        self.ioctl(v.actor, "KVM_SET_SREGS", "enter")
        yield from self.unload(v, "KVM_SET_SREGS: kvm_mmu_reset_context")
        self.ioctl(v.actor, "KVM_SET_SREGS", "exit")

    def mmu_reset(self, index: int, op: Op) -> Wait:
        v = self.vcpu(index, op)
        self.ioctl(v.actor, "KVM_SET_CPUID2", "enter")
        yield from self.unload(v, "MMU reset")
        self.ioctl(v.actor, "KVM_SET_CPUID2", "exit")

    def ioctl(self, actor: str, name: str, phase: str) -> None:
        """Tell the recorders that ``actor`` enters or leaves a system call."""
        for r in self.rp.recorders:
            r.ioctl(self.rp.now, ActorId(actor), name, phase)

    # ------------------------------------------------------------ VMM side
    def slots_lock(self) -> Wait:
        while not self.slots_lock_free:
            sig = Signal(self.rp.sim)
            self.slots_waiters.append(sig)
            yield sig
        self.slots_lock_free = False

    def slots_unlock(self) -> None:
        self.slots_lock_free = True
        if self.slots_waiters:
            self.slots_waiters.pop(0).fire(None)

    def fast_zap(self, index: int, op: Op) -> Wait:
        """``kvm_mmu_zap_all_fast`` under ``slots_lock``; checks §5 item 7 on return."""
        rp = self.rp
        self.ioctl(op.actor, _FAST_ZAP_CALL[type(op)], "enter")
        yield from self.slots_lock()
        if rp.fast_zap_busy:
            rp.violate("two fast zaps at once", holder=op.actor, invariant=10)
        rp.fast_zap_busy = True
        existing = len(rp.roots)  # roots created meanwhile cannot map the deleted slot
        yield from rp.policy.fast_zap(rp, ActorId(op.actor))
        for rid in sorted(self.mapped):  # in root order, as rp.roots
            root = self.mapped[rid]
            if not root.population:
                del self.mapped[rid]  # until its next add
            elif rid < existing and root.invalid:
                rp.violate("fast zap returned with SPTEs of an invalidated root left",
                           root=root, holder=op.actor, invariant=7)
        rp.fast_zap_busy = False
        self.slots_unlock()
        self.ioctl(op.actor, _FAST_ZAP_CALL[type(op)], "exit")

    def memslot_create(self, index: int, op: Op) -> Wait:
        self.ioctl(op.actor, "KVM_SET_USER_MEMORY_REGION", "enter")
        self.ioctl(op.actor, "KVM_SET_USER_MEMORY_REGION", "exit")
        yield from ()

    def sleep(self, index: int, op: Op) -> Wait:
        assert isinstance(op, Sleep)
        yield self.rp.sim.timeout(op.duration)

    def rendezvous(self, index: int, op: Op) -> Wait:
        assert isinstance(op, Rendezvous)
        for r in self.rp.recorders:
            r.rendezvous(self.rp.now, ActorId(op.actor), op.name)
        waiting = self.barriers.setdefault(op.name, [])
        mine = Signal(self.rp.sim)
        waiting.append((self.rp.sim.now, op.order, len(waiting), mine))
        if len(waiting) >= op.parties:
            order = sorted(waiting, key=lambda w: (w[0], w[1], w[2]))
            at = next(i for i, w in enumerate(order) if w[3] is mine)
            for *_, sig in order[:at]:
                sig.fire(None)
            if at == len(order) - 1:
                mine.fire(None)  # the last arriver goes on last, as it yields
            else:  # it goes on in its place: release it and the rest after its yield
                def release() -> None:
                    for *_, sig in order[at:]:
                        sig.fire(None)

                self.rp.sim.schedule(0, release, URGENT)
        yield mine

    def zap_leafs(self, index: int, op: Op) -> Wait:
        """mmu_notifier unmap: ``mmu_lock`` write, every valid root, leaves in the range."""
        assert isinstance(op, ZapLeafs)
        yield from self._range_walk(op.actor, op.start, op.size, WRITE, remove=True)

    def write_protect(self, index: int, op: Op) -> Wait:
        """Dirty-log write protection / clear: ``mmu_lock`` read, valid roots, yielding."""
        assert isinstance(op, WriteProtect)
        self.ioctl(op.actor, "KVM_CLEAR_DIRTY_LOG", "enter")
        yield from self._range_walk(op.actor, op.start, op.size, READ, remove=False)
        self.ioctl(op.actor, "KVM_CLEAR_DIRTY_LOG", "exit")

    def _range_walk(self, actor: str, start: int, size: int, mode: Any, *, remove: bool) -> Wait:
        rp = self.rp
        iterator = f"iter:{actor}"
        yield from rp.acquire(actor, mode)
        for root in rp.live_roots():
            if root.invalid or not rp.get(root, iterator, "range iterator"):
                continue
            if remove:
                touched = remove_range(root.population, start, start + size)
            else:
                touched = root.population.touched(start, start + size)
            leaves = counts_of(touched).leaves
            shared = mode == READ
            cur = WorkCursor([Segment(leaves, rp.cost.leaf_ns(shared))])
            t0 = rp.now
            while not (yield from rp.run_cursor(cur, yieldable=rp.cost.yield_on_contention)):
                yield from rp.relock(actor, mode)
            for r in rp.recorders:
                r.walked(t0, rp.now, ActorId(actor), root.id, touched, remove)
            yield from rp.put(root, iterator, "range iterator advances", mode, by=actor)
        rp.release(actor, mode)

    def vm_destroy(self, index: int, op: Op) -> Wait:
        """mmu_notifier release → ``kvm_mmu_zap_all``; vCPU destroy; uninit; ``rcu_barrier``."""
        rp = self.rp
        actor = ActorId(op.actor)
        for done in self.vcpu_done:  # noqa: UP028 (each is resumed with a value via send)
            yield done
        rp.vm_dying = True
        self.ioctl(actor, "exit_group", "enter")
        iterator = f"iter:{actor}"
        yield from rp.acquire(actor, WRITE)
        for root in rp.live_roots():
            if rp.get(root, iterator, "kvm_tdp_mmu_zap_all iterator"):
                yield from rp.zap(root, actor, WRITE, granularity=rp.policy.granularity,
                                  yieldable=True)
                yield from rp.put(root, iterator, "zap_all iterator advances", WRITE, by=actor)
        rp.release(actor, WRITE)
        for v in rp.vcpus.values():
            yield from self.unload(v, "vCPU destroy", by=actor)
            v.gone = True
        yield from rp.policy.uninit(rp, actor)
        yield rp.rcu_barrier()
        for root in rp.roots:
            if root.freed is None:
                rp.violate("VM destroyed but the root was never freed", root=root,
                           holder=actor, invariant=9)


#: The call that issues each fast-zapping operation (a module parameter write is a write(2)).
_FAST_ZAP_CALL: dict[type, str] = {
    MemslotDelete: "KVM_SET_USER_MEMORY_REGION",
    MemslotMove: "KVM_SET_USER_MEMORY_REGION",
    SetNxHugePages: "write",
}

_Handler = Callable[[_Driver, int, Op], Wait]
_HANDLERS: dict[type, _Handler] = {
    Populate: _Driver.populate,
    Run: _Driver.run,
    LoadRoot: _Driver.load_root,
    SetSregs: _Driver.set_sregs,
    Unload: _Driver.mmu_reset,
    MemslotCreate: _Driver.memslot_create,
    MemslotDelete: _Driver.fast_zap,
    MemslotMove: _Driver.fast_zap,
    SetNxHugePages: _Driver.fast_zap,
    ZapLeafs: _Driver.zap_leafs,
    WriteProtect: _Driver.write_protect,
    Sleep: _Driver.sleep,
    Rendezvous: _Driver.rendezvous,
    VmDestroy: _Driver.vm_destroy,
}


def start_actors(rp: Replay, workload: Workload) -> None:
    """Create one process per actor of ``workload`` in ``rp``."""
    _Driver(rp, workload).start()
