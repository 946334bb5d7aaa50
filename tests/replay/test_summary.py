"""The per-vCPU summary (NumPy, replay/result.py) equals the pandas formulation it replaced,
kept here as the oracle, on random block tables: ties, zero counts, merged blocks
(``n_blocks`` > 1), vCPUs without blocks, null causes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.model.recorders import BLOCKS_SCHEMA
from replay.result import SUMMARY_SCHEMA, summarize_blocks

_CAUSES = ["zap", "fault", "root_alloc", None]


def _pandas_summary(blocks: pa.Table, vcpus: list[int]) -> pa.Table:
    """Per-vCPU ``blocks, p50_ns, p99_ns, max_ns, total_ns, max_cause`` (count-weighted
    nearest-rank percentiles; ``max_cause`` = cause of the first longest block)."""

    df = blocks.select(["vcpu", "start", "end", "cause", "n_blocks", "each_ns"]).to_pandas()
    df["cause"] = df["cause"].astype(object)
    known = sorted(set(vcpus) | set(df["vcpu"].tolist()))
    out = pd.DataFrame({"vcpu": known}).set_index("vcpu")
    if len(df):
        by = df.groupby("vcpu", sort=True)
        out["blocks"] = by["n_blocks"].sum()
        out["total_ns"] = (df["end"] - df["start"]).groupby(df["vcpu"]).sum()
        out["max_ns"] = by["each_ns"].max()
        out["max_cause"] = df.loc[by["each_ns"].idxmax(), ["vcpu", "cause"]].set_index("vcpu")
        ranked = df.sort_values(["vcpu", "each_ns"], kind="stable")
        cum = ranked.groupby("vcpu")["n_blocks"].cumsum()
        for q, name in ((0.50, "p50_ns"), (0.99, "p99_ns")):
            need = np.maximum(1, np.ceil(q * out["blocks"].astype(float)))
            hit = ranked[cum.to_numpy() >= need.reindex(ranked["vcpu"]).to_numpy()]
            out[name] = hit.groupby("vcpu")["each_ns"].first()
    cols = {
        "vcpu": out.index.to_numpy(dtype=np.int64),
        **{c: out.get(c, pd.Series(0, index=out.index)).fillna(0).astype(np.int64).to_numpy()
           for c in ("blocks", "p50_ns", "p99_ns", "max_ns", "total_ns")},
        "max_cause": [None if pd.isna(c) else str(c)
                      for c in out.get("max_cause", pd.Series(None, index=out.index))],
    }
    return pa.Table.from_pydict(cols, schema=SUMMARY_SCHEMA)


@st.composite
def _blocks(draw: st.DrawFn) -> tuple[pa.Table, list[int]]:
    n = draw(st.integers(0, 40))
    vcpu = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    start = draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n))
    length = draw(st.lists(st.sampled_from([0, 1, 5, 5, 100, 7_000]), min_size=n, max_size=n))
    count = draw(st.lists(st.sampled_from([0, 1, 1, 1, 3]), min_size=n, max_size=n))
    cause = draw(st.lists(st.sampled_from(_CAUSES), min_size=n, max_size=n))
    table = pa.table({
        "vcpu": pa.array(vcpu, pa.int32()), "start": pa.array(start, pa.int64()),
        "end": pa.array([s + x for s, x in zip(start, length, strict=True)], pa.int64()),
        "cause": pa.array(cause, pa.string()).dictionary_encode().cast(
            BLOCKS_SCHEMA.field("cause").type),
        "n_blocks": pa.array(count, pa.int64()), "each_ns": pa.array(length, pa.int64()),
        "root": pa.nulls(n, pa.int64()),
    }, schema=BLOCKS_SCHEMA)
    return table, draw(st.lists(st.integers(0, 5), max_size=4, unique=True))


@settings(max_examples=300, deadline=None)
@given(_blocks())
def test_the_summary_is_the_pandas_one(case: tuple[pa.Table, list[int]]) -> None:
    table, vcpus = case
    got = summarize_blocks(table, vcpus)
    assert got.schema.equals(SUMMARY_SCHEMA)
    assert got.to_pylist() == _pandas_summary(table, vcpus).to_pylist()


def test_a_chunked_table_is_summarized_as_one() -> None:
    table = pa.table({
        "vcpu": pa.array([1, 0, 1], pa.int32()), "start": pa.array([0, 5, 9], pa.int64()),
        "end": pa.array([4, 6, 19], pa.int64()),
        "cause": pa.array(["fault", "zap", "zap"]).dictionary_encode().cast(
            BLOCKS_SCHEMA.field("cause").type),
        "n_blocks": pa.array([1, 1, 1], pa.int64()), "each_ns": pa.array([4, 1, 10], pa.int64()),
        "root": pa.nulls(3, pa.int64()),
    }, schema=BLOCKS_SCHEMA)
    chunked = pa.concat_tables([table.slice(0, 1), table.slice(1)])
    assert summarize_blocks(chunked, [0, 1, 2]).to_pylist() == \
        summarize_blocks(table, [0, 1, 2]).to_pylist()
    assert summarize_blocks(table, [2]).column("max_cause").to_pylist() == ["zap", "zap", None]
    assert np.array_equal(summarize_blocks(table, []).column("max_ns").to_numpy(), [1, 10])
