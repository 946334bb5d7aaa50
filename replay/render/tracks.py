"""Which tracks the Perfetto timeline has and what is on each, as NumPy columns.

:func:`plan_tracks` turns one run's tables into a :class:`TrackPlan`: the tracks in display
order, every slice (a vCPU's blocked intervals, spread over extra tracks where they overlap
so a track's slices never cross; a zapping thread's root zaps) and every counter value (a
root's refcount). No encoding here; :mod:`replay.render.timeline` writes the protos.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from replay.render.series import I64
from replay.render.tables import RunTables

__all__ = ["Track", "Slices", "Counters", "TrackPlan", "plan_tracks", "spread", "Arg"]

Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Track:
    """A track's name and whether it is a counter track."""

    name: str
    counter: bool = False


@dataclass(frozen=True)
class Arg:
    """A debug argument of slices: its values and on which slices it is present."""

    name: str
    values: I64
    present: Bools
    is_bool: bool = False


@dataclass(frozen=True)
class Slices:
    """Slices ``[start, end]`` on track ``track`` named ``names[name]``, sorted by track and
    start (so every track's slices are in order), with their debug ``args``."""

    start: I64
    end: I64
    track: I64
    name: I64
    names: tuple[str, ...]
    args: tuple[Arg, ...]


@dataclass(frozen=True)
class Counters:
    """Counter values on counter tracks, sorted by track then time (file order on ties)."""

    ts: I64
    track: I64
    value: I64


@dataclass(frozen=True)
class TrackPlan:
    """The tracks of one run in display order, their slices and their counter values."""

    tracks: tuple[Track, ...]
    slices: Slices
    counters: Counters


def spread(starts: I64, ends: I64) -> I64:
    """Lane of each interval (sorted by start) so that no two on a lane overlap; an interval
    may start where the previous one on its lane ends. Earliest intervals go to lane 0.

    Examples:
        >>> spread(np.array([0, 5, 10]), np.array([10, 8, 12])).tolist()
        [0, 1, 0]
    """
    if starts.size < 2 or bool(np.all(starts[1:] >= np.maximum.accumulate(ends)[:-1])):
        return np.zeros(starts.size, np.int64)
    lanes = np.zeros(starts.size, np.int64)
    last: list[int] = []
    for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        lane = next((k for k, end in enumerate(last) if end <= s), len(last))
        if lane == len(last):
            last.append(e)
        else:
            last[lane] = e
        lanes[i] = lane
    return lanes


def _lay_out(tracks: list[Track], name: str, starts: I64, ends: I64) -> tuple[I64, I64]:
    """Add tracks ``name``, ``name #1``, ... for the intervals; returns (track of each
    interval, order of the intervals by track then start)."""
    order = np.lexsort((np.arange(starts.size), ends, starts))
    lanes = np.zeros(starts.size, np.int64)
    lanes[order] = spread(starts[order], ends[order])
    first = len(tracks)
    for k in range(int(lanes.max()) + 1 if lanes.size else 1):
        tracks.append(Track(name if k == 0 else f"{name} #{k}"))
    track = first + lanes
    return track, np.lexsort((np.arange(starts.size), ends, starts, track))  # spread's order


def plan_tracks(run: RunTables) -> TrackPlan:
    """The tracks of ``run``: ``vcpu N`` (and ``vcpu N #k``), ``zap: <thread>``,
    ``refcount root N``."""
    tracks: list[Track] = []
    rows: list[I64] = []
    row_track: list[I64] = []
    for v in run.vcpus:
        idx = run.vcpu_rows(v)
        track, order = _lay_out(tracks, f"vcpu {v}", run.start[idx], run.end[idx])
        rows.append(idx[order])
        row_track.append(track[order])
    block_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    block_track = np.concatenate(row_track) if row_track else np.zeros(0, np.int64)
    zap = _zap_columns(run, tracks)
    slices = _slices(run, block_rows, block_track, zap)
    counters = _counters(run, tracks)
    return TrackPlan(tuple(tracks), slices, counters)


def _zap_columns(run: RunTables, tracks: list[Track]) -> dict[str, I64]:
    zaps = run.zaps()
    cols: dict[str, list[I64]] = {k: [] for k in ("start", "end", "track", "root", "leaves",
                                                    "tables", "has_leaves", "has_tables")}
    for thread in sorted({z.thread for z in zaps}):
        mine = [z for z in zaps if z.thread == thread]
        start = np.array([z.start for z in mine], np.int64)
        end = np.array([z.end for z in mine], np.int64)
        track, order = _lay_out(tracks, f"zap: {thread}", start, end)
        fields = {
            "start": start, "end": end, "track": track,
            "root": np.array([z.root for z in mine], np.int64),
            "leaves": np.array([z.leaves_zapped or 0 for z in mine], np.int64),
            "tables": np.array([z.tables_zapped or 0 for z in mine], np.int64),
            "has_leaves": np.array([z.leaves_zapped is not None for z in mine], np.int64),
            "has_tables": np.array([z.tables_zapped is not None for z in mine], np.int64),
        }
        for k, v in fields.items():
            cols[k].append(v[order])
    return {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in cols.items()}


def _slices(run: RunTables, rows: I64, track: I64, zap: dict[str, I64]) -> Slices:
    n_b, n_z = rows.size, zap["start"].size
    is_block = np.r_[np.ones(n_b, bool), np.zeros(n_z, bool)]
    zap_names = [f"zap root {r}" for r in zap["root"].tolist()]
    names = tuple(run.cause_names) + tuple(zap_names)
    name = np.r_[run.cause_codes[rows], len(run.cause_names) + np.arange(n_z, dtype=np.int64)]
    zeros = np.zeros(n_z, np.int64)
    args = [
        Arg("n_blocks", np.r_[run.count[rows], zeros], is_block),
        Arg("each_ns", np.r_[run.each[rows], zeros], is_block),
        Arg("root", np.r_[run.root[rows], zap["root"]],
            np.r_[run.has_root[rows], np.ones(n_z, bool)]),
        Arg("leaves_zapped", np.r_[np.zeros(n_b, np.int64), zap["leaves"]],
            np.r_[np.zeros(n_b, bool), zap["has_leaves"] > 0]),
        Arg("tables_zapped", np.r_[np.zeros(n_b, np.int64), zap["tables"]],
            np.r_[np.zeros(n_b, bool), zap["has_tables"] > 0]),
    ]
    if run.lost is not None:
        args.append(Arg("lost", np.r_[run.lost[rows].astype(np.int64), zeros], is_block,
                        is_bool=True))
    return Slices(np.r_[run.start[rows], zap["start"]], np.r_[run.end[rows], zap["end"]],
                  np.r_[track, zap["track"]], name, names, tuple(args))


def _counters(run: RunTables, tracks: list[Track]) -> Counters:
    ts: list[I64] = []
    track: list[I64] = []
    value: list[I64] = []
    for root, (t, counts) in sorted(run.refcount_histories().items()):
        ts.append(t)
        value.append(counts)
        track.append(np.full(t.size, len(tracks), np.int64))
        tracks.append(Track(f"refcount root {root}", counter=True))
    if not ts:
        empty = np.zeros(0, np.int64)
        return Counters(empty, empty, empty)
    return Counters(np.concatenate(ts), np.concatenate(track), np.concatenate(value))
