"""Inputs of the report and timeline tests: real replay runs plus a hand-built observed run."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import pyarrow as pa
from hypothesis import strategies as st

import replay
from replay.model.recorders import BLOCKS_SCHEMA, REFCOUNT_SCHEMA, ROOTS_SCHEMA

Runs = Mapping[str, Mapping[str, pa.Table]]
OBSERVED_CAUSES = ("exit", "userspace", "preempted", "unknown", "fault", "lock_wait", "zap")


def blocks_table(rows: list[dict[str, Any]], *, lost: list[bool] | None = None) -> pa.Table:
    """A blocks table in BLOCKS_SCHEMA (plus ``lost`` when given) from row dicts."""
    cols = {name: [r.get(name) for r in rows] for name in BLOCKS_SCHEMA.names}
    table = pa.Table.from_pydict(
        {**cols, "cause": pa.array(cols["cause"], pa.string()).dictionary_encode()
         .cast(BLOCKS_SCHEMA.field("cause").type)}, schema=BLOCKS_SCHEMA)
    if lost is not None:
        table = table.append_column("lost", pa.array(lost, pa.bool_()))
    return table


def observed_tables() -> dict[str, pa.Table]:
    """A small observed run: two vCPUs, a lost-events window, two roots, no summary."""
    rows = [
        dict(vcpu=0, start=1_000, end=3_000, cause="exit", n_blocks=1, each_ns=2_000, root=None),
        dict(vcpu=0, start=5_000, end=25_000, cause="fault", n_blocks=10, each_ns=2_000, root=7),
        dict(vcpu=0, start=40_000, end=1_040_000, cause="zap", n_blocks=1, each_ns=1_000_000, root=7),
        dict(vcpu=1, start=2_000, end=2_500, cause="userspace", n_blocks=1, each_ns=500, root=None),
        dict(vcpu=1, start=2_400, end=9_000, cause="preempted", n_blocks=1, each_ns=6_600, root=None),
        dict(vcpu=1, start=50_000, end=60_000, cause="lock_wait", n_blocks=1, each_ns=10_000,
             root=8),
        dict(vcpu=3, start=70_000, end=70_000, cause="unknown", n_blocks=1, each_ns=0, root=None),
    ]
    lost = [False, False, True, False, False, True, False]
    refs = pa.Table.from_pydict({
        "ts": [1_000, 2_000, 40_000, 1_040_000, 45_000, 60_000],
        "root": [7, 7, 7, 7, 8, 8],
        "refcount": [1, 2, 1, 0, 1, 2],
        "delta": [1, 1, -1, -1, 1, 1],
        "holder": ["vcpu0", "vcpu1", "vcpu1", "vcpu0", "vcpu1", "vcpu0"],
        "reason": ["alloc", "reuse", "put", "put", "alloc", "reuse"],
    }, schema=REFCOUNT_SCHEMA)
    roots = pa.Table.from_pydict({
        "root": [7, 8], "role": [0x3784, 0x1f84], "created": [1_000, 45_000],
        "created_by": ["vcpu0", "vcpu1"], "invalidated": [40_000, None],
        "zap_start": [40_000, None], "zap_end": [1_040_000, None], "zapped_by": ["vcpu0", None],
        "leaves_zapped": [512, None], "tables_zapped": [1, None], "unlinked": [1_040_000, None],
        "freed": [1_050_000, None],
    }, schema=ROOTS_SCHEMA)
    return {"blocks": blocks_table(rows, lost=lost), "refcounts": refs, "roots": roots}


@cache
def scenario_runs(memory: int, policies: tuple[str, ...]) -> dict[str, dict[str, pa.Table]]:
    """``max-guest-memory`` under ``policies`` as a runs mapping (cached per process)."""
    comp = replay.run_scenario("max-guest-memory", policies=list(policies), memory=memory)
    return {p: dict(r.tables) for p, r in comp.results.items()}


def mixed_runs() -> dict[str, dict[str, pa.Table]]:
    """``observed`` followed by sync, async and 6.9 replays of a 1 GiB scenario."""
    return {"observed": observed_tables(), **scenario_runs(4 << 30, ("sync", "async", "6.9"))}


@st.composite
def random_blocks(draw: st.DrawFn) -> pa.Table:
    """Small random blocks tables (possibly empty, overlapping, with or without ``lost``)."""
    n = draw(st.integers(0, 12))
    rows = []
    for _ in range(n):
        start = draw(st.integers(0, 10**7))
        count = draw(st.integers(1, 5))
        each = draw(st.integers(0, 10**6))
        rows.append(dict(vcpu=draw(st.integers(0, 3)), start=start, end=start + count * each,
                         cause=draw(st.sampled_from(OBSERVED_CAUSES + ("odd <cause>&",))),
                         n_blocks=count, each_ns=each,
                         root=draw(st.one_of(st.none(), st.integers(0, 3)))))
    lost = draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=n, max_size=n)))
    return blocks_table(rows, lost=lost)


@st.composite
def random_refcounts(draw: st.DrawFn) -> pa.Table:
    """Small random refcount histories of roots 0..3."""
    n = draw(st.integers(0, 20))
    rows = [(draw(st.integers(0, 10**7)), draw(st.integers(0, 3)), draw(st.integers(0, 9)))
            for _ in range(n)]
    return pa.Table.from_pydict({
        "ts": [r[0] for r in rows], "root": [r[1] for r in rows], "refcount": [r[2] for r in rows],
        "delta": [1] * n, "holder": ["vcpu0"] * n, "reason": ["x"] * n,
    }, schema=REFCOUNT_SCHEMA)
