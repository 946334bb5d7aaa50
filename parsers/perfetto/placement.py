"""Which bundle each encoded row goes to, found for many rows at once.

The writer (:mod:`parsers.perfetto.writer`) lays rows out one by one with a small state
machine (open bundles per CPU, their rank in the read cycle, the last ``(ts, rank)``).
Most rows take its plain path: their CPU has an open bundle with room, and ``(ts, rank)``
does not go back. :func:`fast_prefix` finds, with NumPy, how many rows from a given one take
that path, so only the others (a bundle or cycle to open, a marker, a ProcessTree packet)
go through the state machine one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from parsers.perfetto.values import EncodedChunk
from parsers.perfetto.wire import I64

__all__ = ["ChunkRows", "OpenBundles", "fast_prefix", "NO_CPU", "WINDOW"]

#: Key of rows without a CPU (CPU numbers are int32).
NO_CPU = -(1 << 40)
#: Rows :func:`fast_prefix` looks at first (the writer widens it while rows pass).
WINDOW = 512


@dataclass(frozen=True)
class ChunkRows:
    """The rows of a chunk as the layout needs them. ``slow`` marks the rows that must go
    through the state machine whatever its state: markers, the row after a marker, and rows
    that need a ProcessTree packet first (as :meth:`of` finds them, from ``known``)."""

    enc: EncodedChunk
    offsets: I64
    ts: I64
    seq: I64
    cpu: I64
    pid: I64
    pid_ok: npt.NDArray[np.bool_]
    tgid: list[int | None]
    comm: list[str | None]
    slow: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, chunk: pa.Table, enc: EncodedChunk,
           known: dict[int, tuple[str | None, int | None]], one_by_one: bool) -> ChunkRows:
        """``one_by_one``: every row is slow (the reference the fast path is tested against)."""
        n = chunk.num_rows
        cpu_col = chunk.column("cpu")
        cpu = np.where(cpu_col.is_null().to_numpy(zero_copy_only=False), NO_CPU,
                       cpu_col.fill_null(0).to_numpy().astype(np.int64))
        pid_col = chunk.column("pid")
        pid = pid_col.fill_null(0).to_numpy().astype(np.int64)
        pid_ok = pid_col.is_valid().to_numpy(zero_copy_only=False)
        comm = chunk.column("comm").cast(pa.string()).to_pylist()
        tgid = chunk.column("tgid").to_pylist()
        slow = np.ones(n, bool)
        if not one_by_one and n:
            marker = enc.marker
            slow[1:] = marker[1:] | marker[:-1]
            slow |= _who_rows(chunk, marker, pid, pid_ok, known)
        return cls(enc, np.cumsum(enc.events.lengths) - enc.events.lengths,
                   chunk.column("ts").to_numpy(), chunk.column("seq").to_numpy(), cpu, pid,
                   pid_ok, tgid, comm, slow)

    def cpu_of(self, i: int) -> int | None:
        """Row ``i``'s CPU."""
        c = int(self.cpu[i])
        return None if c == NO_CPU else c

    def gather(self, rows: I64) -> bytes:
        """The encoded ``event`` fields of ``rows`` (increasing), back to back."""
        flat, lengths = self.enc.events.flat, self.enc.events.lengths
        a, b = int(rows[0]), int(rows[-1])
        if b - a + 1 == rows.size:
            return flat[self.offsets[a]:self.offsets[b] + lengths[b]].tobytes()
        sizes = lengths[rows]
        starts = np.cumsum(sizes) - sizes
        idx = np.repeat(self.offsets[rows] - starts, sizes) + np.arange(int(sizes.sum()))
        return flat[idx].tobytes()


def _who_rows(chunk: pa.Table, marker: npt.NDArray[np.bool_], pid: I64,
              pid_ok: npt.NDArray[np.bool_],
              known: dict[int, tuple[str | None, int | None]]) -> npt.NDArray[np.bool_]:
    """Rows whose (comm, tgid) differs from the one last described for their pid: the
    pid's previous row in the chunk, or ``known`` for its first row in the chunk."""
    comm = pc.dictionary_encode(chunk.column("comm").cast(pa.string()).combine_chunks())
    comm_code = comm.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    tgid_col = chunk.column("tgid")
    tgid = np.where(tgid_col.is_null().to_numpy(zero_copy_only=False), NO_CPU,
                    tgid_col.fill_null(0).to_numpy().astype(np.int64))
    cand = np.flatnonzero(~marker & pid_ok)
    order = cand[np.argsort(pid[cand], kind="stable")]
    p, c, t = pid[order], comm_code[order], tgid[order]
    first = np.ones(order.size, bool)
    first[1:] = p[1:] != p[:-1]
    change = first.copy()
    change[1:] |= (c[1:] != c[:-1]) | (t[1:] != t[:-1])
    names = comm.dictionary.to_pylist()
    for k in np.flatnonzero(first).tolist():
        code, tg = int(c[k]), int(t[k])
        now = (None if code < 0 else names[code], None if tg == NO_CPU else tg)
        change[k] = known.get(int(p[k]), (None, None)) != now
    out = np.zeros(chunk.num_rows, bool)
    out[order[change]] = True
    return out


@dataclass(frozen=True)
class OpenBundles:
    """The writer's open bundles as arrays: CPU keys (sorted), rank, events held."""

    cpus: I64
    ranks: I64
    counts: I64


def fast_prefix(rows: ChunkRows, i: int, state: OpenBundles, key: tuple[int, int], cap: int,
                window: int) -> tuple[int, I64, I64]:
    """How far from row ``i`` rows take the plain path, looking at up to ``window`` rows:
    the end ``f`` (``i`` when row ``i`` does not), the index into ``state`` of each row of
    ``i:f`` and its rank."""
    j = min(rows.ts.size, i + window)
    cpus = rows.cpu[i:j]
    at = np.minimum(np.searchsorted(state.cpus, cpus), state.cpus.size - 1)
    ok = (state.cpus[at] == cpus) & ~rows.slow[i:j]
    rank = state.ranks[at]
    ts = rows.ts[i:j]
    prev_ts = np.concatenate([[key[0]], ts[:-1]])
    prev_rank = np.concatenate([[key[1]], rank[:-1]])
    ok &= (ts > prev_ts) | ((ts == prev_ts) & (rank >= prev_rank))
    group = np.where(ok, at, state.cpus.size)
    order = np.argsort(group, kind="stable")
    g = group[order]
    head = np.ones(g.size, bool)
    head[1:] = g[1:] != g[:-1]
    starts = np.flatnonzero(head)
    occ = np.empty(g.size, np.int64)
    occ[order] = np.arange(g.size) - np.repeat(starts, np.diff(np.append(starts, g.size)))
    ok &= state.counts[at] + occ < cap
    bad = np.flatnonzero(~ok)
    f = int(bad[0]) if bad.size else j - i
    return i + f, at[:f], rank[:f]
