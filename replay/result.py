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
    nearest-rank percentiles; ``max_cause`` = cause of the first longest block).

    NumPy over the five columns read (a pandas frame of them and its sorted copies was the
    observation's peak at millions of blocks)."""
    import numpy as np

    def ints(name: str) -> np.ndarray:
        column = blocks.column(name)
        return np.asarray(column.to_numpy(), dtype=np.int64) if blocks.num_rows else \
            np.zeros(0, dtype=np.int64)

    vcpu, each, count = ints("vcpu"), ints("each_ns"), ints("n_blocks")
    span = ints("end") - ints("start")
    known = sorted(set(vcpus) | set(np.unique(vcpu).tolist()))
    cols: dict[str, list[object]] = {name: [] for name in SUMMARY_SCHEMA.names}
    order = np.lexsort((each, vcpu))  # stable: equal rows keep the table's order
    sorted_vcpu = vcpu[order]
    causes = blocks.column("cause") if blocks.num_rows else None
    for v in known:
        lo, hi = (int(x) for x in np.searchsorted(sorted_vcpu, [v, v + 1]))
        rows = order[lo:hi]
        cols["vcpu"].append(v)
        if not rows.size:
            for name in ("blocks", "p50_ns", "p99_ns", "max_ns", "total_ns"):
                cols[name].append(0)
            cols["max_cause"].append(None)
            continue
        n = count[rows]
        total = int(n.sum())
        cumulative = np.cumsum(n)
        for q, name in ((0.50, "p50_ns"), (0.99, "p99_ns")):
            k = int(np.searchsorted(cumulative, max(1.0, np.ceil(q * float(total))), "left"))
            cols[name].append(int(each[rows[k]]) if k < rows.size else 0)
        longest = int(each[rows[-1]])
        # the first row (in the table's order) of the longest: the first of the equal run
        first = rows[int(np.searchsorted(each[rows], longest, "left"))]
        cause = causes[int(first)].as_py() if causes is not None else None
        cols["blocks"].append(total)
        cols["max_ns"].append(longest)
        cols["total_ns"].append(int(span[rows].sum()))
        cols["max_cause"].append(None if cause is None else str(cause))
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
