"""Which tracks the Perfetto timeline has and what is on each (no encoding here).

:func:`plan_tracks` turns one run's tables into :class:`Track` values: per vCPU its blocked
intervals as slices (spread over extra tracks where they overlap, so a track's slices never
cross), per zapping thread its root zaps, per root its refcount as a counter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from replay.report_series import I64
from replay.report_tables import RunTables

__all__ = ["Slice", "Track", "TrackPlan", "plan_tracks", "spread"]

Arg = tuple[str, int | bool]


@dataclass(frozen=True)
class Slice:
    """One slice: ``[start, end]`` ns, its name and debug args."""

    start: int
    end: int
    name: str
    args: tuple[Arg, ...] = ()


@dataclass(frozen=True)
class Track:
    """A slice track (``slices``) or, with ``counter``, a counter track (``counter_values``)."""

    name: str
    slices: tuple[Slice, ...] = ()
    counter: bool = False
    counter_values: tuple[I64, I64] = field(
        default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0, np.int64)))


@dataclass(frozen=True)
class TrackPlan:
    """The tracks of one run, in display order."""

    tracks: tuple[Track, ...]


def spread(slices: list[Slice]) -> list[list[Slice]]:
    """Put slices on as few lanes as needed so that no two on a lane overlap (a slice may
    start where the previous one ends); the first lane gets the earliest slices.

    Examples:
        >>> lanes = spread([Slice(0, 10, "a"), Slice(5, 8, "b"), Slice(10, 12, "c")])
        >>> [[s.name for s in lane] for lane in lanes]
        [['a', 'c'], ['b']]
    """
    lanes: list[list[Slice]] = []
    ends: list[int] = []
    for sl in sorted(slices, key=lambda s: (s.start, s.end)):
        for i, last in enumerate(ends):
            if last <= sl.start:
                lanes[i].append(sl)
                ends[i] = sl.end
                break
        else:
            lanes.append([sl])
            ends.append(sl.end)
    return lanes


def _named_lanes(name: str, slices: list[Slice]) -> list[Track]:
    return [Track(name if k == 0 else f"{name} #{k}", tuple(lane))
            for k, lane in enumerate(spread(slices))]


def _vcpu_slices(run: RunTables, rows: np.ndarray) -> list[Slice]:
    out: list[Slice] = []
    for i in rows.tolist():
        args: list[Arg] = [("count", int(run.count[i])), ("each_ns", int(run.each[i]))]
        if run.has_root[i]:
            args.append(("root", int(run.root[i])))
        if run.lost is not None:
            args.append(("lost", bool(run.lost[i])))
        out.append(Slice(int(run.start[i]), int(run.end[i]),
                         run.cause_names[int(run.cause_codes[i])], tuple(args)))
    return out


def _zap_slices(run: RunTables) -> dict[str, list[Slice]]:
    out: dict[str, list[Slice]] = {}
    for z in run.zaps():
        args: list[Arg] = [("root", z.root)]
        args += [(k, int(v)) for k, v in (("leaves_zapped", z.leaves_zapped),
                                          ("tables_zapped", z.tables_zapped)) if v is not None]
        out.setdefault(z.thread, []).append(Slice(z.start, z.end, f"zap root {z.root}",
                                                  tuple(args)))
    return out


def plan_tracks(run: RunTables) -> TrackPlan:
    """The tracks of ``run``: ``vcpu N`` (and ``vcpu N #k``), ``zap: <thread>``,
    ``refcount root N``."""
    tracks: list[Track] = []
    for v in run.vcpus:
        tracks += _named_lanes(f"vcpu {v}", _vcpu_slices(run, run.vcpu_rows(v)))
    for thread, slices in sorted(_zap_slices(run).items()):
        tracks += _named_lanes(f"zap: {thread}", slices)
    for root, (ts, counts) in sorted(run.refcount_histories().items()):
        tracks.append(Track(f"refcount root {root}", counter=True, counter_values=(ts, counts)))
    return TrackPlan(tuple(tracks))
