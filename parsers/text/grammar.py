"""The line grammar of ftrace text and ``trace-cmd report`` output, applied to whole columns.

An event line is ``[file: ]COMM-PID [(TGID)] [CPU] [FLAGS] TS: [(+DELTA)] EVENT: PAYLOAD``
(kernel/trace/trace_output.c ``trace_print_context``; trace-cmd tracecmd/trace-read.c), with
the ``-l`` variant ``COMM-PID CPUFLAGS TS:`` and the ``-R`` (>= 3.3) variant ``[CPU]-0xF``.
Each line is cut at the timestamp into a short *context* and a *tail*; both are matched with
RE2 (pyarrow.compute) over the whole chunk, so the cost per line is a few C calls, not a
Python loop. Lines that are not events (headers, markers, garbage) are few and are classified
one by one by :mod:`parsers.text.markers`.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from parsers.text.fixed import FixedFields, match_fixed, pieces
from parsers.text.numbers import dec_to_int

__all__ = ["EventLines", "split_event_lines", "TS_FIND_RE", "CTX_RE", "TAIL_RE"]

#: Where the timestamp starts: the first `` <digits>[.<digits>]: `` of the line.
TS_FIND_RE = r" [0-9]+(?:\.[0-9]+)?: "

#: The context before the timestamp. ``comm`` is greedy: it runs to the last ``-PID`` that
#: the rest of the grammar accepts, so comms with dashes, spaces, slashes and colons work.
CTX_RE = (
    r"^ *(?P<comm>.*)-(?P<pid>[0-9]+) +(?:\((?P<tgid>[ 0-9-]+)\) +)?"
    r"(?:\[(?P<cpu>[0-9]+)\](?:-(?P<rflags>0x[0-9a-fA-F]+))?"
    r"|(?P<lcpu>[0-9]+)(?P<lflags>[^ \[\]0-9][^ \[\]]{2,6}))"
    r"(?: +(?P<flags>[^ ]{3,7}))? *$"
)

#: Fast paths for the common layouts: matched from the right without capturing ``comm``
#: (RE2 then finds the match with a DFA and captures only the short suffix); ``comm`` is
#: what precedes the match. Lines they miss fall back to :data:`CTX_RE`.
CTX_FAST_RE = (
    r"(?P<all>-(?P<pid>[0-9]+) +\[(?P<cpu>[0-9]+)\](?: +(?P<flags>[^ ]{3,7}))? *)$"
)
CTX_FAST_TGID_RE = (
    r"(?P<all>-(?P<pid>[0-9]+) +\((?P<tgid>[ 0-9-]+)\) +\[(?P<cpu>[0-9]+)\]"
    r"(?: +(?P<flags>[^ ]{3,7}))? *)$"
)
TAIL_FAST_RE = r"^(?P<head> +(?P<sec>[0-9]+)(?:\.(?P<frac>[0-9]+))?: +(?P<event>[^ :]+): *)"

#: The tail from the timestamp to the start of the payload.
TAIL_RE = (
    r"^(?P<head> +(?P<sec>[0-9]+)(?:\.(?P<frac>[0-9]+))?: +(?:\(\+[0-9]*\) +)?"
    r"(?P<event>[^ :]+): *)"
)

_POW10 = np.array([10**k for k in range(10)], dtype=np.int64)


@dataclass(frozen=True)
class EventLines:
    """Columns of the lines of a chunk that are events; ``rows`` are their chunk positions."""

    rows: np.ndarray
    comm: pa.Array
    pid: pa.Array
    tgid: pa.Array
    cpu: pa.Array
    flags: pa.Array
    sec: pa.Array
    frac_digits: np.ndarray
    ts: np.ndarray
    event: pa.Array
    payload: pa.Array
    instance: pa.Array | None = None

    def take(self, idx: np.ndarray) -> EventLines:
        """The rows at positions ``idx``."""
        sel = pa.array(idx, pa.int64())
        picked: dict[str, Any] = {
            f.name: (v[idx] if isinstance(v, np.ndarray) else None if v is None else v.take(sel))
            for f in fields(self) for v in [getattr(self, f.name)]
        }
        return EventLines(**picked)


def _opt(col: pa.Array) -> pa.Array:
    """An optional RE2 group that did not take part comes back as ``""``: make it null."""
    return pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)


def _partition(lines: pa.StringArray, bounds: np.ndarray, parts: int) -> list[pa.Array]:
    """Cut every line into ``parts`` consecutive pieces at ``bounds`` (n x parts starts).

    The pieces of all lines tile the chunk's buffer, so one offsets array describes them all
    and no text is copied until a piece is selected.
    """
    n = len(lines)
    data = lines.buffers()[2]
    base = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + n + 1]
    offsets = np.empty(n * parts + 1, dtype=np.int32)
    offsets[:-1] = bounds.reshape(-1)
    offsets[-1] = base[-1]
    tiled = pa.Array.from_buffers(pa.string(), n * parts, [None, pa.py_buffer(offsets), data])
    return [tiled.take(pa.array(np.arange(j, n * parts, parts))) for j in range(parts)]


def _line_bounds(lines: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    n = len(lines)
    base = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + n + 1]
    return base[:-1].astype(np.int64), base[1:].astype(np.int64)


def _content_end(lines: pa.StringArray, ends: np.ndarray) -> np.ndarray:
    """Byte offset where each line's content ends (before ``\\n`` or ``\\r\\n``)."""
    data = np.frombuffer(lines.buffers()[2], dtype=np.uint8)
    end = ends - 1  # every line carries its "\n"
    cr = data[np.maximum(end - 1, 0)] == 13
    return np.where(cr & (end > 0), end - 1, end)


#: Largest seconds whose ns (plus a 9-digit fraction) fit in int64.
_MAX_SEC = (np.iinfo(np.int64).max - 999_999_999) // 1_000_000_000


def _timestamps(sec: pa.Array, frac: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int64 ts: ``sec * 1e9 + frac`` scaled by its digit count; bare integers stay ticks.

    The third array says which rows' timestamps are representable: ticks within int64, or at
    most :data:`_MAX_SEC` seconds with at most 9 fraction digits (ns); the others are not
    timestamps the kernel prints, and their lines are not taken as events.
    """
    s_int = dec_to_int(sec, pa.int64(), digits=True)
    fits = np.asarray(pc.is_valid(s_int).to_numpy(zero_copy_only=False))
    s = pc.fill_null(s_int, 0).to_numpy(zero_copy_only=False)
    digits = pc.fill_null(pc.utf8_length(frac), 0).to_numpy(zero_copy_only=False)
    digits = np.asarray(digits, dtype=np.int64)
    fits &= (digits == 0) | ((digits <= 9) & (s <= _MAX_SEC))
    f = pc.fill_null(dec_to_int(frac, pa.int64()), 0).to_numpy(zero_copy_only=False)
    s, f = np.where(fits, s, 0), np.where(fits, f, 0)
    scale = _POW10[np.clip(9 - digits, 0, 9)]
    ns = s * 1_000_000_000 + f * scale
    return np.where(digits == 0, s, ns).astype(np.int64), digits, fits


def _first_match(text: pa.Array, patterns: list[str]) -> dict[str, pa.Array]:
    """Groups of the first pattern each row matches (patterns tried in order on the rest);
    a group a pattern lacks, or a row no pattern matches, is null."""
    n = len(text)
    out: dict[str, pa.Array] = {}
    left = np.arange(n)
    for pattern in patterns:
        if not left.size:
            break
        part = text if left.size == n else text.take(pa.array(left))
        found = pc.extract_regex(part, pattern)
        hit = np.asarray(pc.is_valid(found).to_numpy(zero_copy_only=False))
        if hit.any():
            rows = left[hit]
            where = np.full(n, -1, dtype=np.int64)
            where[rows] = np.arange(rows.size)
            index = pa.array(where, mask=where < 0)
            hits = found.filter(pa.array(hit))
            for i, name in enumerate(found.type.names):
                col = hits.field(i).take(index)
                out[name] = col if name not in out else pc.coalesce(out[name], col)
        left = left[~hit]
    for pattern in patterns:
        for name in _group_names(pattern):
            if name not in out:
                out[name] = pa.nulls(n, text.type)
    return out


@functools.cache
def _group_names(pattern: str) -> tuple[str, ...]:
    """The named groups of an RE2 ``pattern`` (as :func:`pyarrow.compute.extract_regex`
    names its struct fields)."""
    return tuple(pc.extract_regex(pa.array([], pa.string()), pattern).type.names)


def _match_context(ctx: pa.StringArray) -> dict[str, pa.Array]:
    """Context groups: fast suffix patterns first (``comm`` = what precedes the match, less
    the padding), then the general :data:`CTX_RE` for the rest."""
    groups = ("comm", "pid", "tgid", "cpu", "rflags", "lcpu", "lflags", "flags")
    found = _first_match(ctx, [CTX_FAST_RE, CTX_FAST_TGID_RE, CTX_RE])
    out = {g: found.get(g, pa.nulls(len(ctx), pa.string())) for g in groups}
    fast = pc.is_valid(found.get("all", pa.nulls(len(ctx), pa.string())))
    if pc.any(fast).as_py():
        starts, ends = _line_bounds(ctx)
        cut = ends - pc.fill_null(pc.binary_length(found["all"]), 0).to_numpy(
            zero_copy_only=False)
        bounds = np.stack([starts, np.maximum(cut, starts)], axis=1).astype(np.int32)
        head, _ = _partition(ctx, bounds, 2)
        fast_comm = pc.utf8_ltrim(head, " ")
        out["comm"] = pc.if_else(fast, fast_comm, out["comm"])
    return out


def split_event_lines(lines: pa.StringArray) -> EventLines:
    """Match the event-line grammar over a chunk; rows that do not match are left out.

    Lines in the kernel's fixed-column layouts take :func:`parsers.text.fixed.match_fixed`;
    the rest the general patterns below.
    """
    starts, ends = _line_bounds(lines)
    fixed = match_fixed(lines, starts, ends, _content_end(lines, ends))
    if fixed is None:
        return _split_general(lines)
    fast = _from_fixed(lines, fixed, _content_end(lines, ends))
    left = np.ones(len(lines), dtype=bool)
    left[fixed.rows] = False
    rest = np.flatnonzero(left)
    if not rest.size:
        return fast
    slow = _split_general(lines.take(pa.array(rest)))
    slow = dataclasses.replace(slow, rows=rest[slow.rows])
    return _merge(fast, slow)


def _from_fixed(lines: pa.StringArray, f: FixedFields, content_end: np.ndarray) -> EventLines:
    payload = pieces(lines, f.payload_start, np.maximum(content_end[f.rows], f.payload_start))
    return EventLines(
        rows=f.rows, comm=f.comm, pid=pa.array(f.pid, pa.int32()),
        tgid=pa.array(f.tgid, pa.int32(), mask=~f.tgid_valid), cpu=pa.array(f.cpu, pa.int32()),
        flags=f.flags, sec=f.sec, frac_digits=f.frac_digits, ts=f.ts, event=f.event,
        payload=payload)


def _merge(a: EventLines, b: EventLines) -> EventLines:
    """Rows of both, in chunk order."""
    rows = np.concatenate([a.rows, b.rows])
    order = np.argsort(rows, kind="stable")
    picked: dict[str, Any] = {}
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            picked[f.name] = np.concatenate([x, y.astype(x.dtype)])[order]
        elif x is None or y is None:
            picked[f.name] = None
        else:
            both = pa.concat_arrays([x.cast(pa.string()) if pa.types.is_string(x.type) else x,
                                     y.cast(x.type)])
            picked[f.name] = both.take(pa.array(order))
    return EventLines(**picked)


def _split_general(lines: pa.StringArray) -> EventLines:
    starts, ends = _line_bounds(lines)
    pos = pc.find_substring_regex(lines, TS_FIND_RE).to_numpy(zero_copy_only=False)
    cut = starts + np.maximum(pos, 0)
    ctx_all, tail_all = _partition(lines, np.stack([starts, cut], axis=1).astype(np.int32), 2)
    cand = np.flatnonzero(pos >= 0)
    ctx = _match_context(ctx_all.take(pa.array(cand)))
    tail = _first_match(tail_all.take(pa.array(cand)), [TAIL_FAST_RE, TAIL_RE])
    ok = np.asarray(pc.and_(pc.is_valid(ctx["pid"]), pc.is_valid(tail["event"]))
                    .to_numpy(zero_copy_only=False))
    rows = cand[ok]
    keep = pa.array(np.flatnonzero(ok))
    ctx = {k: v.take(keep) for k, v in ctx.items()}
    tail = {k: v.take(keep) for k, v in tail.items()}
    head_len = pc.binary_length(tail["head"]).to_numpy(zero_copy_only=False)
    pay_start = cut[rows] + head_len
    pay_end = np.maximum(_content_end(lines, ends)[rows], pay_start)
    bounds = np.stack([starts, starts, ends], axis=1)
    bounds[rows, 1] = pay_start
    bounds[rows, 2] = pay_end
    _, payload_all, _ = _partition(lines, bounds.astype(np.int32), 3)
    payload = payload_all.take(pa.array(rows))
    cpu_text = pc.coalesce(_opt(ctx["cpu"]), _opt(ctx["lcpu"]))
    flags = pc.coalesce(*(_opt(ctx[g]) for g in ("flags", "lflags", "rflags")))
    tgid_text = _opt(pc.utf8_trim_whitespace(ctx["tgid"]))
    ts, digits, fits = _timestamps(tail["sec"], _opt(tail["frac"]))
    pid = dec_to_int(ctx["pid"], pa.int32(), digits=True)
    tgid = dec_to_int(tgid_text, pa.int32())
    cpu = dec_to_int(cpu_text, pa.int32(), digits=True)
    # a number too big for its column (null after conversion): not an event line
    for num, text in ((pid, ctx["pid"]), (tgid, tgid_text), (cpu, cpu_text)):
        if num.null_count == text.null_count:
            continue  # every number converted: nothing out of range
        number = pc.fill_null(pc.match_substring_regex(text, r"^-?[0-9]+$"), False)
        fits &= np.asarray(pc.or_(pc.is_valid(num), pc.invert(number))
                           .to_numpy(zero_copy_only=False))
    lines_ = EventLines(
        rows=rows,
        comm=ctx["comm"],
        pid=pid,
        tgid=tgid,
        cpu=cpu,
        flags=flags,
        sec=tail["sec"],
        frac_digits=digits,
        ts=ts,
        event=tail["event"],
        payload=payload,
    )
    return lines_ if fits.all() else lines_.take(np.flatnonzero(fits))
