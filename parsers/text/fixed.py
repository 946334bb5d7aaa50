"""Fast path for the kernel's own ``trace``/``trace_pipe`` lines: fixed columns, no captures.

``print_trace_fmt`` (kernel/trace/trace_output.c) prints the context in fixed widths —
``%16s-%-7d``, with record-tgid `` (%7s)``, `` [%03d] ``, then the flags — so once a line is
validated by one capture-free anchored RE2 match (a DFA: hundreds of MB/s), every field
is at a known byte offset and is cut and converted with NumPy over the whole chunk. The
timestamp and event name, whose widths vary, are found by scanning a few bytes. Lines in
any other layout (trace-cmd report, ``-l``, 8-digit pids, non-ASCII comms, ...) are left to
the general grammar in :mod:`parsers.text.grammar`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["FixedFields", "FIXED_TGID_RE", "FIXED_PLAIN_RE", "FIXED_REPORT_RE", "match_fixed",
           "pieces"]

#: record-tgid layout: ``comm(16)-pid(7) (tgid(7)) [cpu(3)] flags ts: event:``.
FIXED_TGID_RE: Final = (r"^[ -~]{16}-[0-9][0-9 ]{6} \([ 0-9-]{7}\) \[[0-9]{3}\] [!-~]{4,5} +"
                        r"[0-9]+\.[0-9]+: [^ :]+:")
#: default layout: ``comm(16)-pid(7) [cpu(3)] flags ts: event:``.
FIXED_PLAIN_RE: Final = (r"^[ -~]{16}-[0-9][0-9 ]{6} \[[0-9]{3}\] [!-~]{4,5} +"
                         r"[0-9]+\.[0-9]+: [^ :]+:")
#: ``trace-cmd report`` (tracecmd/trace-read.c, 3.1): ``comm(16)-pid(%-5d) [cpu(3)] ts: event:``
#: (no flags column; ``-t`` prints 9 decimals; pids wider than 5 push the bracket right).
FIXED_REPORT_RE: Final = r"^[ -~]{16}-[0-9]{1,7} *\[[0-9]{3}\] +[0-9]+\.[0-9]+: [^ :]+:"
_TGID, _PLAIN, _REPORT = 1, 2, 3
_LAYOUTS: Final = ((_TGID, FIXED_TGID_RE), (_PLAIN, FIXED_PLAIN_RE), (_REPORT, FIXED_REPORT_RE))
#: Lines at the head of a chunk that pick the order the layouts are tried in.
_PROBE: Final = 64
_SPACE, _DOT, _COLON, _BRACKET = 32, 46, 58, 91
# The flags are ASCII ([!-~], not [^ ]): the columns after them are cut at byte offsets, and a
# multi-byte character matched as a flag would shift every one of them.
_TS_SCAN: Final = 40  # bytes scanned for the timestamp (>= 26 digits + padding)
_EVENT_SCAN: Final = 64  # longest event name the fast path takes


@dataclass(frozen=True)
class FixedFields:
    """Fields of the fast-path rows (positions ``rows`` in the chunk)."""

    rows: np.ndarray
    comm: pa.Array
    pid: np.ndarray
    tgid: np.ndarray
    tgid_valid: np.ndarray
    cpu: np.ndarray
    flags: pa.Array
    sec: pa.Array
    frac_digits: np.ndarray
    ts: np.ndarray
    event: pa.Array
    payload_start: np.ndarray


def pieces(lines: pa.StringArray, a: np.ndarray, b: np.ndarray) -> pa.Array:
    """Strings ``[a, b)`` (byte offsets into the chunk buffer, increasing row by row)."""
    data = lines.buffers()[2]
    offsets = np.empty(2 * a.size + 1, dtype=np.int32)
    offsets[0:-1:2] = a
    offsets[1::2] = b
    offsets[-1] = b[-1] if b.size else 0
    tiled = pa.Array.from_buffers(pa.string(), 2 * a.size, [None, pa.py_buffer(offsets), data])
    return tiled.take(pa.array(np.arange(0, 2 * a.size, 2)))


#: Zero bytes appended to a chunk so every window read stays inside it.
_PAD: Final = 128


def _grid(data: np.ndarray, start: np.ndarray, width: int) -> np.ndarray:
    """``width`` bytes from each of ``start`` (row gathers of a strided view over the padded
    chunk; bytes past the chunk's end read as 0)."""
    windows = np.lib.stride_tricks.sliding_window_view(data, width)
    grid: np.ndarray = windows[np.minimum(start, data.size - width)]
    return grid


def _ints(piece: pa.Array, typ: pa.DataType) -> np.ndarray:
    """Digit-only strings (validated by the layout pattern) to integers, in C++."""
    out: np.ndarray = pc.cast(piece, typ).to_numpy(zero_copy_only=False)
    return out


def _hits(lines: pa.Array, pattern: str) -> np.ndarray:
    found = pc.match_substring_regex(lines, pattern)
    return np.asarray(pc.fill_null(found, False).to_numpy(zero_copy_only=False))


def _layouts(lines: pa.StringArray) -> np.ndarray:
    """Each line's layout (0: none). The one that takes most of the chunk's first lines is
    tried on every line, the others only on the lines it leaves (a line matches one layout
    at most, so the order changes the cost, not the result)."""
    probe = lines.slice(0, _PROBE)
    order = sorted(_LAYOUTS, key=lambda kv: -int(_hits(probe, kv[1]).sum()))
    kind = np.zeros(len(lines), dtype=np.int8)
    rest = np.arange(len(lines))
    for code, pattern in order:
        if not rest.size:
            break
        hit = _hits(lines if rest.size == len(lines) else lines.take(pa.array(rest)), pattern)
        kind[rest[hit]] = code
        rest = rest[~hit]
    return kind


def match_fixed(lines: pa.StringArray, starts: np.ndarray, ends: np.ndarray,
                content_end: np.ndarray) -> FixedFields | None:
    """Rows of ``lines`` in a fixed layout and their fields; None if there are none."""
    kind = _layouts(lines)
    rows = np.flatnonzero(kind)
    if not rows.size:
        return None
    has_tgid = kind[rows] == _TGID
    report = kind[rows] == _REPORT
    raw = np.frombuffer(lines.buffers()[2], dtype=np.uint8)
    data = np.concatenate([raw, np.zeros(_PAD, dtype=np.uint8)])
    s = starts[rows]
    comm_grid = _grid(data, s, 16)
    lead = np.argmax(comm_grid != _SPACE, axis=1)
    lead = np.where((comm_grid == _SPACE).all(axis=1), 16, lead)
    comm = pieces(lines, s + lead, s + 16)
    pid_grid = _grid(data, s + 17, 7)
    pid_len = np.cumprod((pid_grid >= 48) & (pid_grid <= 57), axis=1).sum(axis=1)
    pid = _ints(pieces(lines, s + 17, s + 17 + pid_len), pa.int64())
    tg_grid = _grid(data, s + 26, 7)
    tg_digit = (tg_grid >= 48) & (tg_grid <= 57)
    tg_lead = np.argmax(tg_grid != _SPACE, axis=1)
    tgid_ok = has_tgid & tg_digit.any(axis=1) & (tg_digit.sum(axis=1) == 7 - tg_lead)
    tg_from = np.where(tgid_ok, s + 26 + tg_lead, s + 17)
    tg_to = np.where(tgid_ok, s + 33, s + 18)  # a pid digit stands in for absent tgids
    tgid_v = _ints(pieces(lines, tg_from, tg_to), pa.int64())
    bracket = s + 17 + np.argmax(_grid(data, s + 17, 16) == _BRACKET, axis=1)
    cpu_at = np.where(has_tgid, s + 36, np.where(report, bracket + 1, s + 26))
    cpu = _ints(pieces(lines, cpu_at, cpu_at + 3), pa.int64())
    flag_at = cpu_at + 5
    flag_len = np.where(report, 0,
                        np.where(data[np.minimum(flag_at + 4, data.size - 1)] == _SPACE, 4, 5))
    flags = pieces(lines, flag_at, flag_at + flag_len)
    if report.any():
        flags = pc.if_else(pa.array(report), pa.scalar(None, pa.string()), flags)
    ts_grid = _grid(data, flag_at + flag_len, _TS_SCAN)
    first = np.argmax(ts_grid != _SPACE, axis=1)
    dot = np.argmax(ts_grid == _DOT, axis=1)
    colon = np.argmax(ts_grid == _COLON, axis=1)
    ok = (dot > first) & (colon > dot + 1)
    ts_start = flag_at + flag_len
    # at most 9 digits of seconds and of fraction: the int64 ns of any such timestamp fit
    # (longer ones take the general grammar, which checks them)
    ok &= (dot - first <= 9) & (colon - dot - 1 <= 9)
    # rows that fail read a validated cpu digit instead, and are dropped below
    sec_from = np.where(ok, ts_start + first, cpu_at)
    sec_to = np.where(ok, ts_start + dot, cpu_at + 1)
    sec_text = pieces(lines, sec_from, sec_to)
    sec = _ints(sec_text, pa.int64())
    frac = _ints(pieces(lines, np.where(ok, ts_start + dot + 1, cpu_at),
                         np.where(ok, ts_start + colon, cpu_at + 1)), pa.int64())
    digits = (colon - dot - 1).astype(np.int64)
    scale = 10 ** np.clip(9 - digits, 0, 9)
    ts = sec * 1_000_000_000 + frac * scale
    ev_start = ts_start + colon + 2
    ev_grid = _grid(data, ev_start, _EVENT_SCAN)
    ev_len = np.argmax(ev_grid == _COLON, axis=1)
    ok &= (ev_grid == _COLON).any(axis=1) & (ev_len > 0)
    after = _grid(data, ev_start + ev_len + 1, 16)
    spaces = np.argmax(after != _SPACE, axis=1)
    spaces = np.where((after == _SPACE).all(axis=1), 16, spaces)
    pay = np.minimum(ev_start + ev_len + 1 + spaces, np.maximum(content_end[rows],
                                                                 ev_start + ev_len + 1))
    if not ok.all():
        keep = np.flatnonzero(ok)
        rows, has_tgid = rows[keep], has_tgid[keep]
        comm, flags, sec_text = (a.take(pa.array(keep)) for a in (comm, flags, sec_text))
        pid, tgid_v, tgid_ok, cpu, digits, ts, pay = (
            a[keep] for a in (pid, tgid_v, tgid_ok, cpu, digits, ts, pay))
        ev_start, ev_len = ev_start[keep], ev_len[keep]
        if not rows.size:
            return None
    event = pieces(lines, ev_start, ev_start + ev_len)
    return FixedFields(rows, comm, pid.astype(np.int32), tgid_v.astype(np.int32), tgid_ok,
                       cpu.astype(np.int32), flags, sec_text, digits, ts.astype(np.int64), event,
                       pay)
