"""The outcome of one replay: Arrow tables (pandas at the edge) and the per-vCPU summary."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import pyarrow as pa

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


def _weighted_rank(pairs: list[tuple[int, int]], q: float) -> int:
    """Nearest-rank ``q`` quantile of values with counts (``pairs`` sorted by value)."""
    n = sum(c for _, c in pairs)
    rank = max(1, math.ceil(q * n))
    seen = 0
    for value, count in pairs:
        seen += count
        if seen >= rank:
            return value
    return pairs[-1][0]


def summarize_blocks(blocks: pa.Table, vcpus: list[int]) -> pa.Table:
    """Per-vCPU ``blocks, p50_ns, p99_ns, max_ns, total_ns, max_cause`` (count-weighted
    nearest-rank percentiles; ``max_cause`` = cause of the longest block)."""
    per: dict[int, list[tuple[int, int]]] = {v: [] for v in vcpus}
    totals: dict[int, int] = dict.fromkeys(vcpus, 0)
    worst: dict[int, tuple[int, str]] = {}
    cols = blocks.select(["vcpu", "start", "end", "cause", "count", "each_ns"]).to_pydict()
    for v, s, e, cause, c, each in zip(
        cols["vcpu"], cols["start"], cols["end"], cols["cause"], cols["count"], cols["each_ns"],
        strict=True,
    ):
        per.setdefault(v, []).append((each, c))
        totals[v] = totals.get(v, 0) + (e - s)
        if each > worst.get(v, (-1, ""))[0]:
            worst[v] = (each, cause)
    rows: dict[str, list[object]] = {name: [] for name in SUMMARY_SCHEMA.names}
    for v in sorted(per):
        pairs = sorted(per[v])
        rows["vcpu"].append(v)
        rows["blocks"].append(sum(c for _, c in pairs))
        rows["p50_ns"].append(_weighted_rank(pairs, 0.50) if pairs else 0)
        rows["p99_ns"].append(_weighted_rank(pairs, 0.99) if pairs else 0)
        rows["max_ns"].append(pairs[-1][0] if pairs else 0)
        rows["total_ns"].append(totals.get(v, 0))
        rows["max_cause"].append(worst[v][1] if v in worst else None)
    return pa.Table.from_pydict(rows, schema=SUMMARY_SCHEMA)


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
        """One table as a pandas DataFrame."""
        return self.to_arrow(name).to_pandas()

    def vcpu_summary(self) -> dict[str, dict[str, int | str | None]]:
        """``{"<vcpu>": {"blocks", "p50_ns", "p99_ns", "max_ns", "total_ns", "max_cause"}}``."""
        rows = self.to_arrow("summary").to_pylist()
        return {str(r.pop("vcpu")): r for r in rows}
