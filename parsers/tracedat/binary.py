"""Bounded reads over a trace.dat byte buffer, and the decompressors its sections may need.

Every read checks the bytes it needs against the end of the buffer and raises
:class:`~parsers.errors.TraceTruncatedError` naming the file offset and what was expected, so a
truncated file or a lying size field never reads past the end, hangs, or allocates more than
the file can back.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

from parsers.errors import MissingExtraError, TraceParseError, TraceTruncatedError

__all__ = ["Cursor", "decompress", "MAX_RATIO"]

#: Largest uncompressed/compressed ratio we accept for one block (trace pages compress ~10x;
#: a claim far beyond this is a corrupt size field, not data).
MAX_RATIO = 1024


class Cursor:
    """A read position in ``data`` (the whole file or one decompressed section).

    ``base`` is the file offset of ``data[0]`` (``None`` for decompressed section bodies, whose
    errors then name the section's file offset ``origin`` instead).
    """

    def __init__(
        self, data: Any, path: str, *, big_endian: bool = False, pos: int = 0,
        base: int | None = 0, origin: int = 0, what: str = "file",
    ) -> None:
        self.data = data
        self.path = path
        self.pos = pos
        self.end = len(data)
        self.base = base
        self.origin = origin
        self.what = what
        self.set_endian(big_endian)

    def set_endian(self, big_endian: bool) -> None:
        """Read numbers big- (True) or little-endian from now on."""
        e = ">" if big_endian else "<"
        self.big_endian = big_endian
        self._u16, self._u32, self._u64 = (struct.Struct(e + c) for c in "HIQ")

    def where(self, pos: int | None = None) -> int:
        """File offset of ``pos`` (default: the current position)."""
        p = self.pos if pos is None else pos
        return p + self.base if self.base is not None else self.origin

    def need(self, n: int, expected: str) -> None:
        """Raise unless ``n`` more bytes are available for ``expected``."""
        if n < 0 or self.pos + n > self.end:
            inside = "" if self.base is not None else f" (in the {self.what} at byte {self.origin})"
            raise TraceTruncatedError(
                self.path,
                f"expected {expected} ({n} bytes) but only {max(self.end - self.pos, 0)} "
                f"remain{inside}",
                offset=self.where(),
            )

    def take(self, n: int, expected: str) -> bytes:
        """The next ``n`` bytes."""
        self.need(n, expected)
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def u16(self, expected: str) -> int:
        """The next unsigned 16-bit number."""
        self.need(2, expected)
        (v,) = self._u16.unpack_from(self.data, self.pos)
        self.pos += 2
        return int(v)

    def u32(self, expected: str) -> int:
        """The next unsigned 32-bit number."""
        self.need(4, expected)
        (v,) = self._u32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(v)

    def u64(self, expected: str) -> int:
        """The next unsigned 64-bit number."""
        self.need(8, expected)
        (v,) = self._u64.unpack_from(self.data, self.pos)
        self.pos += 8
        return int(v)

    def cstr(self, expected: str, limit: int = 1 << 20) -> str:
        """The next NUL-terminated string (at most ``limit`` bytes)."""
        stop = min(self.end, self.pos + limit)
        chunk = bytes(self.data[self.pos:stop])
        nul = chunk.find(b"\0")
        if nul < 0:
            raise TraceTruncatedError(
                self.path, f"expected {expected}: a NUL-terminated string", offset=self.where())
        self.pos += nul + 1
        return chunk[:nul].decode("utf-8", "replace")

    def sized(self, size_bytes: int, expected: str) -> bytes:
        """A block preceded by its size as a u32 (``size_bytes`` 4) or u64 (8)."""
        n = self.u32(expected + " size") if size_bytes == 4 else self.u64(expected + " size")
        return self.take(n, expected)

    def seek(self, pos: int, expected: str) -> None:
        """Move to ``pos`` (an index into ``data``), which must lie inside it."""
        if not 0 <= pos <= self.end:
            raise TraceParseError(
                self.path, f"{expected} points to byte {pos}, outside the {self.end}-byte "
                f"{self.what}", offset=self.where())
        self.pos = pos


def decompress(algo: str, blob: bytes, usize: int, *, path: str, offset: int) -> bytes:
    """Decompress one block of ``algo`` (``zlib`` or ``zstd``) that must yield ``usize`` bytes.

    The output is produced incrementally and capped at ``usize``, itself capped at
    :data:`MAX_RATIO` times the input, so a lying size never allocates beyond that.

    Raises:
        MissingExtraError: zstd data and the ``zstandard`` module is not installed.
        TraceParseError: the block is corrupt or does not have the announced size.
    """
    if usize > MAX_RATIO * max(len(blob), 64):
        raise TraceParseError(
            path, f"compressed block claims {usize} bytes from {len(blob)}: not credible",
            offset=offset)
    try:
        if algo == "zlib":
            out = zlib.decompressobj().decompress(blob, usize)
        elif algo == "zstd":
            out = _read_full(_zstd_reader(blob), usize)
        else:
            raise TraceParseError(path, f"unknown compression {algo!r}", offset=offset)
    except TraceParseError:
        raise
    except MissingExtraError:
        raise
    except Exception as exc:  # the codecs raise their own error types on corrupt input
        raise TraceParseError(path, f"corrupt {algo} block: {exc}", offset=offset) from None
    if len(out) != usize:
        raise TraceParseError(
            path, f"{algo} block decompressed to {len(out)} bytes, expected {usize}",
            offset=offset)
    return bytes(out)


def _read_full(reader: Any, n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        piece = reader.read(n - got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def _zstd_reader(blob: bytes) -> Any:
    try:
        import zstandard
    except ImportError:
        raise MissingExtraError(
            "zstandard", "zstd", "reading a zstd-compressed trace.dat") from None
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob))
