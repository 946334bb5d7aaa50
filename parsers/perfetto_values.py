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

import pyarrow as pa
import pyarrow.compute as pc

from parsers.perfetto_encode import EventEncoder, Value
from parsers.schema import BUFFER_STARTED, EVENT_FIELDS, LOST_EVENTS, PAGE_EVENTS, ROLE_BITS
from parsers.trace import Trace

__all__ = ["EventValues", "parse_pairs", "PAYLOAD_FIELD"]

#: Field that carries free-text ``args`` of events Perfetto would have decoded into fields.
PAYLOAD_FIELD: Final = "payload"
_PAIR = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)")
_INT = re.compile(r"0|-?[1-9][0-9]*")
_U64_MAX: Final = 2**64 - 1
_MARKERS: Final = (LOST_EVENTS, BUFFER_STARTED)

Row = tuple[dict[str, Value | None], bool]


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
        return None if hit < 0 else table.column("count")[hit].as_py()

    def chunk(self, seqs: list[int], names: list[str], args: list[str | None]) -> list[Row]:
        """``(values, use compiled proto)`` for each row of a chunk."""
        typed = self._typed_rows(seqs, names)
        out: list[Row] = []
        for seq, name, text in zip(seqs, names, args, strict=True):
            row = typed.get(seq)
            if row is not None:
                out.append((row, True))
                continue
            if name in EVENT_FIELDS and name not in self.kinds:
                self.encoder.declare(name, ())
            out.append((self._untyped(name, text), self._compiled_ok(name)))
        return out

    def _untyped(self, name: str, text: str | None) -> dict[str, Value | None]:
        if text is None:
            return {}
        kinds = self.kinds.get(name, {})
        if name in self.free_text:
            return {PAYLOAD_FIELD: ("string", _payload_text(text))}
        pairs = parse_pairs(text) or {}
        return {k: (kinds.get(k, "string"), v if kinds.get(k, "string") == "string" else int(v))
                for k, v in pairs.items()}

    def _typed_rows(self, seqs: list[int], names: list[str]) -> dict[int, dict[str, Value | None]]:
        """Typed-table values of the chunk's rows, keyed by seq."""
        if not seqs:
            return {}
        lo, hi = min(seqs), max(seqs)
        out: dict[int, dict[str, Value | None]] = {}
        for name in set(names) & set(self._typed_seq):
            if name in (LOST_EVENTS,):
                continue
            s = self._typed_seq[name]
            a, b = int(s.searchsorted(lo)), int(s.searchsorted(hi, side="right"))
            if a == b:
                continue
            part = self._typed[name].slice(a, b - a)
            spec = list(EVENT_FIELDS[name]) + [(b, pa.uint8()) for b in self._bits[name]]
            cols = [(f, _arrow_kind(t), part.column(f).to_pylist()) for f, t in spec]
            for i, seq in enumerate(part.column("seq").to_pylist()):
                row: dict[str, Value | None] = {
                    f: None if vals[i] is None else (k, int(vals[i])) for f, k, vals in cols}
                if row.get("role") is not None:
                    row.update(dict.fromkeys(self._bits[name]))
                out[seq] = row
        return out
