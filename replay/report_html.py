"""A self-contained HTML report of observed and replayed runs (inline SVG, no scripts).

Sections: the per-vCPU latency summary of every run, a block-latency CDF per run (one
line per vCPU, count-weighted: a row standing for ``count`` blocks weighs ``count``), the
refcount step plot of each root per run (the busiest :data:`MAX_ROOTS`; the rest are
named), a timeline per run (a lane per vCPU and one per zapping thread), and the warnings.
The page is deterministic: the same input gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa

from parsers.atomic_file import atomic_file
from replay.result import summarize_blocks
from replay.sizes import format_ns
from replay.svg_plots import Lane, Series, cdf_svg, steps_svg, timeline_svg

__all__ = ["write_report", "render_report", "MAX_ROOTS", "MAX_CDF_POINTS"]

#: Roots drawn per run (those with the most refcount changes).
MAX_ROOTS: Final = 8
#: Points per CDF line (quantiles of the weighted distribution).
MAX_CDF_POINTS: Final = 200
_STYLE: Final = ("body{font-family:sans-serif;margin:2em;max-width:1100px}"
                 "table{border-collapse:collapse;margin:1em 0}"
                 "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
                 "th{background:#f4f4f4}td.l{text-align:left}.warn{color:#a60}"
                 "svg{display:block;margin:0.5em 0}")


def write_report(runs: Mapping[str, Mapping[str, pa.Table]], path: str | Path, *, title: str,
                 source: str | None = None, warnings: Sequence[str] = ()) -> Path:
    """Write :func:`render_report` to ``path`` (temp file beside it, renamed when complete)."""
    page = render_report(runs, title=title, source=source, warnings=warnings)
    with atomic_file(path) as fh:
        fh.write(page.encode("utf-8"))
    return Path(path)


def render_report(runs: Mapping[str, Mapping[str, pa.Table]], *, title: str,
                  source: str | None = None, warnings: Sequence[str] = ()) -> str:
    """The HTML page as a string.

    Args:
        runs: run label (``"observed"`` or a policy) → tables ``blocks`` (required),
            ``refcounts``, ``roots``, ``summary`` (optional) in the model's schemas.
        title: page title.
        source: the trace or scenario the runs come from.
        warnings: shown in a list at the end.
    """
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{escape(title)}"
             f"</title><style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>"]
    if source:
        parts.append(f"<p>source: <code>{escape(source)}</code></p>")
    parts.append("<h2>Per-vCPU block latency</h2>" + _summary_table(runs))
    parts.append("<h2>Block-latency CDF per run</h2>")
    parts += [cdf_svg(f"{label}: block latency CDF per vCPU", _cdf_series(t["blocks"]))
              for label, t in runs.items()]
    parts.append("<h2>Root refcounts</h2>")
    for label, tables in runs.items():
        parts.append(_refcount_section(label, tables))
    parts.append("<h2>Timeline of vCPU blocks and zaps</h2>")
    for label, tables in runs.items():
        parts.append(_timeline(label, tables))
    if warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(
            f'<li class="warn">{escape(w)}</li>' for w in warnings) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _summary(tables: Mapping[str, pa.Table]) -> pa.Table:
    if "summary" in tables:
        return tables["summary"]
    blocks = tables["blocks"]
    return summarize_blocks(blocks, sorted(set(blocks.column("vcpu").to_pylist())))


def _summary_table(runs: Mapping[str, Mapping[str, pa.Table]]) -> str:
    head = ("<table><tr><th>run</th><th>vcpu</th><th>blocks</th><th>p50</th><th>p99</th>"
            "<th>max</th><th>max cause</th><th>total</th></tr>")
    rows = []
    for label, tables in runs.items():
        for r in _summary(tables).to_pylist():
            rows.append(
                f'<tr><td class="l">{escape(label)}</td><td>{r["vcpu"]}</td><td>{r["blocks"]}'
                f'</td><td>{format_ns(r["p50_ns"])}</td><td>{format_ns(r["p99_ns"])}</td>'
                f'<td>{format_ns(r["max_ns"])}</td><td class="l">{escape(str(r["max_cause"] or "-"))}'
                f'</td><td>{format_ns(r["total_ns"])}</td></tr>')
    return head + "".join(rows) + "</table>"


def _cdf_series(blocks: pa.Table) -> list[Series]:
    """Count-weighted CDF per vCPU, sampled at up to :data:`MAX_CDF_POINTS` quantiles."""
    out = []
    vcpu = blocks.column("vcpu").to_numpy()
    each = blocks.column("each_ns").to_numpy()
    count = blocks.column("count").to_numpy()
    for v in sorted(set(vcpu.tolist())):
        sel = vcpu == v
        order = np.argsort(each[sel], kind="stable")
        values, weights = each[sel][order], count[sel][order].astype(np.float64)
        cum = np.cumsum(weights) / weights.sum()
        # keep the last point of each distinct value, then thin to MAX_CDF_POINTS
        last = np.r_[values[1:] != values[:-1], True]
        values, cum = values[last], cum[last]
        if values.size > MAX_CDF_POINTS:
            pick = np.unique(np.searchsorted(cum, np.linspace(0, 1, MAX_CDF_POINTS),
                                             side="left").clip(0, values.size - 1))
            values, cum = values[pick], cum[pick]
        out.append(Series(f"vcpu {v}", values.tolist(), cum.tolist()))
    return out


def _refcount_section(label: str, tables: Mapping[str, pa.Table]) -> str:
    history = tables.get("refcounts")
    if history is None or history.num_rows == 0:
        return f"<p>{escape(label)}: no refcount history.</p>"
    roots = history.column("root").to_numpy()
    ids, counts = np.unique(roots, return_counts=True)
    busiest = ids[np.lexsort((ids, -counts))][:MAX_ROOTS]
    ts = history.column("ts").to_numpy()
    values = history.column("count").to_numpy()
    t0, t1 = int(ts.min()), int(ts.max())
    series = []
    for root in sorted(busiest.tolist()):
        sel = roots == root
        series.append(Series(f"root {root}", ts[sel].tolist(), values[sel].tolist()))
    omitted = sorted(set(ids.tolist()) - set(busiest.tolist()))
    note = (f"<p>{len(omitted)} more roots not drawn: "
            f"{escape(', '.join(map(str, omitted[:50])))}{' ...' if len(omitted) > 50 else ''}"
            f"</p>" if omitted else "")
    return steps_svg(f"{label}: refcount per root", series, t0, t1) + note


def _timeline(label: str, tables: Mapping[str, pa.Table]) -> str:
    blocks = tables["blocks"]
    lanes: list[Lane] = []
    vcpu = blocks.column("vcpu").to_numpy()
    start = blocks.column("start").to_numpy()
    end = blocks.column("end").to_numpy()
    cause = blocks.column("cause").cast(pa.string()).to_pylist()
    for v in sorted(set(vcpu.tolist())):
        idx = np.flatnonzero(vcpu == v)
        lanes.append(Lane(f"vcpu {v}", [(int(start[i]), int(end[i]), str(cause[i]))
                                         for i in idx.tolist()]))
    roots = tables.get("roots")
    if roots is not None and roots.num_rows:
        zaps: dict[str, list[tuple[int, int, str]]] = {}
        for r in roots.to_pylist():
            if r["zap_start"] is not None and r["zapped_by"]:
                end_ts = r["zap_end"] if r["zap_end"] is not None else r["zap_start"]
                zaps.setdefault(str(r["zapped_by"]), []).append(
                    (int(r["zap_start"]), int(end_ts), "zap work"))
        lanes += [Lane(name, bars) for name, bars in sorted(zaps.items())]
    times = [t for lane in lanes for s, e, _ in lane.bars for t in (s, e)]
    if not times:
        return f"<p>{escape(label)}: nothing to draw.</p>"
    return timeline_svg(f"{label}: blocks per vCPU and zaps per thread", lanes,
                        min(times), max(times))
