"""Write any :class:`~parsers.trace.Trace` as a Perfetto protobuf trace.

:func:`write_perfetto` lays the events out as traced_probes would record them: one
``FtraceEventBundle`` per run of events of one CPU (a new bundle whenever the CPU changes,
so the file order is the source's order), compiled protos where Perfetto has one (keeping
only the fields the event has), generic events otherwise (dense with per-bundle
descriptors, or legacy ``GenericFtraceEvent``), ``ProcessTree`` packets for ``comm`` and
``tgid`` (written before the first event that needs them), ``lost_events`` flags on the
bundle after a loss and an ``FtraceStats`` pair with the lost counts.

What Perfetto cannot keep (see :data:`LOSSY_COLUMNS`): ``latency_flags``, ``instance``, the per-marker
lost counts (only per-CPU totals in ``FtraceStats``), ``buffer_started`` markers, the
``seq`` numbering (rows are renumbered 0, 1, ... in the same order), the x86 fields of
``kvm_entry``/``kvm_exit`` and ``errno`` of ``kvm_userspace_exit`` (compiled arm64-shaped
protos), and free-text ``args`` (stored as one string field ``payload``, read back as
``payload=<text>``). ``ts`` stays int64 ns.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
import pyarrow as pa

from parsers.output import output_file
from parsers.perfetto.encode import Encoding, EventEncoder, GenericLayout, len_field, varint_field
from parsers.perfetto.placement import NO_CPU, WINDOW, ChunkRows, OpenBundles, fast_prefix
from parsers.perfetto.protos import FTRACE_CLOCK_UNKNOWN, field_number, ftrace_clock_value
from parsers.perfetto.values import EventValues
from parsers.perfetto.wire import I64
from parsers.schema import BUFFER_STARTED
from parsers.trace import Trace

__all__ = ["write_perfetto", "PerfettoWriteReport", "LOSSY_COLUMNS"]

#: Columns (and parts of tables) that do not survive a trip through Perfetto.
LOSSY_COLUMNS: Final = (
    "events.latency_flags", "events.instance", "events.seq (renumbered, order kept)",
    "lost_events.lost (per-CPU totals only, in FtraceStats)", "buffer_started markers",
    "kvm_entry/kvm_exit x86 fields (vcpu_id is re-inferred from CPU n/KVM thread names)",
    "kvm_userspace_exit.errno", "free-text args (read back as payload=<text>)",
    "the stacks table (kernel_stack/user_stack records are kept as events, their frames "
    "are dropped)",
)
_ROWS_PER_CHUNK: Final = 65536
_COMPRESS_CHUNK: Final = 512 << 10


@dataclass(frozen=True)
class PerfettoWriteReport:
    """What :func:`write_perfetto` wrote and what it could not represent."""

    path: str
    events: int
    bundles: int
    packets: int
    dropped: dict[str, int]
    #: What the clock and units became (Perfetto names only some clocks, and no tick unit).
    notes: list[str] = field(default_factory=list)


@dataclass(eq=False)
class _Bundle:
    cpu: int | None
    rank: int = 0
    #: Its events: rows of encoded chunks (``event`` fields: tag, length, FtraceEvent).
    parts: list[tuple[ChunkRows, I64]] = field(default_factory=list)
    count: int = 0
    layouts: dict[int, GenericLayout] = field(default_factory=dict)
    lost: bool = False
    ftrace_ts: int | None = None


class _PacketSink:
    """Writes ``Trace.packet`` records, optionally batched into ``compressed_packets``."""

    def __init__(self, fh: BinaryIO, compress: bool) -> None:
        self.fh, self.compress = fh, compress
        self.chunk: list[bytes] = []
        self.chunk_bytes = 0
        self.count = 0
        self.packet_no = field_number("Trace", "packet")

    def write(self, body: bytes) -> None:
        record = len_field(self.packet_no, body)
        self.count += 1
        if not self.compress:
            self.fh.write(record)
            return
        self.chunk.append(record)
        self.chunk_bytes += len(record)
        if self.chunk_bytes >= _COMPRESS_CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self.chunk:
            return
        data = zlib.compress(b"".join(self.chunk), 6)
        body = len_field(field_number("TracePacket", "compressed_packets"), data)
        self.fh.write(len_field(self.packet_no, body))
        self.chunk, self.chunk_bytes = [], 0


@dataclass
class _Writer:
    """Lays events out in read cycles, as traced_probes does: per cycle one bundle per CPU.

    The reader merges a cycle's bundles by timestamp (ties: bundle order), and sees a new
    cycle where a CPU repeats or a bundle has its ``lost_events`` flag. The writer closes a
    cycle whenever the source order would not come out of that merge, so the file keeps the
    source's order exactly; most cycles still hold long per-CPU runs.
    """

    sink: _PacketSink
    encoder: EventEncoder
    bundle_events: int
    cycle: list[_Bundle] = field(default_factory=list)
    open: dict[int | None, _Bundle] = field(default_factory=dict)
    key: tuple[int, int] | None = None
    known: dict[int, tuple[str | None, int | None]] = field(default_factory=dict)
    lost_next: set[int | None] = field(default_factory=set)
    clock: int | None = None
    lost_counts: dict[int, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    bundles: int = 0
    events: int = 0

    def flush_bundle(self) -> None:
        """End the current cycle: write its bundles."""
        for b in self.cycle:
            self._write(b)
        self.cycle, self.open, self.key = [], {}, None

    def _write(self, b: _Bundle) -> None:
        fb = "FtraceEventBundle"
        body = b"" if b.cpu is None else varint_field(field_number(fb, "cpu"), b.cpu)
        body += b"".join([rows.gather(idx) for rows, idx in b.parts])
        if b.lost:
            body += varint_field(field_number(fb, "lost_events"), 1)
        if b.ftrace_ts is not None:
            body += varint_field(field_number(fb, "ftrace_timestamp"), b.ftrace_ts)
        if self.clock is not None:
            body += varint_field(field_number(fb, "ftrace_clock"), self.clock)
        desc_no = field_number(fb, "generic_event_descriptors")
        body += b"".join(len_field(desc_no, lay.descriptor()) for lay in b.layouts.values())
        self.sink.write(len_field(field_number("TracePacket", "ftrace_events"), body))
        self.bundles += 1

    def _new_bundle(self, cpu: int | None, lost: bool, ftrace_ts: int | None = None) -> _Bundle:
        """Open a bundle for ``cpu``, first closing the cycle if the reader would."""
        cpus = [b.cpu for b in self.cycle]
        if self.cycle and (cpu in cpus or lost):
            self.flush_bundle()
        b = _Bundle(cpu, len(self.cycle), lost=lost, ftrace_ts=ftrace_ts)
        self.cycle.append(b)
        self.open[cpu] = b
        return b

    def _restart(self, cpu: int | None) -> None:
        """Close the cycle; make sure the reader sees the next bundle start a new one."""
        ended = [b.cpu for b in self.cycle]
        self.flush_bundle()
        if ended and cpu not in ended and cpu not in self.lost_next:
            self.cycle = [_Bundle(ended[0])]  # an empty bundle: the CPU repeats

    def event(self, rows: ChunkRows, i: int) -> None:
        """Add row ``i`` of ``rows``: to its CPU's bundle, or a new one (closing the read
        cycle first when the bundle is full or the reader would not merge it in order)."""
        cpu, ts = rows.cpu_of(i), int(rows.ts[i])
        b = self.open.get(cpu)
        rank = b.rank if b is not None else len(self.cycle)
        if b is not None and b.count >= self.bundle_events:
            self.flush_bundle()
            b, rank = None, 0
        if self.key is not None and (ts, rank) < self.key:
            self._restart(cpu)
            b, rank = None, len(self.cycle)
        if b is None:
            lost = cpu in self.lost_next
            self.lost_next.discard(cpu)
            b = self._new_bundle(cpu, lost)
            rank = b.rank
        b.parts.append((rows, np.array([i], np.int64)))
        b.count += 1
        fid = int(rows.enc.layout[i])
        if fid >= 0:
            b.layouts.setdefault(fid, rows.enc.layouts[fid])
        self.key = (ts, rank)
        self.events += 1

    def plain_rows(self, rows: ChunkRows, i: int) -> int:
        """Add rows ``i``, ``i + 1``, ... while each goes to its CPU's open bundle, with
        room, in merge order (what :meth:`event` would do one by one); returns the first
        row that needs :meth:`event`."""
        window = WINDOW
        while i < rows.ts.size and self.key is not None and self.open:
            bundles = sorted(self.open.items(), key=lambda kv: NO_CPU if kv[0] is None else kv[0])
            state = OpenBundles(
                np.array([NO_CPU if c is None else c for c, _ in bundles], np.int64),
                np.array([b.rank for _, b in bundles], np.int64),
                np.array([b.count for _, b in bundles], np.int64))
            f, at, rank = fast_prefix(rows, i, state, self.key, self.bundle_events, window)
            if f == i:
                return i
            window = window * 4 if f - i == window else WINDOW
            for k, (_, b) in enumerate(bundles):
                mine = np.flatnonzero(at == k)
                if not mine.size:
                    continue
                idx = mine + i
                b.parts.append((rows, idx))
                b.count += mine.size
                ids, first = np.unique(rows.enc.layout[idx], return_index=True)
                for fid in ids[np.argsort(first)].tolist():
                    if fid >= 0:
                        b.layouts.setdefault(fid, rows.enc.layouts[fid])
            self.key = (int(rows.ts[f - 1]), int(rank[-1]))
            self.events += f - i
            i = f
        return i

    def who(self, pid: int, comm: str | None, tgid: int | None) -> None:
        """Describe ``pid`` in a ProcessTree packet if its comm/tgid changed."""
        if self.known.get(pid, (None, None)) == (comm, tgid):
            return
        self.flush_bundle()
        self.known[pid] = (comm, tgid)
        pt = "ProcessTree"
        if tgid == pid:
            p = "ProcessTree.Process"
            body = varint_field(field_number(p, "pid"), pid)
            if comm is not None:
                body += len_field(field_number(p, "cmdline"), comm.encode())
                body += varint_field(field_number(p, "cmdline_is_comm"), 1)
            tree = len_field(field_number(pt, "processes"), body)
        else:
            t = "ProcessTree.Thread"
            body = varint_field(field_number(t, "tid"), pid)
            if tgid is not None:
                body += varint_field(field_number(t, "tgid"), tgid)
            if comm is not None:
                body += len_field(field_number(t, "name"), comm.encode())
            tree = len_field(field_number(pt, "threads"), body)
        self.sink.write(len_field(field_number("TracePacket", "process_tree"), tree))

    def lost(self, cpu: int | None, ts: int, count: int | None, next_cpu: int | None,
             next_ts: int | None) -> None:
        """A loss marker: flag the next bundle of ``cpu`` (or an empty flagged bundle)."""
        self.flush_bundle()
        if count is not None and cpu is not None:
            self.lost_counts[cpu] = self.lost_counts.get(cpu, 0) + count
        if next_cpu == cpu and next_ts == ts and cpu not in self.lost_next:
            self.lost_next.add(cpu)
            return
        self._new_bundle(cpu, True, ts)
        self.open.pop(cpu)  # an empty flagged bundle: it takes no events
        self.key = (ts, 0)

    def stats(self) -> None:
        """``FtraceStats`` at start and end of trace with the known lost counts."""
        if not self.lost_counts:
            return
        fs, cs = "FtraceStats", "FtraceCpuStats"
        for phase in (1, 2):
            body = varint_field(field_number(fs, "phase"), phase)
            for cpu, n in sorted(self.lost_counts.items()):
                cpu_body = (varint_field(field_number(cs, "cpu"), cpu)
                            + varint_field(field_number(cs, "overrun"), n if phase == 2 else 0))
                body += len_field(field_number(fs, "cpu_stats"), cpu_body)
            self.sink.write(len_field(field_number("TracePacket", "ftrace_stats"), body))


def write_perfetto(
    trace: Trace, path: str | Path, *, encoding: Encoding = "dense", compress: bool = False,
    bundle_events: int = 1024, force: bool = False,
) -> PerfettoWriteReport:
    """Write ``trace`` to ``path`` as a Perfetto trace, by the output policy of
    :func:`parsers.output.output_file` (temp file renamed on success; an existing file is
    replaced only with ``force``; devices, FIFOs and ``-`` get the bytes).

    Args:
        trace: any trace, whatever format it was read from.
        path: output file.
        encoding: ``"dense"`` (descriptors + per-trace field ids, Perfetto v53+ default) or
            ``"legacy"`` (``GenericFtraceEvent`` with named fields) for generic events.
        compress: wrap packets in zlib ``compressed_packets`` as traced does with
            ``compression_type: DEFLATE``.
        bundle_events: most events per bundle.
        force: replace an existing file.

    Examples:
        >>> from parsers.perfetto.reader import read_perfetto
        >>> t = read_perfetto("sample_traces/perfetto_kvm_dense.pftrace")
        >>> import tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "copy.pftrace")
        >>> write_perfetto(t, out, encoding="legacy").events == t.events.num_rows
        True
    """
    if encoding not in ("dense", "legacy"):
        raise ValueError(f"encoding must be 'dense' or 'legacy', not {encoding!r}")
    with output_file(path, force=force) as fh:
        sink = _PacketSink(fh, compress)
        writer = _Writer(sink, EventEncoder(encoding), bundle_events,
                         clock=ftrace_clock_value(trace.metadata.clock))
        _write_rows(trace, writer)
        writer.flush_bundle()
        writer.stats()
        sink.flush()
    if trace.stacks.num_rows:  # Perfetto's ftrace protos have no stack records
        writer.dropped["stacks (stack frames)"] = trace.stacks.num_rows
    return PerfettoWriteReport(str(path), writer.events, writer.bundles, sink.count,
                               dict(sorted(writer.dropped.items())), clock_notes(trace))


def clock_notes(trace: Trace) -> list[str]:
    """What a Perfetto trace cannot say about ``trace``'s clock and units: Perfetto's
    ``ftrace_clock`` names only global, local and mono_raw, and timestamps are always ns."""
    meta = trace.metadata
    notes = []
    if meta.ts_unit != "ns":
        notes.append(f"timestamps are {meta.ts_unit} of the {meta.clock or 'unknown'} clock; "
                     "Perfetto has no field for a tick unit: they are written unchanged and "
                     "read back as ns")
    if ftrace_clock_value(meta.clock) == FTRACE_CLOCK_UNKNOWN:
        notes.append(f"Perfetto's ftrace_clock has no name for the {meta.clock} clock: written "
                     "as FTRACE_CLOCK_UNKNOWN")
    return notes


def _chunks(trace: Trace) -> Iterator[pa.Table]:
    events = trace.events
    order = np.argsort(events.column("seq").to_numpy(), kind="stable")
    if not np.array_equal(order, np.arange(order.size)):
        events = events.take(pa.array(order))
    for start in range(0, events.num_rows, _ROWS_PER_CHUNK):
        yield events.slice(start, _ROWS_PER_CHUNK)


def _write_rows(trace: Trace, writer: _Writer, *, one_by_one: bool = False) -> None:
    """Lay out every row; ``one_by_one`` sends each row through :meth:`_Writer.event` (the
    reference :meth:`_Writer.plain_rows` is tested against)."""
    values = EventValues(trace, writer.encoder)
    pending: list[tuple[int | None, int, int | None]] = []
    for chunk in _chunks(trace):
        enc = values.encode_chunk(chunk)
        rows = ChunkRows.of(chunk, enc, writer.known, one_by_one)
        i, n = 0, chunk.num_rows
        while i < n:
            i = writer.plain_rows(rows, i)
            if i == n:
                break
            cpu, ts = rows.cpu_of(i), int(rows.ts[i])
            if enc.marker[i]:
                if enc.names[int(enc.name[i])] == BUFFER_STARTED:
                    writer.dropped[BUFFER_STARTED] = writer.dropped.get(BUFFER_STARTED, 0) + 1
                else:
                    pending.append((cpu, ts, values.lost_count(int(rows.seq[i]))))
                i += 1
                continue
            for m_cpu, m_ts, m_count in pending:
                writer.lost(m_cpu, m_ts, m_count, cpu, ts)
            pending.clear()
            comm, tgid = rows.comm[i], rows.tgid[i]
            if rows.pid_ok[i] and writer.known.get(int(rows.pid[i])) != (comm, tgid):
                writer.who(int(rows.pid[i]), comm, tgid)
            writer.event(rows, i)
            i += 1
    for m_cpu, m_ts, m_count in pending:
        writer.lost(m_cpu, m_ts, m_count, None, None)
    for reason, n in values.dropped.items():
        writer.dropped[reason] = writer.dropped.get(reason, 0) + n
