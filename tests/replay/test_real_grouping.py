"""VM grouping and root identity on real recordings (replay/infer/threads.py, grouping.py,
root_pages.py): every constraint a recording gives, checked on a hand-written fixture and
then on every real (../shared/traces/real) and bundled recording."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from parsers import Trace, read_trace
from replay import replay
from replay.infer.grouping import lifetimes, vcpu_creators
from replay.infer.observed import observe
from replay.infer.root_pages import BEFORE_TRACE, tdp_root_level
from replay.infer.threads import KERNEL_THREAD_RE, ThreadMap, identify_threads
from replay.infer.workload import derive_workloads

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_traces"
REAL = ROOT.parent / "shared" / "traces" / "real"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/traces/real is absent")


def _vm_ids(m: ThreadMap) -> dict[int, dict[int, int]]:
    out: dict[int, dict[int, int]] = {}
    for v in m.vcpus.values():
        out.setdefault(v.vm, {})[v.pid] = v.vcpu_id
    return out


def test_creation_places_vcpus_and_their_vmm() -> None:
    """Hand-written (6.18 print formats, no tgid): VMM 7000 creates vCPUs 0, 1 and their
    threads start; then VMM 7100 creates 0, 1 (threads 7101, 7102) and hot-adds 2. Thread
    7101 could be either VM's vCPU 0 by id, but 7000's vCPU 0 is alive: it is 7100's."""
    m = identify_threads(read_trace(SAMPLES / "handwritten" / "no_tgid_vcpu_creation.txt"))
    assert _vm_ids(m) == {7000: {7001: 0, 7002: 1}, 7100: {7101: 0, 7102: 1, 7103: 2}}
    assert m.vm_of[7000] == 7000 and m.vm_of[7100] == 7100
    assert all(v.confidence == "medium" for v in m.vcpus.values())


@needs_real
def test_tracefs_default_three_vms_with_a_hot_added_vcpu() -> None:
    """The workload log: VMs 17486, 17487, 17488; 17488 hot-added vCPU 3 (thread
    CPU 3/KVM-17501). Each VMM thread is in the VM of the vCPUs it created."""
    m = identify_threads(read_trace(REAL / "tracefs_default.txt"))
    ids = _vm_ids(m)
    assert sorted(ids) == [17486, 17487, 17488]
    assert sorted(ids[17488].values()) == [0, 1, 2, 3] and ids[17488][17501] == 3
    assert all(sorted(v.values()) == [0, 1, 2] for vm, v in ids.items() if vm != 17488)
    assert {p: m.vm_of[p] for p in (17486, 17487, 17488)} == {17486: 17486, 17487: 17487,
                                                             17488: 17488}


@needs_real
def test_tc_kvm_hot_added_vcpu_joins_its_vm() -> None:
    """tc_kvm.workload.log: VM 17611 hot-added vCPU 2 (thread 17621)."""
    m = identify_threads(read_trace(REAL / "tc_kvm.dat"))
    assert m.vcpus[17621].vm == 17611 and sorted(_vm_ids(m)[17611].values()) == [0, 1, 2]


def test_hidden_tgid_gives_the_same_vms_and_vmms() -> None:
    """With record-tgid hidden, the grouping equals the truth, VMM threads included."""
    trace = read_trace(SAMPLES / "tracefs_record_tgid.txt")
    truth = identify_threads(trace).vm_of
    ev = trace.events
    hidden = ev.set_column(ev.column_names.index("tgid"), "tgid",
                           pa.nulls(ev.num_rows, ev.schema.field("tgid").type))
    blind = identify_threads(Trace(hidden, {n: trace.table(n) for n in trace.names},
                                   trace.metadata))
    assert {p: v for p, v in blind.vm_of.items()} == {p: v for p, v in truth.items()
                                                      if p in blind.vm_of}
    assert set(blind.vm_of) == set(truth)


def _recordings() -> list[Path]:
    bundled = [p for p in SAMPLES.rglob("*") if p.is_file()
               and p.suffix in (".txt", ".dat", ".pftrace", ".gz") and "trappy" not in p.parts]
    real = (sorted(REAL.glob("*.txt")) + sorted(REAL.glob("*.dat"))) if REAL.is_dir() else []
    return sorted(bundled) + real


@pytest.mark.parametrize("path", _recordings(), ids=lambda p: p.name)
def test_grouping_and_root_rules_hold(path: Path) -> None:
    """On every recording: no vcpu_id twice alive at once in a VM; a vCPU placed by its
    creation shares its VM with its creator; no fast zap is replayed in another VM than its
    thread's; TDP roots only at the host's root level, shadow roots at their VM's top level
    or counted; a root's ``created`` is a ``get_page new`` of it or null (before the trace)."""
    trace = read_trace(path)
    m = identify_threads(trace)
    life = lifetimes(trace, list(m.vcpus))
    for vm, members in _vm_ids(m).items():
        pids = sorted(members)
        for i, a in enumerate(pids):
            for b in pids[i + 1:]:
                if members[a] == members[b]:
                    la, lb = life[a], life[b]
                    assert la[1] < lb[0] or lb[1] < la[0], (path.name, vm, a, b)
    creators = vcpu_creators(trace, set(m.vcpus))
    for v in m.vcpus.values():
        if "was created by thread" in v.evidence:
            who = int(v.evidence.split("was created by thread ")[1].split()[0])
            assert who in creators[v.vcpu_id] and m.vm_of[who] == v.vm
    d = derive_workloads(trace, m)
    for r in d.evidence.to_pylist():
        if r["op"] == "MemslotDelete":
            assert m.vm_of[int(r["actor"].rsplit("-", 1)[1])] == r["vm"], r
    roots = observe(trace, m).tables["roots"].to_pylist()
    level = tdp_root_level(trace)
    news = set()
    if "kvm_mmu_get_page" in trace.names:
        t = trace.table("kvm_mmu_get_page").to_pylist()
        news = {r["ts"] for r in t if r["created"]}
    for r in roots:
        if r["direct"]:
            assert r["level"] == level, (path.name, r)
        assert (r["created"] is None) == (r["created_by"] == BEFORE_TRACE), r
        assert r["created"] is None or r["created"] in news, r
    assert not any(KERNEL_THREAD_RE.match(m.comms.get(p, "")) for p in m.vm_of)


def test_quoted_root_zapped_before_it_was_seen() -> None:
    """The LKML fragment never shows vCPU 1's root, only its teardown (the top-level entry
    to 0, then child tables): one root, level 4, created before the trace, zapped by the
    vCPU thread from the first zap to the last; the l3 child table is no root."""
    r = replay(SAMPLES / "quoted" / "lkml_cr0wp_vmx_tdp.txt", policy=["sync"])
    roots = r.runs["observed"]["roots"].to_pylist()
    assert [(x["level"], x["created"], x["created_by"], x["zap_start"], x["zap_end"],
             x["zapped_by"]) for x in roots] == [
        (4, None, BEFORE_TRACE, 1404389384000, 1404389439000, "qemu-system-x86-8397")]


def test_clashing_ids_without_evidence_split_and_the_vmm_stands_alone() -> None:
    """trace_pipe_lost_events.txt (3 VMs; the ring buffer lost the vCPU creations and the
    generations): seven vCPU threads with ids 0,1,2,3,0,1,2 cannot be one VM. They are split
    into id-distinct pseudo-VMs; the one VMM thread traced (17578) is in none of them, so
    its fast zaps cannot invalidate another VM's roots."""
    m = identify_threads(read_trace(SAMPLES / "trace_pipe_lost_events.txt"))
    groups = _vm_ids(m)
    assert sorted(sorted(g.values()) for g in groups.values()) == [[0, 1, 2], [0, 1, 2, 3]]
    assert m.vm_of[17578] not in groups
    assert any("split into 3 VMs" in w for w in m.warnings)
