"""The outcome of one replay: Arrow tables (pandas at the edge) and the per-vCPU summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import pyarrow as pa

from parsers.trace import table_to_pandas

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ReplayResult", "SUMMARY_SCHEMA", "summarize_blocks"]

SUMMARY_SCHEMA: Final = pa.schema(
    [
        ("vcpu", pa.int32()),
        ("blocks", pa.int64()),
        ("p50_ns", pa.int64()),
        ("p99_ns", pa.int64()),
        ("max_ns", pa.int64()),
        ("total_ns", pa.int64()),
        ("max_cause", pa.string()),
    ]
)


def summarize_blocks(blocks: pa.Table, vcpus: list[int]) -> pa.Table:
    """Per-vCPU ``blocks, p50_ns, p99_ns, max_ns, total_ns, max_cause`` (count-weighted
    nearest-rank percentiles; ``max_cause`` = cause of the first longest block)."""
    import numpy as np
    import pandas as pd

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


@dataclass(frozen=True)
class ReplayResult:
    """Tables of one run of one policy.

    Attributes:
        policy: the policy's registry name.
        tables: ``blocks``, ``summary`` and one table per recorder (``refcounts``,
            ``roots``, ``anomalies``, ...).
        end_ns: simulated time of the last MMU activity.
        steps: events the engine processed.
        anomalies: invariant violations recorded (``on_violation="record"``).
    """

    policy: str
    tables: Mapping[str, pa.Table]
    end_ns: int
    steps: int
    anomalies: int = 0

    def to_arrow(self, name: str = "summary") -> pa.Table:
        """One table by name."""
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(f"no table {name!r}; have {sorted(self.tables)}") from None

    def to_pandas(self, name: str = "summary") -> pd.DataFrame:
        """One table as a pandas DataFrame, integer columns nullable (``Int64`` ...)."""
        return table_to_pandas(self.to_arrow(name))

    def vcpu_summary(self) -> dict[str, dict[str, int | str | None]]:
        """``{"<vcpu>": {"blocks", "p50_ns", "p99_ns", "max_ns", "total_ns", "max_cause"}}``."""
        rows = self.to_arrow("summary").to_pylist()
        return {str(r.pop("vcpu")): r for r in rows}
