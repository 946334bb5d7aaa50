"""Vectorised conversion of number text (decimal, hex with or without ``0x``) to Arrow integers.

pyarrow casts decimal strings natively but has no hex parser; :func:`hex_to_uint64` does it
with NumPy over the padded bytes of a whole column, so no Python loop runs per value.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["hex_to_uint64", "dec_to_int", "auto_radix_to_uint64", "NumberTextError"]

_NIBBLE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _NIBBLE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _NIBBLE[_c] = 10 + _i


class NumberTextError(ValueError):
    """Some values were not numbers of the expected radix; ``bad`` is a boolean mask."""

    def __init__(self, bad: np.ndarray) -> None:
        self.bad = bad
        super().__init__(f"{int(bad.sum())} values are not numbers")


def hex_to_uint64(text: pa.Array, *, strict: bool = False) -> pa.Array:
    """Parse hex strings (``1f``, ``0x1f``, up to 16 digits) into uint64; nulls stay null.

    A value that is not hex becomes null, or raises :class:`NumberTextError` when ``strict``.

    Examples:
        >>> hex_to_uint64(pa.array(["ff", "0x10", None, "ffffffffffffffff"])).to_pylist()
        [255, 16, None, 18446744073709551615]
    """
    n = len(text)
    if n == 0:
        return pa.array([], pa.uint64())
    s = text.cast(pa.string())
    has_prefix = pc.starts_with(s, "0x")
    if pc.any(has_prefix).as_py():
        s = pc.if_else(has_prefix, pc.utf8_slice_codeunits(s, 2), s)
    length = pc.utf8_length(s).to_numpy(zero_copy_only=False)
    nbytes = pc.binary_length(s).to_numpy(zero_copy_only=False)
    valid = ~np.asarray(pc.is_null(s).to_numpy(zero_copy_only=False))
    length = np.where(valid, length, 1)
    padded = pc.utf8_lpad(pc.fill_null(s, "0"), 16, "0").combine_chunks() if isinstance(
        s, pa.ChunkedArray) else pc.utf8_lpad(pc.fill_null(s, "0"), 16, "0")
    # non-ASCII text is not hex, and padded to 16 characters it is more than 16 bytes
    too_long = (length > 16) | (np.where(valid, nbytes, 1) != length)
    if too_long.any():
        padded = pc.if_else(pa.array(too_long), "0" * 16, padded)
    offsets = np.frombuffer(padded.buffers()[1], dtype=np.int32)[padded.offset : padded.offset + n + 1]
    raw = np.frombuffer(padded.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    nib = _NIBBLE[raw.reshape(n, 16)]
    bad = (nib == 255).any(axis=1) | too_long | (valid & (length == 0))
    nib = np.where(nib == 255, 0, nib).astype(np.uint8)
    packed = (nib[:, 0::2] << 4) | nib[:, 1::2]
    values = np.ascontiguousarray(packed).view(">u8").reshape(n).astype(np.uint64)
    bad &= valid
    if strict and bad.any():
        raise NumberTextError(bad)
    return pa.array(values, pa.uint64(), mask=~valid | bad)


_INT64 = pa.int64()


def dec_to_int(
    text: pa.Array, typ: pa.DataType = _INT64, *, strict: bool = False, digits: bool = False
) -> pa.Array:
    """Parse decimal strings (optionally signed) into ``typ``; non-numbers become null.

    ``digits``: the text was matched as ``-?[0-9]+`` (or is empty, or null) by the caller's
    pattern, so a plain cast is tried first (no validation regex); an empty value makes the
    cast fail and the values take the validating path.

    Examples:
        >>> dec_to_int(pa.array(["12", "-3", None, "x"])).to_pylist()
        [12, -3, None, None]
        >>> dec_to_int(pa.array(["12", "-3", None]), digits=True).to_pylist()
        [12, -3, None]
    """
    s = text.cast(pa.string())
    wide = pa.uint64() if pa.types.is_unsigned_integer(typ) else pa.int64()
    if digits:
        try:
            return pc.cast(s, wide).cast(typ)
        except pa.ArrowInvalid:
            pass
    ok = pc.match_substring_regex(s, r"^-?[0-9]+$")
    bad = pc.and_(pc.invert(pc.fill_null(ok, True)), pc.is_valid(s))
    if strict and pc.any(bad).as_py():
        raise NumberTextError(np.asarray(bad.to_numpy(zero_copy_only=False)))
    cleaned = pc.if_else(pc.fill_null(ok, False), s, pa.scalar(None, pa.string()))
    if wide == pa.uint64():
        cleaned = pc.if_else(pc.starts_with(cleaned, "-"), pa.scalar(None, pa.string()), cleaned)
    try:
        return pc.cast(cleaned, wide).cast(typ)
    except pa.ArrowInvalid:  # a value out of typ's range: rare, so converted one by one
        return _in_range(cleaned, typ, strict)


def _in_range(cleaned: pa.Array, typ: pa.DataType, strict: bool) -> pa.Array:
    """Validated decimal strings to ``typ``, values out of its range null (or, when
    ``strict``, a :class:`NumberTextError` marking them)."""
    info = np.iinfo(typ.to_pandas_dtype())
    values = [None if v is None else int(v) for v in cleaned.to_pylist()]
    out = [v if v is None or info.min <= v <= info.max else None for v in values]
    if strict:
        bad = np.array([v is not None and o is None for v, o in zip(values, out, strict=True)])
        if bad.any():
            raise NumberTextError(bad)
    return pa.array(out, typ)


def auto_radix_to_uint64(text: pa.Array, hex_default: bool) -> pa.Array:
    """Parse ``0x``-prefixed values as hex, the rest as hex or decimal per ``hex_default``.

    This is how ``trace-cmd report -R`` prints a field: its radix follows the event's print
    format (``%llx`` bare hex, ``0x%lx`` prefixed, ``%u`` decimal), unmarked per field.
    """
    if hex_default:
        return hex_to_uint64(text)
    s = text.cast(pa.string())
    prefixed = pc.fill_null(pc.starts_with(s, "0x"), False)
    if not pc.any(prefixed).as_py():
        return dec_to_int(s, pa.uint64())
    return pc.if_else(prefixed, hex_to_uint64(s), dec_to_int(s, pa.uint64()))
