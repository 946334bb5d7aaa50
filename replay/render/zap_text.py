"""The SPTE events a root's zap prints, in the era's pass order, each at its place in time.

``tdp_mmu_zap_root`` (kernel-semantics §1.5) walks the root in passes: ≤ 5.17 one pass at
the root level (the last put's ``zap_gfn_range`` as one unit, the fast zap per top-level
entry), 5.18 .. 6.8 the 1 GiB level then the root level, 6.9+ 4K, 2M, 1G, then the root.
Zapping an entry writes 0 (the iterator) and ``kvm_tdp_mmu_spte_changed`` traces it; zapping
a table entry then tears the table down (``handle_removed_pt``): ``kvm_mmu_prepare_zap_page``
for the table, then every entry is frozen (``REMOVED_SPTE``), recursively — all 512 in
shared mode, only the present ones in exclusive mode. Each event carries a weight in the
cost model's terms (a present leaf ``leaf_ns``, a frozen non-present entry
``frozen_entry_ns``, a table ``page_table_ns`` + per-table TLB flush); the whole list is
spread over the model's zap time in proportion, so a stretch of the zap prints exactly the
events of the work it did.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from replay.model.cost import CostModel
from replay.model.ids import PAGE_1G, PAGE_2M, PAGE_4K, PAGE_512G
from replay.model.population import Extent, Granularity
from replay.model.recorders import ZapShape

__all__ = ["ZapEvent", "zap_events", "leaf_spte", "table_spte", "REMOVED_SPTE", "LEVEL_OF"]

#: ``REMOVED_SPTE`` (≤ 6.9): the frozen value written while a table is torn down.
REMOVED_SPTE: Final = 0x5A0
_LEAF_BITS: Final = 0xB37  # present (bit 11), A/D, WB memtype, RWX
_TABLE_BITS: Final = 0x907  # present (bit 11), accessed, RWX
_PFN_BASE: Final = 0x100000
_TABLE_PFN: Final = 0x200000
LEVEL_OF: Final = {PAGE_4K: 1, PAGE_2M: 2, PAGE_1G: 3}
#: Bytes one entry of a level-``n`` table maps.
_SPAN: Final = {1: PAGE_4K, 2: PAGE_2M, 3: PAGE_1G, 4: PAGE_512G}
_ENTRIES: Final = 512


def _slot(gpa: int, level: int) -> tuple[tuple[int, int], int]:
    """The level-``level`` table holding the entry that maps ``gpa``, and its index."""
    return (level, gpa // (_SPAN[level] * _ENTRIES)), (gpa // _SPAN[level]) % _ENTRIES


def leaf_spte(gfn: int, level: int) -> int:
    """The SPTE a fault installs for ``gfn`` at ``level`` (bit 7 marks a huge leaf)."""
    return ((_PFN_BASE + gfn) << 12) | _LEAF_BITS | (0x80 if level > 1 else 0)


def table_spte(level: int, index: int) -> int:
    """The non-leaf SPTE pointing at the level-``level`` table number ``index``."""
    return ((_TABLE_PFN + level * 0x100000 + index) << 12) | _TABLE_BITS


@dataclass(frozen=True)
class ZapEvent:
    """One line of a zap: ``kind`` "spte" (``gfn level old new``) or "page" (a table's
    ``prepare_zap_page``: ``gfn`` and ``level`` of the table), or "scan" (the root-level
    walk's time, printed as nothing); ``weight`` in cost ns."""

    kind: str
    gfn: int
    level: int
    old: int
    new: int
    weight: float


class _Tree:
    """The page tables a population implies: leaves per table, child tables per table."""

    def __init__(self, extents: list[Extent]) -> None:
        self.leaves: dict[tuple[int, int], dict[int, int]] = {}  # (level, table) -> {i: level}
        self.tables: dict[tuple[int, int], set[int]] = {}  # (level, table) -> child indices
        for e in extents:
            level = LEVEL_OF[e.page]
            for start in range(e.start, e.end, e.page):
                self._add(start, level)

    def _add(self, gpa: int, level: int) -> None:
        self.leaves.setdefault(_slot(gpa, level)[0], {})[_slot(gpa, level)[1]] = level
        for up in range(level + 1, 5):
            table, i = _slot(gpa, up)
            self.tables.setdefault(table, set()).add(i)

    def drop(self, level: int, table: int, i: int) -> None:
        """Entry ``i`` of table ``(level, table)`` is no longer present."""
        self.leaves.get((level, table), {}).pop(i, None)
        self.tables.get((level, table), set()).discard(i)

    def entries(self, level: int, table: int) -> dict[int, str]:
        """Present entries of table ``(level, table)``: index -> "leaf" or "table"."""
        out = {i: "leaf" for i in self.leaves.get((level, table), {})}
        for i in self.tables.get((level, table), set()):
            out[i] = "table"
        return out


class _Zap:
    def __init__(self, tree: _Tree, cost: CostModel, shape: ZapShape, leaf_only: bool) -> None:
        self.tree = tree
        self.shared = shape.shared
        self.leaf = cost.leaf_ns(shape.shared)
        self.frozen = cost.frozen_entry_ns if shape.shared else 0.0
        self.table = cost.page_table_ns + (cost.tlb_flush_ns if shape.tlb_per_table else 0.0)
        self.iter_new = 0
        self.leaf_only = leaf_only
        self.out: list[ZapEvent] = []

    def gfn(self, level: int, table: int, i: int) -> int:
        return (table * _SPAN[level] * _ENTRIES + i * _SPAN[level]) >> 12

    def zap_entry(self, level: int, table: int, i: int, what: str) -> None:
        """The iterator zaps entry ``i`` of table ``(level, table)``."""
        gfn = self.gfn(level, table, i)
        self.tree.drop(level, table, i)
        if what == "leaf":
            self.out.append(ZapEvent("spte", gfn, level, leaf_spte(gfn, level), self.iter_new,
                                     self.leaf))
            return
        child = table * _ENTRIES + i
        self.out.append(ZapEvent("spte", gfn, level, table_spte(level - 1, child),
                                 self.iter_new, 0.0))
        self.remove_table(level - 1, child)

    def remove_table(self, level: int, table: int) -> None:
        """``handle_removed_pt`` of the level-``level`` table number ``table``."""
        self.out.append(ZapEvent("page", self.gfn(level, table, 0), level, 0, 0, self.table))
        present = self.tree.entries(level, table)
        self.tree.leaves.pop((level, table), None)
        self.tree.tables.pop((level, table), None)
        for i in range(_ENTRIES):
            what = present.get(i)
            gfn = self.gfn(level, table, i)
            if what is None:
                if self.shared:
                    self.out.append(ZapEvent("spte", gfn, level, 0, REMOVED_SPTE, self.frozen))
            elif what == "leaf":
                self.out.append(ZapEvent("spte", gfn, level, leaf_spte(gfn, level),
                                         REMOVED_SPTE, self.leaf))
            else:
                child = table * _ENTRIES + i
                self.out.append(ZapEvent("spte", gfn, level, table_spte(level - 1, child),
                                         REMOVED_SPTE, 0.0))
                self.remove_table(level - 1, child)

    def walk(self, level: int) -> None:
        """One pass: the iterator zaps every present entry at ``level``, in gfn order."""
        for (lvl, table) in sorted(k for k in set(self.tree.leaves) | set(self.tree.tables)
                                   if k[0] == level):
            for i, what in sorted(self.tree.entries(lvl, table).items()):
                self.zap_entry(lvl, table, i, what)


def zap_events(extents: list[Extent], shape: ZapShape, cost: CostModel) -> list[ZapEvent]:
    """Every event of the zap of a root mapping ``extents``, in the order printed."""
    z = _Zap(_Tree(extents), cost, shape, shape.granularity is Granularity.LEAF)
    if shape.granularity is Granularity.LEAF:
        for level in (1, 2, 3, 4):
            z.walk(level)
    elif shape.granularity is Granularity.GIB:
        z.walk(3)
        z.walk(4)
    else:
        z.walk(4)
    # the walk over the root's own 512 entries (no event of its own; the model charges it)
    z.out.append(ZapEvent("scan", 0, 4, 0, 0, _ENTRIES * cost.scan_entry_ns))
    return z.out


def placed(events: list[ZapEvent], total_ns: int) -> Iterator[tuple[int, ZapEvent]]:
    """``(offset ns from the zap's start, event)``: each event ends its share of the time."""
    weight = sum(e.weight for e in events)
    acc = 0.0
    for e in events:
        acc += e.weight
        yield (round(acc / weight * total_ns) if weight > 0 else 0), e
