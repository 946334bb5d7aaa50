"""The field values the Perfetto writer encodes for each row of a Trace.

Events with a typed table take their fields from it (joined on ``seq``), in ``format`` order.
Other events have only ``args`` text: when it is ``name=value`` pairs (what the Perfetto and
trace-cmd ``-R`` readers produce) the pairs become fields, typed per event name over the
whole trace (all unsigned integers -> ``uint``, some negative -> ``int``, else ``string``);
free text (the kernel's print format) becomes one string field ``payload``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from parsers.perfetto.bytecols import ByteColumn, Piece, constant, from_bytes, join, place, take, varints
from parsers.perfetto.encode import (
    EventEncoder,
    GenericLayout,
    GroupField,
    Value,
    encode_group,
    key,
)
from parsers.perfetto.protos import field_number
from parsers.perfetto.wire import LEN, VARINT
from parsers.schema import BUFFER_STARTED, EVENT_FIELDS, LOST_EVENTS, PAGE_EVENTS, ROLE_BITS
from parsers.stacks import STACK_EVENTS
from parsers.trace import Trace

__all__ = ["EventValues", "EncodedChunk", "parse_pairs", "PAYLOAD_FIELD"]

#: Field that carries free-text ``args`` of events Perfetto would have decoded into fields.
PAYLOAD_FIELD: Final = "payload"
_PAIR = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)")
_INT = re.compile(r"0|-?[1-9][0-9]*")
_U64_MAX: Final = 2**64 - 1
_MARKERS: Final = (LOST_EVENTS, BUFFER_STARTED)



@dataclass(frozen=True)
class EncodedChunk:
    """A chunk of ``events`` rows encoded: ``events`` holds each row as an
    ``FtraceEventBundle.event`` field (tag, length, ``FtraceEvent``), empty for the loss and
    buffer markers (``marker``); ``name``/``names`` are the rows' event names as codes and
    their dictionary; ``layout`` the dense field id a row uses (-1: none), in ``layouts``."""

    events: ByteColumn
    marker: npt.NDArray[np.bool_]
    name: npt.NDArray[np.int64]
    names: list[str]
    layout: npt.NDArray[np.int64]
    layouts: dict[int, GenericLayout]


def _framed(event: Piece) -> Piece:
    """``event`` rows as ``FtraceEventBundle.event`` fields."""
    every = np.ones(event.lengths.size, bool)
    tag = key(field_number("FtraceEventBundle", "event"), LEN)
    return join([constant(tag, every), varints(event.lengths.astype(np.uint64), every), event])


def parse_pairs(args: str) -> dict[str, str] | None:
    """``args`` as ``{name: value}`` if it is space-separated ``name=value`` pairs, else None."""
    if args == "":
        return {}
    out: dict[str, str] = {}
    for token in args.split(" "):
        m = _PAIR.fullmatch(token)
        if m is None or m.group(1) in out:
            return None
        out[m.group(1)] = m.group(2)
    return out


def _payload_text(text: str) -> str:
    """Free text to store; ``payload=<text>`` (as read back from Perfetto) keeps ``<text>``."""
    prefix = f"{PAYLOAD_FIELD}="
    return text[len(prefix):] if text.startswith(prefix) else text


def _kind_of(values: set[str]) -> str:
    if values and all(_INT.fullmatch(v) for v in values):
        nums = [int(v) for v in values]
        if all(0 <= n <= _U64_MAX for n in nums):
            return "uint"
        if all(-(2**63) <= n < 2**63 for n in nums):
            return "int"
    return "string"


def _bits_without_role(table: pa.Table, name: str) -> tuple[str, ...]:
    """Role-bit columns known where the role word is not (the kernel's text rendering shows
    some bits, not the word): written as extra fields so they survive the trip."""
    if name not in PAGE_EVENTS or table.column("role").null_count == 0:
        return ()
    no_role = table.filter(pc.is_null(table.column("role")))
    return tuple(b for b, _, _, _ in ROLE_BITS if no_role.column(b).null_count < no_role.num_rows)


def _by_seq(table: pa.Table) -> pa.Table:
    order = pc.sort_indices(table.column("seq"))
    return table.take(order)


def _arrow_kind(t: pa.DataType) -> str:
    return "int" if pa.types.is_signed_integer(t) else "uint"


@dataclass
class EventValues:
    """Per-row field values of ``trace``; declares generic layouts on ``encoder``."""

    trace: Trace
    encoder: EventEncoder
    free_text: set[str] = field(default_factory=set)
    kinds: dict[str, dict[str, str]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._untyped_cache: dict[tuple[str, str | None], tuple[bytes, GenericLayout | None]] = {}
        self._ts_no = field_number("FtraceEvent", "timestamp")
        self._pid_no = field_number("FtraceEvent", "pid")
        self._plan_untyped()
        self._bits: dict[str, tuple[str, ...]] = {}
        for name in self.trace.names:
            if name != LOST_EVENTS:
                self._bits[name] = _bits_without_role(self.trace.table(name), name)
                fields = tuple((f, _arrow_kind(t)) for f, t in EVENT_FIELDS[name])
                self.encoder.declare(name, fields + tuple((b, "uint") for b in self._bits[name]))
        self._typed = {name: _by_seq(self.trace.table(name)) for name in self.trace.names}
        self._typed_seq = {name: t.column("seq").to_numpy() for name, t in self._typed.items()}

    def _plan_untyped(self) -> None:
        ev = self.trace.events
        untyped = ev.filter(pc.is_valid(ev.column("args")))
        names = untyped.column("event").cast(pa.string())
        for name in pc.unique(names).to_pylist():
            if name in _MARKERS:
                continue
            args = pc.unique(untyped.filter(pc.equal(names, name)).column("args")).to_pylist()
            parsed = [parse_pairs(a) for a in args]
            if any(p is None for p in parsed):
                self.free_text.add(name)
                self.kinds[name] = {PAYLOAD_FIELD: "string"}
            else:
                seen: dict[str, set[str]] = {}
                for p in parsed:
                    assert p is not None
                    for k, v in p.items():
                        seen.setdefault(k, set()).add(v)
                self.kinds[name] = {k: _kind_of(v) for k, v in seen.items()}
            if name not in self.trace.names:
                self.encoder.declare(name, tuple(self.kinds[name].items()))

    def _compiled_ok(self, name: str) -> bool:
        compiled = self.encoder.compiled(name)
        if compiled is None or name in self.free_text:
            return False
        protos = compiled.by_name()
        for fname, kind in self.kinds.get(name, {}).items():
            pf = protos.get(fname)
            if pf is None or (pf.kind == "string") != (kind == "string"):
                return False
        return True

    def lost_count(self, seq: int) -> int | None:
        """The ``count`` of the loss marker at ``seq`` (None when unknown)."""
        table = self.trace.table(LOST_EVENTS)
        if not table.num_rows:
            return None
        hit = pc.index(table.column("seq"), seq).as_py()
        return None if hit < 0 else table.column("lost")[hit].as_py()

    def encode_chunk(self, chunk: pa.Table) -> EncodedChunk:
        """Each row of a chunk of ``events`` (in seq order) as a bundle's ``event`` field
        (empty for loss and buffer markers), with its dense layout."""
        n = chunk.num_rows
        seqs = chunk.column("seq").to_numpy()
        ts = chunk.column("ts").to_numpy()
        pid_col = chunk.column("pid")
        pid_ok = pid_col.is_valid().to_numpy(zero_copy_only=False)
        pid = pid_col.fill_null(0).to_numpy().astype(np.int64)
        names = pc.dictionary_encode(chunk.column("event").cast(pa.string()).combine_chunks())
        codes = names.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        dictionary = names.dictionary.to_pylist()
        marker_codes = [i for i, name in enumerate(dictionary) if name in _MARKERS]
        marker = np.isin(codes, marker_codes)
        layout_of = np.full(n, -1, np.int64)
        layouts: dict[int, GenericLayout] = {}
        parts = self._encode_typed(seqs, ts, pid, pid_ok, set(dictionary), layout_of, layouts)
        done = np.zeros(n, bool)
        for rows, _ in parts:
            done[rows] = True
        rows = np.flatnonzero(~done & ~marker)
        if rows.size:
            args = chunk.column("args").combine_chunks().take(pa.array(rows))
            tails, tail_layouts = self._untyped_tails(codes[rows], dictionary, args)
            every = np.ones(rows.size, bool)
            head: list[Piece] = [constant(key(self._ts_no, VARINT), every),
                                 varints(ts[rows].view(np.uint64), every),
                                 constant(key(self._pid_no, VARINT), pid_ok[rows]),
                                 varints(pid[rows].astype(np.uint64), pid_ok[rows])]
            parts.append((rows, join([*head, tails])))
            for local, layout in tail_layouts:
                layouts[layout.field_id] = layout
                layout_of[rows[local]] = layout.field_id
        framed: list[tuple[npt.NDArray[np.int64], Piece]] = [
            (rows, _framed(piece)) for rows, piece in parts]
        return EncodedChunk(place(n, framed), marker, codes, dictionary,
                            layout_of, layouts)

    def _untyped_tails(self, codes: npt.NDArray[np.int64], dictionary: list[str],
                       args: pa.Array
                       ) -> tuple[ByteColumn, list[tuple[npt.NDArray[np.int64], GenericLayout]]]:
        """The FtraceEvent bytes after timestamp and pid of events known only by ``args``,
        encoded once per distinct (name, args), in order of first use (dense ids are given
        in that order); and the rows that use each dense layout."""
        text = pc.dictionary_encode(args)
        arg_codes = text.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        combo = codes * (len(text.dictionary) + 1) + arg_codes + 1
        _, first, inverse = np.unique(combo, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        arg_texts = text.dictionary.to_pylist()
        tails: list[bytes] = []
        by_layout: dict[int, list[int]] = {}
        found: dict[int, GenericLayout] = {}
        for k in order.tolist():
            row = int(first[k])
            code = int(arg_codes[row])
            tail, layout = self._untyped_tail(dictionary[int(codes[row])],
                                              None if code < 0 else arg_texts[code])
            tails.append(tail)
            if layout is not None:
                by_layout.setdefault(layout.field_id, []).append(len(tails) - 1)
                found[layout.field_id] = layout
        index = rank[inverse.ravel()]
        return take(from_bytes(tails), index), [
            (np.flatnonzero(np.isin(index, ks)), found[lid]) for lid, ks in by_layout.items()]

    def _untyped_tail(self, name: str, args: str | None) -> tuple[bytes, GenericLayout | None]:
        if (name in EVENT_FIELDS or name in STACK_EVENTS) and name not in self.kinds:
            self.encoder.declare(name, ())
        hit = self._untyped_cache.get((name, args))
        if hit is None:
            values = self._untyped(name, args)
            body, layout = self.encoder.encode(name, 0, None, values, self._compiled_ok(name))
            hit = self._untyped_cache[(name, args)] = (body[2:], layout)
        return hit

    def _encode_typed(self, seqs: npt.NDArray[np.int64], ts: npt.NDArray[np.int64],
                      pid: npt.NDArray[np.int64], pid_ok: npt.NDArray[np.bool_],
                      names: set[str], layout_of: npt.NDArray[np.int64],
                      layouts: dict[int, GenericLayout]
                      ) -> list[tuple[npt.NDArray[np.int64], Piece]]:
        """Encode the rows that have a typed-table row, group by group (NumPy)."""
        parts: list[tuple[npt.NDArray[np.int64], Piece]] = []
        if not seqs.size:
            return parts
        for name in sorted(names & set(self._typed_seq)):
            if name == LOST_EVENTS:
                continue
            s = self._typed_seq[name]
            a, b = int(s.searchsorted(seqs[0])), int(s.searchsorted(seqs[-1], side="right"))
            part = self._typed[name].slice(a, b - a)
            rows = np.searchsorted(seqs, part.column("seq").to_numpy())
            ok = (rows < seqs.size) & (seqs[np.minimum(rows, seqs.size - 1)] ==
                                       part.column("seq").to_numpy())
            rows, part = rows[ok], part.filter(pa.array(ok))
            if not rows.size:
                continue
            encoded, layout = encode_group(
                self.encoder, name, ts[rows], pid[rows], pid_ok[rows],
                self._group_fields(name, part), True)
            parts.append((rows, encoded))
            if layout is not None:
                layouts[layout.field_id] = layout
                layout_of[rows] = layout.field_id
        return parts

    def _group_fields(self, name: str, part: pa.Table) -> list[GroupField]:
        fields: list[GroupField] = []
        role_known = (part.column("role").is_valid().to_numpy(zero_copy_only=False)
                      if self._bits.get(name) else None)
        spec = list(EVENT_FIELDS[name]) + [(b, pa.uint8()) for b in self._bits.get(name, ())]
        for fname, typ in spec:
            col = part.column(fname).combine_chunks()
            present = col.is_valid().to_numpy(zero_copy_only=False)
            if role_known is not None and fname not in dict(EVENT_FIELDS[name]):
                present = present & ~role_known
            raw = col.cast(pa.int64() if pa.types.is_signed_integer(typ) else pa.uint64())
            values = raw.fill_null(0).to_numpy().astype(
                np.int64 if pa.types.is_signed_integer(typ) else np.uint64).view(np.uint64)
            fields.append((fname, _arrow_kind(typ), values, present))
        return fields

    def _untyped(self, name: str, text: str | None) -> dict[str, Value | None]:
        if text is None:
            return {}
        kinds = self.kinds.get(name, {})
        if name in self.free_text:
            return {PAYLOAD_FIELD: ("string", _payload_text(text))}
        pairs = parse_pairs(text) or {}
        return {k: (kinds.get(k, "string"), v if kinds.get(k, "string") == "string" else int(v))
                for k, v in pairs.items()}
