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
from replay.render.tables import MMU_CAUSES, RunTables, check_runs
from replay.sizes import format_duration

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
                 force: bool = False, vcpu_names: Mapping[int, str] | None = None,
                 units: Mapping[str, str] | None = None) -> Path:
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
        force: replace an existing file.
        vcpu_names: vCPU index → lane label (its thread and VM); default ``vcpu N``.
        units: run label → the unit of its times when not ns (``ticks`` for the observed
            run of a tick-clock trace): its durations print in that unit.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ReplayConfigError: a run lacks ``blocks`` or a required column.
        OutputError: the output policy (:mod:`parsers.output`) refuses ``path``.
    """
    page = render_report(runs, title=title, source=source, warnings=warnings,
                         vcpu_names=vcpu_names, units=units)
    with output_file(path, force=force) as fh:
        fh.write(page.encode("utf-8"))
    return Path(path)


def render_report(runs: Mapping[str, Mapping[str, pa.Table]], *, title: str,
                  source: str | None = None, warnings: Sequence[str] = (),
                  vcpu_names: Mapping[int, str] | None = None,
                  units: Mapping[str, str] | None = None) -> str:
    """The page :func:`write_report` writes, as a string."""
    prepared = check_runs(runs, units)
    others = sorted({c for r in prepared for c in r.causes} - set(_KNOWN))
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
             f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
             f"<h1>{escape(title)}</h1>"]
    if source:
        parts.append(f'<p class="source">Source: <code>{escape(source)}</code></p>')
    parts.append("<p>Runs: " + ", ".join(
        f'<a href="#run-{i}">{escape(r.label)}</a>' for i, r in enumerate(prepared)) + "</p>")
    parts.append(_units_note(prepared))
    parts.append(_worst_table(prepared))
    for i, run in enumerate(prepared):
        parts.append(f'<section class="run" id="run-{i}" data-label="{escape(run.label)}">'
                     f"<h2>{escape(run.label)}</h2>")
        parts.append(_summary_table(run))
        parts.append(cdf_svg(run.label, [CdfLine(f"vcpu {v}", run.cdf(v, MAX_CDF_POINTS))
                                         for v in run.vcpus], run.unit))
        parts.append(_timeline(run, others, vcpu_names))
        parts.append(_refcounts(run))
        parts.append("</section>")
    parts.append(_warnings(warnings))
    parts.append("</body></html>\n")
    return "".join(parts)


_KNOWN: Final = ("zap", "lock_wait", "root_alloc", "root_put", "fault", "exit", "userspace",
                 "preempted", "unknown")


def _ns_cell(ns: int, unit: str = "ns") -> str:
    return f'<td data-{unit}="{ns}">{format_duration(ns, unit)}</td>'


def _units_note(runs: Sequence[RunTables]) -> str:
    odd = [r for r in runs if r.unit != "ns"]
    if not odd:
        return ""
    names = ", ".join(f"{escape(r.label)} ({escape(r.unit)})" for r in odd)
    return (f'<p class="units">Times of {names} are in the trace clock\'s {escape(odd[0].unit)},'
            " not nanoseconds: they print as such; the replays took them as ns.</p>")


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
        cells += [_ns_cell(int(r[k] or 0), run.unit)
                  for k in ("p50_ns", "p99_ns", "max_ns", "total_ns")]
        cells.append(f'<td class="l">{escape(str(r["max_cause"] or ""))}</td>')
        if lost is not None:
            n = lost.get(int(r["vcpu"]), 0)
            cells.append(f'<td data-n="{n}">{n:,}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    if len(rows) == 1:
        rows.append(f'<tr><td class="l" colspan="{len(head)}">no vCPU blocks</td></tr>')
    return "".join(rows) + "</table>"


_KINDS: Final = (("userspace", "userspace"), ("exit", "exit handling"),
                 ("other", "other (preempted, unknown)"))


def _worst_table(runs: Sequence[RunTables]) -> str:
    """The headline: per vCPU the longest MMU-caused block (what the model replays) of
    every run, side by side; userspace, exit-handling and other blocks, which only a trace
    shows, in their own columns per run that has them."""
    vcpus = sorted({v for r in runs for v in r.vcpus})
    worst = [{v: r.worst_by_kind(v) for v in r.vcpus} for r in runs]
    apart = [(i, kind, name) for i, r in enumerate(runs) for kind, name in _KINDS
             if any(kind in w for w in worst[i].values())]
    out = ['<h2>Worst MMU-caused block per vCPU</h2><p class="headline">Blocks caused by the'
           f" MMU ({', '.join(MMU_CAUSES)}): observed and replayed, the same quantity."
           " Userspace, exit-handling and other blocks are not modelled: they are shown"
           ' apart, for the runs that have them.</p><table class="worst"><tr><th>vcpu</th>'
           + "".join(f"<th>{escape(r.label)}</th>" for r in runs)
           + "".join(f'<th class="apart">{escape(runs[i].label)}: {name}</th>'
                     for i, _, name in apart) + "</tr>"]
    for v in vcpus:
        cells = [_worst_cell(worst[i].get(v, {}).get("mmu"), r.unit) for i, r in enumerate(runs)]
        cells += [_worst_cell(worst[i].get(v, {}).get(kind), runs[i].unit, "apart")
                  for i, kind, _ in apart]
        out.append(f"<tr><td>{v}</td>{''.join(cells)}</tr>")
    return "".join(out) + "</table>"


def _worst_cell(found: tuple[int, str] | None, unit: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    if found is None:
        return f"<td{attr}>–</td>"
    each, cause = found
    return (f'<td{attr} data-{unit}="{each}">{format_duration(each, unit)} {escape(cause)}'
            "</td>")


def _timeline(run: RunTables, others: Sequence[str],
              vcpu_names: Mapping[int, str] | None) -> str:
    lanes_in = run.lanes(vcpu_names)
    per_lane = 2 if run.has_lost else 1
    columns = max(50, min(760, TIMELINE_RECTS // max(1, len(lanes_in) * per_lane)))
    lanes = [Lane(name, lane.runs(run.span, columns), lane.marker,
                  lane.lost_columns(run.span, columns), lane.instants(run.span, columns))
             for name, lane in lanes_in]
    return timeline_svg(run.label, lanes, run.span, columns, others, run.unit)


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
        parts.append(steps_svg(run.label, title, t, c, run.span, run.root_markers(root),
                               run.unit))
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
