"""Sizes with binary suffixes (``64TiB``, ``2GiB``, ``4K``) and their display."""

from __future__ import annotations

import re
from typing import Final

from replay.errors import ReplayConfigError

__all__ = ["format_duration", "parse_size", "format_size", "format_ns"]

_UNITS: Final = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str, *, what: str = "size") -> int:
    """Bytes of ``text``: an integer with an optional binary suffix.

    ``K``, ``KB`` and ``KiB`` all mean 2^10 (page sizes are written ``4K``); likewise M, G,
    T, P. Raises :class:`ReplayConfigError` naming ``what`` on anything else.

    >>> parse_size("64TiB") == 64 << 40
    True
    >>> parse_size("4K")
    4096
    """
    m = _SIZE.match(text)
    if m is None:
        raise ReplayConfigError(f"{what} {text!r}: expected a number with K/M/G/T/P[iB] suffix")
    value = int(m.group(1)) << _UNITS[m.group(2).upper()]
    if value <= 0:
        raise ReplayConfigError(f"{what} {text!r}: must be > 0")
    return value


def format_size(n: int) -> str:
    """Largest exact binary unit: ``format_size(1 << 40) == "1TiB"``."""
    for suffix, shift in (("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return f"{n}B"


def format_duration(value: int, unit: str = "ns") -> str:
    """A duration in ``unit``: :func:`format_ns` for ns, else the integer and the unit
    (a tick clock's durations are ticks, never shown as ms).

    Examples:
        >>> format_duration(2_500_000), format_duration(2_500_000, "ticks")
        ('2.50 ms', '2,500,000 ticks')
    """
    return format_ns(value) if unit == "ns" else f"{value:,} {unit}"


def format_ns(ns: int) -> str:
    """A duration for humans: ``967.24 s``, ``13.73 ms``, ``2.00 us``, ``100 ns``."""
    for unit, scale in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if ns >= scale:
            return f"{ns / scale:.2f} {unit}"
    return f"{ns} ns"
