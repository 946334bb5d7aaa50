"""One self-contained HTML page for a whole fleet dataset (inline SVG, no scripts).

In: a :class:`FleetPage`, the figures :func:`replay.fleets.report.fleet_page` gathers from
the dataset; out: the page. Sections, in order: the blocks of at least the threshold
(100 ms) each policy would have removed; the fleet's block-latency CDF and percentiles per
run; the worst vCPUs per run, each trace id a link to its row in the traces table; traces
by status, era and format, and blocks by cause per run; the traces linked; the failed
traces with their messages. Every list is bounded (top vCPUs, linked traces, at most
:data:`MAX_ERRORS` errors), and the same figures give the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Final

from parsers.output import output_file
from replay.render.series import CdfPoints
from replay.render.svg import CdfLine, cdf_svg
from replay.render.tables import MMU_CAUSES
from replay.sizes import format_ns

__all__ = ["FleetPage", "RunFigures", "WorstVcpu", "Removal", "TraceRow", "render_fleet_page",
           "write_fleet_page", "MAX_ERRORS", "PERCENTS"]

#: Failed traces listed with their message; the others are counted.
MAX_ERRORS: Final = 200
#: Percentiles of each run's distribution (nearest rank, count-weighted).
PERCENTS: Final = (50, 90, 99)
_STYLE: Final = (
    "body{font-family:sans-serif;margin:1.5em;max-width:1100px}"
    "table{border-collapse:collapse;margin:.5em 0 1em}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
    "th{background:#f3f3f3}td.l,th.l{text-align:left}code{font-size:90%}"
    "svg{display:block;margin:.5em 0}table.errors td:last-child{color:#a00}"
)


@dataclass(frozen=True)
class RunFigures:
    """One run (``observed`` or a policy) over the whole fleet; durations in ns.

    ``blocks`` counts MMU-caused blocks (``n_blocks``-weighted) of ``traces`` traces;
    ``percentiles`` maps each of :data:`PERCENTS` to its exact duration; ``at_least`` is
    ``(threshold, blocks at least that long)``; ``causes`` counts blocks of every cause.
    """

    run: str
    traces: int
    blocks: int
    percentiles: Mapping[int, int]
    max_ns: int | None
    at_least: Sequence[tuple[int, int]]
    cdf: CdfPoints
    causes: Mapping[str, int]


@dataclass(frozen=True)
class WorstVcpu:
    """A vCPU's longest MMU-caused block in one run of one trace."""

    run: str
    trace: str
    path: str
    vcpu: int
    vm: int | None
    thread: str | None
    max_ns: int
    cause: str


@dataclass(frozen=True)
class Removal:
    """Blocks of at least the threshold: observed against one policy, on the ``traces``
    traces replayed under it (with ns timestamps)."""

    policy: str
    traces: int
    observed: int
    replayed: int
    traces_observed: int
    traces_cleared: int


@dataclass(frozen=True)
class TraceRow:
    """One trace of the dataset as its ``traces`` row has it; ``long`` counts its blocks
    of at least the threshold per run."""

    trace: str
    path: str
    format: str | None
    era: str | None
    status: str
    error: str | None
    events: int | None
    vcpus: int | None
    long: Mapping[str, int]


@dataclass(frozen=True)
class FleetPage:
    """Everything the fleet page shows (see the module doc)."""

    dataset: str
    threshold_ns: int
    runs: Sequence[RunFigures]
    removals: Sequence[Removal]
    worst: Sequence[WorstVcpu]
    traces: Sequence[TraceRow]
    errors: Sequence[TraceRow]
    error_count: int
    counts: Mapping[str, Mapping[str, int]]
    notes: Sequence[str] = ()


def write_fleet_page(page: FleetPage, path: str | Path, *, force: bool = False) -> Path:
    """Write :func:`render_fleet_page` to ``path`` by :func:`parsers.output.output_file`'s
    policy (atomic; an existing file is replaced only with ``force``).

    Raises:
        OutputError: the output policy refuses ``path``.
    """
    text = render_fleet_page(page)
    with output_file(path, force=force) as fh:
        fh.write(text.encode("utf-8"))
    return Path(path)


def render_fleet_page(page: FleetPage) -> str:
    """The page, as a string."""
    title = f"kvm-mmu-replay fleet: {Path(page.dataset).name}"
    total = sum(page.counts.get("status", {}).values())
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
             f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
             f"<h1>{escape(title)}</h1>"
             f'<p class="source">Dataset: <code>{escape(page.dataset)}</code>; {total:,} traces'
             f" ({_status_text(page.counts.get('status', {}))}); runs: "
             f"{', '.join(escape(r.run) for r in page.runs) or 'none'}.</p>",
             '<p class="scope">Latencies are of blocks caused by the MMU ('
             f"{', '.join(MMU_CAUSES)}): observed and replayed, the same quantity. Each fault"
             " run counts as its n_blocks blocks. Blocks of every cause are counted under"
             ' <a href="#counts">Counts</a>.</p>']
    parts += [f'<p class="note">{escape(n)}</p>' for n in page.notes]
    parts += [_removals(page), _distribution(page), _worst(page), _counts(page),
              _traces(page), _errors(page), "</body></html>\n"]
    return "".join(parts)


def _status_text(status: Mapping[str, int]) -> str:
    return ", ".join(f"{n:,} {escape(s)}" for s, n in sorted(status.items())) or "none"


def _num(n: int) -> str:
    return f'<td data-n="{n}">{n:,}</td>'


def _ns(ns: int | None) -> str:
    return "<td>–</td>" if ns is None else f'<td data-ns="{ns}">{format_ns(ns)}</td>'


def _head(*names: str, left: int = 0) -> str:
    return "<tr>" + "".join(f'<th class="l">{escape(n)}</th>' if i < left else
                            f"<th>{escape(n)}</th>" for i, n in enumerate(names)) + "</tr>"


def _removals(page: FleetPage) -> str:
    limit = format_ns(page.threshold_ns)
    out = [f'<h2 id="removed">Blocks of at least {limit}: what each policy would remove</h2>',
           f"<p>Per policy, over the traces replayed under it: the MMU-caused blocks of at"
           f" least {limit} observed and replayed, how many the policy removes (observed"
           " minus replayed; negative: it adds), and of the traces with such a block observed,"
           " how many have none under the policy.</p>"]
    if not page.removals:
        return "".join(out) + "<p>No policy run in the dataset.</p>"
    out.append(f'<table class="removed" data-threshold-ns="{page.threshold_ns}">'
               + _head("policy", "traces", "observed", "replayed", "removed",
                       "traces with one observed", "of which none replayed", left=1))
    for r in page.removals:
        out.append(f'<tr data-run="{escape(r.policy)}"><td class="l">{escape(r.policy)}</td>'
                   + "".join(_num(n) for n in (r.traces, r.observed, r.replayed,
                                               r.observed - r.replayed, r.traces_observed,
                                               r.traces_cleared)) + "</tr>")
    return "".join(out) + "</table>"


def _distribution(page: FleetPage) -> str:
    limits = sorted({t for r in page.runs for t, _ in r.at_least})
    out = ['<h2 id="distribution">Block latency across the fleet</h2>',
           cdf_svg("fleet", [CdfLine(r.run, r.cdf) for r in page.runs]),
           '<table class="distribution">'
           + _head("run", "traces", "blocks", *(f"p{p}" for p in PERCENTS), "max",
                   *(f"≥ {format_ns(t)}" for t in limits), left=1)]
    for r in page.runs:
        over = dict(r.at_least)
        out.append(f'<tr data-run="{escape(r.run)}"><td class="l">{escape(r.run)}</td>'
                   + _num(r.traces) + _num(r.blocks)
                   + "".join(_ns(r.percentiles.get(p)) for p in PERCENTS) + _ns(r.max_ns)
                   + "".join(_num(over.get(t, 0)) for t in limits) + "</tr>")
    return "".join(out) + "</table>"


def _worst(page: FleetPage) -> str:
    out = ['<h2 id="worst">Worst vCPUs</h2><p>Per run, the vCPUs with the longest'
           " MMU-caused block, longest first; the trace id links to its row under"
           ' <a href="#traces">Traces</a>.</p>']
    if not page.worst:
        return "".join(out) + "<p>No MMU-caused blocks.</p>"
    out.append('<table class="worst">' + _head("run", "trace", "path", "vm", "vcpu", "thread",
                                               "max block", "cause", left=3))
    for w in page.worst:
        vm = "–" if w.vm is None else str(w.vm)
        out.append(f'<tr data-run="{escape(w.run)}"><td class="l">{escape(w.run)}</td>'
                   f'<td class="l"><a href="#trace-{escape(w.trace)}">{escape(w.trace[:12])}</a>'
                   f'</td><td class="l"><code>{escape(w.path)}</code></td><td>{vm}</td>'
                   f'{_num(w.vcpu)}<td class="l">{escape(w.thread or "–")}</td>{_ns(w.max_ns)}'
                   f'<td class="l">{escape(w.cause)}</td></tr>')
    return "".join(out) + "</table>"


def _counts(page: FleetPage) -> str:
    out = ['<h2 id="counts">Counts</h2>']
    for key, title in (("status", "Traces by status"), ("era", "Traces by era"),
                       ("format", "Traces by format")):
        rows = sorted(page.counts.get(key, {}).items())
        out.append(f'<h3>{title}</h3><table class="by-{key}">' + _head(key, "traces", left=1)
                   + "".join(f'<tr><td class="l">{escape(k)}</td>{_num(n)}</tr>' for k, n in rows)
                   + "</table>")
    causes = sorted({c for r in page.runs for c in r.causes})
    out.append('<h3>Blocks by cause (all causes, n_blocks-weighted)</h3><table class="causes">'
               + _head("cause", *(r.run for r in page.runs), left=1))
    for c in causes:
        out.append(f'<tr data-cause="{escape(c)}"><td class="l">{escape(c)}</td>'
                   + "".join(_num(r.causes.get(c, 0)) for r in page.runs) + "</tr>")
    return "".join(out) + "</table>"


def _trace_cells(t: TraceRow) -> str:
    return (f'<td class="l"><code>{escape(t.trace)}</code></td>'
            f'<td class="l"><code>{escape(t.path)}</code></td>'
            f'<td class="l">{escape(t.format or "–")}</td><td class="l">{escape(t.era or "–")}'
            f'</td><td class="l">{escape(t.status)}</td>')


def _traces(page: FleetPage) -> str:
    runs = [r.run for r in page.runs]
    out = ['<h2 id="traces">Traces</h2><p>The traces linked above.</p>'
           '<table class="traces">' + _head("trace", "path", "format", "era", "status",
                                             "events", "vcpus",
                                             *(f"{r} ≥ {format_ns(page.threshold_ns)}"
                                               for r in runs), left=5)]
    for t in page.traces:
        out.append(f'<tr id="trace-{escape(t.trace)}">{_trace_cells(t)}'
                   + "".join("<td>–</td>" if n is None else _num(n)
                             for n in (t.events, t.vcpus))
                   + "".join(_num(t.long.get(r, 0)) for r in runs) + "</tr>")
    return "".join(out) + "</table>"


def _errors(page: FleetPage) -> str:
    out = [f'<h2 id="errors">Failed traces ({page.error_count:,})</h2>']
    if not page.errors:
        return "".join(out) + "<p>None.</p>"
    out.append('<table class="errors">' + _head("trace", "path", "format", "era", "status",
                                                "message", left=6))
    for t in page.errors:
        out.append(f'<tr id="trace-{escape(t.trace)}">{_trace_cells(t)}'
                   f'<td class="l">{escape(t.error or "")}</td></tr>')
    out.append("</table>")
    if page.error_count > len(page.errors):
        out.append(f"<p>… and {page.error_count - len(page.errors):,} more: query the traces"
                   " table (status = 'error').</p>")
    return "".join(out)
