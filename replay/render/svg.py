"""Inline SVG plots for the HTML report: CDFs on a log-ns axis, step plots, lane timelines.

Plain strings, no plotting library: every coordinate is printed with one decimal so the
same input always gives the same bytes. Each function returns one ``<svg>`` element with a
``class`` naming the plot kind and a ``data-label`` naming the run, and a ``<title>``.
Inputs come thinned from :mod:`replay.render.series`, so the output size is bounded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

from replay.render.series import I64, SHADES, CdfPoints, Run, Span
from replay.sizes import format_duration

__all__ = ["CdfLine", "Lane", "cdf_svg", "steps_svg", "timeline_svg", "cause_color",
           "series_color", "log_ticks", "time_ticks", "decade_label", "WIDTH"]

#: Width of every plot in px.
WIDTH: Final = 900
_LEFT: Final = 120
_RIGHT: Final = 20
_PLOT_W: Final = WIDTH - _LEFT - _RIGHT
CAUSE_COLORS: Final = {
    "zap": "#d62728", "lock_wait": "#ff7f0e", "root_alloc": "#9467bd", "root_put": "#8c564b",
    "fault": "#1f77b4", "exit": "#7f7f7f", "userspace": "#17becf", "preempted": "#bcbd22",
    "unknown": "#c7c7c7",
}
_EXTRA: Final = ("#e377c2", "#2ca02c", "#aec7e8", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94")
_SERIES: Final = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                  "#7f7f7f", "#bcbd22", "#17becf")
_MAX_LEGEND: Final = 16


@dataclass(frozen=True)
class CdfLine:
    """One vCPU's CDF in a :func:`cdf_svg` plot."""

    name: str
    cdf: CdfPoints


@dataclass(frozen=True)
class Lane:
    """One timeline lane: its runs of columns, the column ranges touched by blocks in
    lost-event windows, and an optional marker ``(ts, text)``."""

    name: str
    runs: Sequence[Run]
    marker: tuple[int, str] | None = None
    lost: Sequence[tuple[int, int]] = ()
    #: Times of zero-length intervals (a zap that took no time), drawn as ticks.
    instants: Sequence[int] = ()


def _f(v: float) -> str:
    return f"{v:.1f}"


def cause_color(cause: str, others: Sequence[str] = ()) -> str:
    """Fill colour of a cause; causes outside the known set take colours by their position
    in ``others`` (a sorted list of them), so the mapping is stable for one report."""
    if cause in CAUSE_COLORS:
        return CAUSE_COLORS[cause]
    pos = others.index(cause) if cause in others else 0
    return _EXTRA[pos % len(_EXTRA)]


def series_color(i: int) -> str:
    """Line colour of the ``i``-th series (cycles after ten)."""
    return _SERIES[i % len(_SERIES)]


def decade_label(exponent: int, unit: str = "ns") -> str:
    """``10**exponent`` ns for humans: ``1 ns``, ``100 ns``, ``10 µs``, ``1 s``, ``1000 s``
    (in another ``unit``, e.g. ticks: the number and the unit).

    Examples:
        >>> [decade_label(e) for e in (0, 2, 4, 9, 12)]
        ['1 ns', '100 ns', '10 µs', '1 s', '1000 s']
        >>> decade_label(6, "ticks")
        '1,000,000 ticks'
    """
    if unit != "ns":
        return f"{10 ** exponent:,} {unit}"
    for unit, exp in (("s", 9), ("ms", 6), ("µs", 3)):
        if exponent >= exp:
            return f"{10 ** (exponent - exp)} {unit}"
    return f"{10 ** exponent} ns"


def log_ticks(lo: float, hi: float) -> list[int]:
    """Decade exponents covering ``[lo, hi]`` ns (at least two)."""
    e0 = math.floor(math.log10(max(lo, 1.0)))
    e1 = max(math.ceil(math.log10(max(hi, 1.0))), e0 + 1)
    return list(range(e0, e1 + 1))


def time_ticks(span: Span, target: int = 8) -> list[int]:
    """Offsets from ``span.t0`` (ns) of about ``target`` round ticks (1, 2, 5 × 10^k ns).

    Examples:
        >>> time_ticks(Span(0, 1000))
        [0, 200, 400, 600, 800, 1000]
    """
    raw = max(span.ns / target, 1.0)
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    return list(range(0, span.ns + 1, step))


def _frame(kind: str, label: str, title: str, height: int, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="{kind}" data-label="{escape(label)}"'
            f' width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}"'
            f' font-family="sans-serif" font-size="11"><title>{escape(title)}</title>'
            + "".join(body) + "</svg>")


def _legend(items: Sequence[tuple[str, str]], y: float, left: int = _LEFT) -> list[str]:
    out: list[str] = []
    shown = items[:_MAX_LEGEND]
    for i, (name, color) in enumerate(shown):
        x = left + (i % 8) * 95
        yy = y + (i // 8) * 14
        out.append(f'<rect x="{x}" y="{_f(yy - 8)}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{x + 14}" y="{_f(yy + 1)}">{escape(name)}</text>')
    if len(items) > len(shown):
        out.append(f'<text x="{left}" y="{_f(y + 2 * 14 + 1)}">… and {len(items) - len(shown)}'
                   " more</text>")
    return out


def _legend_height(n: int) -> int:
    return 14 * (min(math.ceil(n / 8), 2) + (1 if n > _MAX_LEGEND else 0)) + 6


def cdf_svg(label: str, lines: Sequence[CdfLine], unit: str = "ns") -> str:
    """Per-vCPU CDFs of block latency: log x axis (decades of ``unit``), fraction of blocks
    on y."""
    height_plot = 240
    top = 24
    legend_y = top + height_plot + 46
    height = legend_y + _legend_height(len(lines))
    body = [f'<text x="{_LEFT}" y="15" font-weight="bold">{escape(label)}: block latency CDF'
            " (count-weighted)</text>"]
    drawn = [ln for ln in lines if ln.cdf.values.size]
    if not drawn:
        body.append(f'<text x="{_LEFT}" y="{top + 40}">no blocks</text>')
        return _frame("cdf", label, f"{label}: block latency CDF", top + 60, body)
    lo = min(float(ln.cdf.values[0]) for ln in drawn)
    hi = max(float(ln.cdf.values[-1]) for ln in drawn)
    exps = log_ticks(lo, hi)
    l0, l1 = exps[0], exps[-1]

    def px(v: float) -> float:
        return _LEFT + (math.log10(max(v, 1.0)) - l0) / (l1 - l0) * _PLOT_W

    def py(frac: float) -> float:
        return top + (1.0 - frac) * height_plot

    body += _axes_log(exps, px, py, top, height_plot, unit)
    for i, ln in enumerate(lines):
        if not ln.cdf.values.size:
            continue
        path = [f"M{_f(px(float(ln.cdf.values[0])))} {_f(py(0.0))}"]
        for v, frac in zip(ln.cdf.values.tolist(), ln.cdf.fraction.tolist(), strict=True):
            path.append(f"H{_f(px(v))}V{_f(py(frac))}")
        body.append(f'<path d="{"".join(path)}" fill="none" stroke="{series_color(i)}"'
                    f' stroke-width="1.5"><title>{escape(ln.name)}: {ln.cdf.blocks} blocks'
                    "</title></path>")
    body += _legend([(ln.name, series_color(i)) for i, ln in enumerate(lines)], legend_y)
    return _frame("cdf", label, f"{label}: block latency CDF", height, body)


def _axes_log(exps: Sequence[int], px: Callable[[float], float], py: Callable[[float], float],
              top: int, h: int, unit: str = "ns") -> list[str]:
    out = [f'<rect x="{_LEFT}" y="{top}" width="{_PLOT_W}" height="{h}" fill="none"'
           ' stroke="#999"/>']
    for e in exps:
        x = _f(px(10.0 ** e))
        out.append(f'<line x1="{x}" y1="{top}" x2="{x}" y2="{top + h}" stroke="#eee"/>'
                   f'<text x="{x}" y="{top + h + 14}" text-anchor="middle">'
                   f"{decade_label(e, unit)}</text>")
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = _f(py(frac))
        out.append(f'<line x1="{_LEFT}" y1="{y}" x2="{_LEFT + _PLOT_W}" y2="{y}" stroke="#eee"/>'
                   f'<text x="{_LEFT - 6}" y="{y}" text-anchor="end" dy="4">{frac:g}</text>')
    y99 = _f(py(0.99))
    out.append(f'<line x1="{_LEFT}" y1="{y99}" x2="{_LEFT + _PLOT_W}" y2="{y99}" stroke="#ccc"'
               ' stroke-dasharray="2,2"/>'
               f'<text x="{_LEFT + _PLOT_W - 4}" y="{y99}" text-anchor="end" dy="10"'
               ' fill="#888">p99</text>')
    out.append(f'<text x="{_LEFT + _PLOT_W // 2}" y="{top + h + 28}" text-anchor="middle">'
               "block duration (log)</text>")
    return out


def _time_axis(span: Span, top: int, h: int, unit: str = "ns", left: int = _LEFT) -> list[str]:
    out: list[str] = []
    plot_w = WIDTH - left - _RIGHT
    for off in time_ticks(span):
        x = _f(left + off / span.ns * plot_w)
        out.append(f'<line x1="{x}" y1="{top}" x2="{x}" y2="{top + h}" stroke="#eee"/>'
                   f'<text x="{x}" y="{top + h + 14}" text-anchor="middle">'
                   f"+{format_duration(off, unit)}</text>")
    return out


def steps_svg(label: str, title: str, ts: I64, values: I64, span: Span,
              markers: Sequence[tuple[int, str]] = (), unit: str = "ns") -> str:
    """A step plot of ``values`` over time (a refcount history), x from ``span``.

    ``markers`` are ``(ts, text)`` dashed vertical lines (invalidated, zapped, freed ...),
    each named at its top by the first word of its text, and explained in a legend.
    """
    top, h = 34, 90
    height = top + h + 40
    body = [f'<text x="{_LEFT}" y="14" font-weight="bold">{escape(title)}</text>']
    body.append(f'<rect x="{_LEFT}" y="{top}" width="{_PLOT_W}" height="{h}" fill="none"'
                ' stroke="#999"/>')
    body += _time_axis(span, top, h, unit)
    vmax = max(int(values.max()) if values.size else 1, 1)

    def px(t: int) -> float:
        return _LEFT + (t - span.t0) / span.ns * _PLOT_W

    def py(v: int) -> float:
        return top + h - v / vmax * h

    for v in sorted({0, vmax}):
        body.append(f'<text x="{_LEFT - 6}" y="{_f(py(v))}" text-anchor="end" dy="4">{v}</text>')
    for t, text in markers:
        x = _f(px(t))
        body.append(f'<line x1="{x}" y1="{top}" x2="{x}" y2="{top + h}" stroke="#888"'
                    f' stroke-dasharray="3,3"><title>{escape(text)}</title></line>'
                    f'<text x="{x}" y="{top - 3}" text-anchor="middle" font-size="9"'
                    f' fill="#666">{escape(text.split()[0])}</text>')
    if ts.size:
        path = [f"M{_f(px(int(ts[0])))} {_f(py(int(values[0])))}"]
        for t, v in zip(ts[1:].tolist(), values[1:].tolist(), strict=True):
            path.append(f"H{_f(px(t))}V{_f(py(v))}")
        path.append(f"H{_f(px(span.t1))}")
        body.append(f'<path d="{"".join(path)}" fill="none" stroke="#1f77b4"/>')
    ly = top + h + 32
    body.append(f'<g class="legend"><line x1="{_LEFT}" y1="{ly - 4}" x2="{_LEFT + 24}"'
                f' y2="{ly - 4}" stroke="#1f77b4"/><text x="{_LEFT + 28}" y="{ly}">refcount'
                f'</text><line x1="{_LEFT + 110}" y1="{ly - 9}" x2="{_LEFT + 110}" y2="{ly + 1}"'
                ' stroke="#888" stroke-dasharray="3,3"/>'
                f'<text x="{_LEFT + 116}" y="{ly}">root event: invalidated, zap_start, zap_end,'
                " freed (named on top; hover for the time)</text></g>")
    return _frame("refcount", label, title, height, body)


def timeline_svg(label: str, lanes: Sequence[Lane], span: Span, columns: int,
                 others: Sequence[str] = (), unit: str = "ns") -> str:
    """Lanes of blocked time: one rect per :class:`Run`, coloured by cause, shaded by how
    much of its columns is blocked; a black bar under blocks overlapping lost events; a
    triangle at each lane's marker (its worst block); a tick at each zero-length interval.
    The label column is as wide as the longest lane name (whole names, never cut); the
    legend names every cause and every mark drawn."""
    lane_h, top = 18, 24
    left = min(max(_LEFT, 12 + 6 * max((len(lane.name) for lane in lanes), default=0)), 480)
    plot_w = WIDTH - left - _RIGHT
    plot_h = lane_h * max(len(lanes), 1)
    causes = sorted({r.cause for lane in lanes for r in lane.runs})
    legend_y = top + plot_h + 34
    marks = _mark_items(lanes)
    marks_y = legend_y + _legend_height(len(causes)) + 8
    height = marks_y + 14 * len(marks)
    col_w = plot_w / columns
    body = [f'<text x="{left}" y="15" font-weight="bold">{escape(label)}: timeline of blocks'
            " and zaps</text>"]
    body += _time_axis(span, top, plot_h, unit, left)
    for i, lane in enumerate(lanes):
        body += _lane(lane, top + i * lane_h, lane_h, left, col_w, span, columns, others, unit)
    body += _legend([(c, cause_color(c, others)) for c in causes], legend_y, left)
    body += _marks_legend(marks, marks_y, left)
    return _frame("timeline", label, f"{label}: timeline", height, body)


def _lane(lane: Lane, y: int, lane_h: int, left: int, col_w: float, span: Span, columns: int,
          others: Sequence[str], unit: str) -> list[str]:
    plot_w = WIDTH - left - _RIGHT
    out = [f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{escape(lane.name)}</text>']
    for r in lane.runs:
        tip = (f"{r.cause}: {format_duration(round(r.blocked_ns), unit)} blocked in"
               f" +{format_duration(round(r.col0 * span.ns / columns), unit)}"
               f"..+{format_duration(round(r.col1 * span.ns / columns), unit)}")
        out.append(f'<rect x="{_f(left + r.col0 * col_w)}" y="{y + 2}"'
                   f' width="{_f((r.col1 - r.col0) * col_w)}" height="{lane_h - 5}"'
                   f' fill="{cause_color(r.cause, others)}"'
                   f' fill-opacity="{r.shade / SHADES:g}"><title>{escape(tip)}</title></rect>')
    for c0, c1 in lane.lost:
        out.append(f'<rect x="{_f(left + c0 * col_w)}" y="{y + lane_h - 3}"'
                   f' width="{_f((c1 - c0) * col_w)}" height="2" fill="#000" class="lost">'
                   "<title>overlaps lost events</title></rect>")
    for t in lane.instants:
        x = left + (t - span.t0) / span.ns * plot_w
        out.append(f'<rect x="{_f(x - 0.75)}" y="{y + 1}" width="1.5" height="{lane_h - 3}"'
                   ' fill="#000" class="instant"><title>zero-length interval at'
                   f" +{escape(format_duration(t - span.t0, unit))}</title></rect>")
    if lane.marker is not None:
        mx = left + (lane.marker[0] - span.t0) / span.ns * plot_w
        out.append(f'<path d="M{_f(mx)} {y + 2}l-4 -6h8z" fill="#000">'
                   f"<title>{escape(lane.marker[1])}</title></path>")
    return out


def _mark_items(lanes: Sequence[Lane]) -> list[tuple[str, str]]:
    """(shape template, text) of every mark other than cause colours the plot draws."""
    items: list[tuple[str, str]] = []
    if any(lane.marker for lane in lanes):
        items.append(('<path d="M{x} {y}l-4 -6h8z" fill="#000"/>', "worst block of the lane"))
    if any(lane.lost for lane in lanes):
        items.append(('<rect x="{x0}" y="{y}" width="16" height="2" fill="#000"/>',
                      "blocks overlapping lost events (the trace lost events there)"))
    if any(lane.instants for lane in lanes):
        items.append(('<rect x="{x}" y="{y0}" width="1.5" height="10" fill="#000"/>',
                      "zero-length zap or block"))
    items.append(('<rect x="{x0}" y="{y0}" width="16" height="10" fill="#888"'
                  ' fill-opacity="0.25"/>', "paler: less of the pixel column blocked"))
    return items


def _marks_legend(items: Sequence[tuple[str, str]], y: int, left: int) -> list[str]:
    """The legend of the marks, one a row."""
    out = ['<g class="legend marks">']
    for i, (shape, text) in enumerate(items):
        yy = y + 14 * i
        out.append(shape.format(x=_f(left + 8), x0=_f(left), y=yy - 2, y0=yy - 9)
                   + f'<text x="{_f(left + 22)}" y="{yy}">{escape(text)}</text>')
    return out + ["</g>"]
