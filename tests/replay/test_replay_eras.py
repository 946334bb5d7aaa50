"""Replaying the hand-written TDP-era traces (sample_traces/handwritten/README.md).

Each trace comes with its *script*: what the kernel was asked to do, in kernel terms
(allocate, enter, fault, exit to userspace, reset, fast zap, kick), with the times at which
the trace shows it. The expected lifecycle — who holds which root, who zaps it, when it is
invalidated, which vCPU is blocked and why, which workload steps a replay must derive —
is computed HERE from the era's rules (kernel-semantics.md §1.6 and §3.3), by a small
reference-count walk independent of replay/, and compared with ``replay()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import SAMPLES

from parsers import read_trace
from replay import replay

HW = SAMPLES / "handwritten"
T = 100_000_000_000  # the traces start at 100 s
US = 1000
VMM, V = "qemu-system-x86-5000", {0: "CPU 0/KVM-5001", 1: "CPU 1/KVM-5002"}
PIDS = {5001: 0, 5002: 1}


def t(us: int) -> int:
    return T + us * US


@dataclass
class Root:
    index: int
    created: int
    created_by: str
    refs: int
    valid: bool = True
    invalidated: int | None = None
    zapper: str | None = None       # the thread the era's rules make zap it
    queued_by: str | None = None    # 5.18: who queued its tdp_mmu_zap_root_work
    zap: tuple[int, int] | None = None


@dataclass
class Lifecycle:
    """What the era's rules say happened, walked action by action."""

    era: str
    roots: list[Root] = field(default_factory=list)
    holds: dict[int, Root | None] = field(default_factory=dict)
    blocks: list[tuple[int, int, int, str]] = field(default_factory=list)
    #: (op, actor, at, a phrase its evidence must hold)
    ops: list[tuple[str, str, int, str]] = field(default_factory=list)
    last_user_exit: dict[int, int] = field(default_factory=dict)

    @property
    def initial_refs(self) -> int:
        # edbdb43fc96b (6.4): the TDP MMU holds its own reference from creation
        return 2 if self.era == "6.6" else 1

    def valid_root(self) -> Root | None:
        return next((r for r in self.roots if r.valid), None)

    def load(self, vcpu: int, at: int, *, alloc: bool) -> None:
        """kvm_mmu_load: GET a valid root of the role, else allocate (get_page new)."""
        if alloc:
            root = Root(len(self.roots), at, V[vcpu], self.initial_refs)
            self.roots.append(root)
        else:
            root = self.valid_root()  # silent reuse, §3.3 rule 3
            assert root is not None, "a silent reuse needs a valid root"
            root.refs += 1
        self.holds[vcpu] = root
        self.ops.append(("LoadRoot", f"vcpu{vcpu}", at,
                         "kvm_mmu_get_page new" if alloc else "reused a valid root"))

    def put(self, vcpu: int, at: int) -> None:
        """kvm_mmu_unload → kvm_tdp_mmu_put_root, per era (§1.6)."""
        root = self.holds.pop(vcpu)
        assert root is not None
        root.refs -= 1
        if root.refs == 0 and root.valid:
            assert self.era != "6.6", "from 6.4 a valid root never reaches 0 (§5 item 4)"
            root.valid = False
            if self.era == "sync":   # <= 5.17: unlink, zap the whole root inline
                root.zapper = V[vcpu]
            else:                    # 5.18: defunct, resurrected, queued on the kvm wq
                root.invalidated, root.queued_by, root.refs = at, V[vcpu], 1
                root.zapper = "kworker"

    def fast_zap(self, at: int) -> None:
        """kvm_mmu_zap_all_fast: every valid root is invalidated; who zaps it per era."""
        self.ops.append(("MemslotDelete", VMM, at, "kvm_mmu_zap_all_fast gen"))
        for root in self.roots:
            if root.valid:
                root.valid, root.invalidated = False, at
                root.refs += 0 if self.era == "6.6" else 1  # <= 6.3: a gift; 6.6 uses its own
                root.zapper = "kworker" if self.era == "5.18" else VMM
                root.queued_by = VMM if self.era == "5.18" else None


def walk(era: str, script: list[tuple[Any, ...]]) -> Lifecycle:
    """Run ``script`` through the era's rules. Actions (times in µs after 100 s):
    ``alloc v t`` / ``reuse v t`` (kvm_mmu_load then entry), ``enter v t`` (entry with the
    root still held), ``fault v exit install entry``, ``user v exit`` (exit to userspace),
    ``reset v t visible`` (KVM_SET_SREGS put; ``t`` the traced put or None),
    ``fast_zap t``, ``kick v t`` (exit with the request pending), ``zap root start end``
    (when the trace shows the zap; the zapper comes from the rules)."""
    life = Lifecycle(era)
    exits: dict[int, tuple[int, str]] = {}
    pending_unload: dict[int, int] = {}

    def block_end(vcpu: int, at: int, cause: str | None = None) -> None:
        if vcpu in exits:
            start, why = exits.pop(vcpu)
            life.blocks.append((vcpu, start, at, cause or why))

    for action, *args in script:
        if action in ("alloc", "reuse"):
            vcpu, at = args
            if vcpu in pending_unload:  # the reset is visible: a new root of the same role
                life.ops.append(("SetSregs", f"vcpu{vcpu}", pending_unload.pop(vcpu),
                                 "after its exit to userspace"))
            life.load(vcpu, t(at), alloc=action == "alloc")
            if action == "alloc" and vcpu in exits:  # root_alloc outranks userspace/exit
                exits[vcpu] = (exits[vcpu][0], "root_alloc")
            block_end(vcpu, t(at + (2 if action == "alloc" else 0)))
        elif action == "enter":
            vcpu, at = args
            block_end(vcpu, t(at))
        elif action == "fault":
            vcpu, ex, install, entry = args
            # TDP: the spte_changed to a present leaf is the install (set_spte repeats it)
            life.ops.append(("Populate", f"vcpu{vcpu}", t(install),
                             "1 x kvm_tdp_mmu_spte_changed"))
            life.blocks.append((vcpu, t(ex), t(entry), "fault"))
        elif action == "user":
            vcpu, ex = args
            exits[vcpu] = (t(ex), "userspace")
            life.last_user_exit[vcpu] = t(ex + 1)
        elif action == "reset":
            vcpu, at, traced = args
            root = life.holds[vcpu]
            assert root is not None
            life.put(vcpu, t(at) if traced else life.last_user_exit[vcpu])
            if traced:  # its own zap (<= 5.17) or queue_work (5.18) shows the put
                life.ops.append(("Unload", f"vcpu{vcpu}", t(at), "zapped a whole root inline"
                                 if era == "sync" else "queued tdp_mmu_zap_root_work"))
                if root.zapper == V[vcpu]:
                    exits[vcpu] = (exits[vcpu][0], "zap")
            elif era != "6.6":  # seen later, by the new root of the same role
                pending_unload[vcpu] = life.last_user_exit[vcpu]
            else:                # 6.4+: preserved; the same root is reloaded silently
                life.holds[vcpu] = root
                root.refs += 1
        elif action == "fast_zap":
            life.fast_zap(t(args[0]))
        elif action == "kick":
            vcpu, at = args
            exits[vcpu] = (t(at), "exit")
            life.holds[vcpu] = None  # KVM_REQ_MMU_FREE_OBSOLETE_ROOTS / RELOAD: put it
        elif action == "zap":
            index, start, end = args
            life.roots[index].zap = (t(start), t(end))
    life.ops.sort(key=lambda o: o[2])
    return life


SCRIPTS: dict[str, tuple[str, list[tuple[Any, ...]]]] = {
    "tdp_5.17_sync.txt": ("sync", [
        ("alloc", 0, 10), ("reuse", 1, 15), ("fault", 0, 100, 102, 104), ("fault", 1, 200, 202, 204),
        ("user", 0, 300), ("user", 1, 400),
        ("reset", 0, None, False), ("reset", 1, 500, True), ("zap", 0, 500, 503),
        ("alloc", 0, 600), ("reuse", 1, 605), ("fault", 0, 700, 702, 704),
        ("fast_zap", 1000), ("kick", 0, 1001), ("kick", 1, 1001), ("zap", 1, 1002, 1005),
        ("alloc", 0, 1010), ("reuse", 1, 1015)]),
    "tdp_5.18_workqueue.txt": ("5.18", [
        ("alloc", 0, 10), ("reuse", 1, 15), ("fault", 0, 100, 102, 104), ("fault", 1, 200, 202, 204),
        ("user", 0, 300), ("user", 1, 400),
        ("reset", 0, None, False), ("reset", 1, 500, True), ("zap", 0, 503, 506),
        ("alloc", 0, 600), ("reuse", 1, 605), ("fault", 0, 700, 702, 704),
        ("fast_zap", 1000), ("kick", 0, 1001), ("kick", 1, 1001), ("zap", 1, 1004, 1007),
        ("alloc", 0, 1010), ("reuse", 1, 1015)]),
    "tdp_6.6_inline.txt": ("6.6", [
        ("alloc", 0, 10), ("reuse", 1, 15), ("fault", 0, 100, 102, 104), ("fault", 1, 200, 202, 204),
        ("user", 0, 300), ("reset", 0, None, False), ("enter", 0, 305),
        ("fast_zap", 1000), ("kick", 0, 1001), ("kick", 1, 1001), ("zap", 0, 1002, 1005),
        ("alloc", 0, 1010), ("reuse", 1, 1015), ("fault", 1, 1100, 1102, 1104),
        ("fast_zap", 2000), ("kick", 0, 2001), ("kick", 1, 2001), ("zap", 1, 2002, 2005),
        ("alloc", 1, 2010), ("reuse", 0, 2015)]),
}
EVIDENCE = {"sync": "vCPU threads zap top-level entries",
            "5.18": "tdp_mmu_zap_root_work: per-VM workqueue zaps (5.18 .. 6.3: a vCPU queued one",
            "6.6": "kvm_mmu_zap_all_fast task itself"}


@pytest.fixture(scope="module", params=sorted(SCRIPTS))
def case(request: pytest.FixtureRequest) -> tuple[str, Lifecycle, Any]:
    era, script = SCRIPTS[request.param]
    return request.param, walk(era, script), replay(HW / request.param, policy=[era])


def test_parses_without_skips(case: tuple[str, Lifecycle, Any]) -> None:
    trace = read_trace(HW / case[0])
    assert dict(trace.metadata.skipped) == {"header": 12} and not trace.metadata.warnings


def test_era_and_threads(case: tuple[str, Lifecycle, Any]) -> None:
    _, life, result = case
    assert (result.derived.backend, result.derived.era) == ("tdp", life.era)
    assert EVIDENCE[life.era] in result.derived.era_evidence
    assert result.threads.vms == [5000]  # kworkers serve the VM, they are not one
    assert {v.pid: (v.vcpu, v.vcpu_id, v.confidence) for v in result.threads.vcpus.values()} \
        == {5001: (0, 0, "high"), 5002: (1, 1, "high")}  # vcpu_id from kvm_entry/kvm_exit
    assert all("kvm_entry" in v.evidence or "kvm_exit" in v.evidence
               for v in result.threads.vcpus.values())


def test_observed_blocks(case: tuple[str, Lifecycle, Any]) -> None:
    _, life, result = case
    got = sorted((r["vcpu"], r["start"], r["end"], str(r["cause"]))
                 for r in result.runs["observed"]["blocks"].to_pylist())
    assert got == sorted(life.blocks)
    assert {r["confidence"] for r in result.runs["observed"]["blocks"].to_pylist()} == {"high"}


def test_observed_roots(case: tuple[str, Lifecycle, Any]) -> None:
    _, life, result = case
    rows = result.runs["observed"]["roots"].to_pylist()
    assert len(rows) == len(life.roots)
    for row, root in zip(rows, life.roots, strict=True):
        assert (row["created"], row["created_by"], row["invalidated"]) == (
            root.created, root.created_by, root.invalidated), root
        assert (row["zap_start"], row["zap_end"]) == (root.zap or (None, None)), root
        assert (row["level"], row["gfn"], row["direct"]) == (4, 0, True)
        if root.zapper == "kworker":
            assert str(row["zapped_by"]).startswith("kworker/"), row
            item = next(i for i in result.threads.work_items
                        if i.start <= row["zap_start"] <= i.end)
            assert result.threads.thread_name(item.queued_by) == root.queued_by
            assert item.function == "tdp_mmu_zap_root_work"
        else:
            assert row["zapped_by"] == root.zapper, root


def test_derived_workload(case: tuple[str, Lifecycle, Any]) -> None:
    _, life, result = case
    rows = result.derived.evidence.to_pylist()
    assert [(r["op"], r["actor"], r["ts"]) for r in rows] == [o[:3] for o in life.ops]
    for row, (*_, phrase) in zip(rows, life.ops, strict=True):
        assert phrase in row["evidence"], (row, phrase)
    assert {r["vm"] for r in rows} == {5000}
    populate = [op for op in result.derived.workloads[5000].ops if type(op).__name__ == "Populate"]
    assert all(op.size == 4096 and op.page == 4096 for op in populate)  # one 4K leaf each


def test_the_eras_own_policy_agrees(case: tuple[str, Lifecycle, Any]) -> None:
    """Fidelity: replayed under the recording era's policy, a vCPU's longest block is a
    zap exactly when the kernel's rules made that vCPU zap (<= 5.17's last put), and
    every root the trace invalidates is invalidated (and zapped by the same kind of
    thread) in the model too."""
    _, life, result = case
    zapping = {vcpu for vcpu, name in V.items() if any(r.zapper == name for r in life.roots)}
    summary = {(r["run"], r["vcpu"]): r["max_cause"] for r in result.summary().to_pylist()}
    for vcpu in (0, 1):
        assert (summary[("observed", vcpu)] == "zap") == (vcpu in zapping)
        assert (summary[(life.era, vcpu)] == "zap") == (vcpu in zapping)
    # every MMU cause a vCPU was observed blocked by, the model blocks it by too; a zap
    # only where the rules put one
    causes: dict[str, dict[int, set[str]]] = {}
    for run in ("observed", life.era):
        for b in result.runs[run]["blocks"].to_pylist():
            causes.setdefault(run, {}).setdefault(b["vcpu"], set()).add(str(b["cause"]))
    for vcpu in (0, 1):
        seen = causes["observed"][vcpu] & {"zap", "root_alloc", "fault"}
        assert seen <= causes[life.era][vcpu], (vcpu, seen, causes[life.era][vcpu])
        assert ("zap" in causes[life.era][vcpu]) == (vcpu in zapping)
    model = result.runs[life.era]["roots"].to_pylist()
    for root, row in zip(life.roots, model, strict=False):
        assert row["invalidated"] is not None or root.invalidated is None, (root, row)
        if root.zapper is None:
            continue
        who = str(row["zapped_by"])
        expect = "kworker" if root.zapper == "kworker" else (
            VMM if root.zapper == VMM else f"vcpu{PIDS[int(root.zapper.rsplit('-', 1)[1])]}")
        assert row["invalidated"] == root.invalidated or root.invalidated is None or \
            row["invalidated"] - root.invalidated < 10 * US, (root, row)
        assert who.startswith(expect), (root, row)
    fidelity = result.fidelity()
    assert fidelity is not None
    same = {r["vcpu"]: r["same_cause"] for r in fidelity.to_pylist()}
    assert all(same[v] for v in zapping)


def test_calibration_from_a_trace(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """fault_ns is the median EPT-violation exit -> kvm_entry; the per-leaf zap cost the
    pace of zap bursts however short (replay/infer/calibration.py). Built from the 6.6 trace
    by repeating its fault lines."""
    from parsers import read_trace
    from replay.infer.calibration import calibrate
    from replay.model.cost import DEFAULT_COST

    lines = (HW / "tdp_6.6_inline.txt").read_text().splitlines()
    header, body = lines[:12], lines[12:]
    head = "       CPU 0/KVM-5001    (   5000) [000] d..1.   "
    extra = []
    for k in range(8):  # vCPU 0 faults again, 3 us each, 1 ms apart
        us = 101_000_000 + k * 1000
        stamp = f"{us // 10**6:3d}.{us % 10**6:06d}"
        extra += [f"{head}{stamp}: kvm_exit: vcpu 0 reason EPT_VIOLATION rip 0xfff0 info1 "
                  f"0x0000000000000181 info2 0x0000000000000000 intr_info 0x00000000 "
                  f"error_code 0x00000000 requests 0x0000000000000000",
                  f"{head}{stamp}: kvm_page_fault: vcpu 0 rip 0xfff0 "
                  f"address 0x0000000000005000 error_code 0x181",
                  f"{head}{us // 10**6:3d}.{(us + 3) % 10**6:06d}: kvm_entry: vcpu 0, rip 0xfff0 "
                  f"intr_info 0x00000000 error_code 0x00000000"]
    path = tmp_path / "t.txt"
    path.write_text("\n".join(header + body + extra) + "\n")
    trace = read_trace(path)
    assert not set(trace.metadata.skipped) - {"header"}, trace.metadata.samples
    cal = calibrate(trace, DEFAULT_COST)
    assert cal.cost.fault_ns == 3000.0  # 8 added faults of 3 us, the trace's 3 of 4 us
    assert "median of 11 EPT violation / NPF exit -> entry" in cal.evidence["fault_ns"]
    # the two inline teardowns of the 6.6 trace (+1002.., +2002..): 2 and 1 leaves
    assert "of 2 SPTE zap bursts (3 leaves zapped)" in cal.evidence["leaf_exclusive_ns"]
    result = replay(path, policy=["6.6"], calibrate=True)
    assert result.cost.fault_ns == 3000.0
    assert any(w.startswith("calibrated fault_ns") for w in result.warnings)


def test_work_item_without_execute_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A worker runs one item at a time: an item whose execute_end is missing (lost, or the
    trace ended) ends at the worker's next execute_start or the trace's end, and the zaps
    inside still belong to the VM that queued it (here: vCPU 1's defunct-root put)."""
    lines = [ln for ln in (HW / "tdp_5.18_workqueue.txt").read_text().splitlines()
             if "workqueue_execute_end: work struct 00000000a1b2c3d4" not in ln
             and "workqueue_execute_end: work struct 00000000b5e6f708" not in ln]
    path = tmp_path / "no_end.txt"
    path.write_text("\n".join(lines) + "\n")
    result = replay(path, policy=["5.18"])
    items = [(i.work, i.worker, i.queued_by, i.start, i.end) for i in result.threads.work_items]
    assert items == [("00000000a1b2c3d4", 300, 5002, t(502), t(1015)),   # trace end
                     ("00000000b5e6f708", 298, 5000, t(1003), t(1015))]
    roots = result.runs["observed"]["roots"].to_pylist()
    assert [(r["invalidated"], r["zapped_by"]) for r in roots] == [
        (t(500), "kworker/u16:3-300"), (t(1000), "kworker/u16:1-298"), (None, None)]


def test_sync_era_from_the_fast_zap_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Without a vCPU's teardown, <= 5.17 and 6.6 both zap invalidated roots in the fast-zap
    task; the passes tell them apart: <= 5.17 zaps the top-level entry first and writes only
    frozen values below it (zap_gfn_range at the root level), 5.18+ zap the 1 GiB level
    first. Built from the 5.17 trace: its first 300 µs, then its fast zap zapping root A."""
    lines = (HW / "tdp_5.17_sync.txt").read_text().splitlines()
    body = [ln for ln in lines[12:] if float(ln.split(": ")[0].split()[-1]) < 100.0003
            or float(ln.split(": ")[0].split()[-1]) >= 100.001]
    body = [ln.replace("10b00", "10a00") for ln in body]  # root A's tables, not B's
    path = tmp_path / "fast_only.txt"
    path.write_text("\n".join(lines[:12] + body) + "\n")
    result = replay(path, policy=["sync"])
    assert result.derived.era == "sync" and "one root-level pass" in result.derived.era_evidence
    first = result.runs["observed"]["roots"].to_pylist()[0]
    assert (first["invalidated"], first["zap_start"], first["zapped_by"]) == (t(1000), t(1002), VMM)
    # and the 6.6 trace, zapped 1 GiB level first by the same kind of task, stays 6.6
    assert replay(HW / "tdp_6.6_inline.txt", policy=["6.6"]).derived.era == "6.6"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_handwritten_sptes_are_consistent(name: str) -> None:
    """The hand-written SPTE history is one the kernel can print: every change's old value is
    the entry's current value (handle_changed_spte is given the value it replaced), a
    removed table's entries go to the frozen value and the table is gone, a child table is
    traced (get_page new) before the entry that links it, and every prepare_zap_page is a
    table some fault created."""
    trace = read_trace(HW / name)
    events = sorted(
        [("changed", r) for r in trace.table("kvm_tdp_mmu_spte_changed").to_pylist()]
        + [("get", r) for r in trace.table("kvm_mmu_get_page").to_pylist()]
        + [("zap", r) for r in trace.table("kvm_mmu_prepare_zap_page").to_pylist()],
        key=lambda e: e[1]["seq"])
    value: dict[tuple[int, int], int] = {}
    tables: dict[int, int] = {}  # level → live child tables (gfn 0 only in these traces)
    for kind, row in events:
        if kind == "get":
            tables[row["level"]] = tables.get(row["level"], 0) + 1
            continue
        if kind == "zap":
            assert tables.get(row["level"], 0) > 0, row
            tables[row["level"]] -= 1
            continue
        key = (row["level"], row["gfn"])
        assert row["old_spte"] == value.get(key, 0), row
        if row["new_spte"] == 0x5A0:  # frozen: its table is being freed
            value.pop(key, None)
        else:
            value[key] = row["new_spte"]
        present_table = row["new_spte"] & (1 << 11) and row["level"] > 1
        if present_table:  # linking a child table: traced by get_page just before
            assert tables.get(row["level"] - 1, 0) > 0, row


def test_defunct_zap_still_running_at_the_fast_zap(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """5.18: kvm_mmu_zap_all_fast's flush_workqueue waits for every queued zap, including a
    defunct root's queued earlier by a vCPU. Here root A's worker yields after its 1 GiB pass
    and finishes its root-level pass after the fast zap (+1002): those zaps are still root
    A's (its work item was queued at +500 by vCPU 1), not the root the fast zap
    invalidated. Built from the 5.18 trace by moving that pass and its execute_end."""
    lines = (HW / "tdp_5.18_workqueue.txt").read_text().splitlines()
    late = [i for i, ln in enumerate(lines)
            if "kworker/u16:3" in ln and ("100.000506" in ln or "100.000507" in ln)]
    assert len(late) == 3
    moved = [lines[i].replace("100.000506", "100.001002").replace("100.000507", "100.001003")
             for i in late]
    rest = [ln for i, ln in enumerate(lines) if i not in late]
    at = next(i for i, ln in enumerate(rest) if "100.001003" in ln)
    path = tmp_path / "late.txt"
    path.write_text("\n".join(rest[:at] + moved + rest[at:]) + "\n")
    roots = replay(path, policy=["5.18"]).runs["observed"]["roots"].to_pylist()
    assert [(r["invalidated"], r["zap_start"], r["zap_end"], r["zapped_by"]) for r in roots] == [
        (t(500), t(503), t(1002), "kworker/u16:3-300"),
        (t(1000), t(1004), t(1007), "kworker/u16:1-298"),
        (None, None, None, None)]
