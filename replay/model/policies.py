"""Root-zap policies: one object per kernel era (kernel-semantics §1.6).

A policy says what happens on the last PUT of a root, how ``kvm_mmu_zap_all_fast``
invalidates and zaps, what is left to do at MMU uninit, and the era's constants (initial
refcount, zap granularity, the lock for root alloc/free, whether CR0.WP is in the role).
Add a policy by subclassing :class:`ZapPolicy` (or an era) and giving it a ``name``;
:func:`policy_names` and :func:`get_policy` find every subclass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from replay.errors import ReplayConfigError
from replay.model.engine import Wait
from replay.model.ids import ActorId
from replay.model.lock import READ, WRITE, Mode
from replay.model.population import Granularity
from replay.model.roots import RootState

if TYPE_CHECKING:
    from replay.model.lifecycle import Replay

__all__ = [
    "ZapPolicy",
    "SyncZap",
    "AsyncZap",
    "WorkqueueZap",
    "PreservedRootsZap",
    "InlineZap",
    "LeafGranularZap",
    "get_policy",
    "policy_names",
    "ALL",
]

#: The pseudo-name that selects every registered policy.
ALL = "all"


class ZapPolicy:
    """Base of every policy. Class attributes are the era's constants."""

    #: Registry name (``--policy``); empty for abstract bases.
    name: ClassVar[str] = ""
    #: Kernel versions the policy models.
    kernel: ClassVar[str] = ""
    #: Commits (or lore message ids) that define the behaviour.
    commits: ClassVar[tuple[str, ...]] = ()
    #: Refcount of a new root: 1 before 6.4, 2 from 6.4 (vCPU + TDP MMU).
    initial_refcount: ClassVar[int] = 1
    #: From 6.4 the TDP MMU holds a reference until invalidation: a valid root never hits 0.
    preserves_roots: ClassVar[bool] = False
    #: TDP root roles contained guest CR0.WP until about v5.19.
    role_has_cr0_wp: ClassVar[bool] = True
    #: ``mmu_lock`` mode for root alloc and free: write up to 6.8, read from 6.9.
    root_lock: ClassVar[Mode] = WRITE
    #: Largest non-yieldable unit of a zap of an invalidated root (workers, fast zap).
    granularity: ClassVar[Granularity] = Granularity.GIB
    #: Same for the zap done by the fast-zap task itself (eras A, B, E).
    fast_zap_granularity: ClassVar[Granularity] = Granularity.GIB
    #: ≤5.17 issued a remote TLB flush per removed page table.
    tlb_flush_per_table: ClassVar[bool] = False

    def on_last_put(
        self, rp: Replay, root: RootState, putter: ActorId, mode: Mode | None
    ) -> Wait:
        """The count of ``root`` just reached 0 (``putter`` holds ``mmu_lock`` in ``mode``).

        Default (invalid roots in every era, any root from 6.4): unlink and free via RCU.
        """
        rp.unlink_and_free(root)
        yield from ()

    def fast_zap(self, rp: Replay, actor: ActorId) -> Wait:
        """``kvm_mmu_zap_all_fast``: invalidate every root and get its SPTEs zapped."""
        raise NotImplementedError
        yield  # pragma: no cover

    def uninit(self, rp: Replay, actor: ActorId) -> Wait:
        """``kvm_mmu_uninit_tdp_mmu`` (after vCPUs are destroyed)."""
        yield from ()

    def describe(self) -> str:
        """One line: name, kernel range, commits."""
        return f"{self.name}: {self.kernel} [{', '.join(self.commits)}]"


class SyncZap(ZapPolicy):
    """≤ v5.17 (era A): the last put zaps the whole root inline without yielding.

    ``kvm_tdp_mmu_put_root`` unlinks the root, then ``zap_gfn_range(..., can_yield=false)``
    under the putter's lock; the fast zap gifts a reference to every live root and zaps the
    invalid ones inline, yielding per top-level entry (b7cccd397f31, v5.13 TDP fast zap).
    """

    name = "sync"
    kernel = "v5.13 .. v5.17"
    commits: ClassVar[tuple[str, ...]] = ("b7cccd397f31", "TDP-5.17 tdp_mmu.c")
    granularity = Granularity.TOP_LEVEL
    fast_zap_granularity = Granularity.TOP_LEVEL
    tlb_flush_per_table = True

    def on_last_put(
        self, rp: Replay, root: RootState, putter: ActorId, mode: Mode | None
    ) -> Wait:
        rp.unlink(root)  # before the zap: why it cannot yield (8351779ce65f)
        yield from rp.zap(root, putter, mode, granularity=Granularity.WHOLE_ROOT,
                          yieldable=False)
        rp.free_rcu(root)

    def fast_zap(self, rp: Replay, actor: ActorId) -> Wait:
        gifted: list[RootState] = []

        def section() -> None:
            rp.mmu_valid_gen ^= 1
            for root in rp.live_roots():
                if rp.get(root, "fast_zap", "fast zap: invalidate_all_roots gift"):
                    rp.invalidate(root, actor)
                    gifted.append(root)
            rp.request_all()

        live = len(rp.live_roots())
        yield from rp.write_section(actor, section, live * rp.cost.invalidate_root_ns)
        yield from rp.zap_gifted(gifted, actor, "fast_zap")


def _defunct_to_worker(rp: Replay, root: RootState, putter: ActorId) -> bool:
    """The common start of a queued zap (efd995dae5eb): an already-invalid root is freed
    (False: nothing left to zap); otherwise the root is invalidated and its count revived
    for the zap work item (True)."""
    if root.invalid:
        rp.unlink_and_free(root)
        return False
    rp.invalidate(root, putter)
    rp.resurrect(root, "zap_work")
    return True


class AsyncZap(SyncZap):
    """The seed, v3 22/28 "Zap defunct roots via asynchronous worker" (never merged as such).

    It follows "Allow yielding when zapping GFNs for defunct TDP MMU root" and "Zap roots in
    two passes" in its series, so zaps yield per 1 GiB subtree and no longer flush per
    table. The last put of a *valid* root resurrects it (count 1) and queues its zap on the
    system workqueue; when the VM is dying it zaps inline. The fast zap is era A's.
    """

    name = "async"
    kernel = "v3 series (2022-02-26)"
    commits: ClassVar[tuple[str, ...]] = (
        "<20220226001546.360188-23-seanjc@google.com>", "1b6043e8e584", "8351779ce65f",
    )
    granularity = Granularity.GIB
    fast_zap_granularity = Granularity.GIB
    tlb_flush_per_table = False

    def on_last_put(
        self, rp: Replay, root: RootState, putter: ActorId, mode: Mode | None
    ) -> Wait:
        if not _defunct_to_worker(rp, root, putter):
            return
        if not rp.vm_dying:
            rp.queue_zap(rp.system_wq, root, "zap_work", putter)
            return
        yield from rp.zap(root, putter, mode, granularity=self.granularity, yieldable=True)
        yield from rp.put(root, "zap_work", "inline zap of a dying VM's defunct root", mode,
                          by=putter)


class WorkqueueZap(ZapPolicy):
    """v5.18 … v6.3 (era C): per-VM ``kvm`` workqueue; the fast zap flushes it.

    22b94c4b63eb "Zap invalidated roots via asynchronous worker", efd995dae5eb "Zap defunct
    roots via asynchronous worker" (always-queue variant), two passes at 1 GiB
    (1b6043e8e584), no per-table TLB flush (bb95dfb9e2df).
    """

    name = "5.18"
    kernel = "v5.18 .. v6.3"
    commits: ClassVar[tuple[str, ...]] = (
        "22b94c4b63eb", "efd995dae5eb", "1b6043e8e584", "bb95dfb9e2df",
    )

    def on_last_put(
        self, rp: Replay, root: RootState, putter: ActorId, mode: Mode | None
    ) -> Wait:
        if not _defunct_to_worker(rp, root, putter):
            return
        rp.queue_zap(rp.vm_wq, root, "zap_work", putter)
        yield from ()

    def invalidate_section(self, rp: Replay, actor: ActorId) -> Wait:
        """The fast zap's ``mmu_lock`` write section: flip the generation, invalidate the
        roots (:meth:`invalidate_all`), request every vCPU to drop obsolete roots."""
        def section() -> None:
            rp.mmu_valid_gen ^= 1
            self.invalidate_all(rp, actor)
            rp.request_all()

        live = len(rp.live_roots())
        yield from rp.write_section(actor, section, live * rp.cost.invalidate_root_ns)

    def invalidate_all(self, rp: Replay, actor: ActorId) -> None:
        """``kvm_tdp_mmu_invalidate_all_roots``: valid roots only, one work item each."""
        for root in rp.live_roots():
            if not root.invalid and rp.get(root, "zap_work", "invalidate_all_roots gift"):
                rp.invalidate(root, actor)
                rp.queue_zap(rp.vm_wq, root, "zap_work", actor)

    def fast_zap(self, rp: Replay, actor: ActorId) -> Wait:
        yield from self.invalidate_section(rp, actor)
        yield rp.vm_wq.flush()

    def uninit(self, rp: Replay, actor: ActorId) -> Wait:
        yield rp.vm_wq.flush()  # destroy_workqueue


class PreservedRootsZap(WorkqueueZap):
    """v6.4 … v6.5 (era D): roots preserved until explicitly invalidated (edbdb43fc96b).

    A new root starts at refcount 2; invalidation gifts the TDP MMU's reference to the
    root's work item; the last put only frees. Uninit invalidates and flushes.
    """

    name = "6.4"
    kernel = "v6.4 .. v6.5 (6.3.2+)"
    commits: ClassVar[tuple[str, ...]] = ("edbdb43fc96b",)
    initial_refcount = 2
    preserves_roots = True
    role_has_cr0_wp = False

    def on_last_put(
        self, rp: Replay, root: RootState, putter: ActorId, mode: Mode | None
    ) -> Wait:
        rp.unlink_and_free(root)
        yield from ()

    def invalidate_all(self, rp: Replay, actor: ActorId) -> None:
        for root in rp.live_roots():
            if not root.invalid:
                rp.invalidate(root, actor)
                rp.transfer(root, "tdp_mmu", "zap_work", "invalidate: gift TDP MMU reference")
                rp.queue_zap(rp.vm_wq, root, "zap_work", actor)

    def uninit(self, rp: Replay, actor: ActorId) -> Wait:
        self.invalidate_all(rp, actor)
        yield rp.vm_wq.flush()


class InlineZap(PreservedRootsZap):
    """v6.6 … v6.8 (era E): the invalidating task zaps inline under ``mmu_lock`` read.

    0df9dab891ff "Stop zapping invalidated TDP MMU roots asynchronously": invalidation sets
    ``tdp_mmu_scheduled_root_to_zap``; ``kvm_tdp_mmu_zap_invalidated_roots`` consumes it,
    zaps and puts the TDP MMU's reference. No workqueue.
    """

    name = "6.6"
    kernel = "v6.6 .. v6.8"
    commits: ClassVar[tuple[str, ...]] = ("0df9dab891ff",)

    def invalidate_all(self, rp: Replay, actor: ActorId) -> None:
        for root in rp.live_roots():
            if not root.invalid:
                root.scheduled_to_zap = True
                rp.invalidate(root, actor)

    def zap_invalidated(self, rp: Replay, actor: ActorId, mode: Mode) -> Wait:
        """Walk every root with a yield-safe iterator; zap the ones flagged."""
        iterator = f"iter:{actor}"
        yield from rp.acquire(actor, mode)
        for root in rp.live_roots():
            if not rp.get(root, iterator, "zap_invalidated_roots iterator"):
                continue
            if root.scheduled_to_zap:
                root.scheduled_to_zap = False
                yield from rp.zap(root, actor, mode, granularity=self.fast_zap_granularity,
                                  yieldable=True)
                yield from rp.put(root, "tdp_mmu", "zapped: put TDP MMU reference", mode,
                                  by=actor)
            yield from rp.put(root, iterator, "iterator advances", mode, by=actor)
        rp.release(actor, mode)

    def fast_zap(self, rp: Replay, actor: ActorId) -> Wait:
        yield from self.invalidate_section(rp, actor)
        yield from self.zap_invalidated(rp, actor, READ)

    def uninit(self, rp: Replay, actor: ActorId) -> Wait:
        self.invalidate_all(rp, actor)
        yield from self.zap_invalidated(rp, actor, READ)


class LeafGranularZap(InlineZap):
    """v6.9+ (era E): 6.6 with 4K → 2M → 1G → root passes (8ca983631f3c) and root
    alloc/free under ``mmu_lock`` read ("KVM x86 MMU changes for 6.9")."""

    name = "6.9"
    kernel = "v6.9+"
    commits: ClassVar[tuple[str, ...]] = ("8ca983631f3c", "fcdffe97f80e")
    granularity = Granularity.LEAF
    fast_zap_granularity = Granularity.LEAF
    root_lock = READ


def _all_subclasses(cls: type[ZapPolicy]) -> list[type[ZapPolicy]]:
    out: list[type[ZapPolicy]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def _registry() -> dict[str, type[ZapPolicy]]:
    reg: dict[str, type[ZapPolicy]] = {}
    for cls in _all_subclasses(ZapPolicy):
        if cls.name:
            reg.setdefault(cls.name, cls)
    return reg


def policy_names() -> list[str]:
    """Names of every policy class defined so far, built-in eras first in era order."""
    return list(_registry())


def get_policy(name: str | ZapPolicy) -> ZapPolicy:
    """A policy instance by registry name (or the instance itself)."""
    if isinstance(name, ZapPolicy):
        return name
    reg = _registry()
    if name not in reg:
        known = ", ".join([*reg, ALL])
        raise ReplayConfigError(f"unknown policy {name!r}; known: {known}")
    return reg[name]()
