"""Decode event fields from record payloads: vectorised integer columns and ``-R`` text.

Integer fields are gathered with one NumPy fancy index per event type (all records of the
type at once) and viewed with the field's size, signedness and the file's endianness.
Events without a typed table get ``args``: their fields as ``name=value`` in format order,
rendered the way ``trace-cmd report -R`` prints them (libtraceevent ``print_field`` and
``print_field_raw``); identical payloads are rendered once.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from parsers.tracedat.formats import EventFormat, Field, RawSpec

__all__ = ["gather", "int_column", "render_args", "irq_flags"]

I64 = npt.NDArray[np.int64]


def gather(buf: npt.NDArray[np.uint8], offsets: I64, width: int) -> npt.NDArray[np.uint8]:
    """The first ``width`` payload bytes of each record, as an ``(n, width)`` array."""
    if width <= 0:
        return np.zeros((len(offsets), 0), np.uint8)
    words = -(-width // 4)
    if len(buf) % 4 == 0 and not (offsets & 3).any() and (
            not len(offsets) or int(offsets.max()) + 4 * words <= len(buf)):
        # records are 4-byte aligned: gather whole words (a quarter of the index work)
        w = buf.view(np.uint32)[(offsets >> 2)[:, None] + np.arange(words, dtype=np.int64)]
        out: npt.NDArray[np.uint8] = w.view(np.uint8)[:, :width]
        return out
    picked: npt.NDArray[np.uint8] = buf[offsets[:, None] + np.arange(width, dtype=np.int64)]
    return picked


def int_column(rec: npt.NDArray[np.uint8], f: Field, big: bool) -> npt.NDArray[np.generic] | None:
    """The integer field ``f`` of every row of ``rec`` (``None`` for arrays and odd sizes)."""
    if f.array or f.size not in (1, 2, 4, 8) or f.offset + f.size > rec.shape[1]:
        return None
    kind = "i" if f.signed else "u"
    raw = np.ascontiguousarray(rec[:, f.offset:f.offset + f.size])
    return raw.view(f"{'>' if big else '<'}{kind}{f.size}").reshape(-1)


def render_args(
    ev: EventFormat, buf: npt.NDArray[np.uint8], offsets: I64, lengths: I64, big: bool
) -> tuple[list[str], npt.NDArray[np.int32]]:
    """``name=value`` text of every record of ``ev`` (as ``trace-cmd report -R`` prints it),
    as distinct texts and each record's index into them (identical payloads render once, and
    no Python object is made per record)."""
    n = len(offsets)
    if n == 0:
        return [], np.zeros(0, np.int32)
    if not ev.fields:
        return [""], np.zeros(n, np.int32)
    if any(f.dynamic or f.relative for f in ev.fields):
        pairs = zip(offsets.tolist(), lengths.tolist(), strict=True)
        return [_render(ev, bytes(buf[o:o + ln]), big) for o, ln in pairs], np.arange(
            n, dtype=np.int32)
    width = ev.fixed_size
    start = min(f.offset for f in ev.fields)
    rec = gather(buf, offsets, width)
    body = np.ascontiguousarray(rec[:, start:])
    keys = body.view(np.dtype((np.void, body.shape[1]))).reshape(-1)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    texts = [_render(ev, rec[i].tobytes(), big) for i in first.tolist()]
    return texts, inverse.reshape(-1).astype(np.int32)


def _render(ev: EventFormat, rec: bytes, big: bool) -> str:
    order = "big" if big else "little"
    parts = []
    for f in ev.fields:
        parts.append(f"{f.name}={_value(ev, f, rec, order)}")
    return " ".join(parts)


def _value(ev: EventFormat, f: Field, rec: bytes, order: str) -> str:
    if f.array:
        start, length = f.offset, f.size
        if f.dynamic or f.relative:
            word = int.from_bytes(rec[f.offset:f.offset + 4], order)  # type: ignore[arg-type]
            start, length = word & 0xFFFF, word >> 16
            if f.relative:
                start += f.offset + f.size
        data = rec[start:start + length]
        if f.string and _printable(data):
            return data.split(b"\0", 1)[0].decode("utf-8", "replace")
        return "ARRAY[" + ", ".join(f"{b:02x}" for b in data) + "]"
    val = int.from_bytes(rec[f.offset:f.offset + f.size], order)  # type: ignore[arg-type]
    spec = ev.raw_specs.get(f.name)
    return _with_spec(val, spec) if spec is not None else _raw(val, f)


def _printable(data: bytes) -> bool:
    for b in data:
        if b == 0:
            break
        if not (32 <= b < 127 or b in (9, 10, 11, 12, 13)):
            return False
    return True


def _signed(val: int, bits: int) -> int:
    val &= (1 << bits) - 1
    return val - (1 << bits) if val >> (bits - 1) else val


def _with_spec(val: int, spec: RawSpec) -> str:
    if spec.pointer:
        return "(nil)" if val == 0 else f"0x{val:x}"
    v = _signed(val, spec.bits) if spec.signed else val & ((1 << spec.bits) - 1)
    if spec.char:
        return chr(v & 0xFF)
    fmt = spec.spec.replace("#", "") if v == 0 else spec.spec
    return spec.prefix + (fmt % v)


def _raw(val: int, f: Field) -> str:
    if f.pointer:
        return f"0x{val:x}"
    if f.signed:
        if f.size == 4:
            return f"0x{val & 0xFFFFFFFF:x}" if f.long else str(_signed(val, 32))
        if f.size == 2:
            return f"{_signed(val, 16):2d}"
        if f.size == 1:
            return str(_signed(val, 8))
        return str(_signed(val, 64))
    return f"0x{val:x}" if f.long else str(val)


_FLAG_IRQS_OFF, _FLAG_RESCHED_LAZY, _FLAG_NEED_RESCHED = 0x01, 0x02, 0x04
_FLAG_HARDIRQ, _FLAG_SOFTIRQ, _FLAG_PREEMPT_RESCHED, _FLAG_NMI, _FLAG_BH_OFF = (
    0x08, 0x10, 0x20, 0x40, 0x80)
_RESCHED = {
    _FLAG_NEED_RESCHED | _FLAG_RESCHED_LAZY | _FLAG_PREEMPT_RESCHED: "B",
    _FLAG_NEED_RESCHED | _FLAG_PREEMPT_RESCHED: "N",
    _FLAG_RESCHED_LAZY | _FLAG_PREEMPT_RESCHED: "L",
    _FLAG_NEED_RESCHED | _FLAG_RESCHED_LAZY: "b",
    _FLAG_NEED_RESCHED: "n",
    _FLAG_PREEMPT_RESCHED: "p",
    _FLAG_RESCHED_LAZY: "l",
}


def irq_flags(flags: int, preempt: int) -> str:
    """The kernel's irq-flags column (``trace_print_lat_fmt`` in kernel/trace/trace_output.c).

    Examples:
        >>> irq_flags(0x01, 0x01), irq_flags(0, 0), irq_flags(0x2C, 0x12)
        ('d..1.', '.....', '.Nh21')
    """
    irqs_off, bh_off = flags & _FLAG_IRQS_OFF, flags & _FLAG_BH_OFF
    c1 = "D" if irqs_off and bh_off else "d" if irqs_off else "b" if bh_off else "."
    c2 = _RESCHED.get(flags & (_FLAG_NEED_RESCHED | _FLAG_RESCHED_LAZY | _FLAG_PREEMPT_RESCHED),
                      ".")
    nmi, hard, soft = flags & _FLAG_NMI, flags & _FLAG_HARDIRQ, flags & _FLAG_SOFTIRQ
    c3 = ("Z" if nmi and hard else "z" if nmi else "H" if hard and soft else "h" if hard
          else "s" if soft else ".")
    c4 = f"{preempt & 0xF:x}" if preempt & 0xF else "."
    c5 = f"{(preempt & 0xF0) >> 4:x}" if preempt & 0xF0 else "."
    return c1 + c2 + c3 + c4 + c5
