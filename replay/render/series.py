"""Plot-ready series from replay tables, bounded whatever the size of the run.

The report draws three kinds of plots, and each gets its numbers here, computed with NumPy
over the Arrow columns (a blocks row standing for ``count`` fault blocks is never expanded):

* :func:`weighted_cdf`: a vCPU's block-latency CDF, each row weighing its ``count``, thinned
  to at most one point per horizontal pixel of a log axis;
* :func:`thin_steps`: a refcount history thinned to the first, lowest, highest and last
  value of every pixel column (the envelope survives, the point count is bounded);
* :func:`lane_runs`: the blocked time of one timeline lane per pixel column and cause,
  merged into runs of columns with the same dominant cause and shade.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Span", "CdfPoints", "Run", "weighted_cdf", "thin_steps", "lane_runs", "run_span",
           "int_column", "covered_columns", "SHADES"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

#: Opacity levels of a timeline run: the share of the column the dominant cause blocks,
#: rounded up to a quarter (a single nanosecond of blocking still shows at 1/4).
SHADES: Final = 4


@dataclass(frozen=True)
class Span:
    """The time range of one run's plots, ``t0 <= t < t1`` (int64 ns, ``t1 > t0``)."""

    t0: int
    t1: int

    @property
    def ns(self) -> int:
        """Length of the range in ns."""
        return self.t1 - self.t0


@dataclass(frozen=True)
class CdfPoints:
    """A step CDF: ``fraction[i]`` of the blocks last at most ``values[i]`` ns."""

    values: I64
    fraction: F64
    blocks: int


@dataclass(frozen=True)
class Run:
    """Consecutive timeline columns ``[col0, col1)`` whose dominant cause is ``cause``.

    ``shade`` (1..:data:`SHADES`) is how much of each column is blocked; ``blocked_ns`` the
    blocked time of the run summed over causes.
    """

    col0: int
    col1: int
    cause: str
    shade: int
    blocked_ns: float


def int_column(table: pa.Table, name: str, fill: int = 0) -> I64:
    """Column ``name`` of ``table`` as int64 NumPy, nulls replaced by ``fill``."""
    col = table.column(name)
    return np.asarray(pc.fill_null(col.cast(pa.int64()), fill).to_numpy(), dtype=np.int64)


def run_span(stamps: Sequence[I64]) -> Span:
    """The smallest :class:`Span` holding every value of ``stamps`` (1 ns when empty)."""
    nonempty = [s for s in stamps if s.size]
    if not nonempty:
        return Span(0, 1)
    lo = min(int(s.min()) for s in nonempty)
    hi = max(int(s.max()) for s in nonempty)
    return Span(lo, max(hi, lo + 1))


def weighted_cdf(durations: I64, counts: I64, *, max_points: int = 200) -> CdfPoints:
    """The count-weighted CDF of ``durations``, at most ``max_points`` (+2) points.

    Points are thinned on a log10 grid of ``max_points`` bins between the smallest and
    largest duration (values below 1 ns count as 1 ns); the last point of each bin is kept,
    so the curve passes through every bin's top and always ends at (max, 1.0).

    Examples:
        >>> cdf = weighted_cdf(np.array([2000, 10], np.int64), np.array([3, 1], np.int64))
        >>> cdf.values.tolist(), cdf.fraction.tolist(), cdf.blocks
        ([10, 2000], [0.25, 1.0], 4)
    """
    keep = counts > 0
    vals = np.maximum(durations[keep], 1)
    weights = counts[keep]
    if vals.size == 0:
        return CdfPoints(np.zeros(0, np.int64), np.zeros(0, np.float64), 0)
    order = np.argsort(vals, kind="stable")
    vals, weights = vals[order], weights[order]
    cum = np.cumsum(weights)
    last = np.r_[vals[1:] != vals[:-1], True]
    vals, cum = vals[last], cum[last]
    total = int(cum[-1])
    logs = np.log10(vals.astype(np.float64))
    width = max(logs[-1] - logs[0], 1e-9)
    bins = np.minimum(((logs - logs[0]) / width * max_points).astype(np.int64), max_points)
    top = np.r_[bins[1:] != bins[:-1], True]
    top[0] = True
    return CdfPoints(vals[top], cum[top] / total, total)


def thin_steps(ts: I64, values: I64, span: Span, columns: int) -> tuple[I64, I64]:
    """Thin a step series to the first, lowest, highest and last point of every column.

    ``ts`` must be sorted. At most ``4 * columns`` points remain, in time order.

    Examples:
        >>> ts = np.arange(1000, dtype=np.int64); v = ts % 7
        >>> t, y = thin_steps(ts, v, Span(0, 1000), 10)
        >>> len(t) <= 40, int(y.min()), int(y.max()), int(t[-1])
        (True, 0, 6, 999)
    """
    if ts.size <= 4 * columns:
        return ts, values
    col = np.clip((ts - span.t0) * columns // span.ns, 0, columns - 1)
    idx = np.arange(ts.size)
    starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
    ends = np.r_[starts[1:], ts.size] - 1
    keep = np.zeros(ts.size, dtype=bool)
    keep[starts] = True
    keep[ends] = True
    # lowest and highest per column: sort by (column, value), take each group's ends
    by_value = np.lexsort((idx, values, col))
    sorted_col = col[by_value]
    first = np.r_[True, sorted_col[1:] != sorted_col[:-1]]
    last = np.r_[sorted_col[1:] != sorted_col[:-1], True]
    keep[by_value[first]] = True
    keep[by_value[last]] = True
    return ts[keep], values[keep]


def _covered(starts: F64, ends: F64, grid: F64) -> F64:
    """Blocked time before each grid point: sum of ``clip(t - start, 0, end - start)``."""
    s = np.sort(starts)
    e = np.sort(ends)
    cs = np.r_[0.0, np.cumsum(s)]
    ce = np.r_[0.0, np.cumsum(e)]
    ns = np.searchsorted(s, grid, side="left")
    ne = np.searchsorted(e, grid, side="left")
    covered: F64 = (ns * grid - cs[ns]) - (ne * grid - ce[ne])
    return covered


def _coverage(starts: I64, ends: I64, span: Span, columns: int) -> F64:
    """Blocked ns in each of ``columns`` equal columns of ``span``."""
    if starts.size == 0:
        return np.zeros(columns)
    grid = np.linspace(0.0, float(span.ns), columns + 1)
    rel_s = (starts - span.t0).astype(np.float64)
    rel_e = (ends - span.t0).astype(np.float64)
    per = np.diff(_covered(rel_s, rel_e, grid))
    return np.clip(per, 0.0, None)


def lane_runs(starts: I64, ends: I64, codes: I64, names: Sequence[str], span: Span,
              columns: int) -> list[Run]:
    """Merge one lane's intervals into at most ``columns`` runs (see :class:`Run`).

    Interval ``[starts[i], ends[i])`` has cause ``names[codes[i]]``. Columns nobody blocks
    are gaps; ties between causes go to the cause listed first in ``names``.

    Examples:
        >>> runs = lane_runs(np.array([0, 50]), np.array([40, 100]), np.array([0, 1]),
        ...                  ["fault", "zap"], Span(0, 100), 10)
        >>> [(r.col0, r.col1, r.cause, r.shade) for r in runs]
        [(0, 4, 'fault', 4), (5, 10, 'zap', 4)]
    """
    cover = np.zeros((max(len(names), 1), columns))
    for code in np.unique(codes).tolist():
        mask = codes == code
        cover[code] = _coverage(starts[mask], ends[mask], span, columns)
    total = cover.sum(axis=0)
    dominant = np.argmax(cover, axis=0)
    shade = np.minimum(np.ceil(total / (span.ns / columns) * SHADES - 1e-9), SHADES)
    shade = np.where(total > 0, np.maximum(shade, 1), 0).astype(np.int64)
    return _merge_columns(dominant, shade, total, names)


def covered_columns(starts: I64, ends: I64, span: Span, columns: int) -> list[tuple[int, int]]:
    """Column ranges ``[col0, col1)`` that any of the intervals touches (lost-event bars).

    Examples:
        >>> covered_columns(np.array([0, 35]), np.array([10, 36]), Span(0, 100), 10)
        [(0, 1), (3, 4)]
    """
    touched = _coverage(starts, ends, span, columns) > 0
    if starts.size:
        zero = starts == ends
        touched[np.clip((starts[zero] - span.t0) * columns // span.ns, 0, columns - 1)] = True
    edges = np.flatnonzero(np.diff(np.r_[0, touched.astype(np.int8), 0]))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _merge_columns(dominant: I64, shade: I64, total: F64, names: Sequence[str]) -> list[Run]:
    key = np.where(shade > 0, dominant * (SHADES + 1) + shade, -1)
    breaks = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[breaks[1:], key.size]
    runs: list[Run] = []
    for b, e in zip(breaks.tolist(), ends.tolist(), strict=True):
        if key[b] < 0:
            continue
        runs.append(Run(b, e, names[int(dominant[b])], int(shade[b]), float(total[b:e].sum())))
    return runs
