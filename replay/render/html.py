"""One self-contained HTML page comparing observed and replayed runs (inline SVG, no scripts).

For every run (``"observed"`` or a policy name) the page shows the per-vCPU latency summary,
a count-weighted block-latency CDF per vCPU, a timeline with a lane per vCPU and per zapping
thread, and the refcount step plot of its busiest roots; a table at the top puts every
vCPU's worst block side by side across runs, and the warnings close the page. The output is
bounded (thinned series, merged timeline columns) and deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Final

import pyarrow as pa

from parsers.output import output_file
from replay.render.svg import CdfLine, Lane, cdf_svg, steps_svg, timeline_svg
from replay.render.tables import RunTables, check_runs
from replay.sizes import format_ns

__all__ = ["write_report", "render_report", "MAX_ROOTS", "MAX_CDF_POINTS", "TIMELINE_RECTS",
           "REFCOUNT_COLUMNS"]

#: Roots drawn per run (those with the most refcount changes); the others are named.
MAX_ROOTS: Final = 8
#: Points per CDF line at most (+2).
MAX_CDF_POINTS: Final = 200
#: Timeline rects per run at most (lanes x columns, lost-event bars included).
TIMELINE_RECTS: Final = 4000
#: Pixel columns a refcount history is thinned to (four points each at most).
REFCOUNT_COLUMNS: Final = 380
_MAX_OMITTED_NAMED: Final = 40
_STYLE: Final = (
    "body{font-family:sans-serif;margin:1.5em;max-width:960px}"
    "table{border-collapse:collapse;margin:.5em 0 1em}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
    "th{background:#f3f3f3}td.l,th.l{text-align:left}"
    ".warnings li{color:#a50}svg{display:block;margin:.5em 0}"
)


def write_report(runs: Mapping[str, Mapping[str, pa.Table]], path: str | Path, *, title: str,
                 source: str | None = None, warnings: Sequence[str] = (),
                 force: bool = False) -> Path:
    """Write the report of ``runs`` to ``path`` as one HTML file, by the output policy of
    :func:`parsers.output.output_file` (an existing file is replaced only with ``force``).

    Args:
        runs: run label (``"observed"`` or a policy name) → tables: ``blocks`` (required,
            ``BLOCKS_SCHEMA``, optionally with a bool ``lost`` column), ``refcounts``,
            ``roots`` and ``summary`` (optional; recomputed from ``blocks`` when absent).
            Runs appear in the mapping's order.
        path: the HTML file to write.
        title: page title.
        source: the trace or scenario the runs come from (shown under the title).
        warnings: shown as a list at the end of the page.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ReplayConfigError: a run lacks ``blocks`` or a required column.
        OutputError: the output policy (:mod:`parsers.output`) refuses ``path``.
    """
    page = render_report(runs, title=title, source=source, warnings=warnings)
    with output_file(path, force=force) as fh:
        fh.write(page.encode("utf-8"))
    return Path(path)


def render_report(runs: Mapping[str, Mapping[str, pa.Table]], *, title: str,
                  source: str | None = None, warnings: Sequence[str] = ()) -> str:
    """The page :func:`write_report` writes, as a string."""
    prepared = check_runs(runs)
    others = sorted({c for r in prepared for c in r.causes} - set(_KNOWN))
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
             f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
             f"<h1>{escape(title)}</h1>"]
    if source:
        parts.append(f'<p class="source">Source: <code>{escape(source)}</code></p>')
    parts.append("<p>Runs: " + ", ".join(
        f'<a href="#run-{i}">{escape(r.label)}</a>' for i, r in enumerate(prepared)) + "</p>")
    parts.append(_worst_table(prepared))
    for i, run in enumerate(prepared):
        parts.append(f'<section class="run" id="run-{i}" data-label="{escape(run.label)}">'
                     f"<h2>{escape(run.label)}</h2>")
        parts.append(_summary_table(run))
        parts.append(cdf_svg(run.label, [CdfLine(f"vcpu {v}", run.cdf(v, MAX_CDF_POINTS))
                                         for v in run.vcpus]))
        parts.append(_timeline(run, others))
        parts.append(_refcounts(run))
        parts.append("</section>")
    parts.append(_warnings(warnings))
    parts.append("</body></html>\n")
    return "".join(parts)


_KNOWN: Final = ("zap", "lock_wait", "root_alloc", "root_put", "fault", "exit", "userspace",
                 "preempted", "unknown")


def _ns_cell(ns: int) -> str:
    return f'<td data-ns="{ns}">{format_ns(ns)}</td>'


def _summary_table(run: RunTables) -> str:
    lost = run.lost_blocks()
    head = ["vcpu", "blocks", "p50", "p99", "max", "total", "max cause"]
    if lost is not None:
        head.append("in lost-event windows")
    rows = ['<table class="summary" data-label="' + escape(run.label) + '"><tr>'
            + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in run.summary.to_pylist():
        cells = [f'<td data-n="{r["vcpu"]}">{r["vcpu"]}</td>',
                 f'<td data-n="{r["blocks"]}">{r["blocks"]:,}</td>']
        cells += [_ns_cell(int(r[k] or 0)) for k in ("p50_ns", "p99_ns", "max_ns", "total_ns")]
        cells.append(f'<td class="l">{escape(str(r["max_cause"] or ""))}</td>')
        if lost is not None:
            n = lost.get(int(r["vcpu"]), 0)
            cells.append(f'<td data-n="{n}">{n:,}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    if len(rows) == 1:
        rows.append(f'<tr><td class="l" colspan="{len(head)}">no vCPU blocks</td></tr>')
    return "".join(rows) + "</table>"


def _worst_table(runs: Sequence[RunTables]) -> str:
    vcpus = sorted({v for r in runs for v in r.vcpus})
    worst = [{int(row["vcpu"]): row for row in r.summary.to_pylist()} for r in runs]
    out = ['<h2>Worst block per vCPU</h2><table class="worst"><tr><th>vcpu</th>'
           + "".join(f"<th>{escape(r.label)}</th>" for r in runs) + "</tr>"]
    for v in vcpus:
        cells = []
        for per in worst:
            row = per.get(v)
            if row is None or not row["blocks"]:
                cells.append("<td>–</td>")
            else:
                cells.append(f'<td data-ns="{int(row["max_ns"])}">{format_ns(int(row["max_ns"]))}'
                             f' {escape(str(row["max_cause"] or ""))}</td>')
        out.append(f"<tr><td>{v}</td>{''.join(cells)}</tr>")
    return "".join(out) + "</table>"


def _timeline(run: RunTables, others: Sequence[str]) -> str:
    lanes_in = run.lanes()
    per_lane = 2 if run.has_lost else 1
    columns = max(50, min(760, TIMELINE_RECTS // max(1, len(lanes_in) * per_lane)))
    lanes = [Lane(name, lane.runs(run.span, columns), lane.marker,
                  lane.lost_columns(run.span, columns)) for name, lane in lanes_in]
    return timeline_svg(run.label, lanes, run.span, columns, others)


def _refcounts(run: RunTables) -> str:
    histories = run.refcount_histories()
    if not histories:
        return "<h3>Refcounts</h3><p>No refcount history.</p>"
    ranked = sorted(histories, key=lambda root: (-histories[root][0].size, root))
    drawn = sorted(ranked[:MAX_ROOTS])
    omitted = sorted(ranked[MAX_ROOTS:])
    parts = [f"<h3>Refcounts ({len(histories)} roots)</h3>"]
    for root in drawn:
        ts, counts = histories[root]
        t, c = run.thin_refcounts(ts, counts, REFCOUNT_COLUMNS)
        title = run.root_title(root, ts.size, t.size)
        parts.append(steps_svg(run.label, title, t, c, run.span, run.root_markers(root)))
    if omitted:
        named = ", ".join(str(r) for r in omitted[:_MAX_OMITTED_NAMED])
        more = len(omitted) - _MAX_OMITTED_NAMED
        tail = f" and {more} more" if more > 0 else ""
        parts.append(f'<p class="omitted">Not drawn (fewer refcount changes; at most {MAX_ROOTS}'
                     f" roots per run): roots {named}{tail}.</p>")
    return "".join(parts)


def _warnings(warnings: Sequence[str]) -> str:
    if not warnings:
        return '<h2>Warnings</h2><p class="warnings">None.</p>'
    items = "".join(f"<li>{escape(w)}</li>" for w in warnings)
    return f'<h2>Warnings</h2><ul class="warnings">{items}</ul>'
