"""Small, deterministic SVG plots (no plotting library): CDFs, step plots, timelines.

Every function returns SVG markup as a string; numbers are rounded to 0.1 px so the same
data always gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

from replay.sizes import format_ns

__all__ = ["Series", "Lane", "cdf_svg", "steps_svg", "timeline_svg", "COLORS", "CAUSE_COLORS"]

#: Line colours, cycled per series (colour-blind friendly "tab10"-like set).
COLORS: Final = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                 "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
#: Fill per block cause / bar kind.
CAUSE_COLORS: Final = {
    "zap": "#d62728", "lock_wait": "#ff7f0e", "root_alloc": "#9467bd", "root_put": "#8c564b",
    "fault": "#1f77b4", "userspace": "#2ca02c", "preempted": "#7f7f7f", "exit": "#bcbd22",
    "zap work": "#d62728",
}
_W, _H, _L, _R, _T, _B = 640, 260, 64, 16, 24, 36


@dataclass(frozen=True)
class Series:
    """One line: ``xs``/``ys`` in data units and its legend label."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]


@dataclass(frozen=True)
class Lane:
    """One timeline row: (start, end, kind) bars."""

    label: str
    bars: Sequence[tuple[int, int, str]]


def _f(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if math.isfinite(v) else "0"


def _frame(title: str, width: int, height: int, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
            f'<title>{escape(title)}</title>'
            f'<text x="{_L}" y="14" font-weight="bold">{escape(title)}</text>'
            + "".join(body) + "</svg>")


def _legend(labels: Sequence[str], colors: Sequence[str], x: float, y: float) -> list[str]:
    out = []
    for i, (label, color) in enumerate(zip(labels, colors, strict=True)):
        yy = y + 13 * i
        out.append(f'<rect x="{_f(x)}" y="{_f(yy - 8)}" width="10" height="8" fill="{color}"/>'
                   f'<text x="{_f(x + 14)}" y="{_f(yy)}">{escape(label)}</text>')
    return out


def _step_lines(series: Sequence[Series], px: Callable[[float], float],
                py: Callable[[float], float], start: float | None) -> list[str]:
    """One stepped polyline per series (the value holds until the next x; ``start`` is the
    value before the first point, None for no leading step) and the legend."""
    out = []
    for i, s in enumerate(series):
        pts: list[str] = []
        prev = start
        for x, y in zip(s.xs, s.ys, strict=True):
            if prev is not None:
                pts.append(f"{_f(px(x))},{_f(py(prev))}")
            pts.append(f"{_f(px(x))},{_f(py(y))}")
            prev = y
        out.append(f'<polyline fill="none" stroke="{COLORS[i % len(COLORS)]}" '
                   f'stroke-width="1.5" points="{" ".join(pts)}"/>')
    return out + _legend([s.label for s in series],
                         [COLORS[i % len(COLORS)] for i in range(len(series))], _W - 130, _T + 10)


def cdf_svg(title: str, series: Sequence[Series]) -> str:
    """Step CDFs on a log-x (ns) axis; ``ys`` are cumulative fractions in [0, 1]."""
    xs = [x for s in series for x in s.xs if x > 0]
    if not xs:
        return _frame(title, _W, 60, [f'<text x="{_L}" y="40">no blocks</text>'])
    lo = 10 ** math.floor(math.log10(min(xs)))
    hi = 10 ** math.ceil(math.log10(max(xs) * 1.0001))
    hi = max(hi, lo * 10)
    pw, ph = _W - _L - _R - 120, _H - _T - _B

    def px(x: float) -> float:
        return _L + pw * (math.log10(max(x, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    def py(y: float) -> float:
        return _T + ph * (1 - y)

    body = [f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    decade = lo
    while decade <= hi:
        body.append(f'<line x1="{_f(px(decade))}" y1="{_T}" x2="{_f(px(decade))}" '
                    f'y2="{_T + ph}" stroke="#eee"/><text x="{_f(px(decade))}" '
                    f'y="{_T + ph + 14}" text-anchor="middle">{escape(format_ns(int(decade)))}'
                    f'</text>')
        decade *= 10
    for q in (0.0, 0.5, 0.99, 1.0):
        body.append(f'<text x="{_L - 4}" y="{_f(py(q) + 4)}" text-anchor="end">{q:g}</text>')
    body += _step_lines(series, px, py, start=0.0)
    body.append(f'<text x="{_L + pw / 2}" y="{_H - 4}" text-anchor="middle">block length '
                f'(log scale); y: share of blocks</text>')
    return _frame(title, _W, _H, body)


def steps_svg(title: str, series: Sequence[Series], t0: int, t1: int) -> str:
    """Step plots (value holds until the next point) on a shared linear time axis."""
    vmax = max([y for s in series for y in s.ys] + [1])
    span = max(t1 - t0, 1)
    pw, ph = _W - _L - _R - 120, _H - _T - _B

    def px(x: float) -> float:
        return _L + pw * (x - t0) / span

    def py(y: float) -> float:
        return _T + ph * (1 - y / vmax)

    body = [f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
            f'<text x="{_L - 4}" y="{_f(py(vmax) + 4)}" text-anchor="end">{_f(vmax)}</text>',
            f'<text x="{_L - 4}" y="{_f(py(0) + 4)}" text-anchor="end">0</text>',
            f'<text x="{_L}" y="{_T + ph + 14}">+0</text>',
            f'<text x="{_L + pw}" y="{_T + ph + 14}" text-anchor="end">'
            f'+{escape(format_ns(span))}</text>']
    body += _step_lines(series, px, py, start=None)
    body.append(f'<text x="{_L + pw / 2}" y="{_H - 4}" text-anchor="middle">time since '
                f'{t0} ns; y: reference count</text>')
    return _frame(title, _W, _H, body)


def timeline_svg(title: str, lanes: Sequence[Lane], t0: int, t1: int, *,
                 max_bars: int = 4000) -> str:
    """One row per lane; bars coloured by kind. Bars narrower than a pixel column are
    merged per column (the strongest kind, in :data:`CAUSE_COLORS` order, wins), so the
    output stays bounded by ``max_bars`` whatever the input size."""
    row, pw = 16, _W - 150 - _R
    height = _T + row * len(lanes) + _B
    span = max(t1 - t0, 1)
    order = {k: i for i, k in enumerate(CAUSE_COLORS)}
    body = []
    budget = max_bars
    for r, lane in enumerate(lanes):
        y = _T + r * row
        body.append(f'<text x="146" y="{y + 11}" text-anchor="end">{escape(lane.label)}</text>'
                    f'<line x1="150" y1="{y + row - 1}" x2="{150 + pw}" y2="{y + row - 1}" '
                    f'stroke="#eee"/>')
        cols: dict[int, tuple[int, int, str]] = {}
        for start, end, kind in lane.bars:
            a = int(pw * (start - t0) / span)
            b = max(a + 1, int(math.ceil(pw * (end - t0) / span)))
            for c in range(a, min(b, pw + 1)):
                old = cols.get(c)
                if old is None or order.get(kind, 99) < order.get(old[2], 99):
                    cols[c] = (c, c + 1, kind)
        merged: list[tuple[int, int, str]] = []
        for c in sorted(cols):
            kind = cols[c][2]
            if merged and merged[-1][1] == c and merged[-1][2] == kind:
                merged[-1] = (merged[-1][0], c + 1, kind)
            else:
                merged.append((c, c + 1, kind))
        for a, b, kind in merged[:budget]:
            color = CAUSE_COLORS.get(kind, "#333")
            body.append(f'<rect x="{150 + a}" y="{y + 2}" width="{b - a}" height="{row - 5}" '
                        f'fill="{color}"><title>{escape(kind)}</title></rect>')
        budget = max(0, budget - len(merged))
    kinds = sorted({k for lane in lanes for _, _, k in lane.bars}, key=lambda k: order.get(k, 99))
    body += _legend(kinds, [CAUSE_COLORS.get(k, "#333") for k in kinds], 150,
                    height - _B + 14) if kinds else []
    body.append(f'<text x="{150 + pw}" y="{_T - 6}" text-anchor="end">'
                f'{escape(format_ns(span))} from {t0} ns</text>')
    return _frame(title, _W, height + 13 * max(0, len(kinds) - 1), body)
