"""Block-latency distributions of a whole fleet in bounded memory, quantiles still exact.

A :class:`LogHistogram` counts count-weighted durations in buckets 100 to a decade (integer
edges from 1 ns to 9.1 * 10^18 ns: 1 ns wide at first, 2.4 % wide from 50 ns), and keeps the
largest duration each bucket saw: the CDF at those values is exact. A nearest-rank quantile
is found in two passes over the data: the histogram names the bucket holding the rank and
the rank inside it (:meth:`LogHistogram.locate`), then a :class:`BucketValues` collects the
distinct durations of only those buckets, count-weighted, and picks the exact value. Memory
is the histogram (1,777 int64 counters and as many maxima) plus the distinct durations of the few
buckets asked for; the rows are never held together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from replay.render.series import CdfPoints, weighted_cdf

__all__ = ["LogHistogram", "BucketValues", "nearest_rank", "bucket_of", "exact_quantiles", "EDGES"]

I64 = npt.NDArray[np.int64]

#: Lower edges of the buckets after the first (which holds durations <= 0): the distinct
#: ceilings of 10^(k/100) ns, k = 0 .. 1896 (up to the int64 limit).
EDGES: Final[I64] = np.unique(np.ceil(10.0 ** (np.arange(1897) / 100.0)).astype(np.int64))


def bucket_of(values: I64) -> I64:
    """The bucket of each duration: 0 for <= 0 ns, else 1 + the index of the last edge at
    or below it (monotonic in the value by construction).

    Examples:
        >>> bucket_of(np.array([-5, 0, 1, 2, 1000], np.int64)).tolist()
        [0, 0, 1, 2, 180]
    """
    return np.searchsorted(EDGES, values, side="right").astype(np.int64)


def nearest_rank(total: int, percent: int) -> int:
    """The 1-based rank of the ``percent``-th percentile of ``total`` blocks by nearest
    rank, ``ceil(percent / 100 * total)`` (at least 1), in integers.

    Examples:
        >>> nearest_rank(10, 50), nearest_rank(10, 99), nearest_rank(1, 50)
        (5, 10, 1)
    """
    return max(1, -(-percent * total // 100))


@dataclass
class LogHistogram:
    """Count-weighted durations (ns) in log buckets; see the module doc."""

    counts: I64 = field(default_factory=lambda: np.zeros(EDGES.size + 1, np.int64))
    tops: I64 = field(default_factory=lambda: np.full(EDGES.size + 1, np.iinfo(np.int64).min))

    def add(self, values: I64, weights: I64) -> None:
        """Count ``weights[i]`` blocks of ``values[i]`` ns each."""
        buckets = bucket_of(values)
        np.add.at(self.counts, buckets, weights)
        np.maximum.at(self.tops, buckets, values)

    @property
    def total(self) -> int:
        """Blocks counted."""
        return int(self.counts.sum())

    @property
    def max(self) -> int | None:
        """The longest duration counted (exact), None when empty."""
        seen = np.flatnonzero(self.counts)
        return int(self.tops[seen[-1]]) if seen.size else None

    def locate(self, rank: int) -> tuple[int, int]:
        """``(bucket, rank inside the bucket)`` of the ``rank``-th shortest block (1-based)."""
        cum = np.cumsum(self.counts)
        bucket = int(np.searchsorted(cum, rank, side="left"))
        before = int(cum[bucket - 1]) if bucket else 0
        return bucket, rank - before

    def cdf(self, max_points: int) -> CdfPoints:
        """The CDF at each non-empty bucket's largest duration (exact there), thinned like
        the single-trace report's (:func:`replay.render.series.weighted_cdf`)."""
        seen = np.flatnonzero(self.counts)
        return weighted_cdf(self.tops[seen], self.counts[seen], max_points=max_points)


@dataclass
class BucketValues:
    """The second pass: the distinct durations, count-weighted, of the ``buckets`` asked."""

    buckets: frozenset[int]
    seen: dict[int, dict[int, int]] = field(default_factory=dict)

    def add(self, values: I64, weights: I64) -> None:
        """Keep the durations among ``values`` that fall in the buckets asked."""
        if not self.buckets or not values.size:
            return
        buckets = bucket_of(values)
        keep = np.isin(buckets, np.fromiter(self.buckets, np.int64))
        if not keep.any():
            return
        distinct, inverse = np.unique(values[keep], return_inverse=True)
        sums = np.zeros(distinct.size, np.int64)
        np.add.at(sums, inverse, weights[keep])
        for value, bucket, n in zip(distinct.tolist(), bucket_of(distinct).tolist(),
                                    sums.tolist(), strict=True):
            into = self.seen.setdefault(bucket, {})
            into[value] = into.get(value, 0) + n

    def value(self, bucket: int, rank: int) -> int:
        """The ``rank``-th shortest duration (1-based, count-weighted) of ``bucket``."""
        for value, n in sorted(self.seen.get(bucket, {}).items()):
            rank -= n
            if rank <= 0:
                return value
        raise ValueError(f"bucket {bucket} holds fewer blocks than asked: the two passes "
                         "read different data")


def exact_quantiles(histogram: LogHistogram, values: BucketValues,
                    percents: Iterable[int]) -> dict[int, int]:
    """Percent → exact nearest-rank duration, from the two passes (empty: no blocks)."""
    total = histogram.total
    if not total:
        return {}
    return {p: values.value(*histogram.locate(nearest_rank(total, p))) for p in percents}
