"""Open a text trace (plain, gzip, xz or zstd, detected from magic bytes) and cut it into
chunks of whole lines, each turned into an Arrow string array without a Python loop per line.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from parsers.errors import MissingExtraError, TraceFormatError, TraceParseError

__all__ = ["LineChunk", "open_raw", "open_text", "iter_line_chunks", "sniff", "CHUNK_BYTES",
           "is_compressed"]

#: Bytes read per chunk; a batch of the output holds the events of one chunk.
CHUNK_BYTES = 8 << 20

_GZIP, _XZ, _ZSTD, _BZ2 = b"\x1f\x8b", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"BZh"


I32 = npt.NDArray[np.int32]

#: A line longer than this is not trace text (bounds memory on binary input).
MAX_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class LineChunk:
    """Whole lines of the input: ``lines[i]`` is line number ``first_line + i`` (1-based).

    ``not_utf8`` lists (0-based, within the chunk) lines that were not valid UTF-8 and were
    decoded with replacement characters; ``nul`` those holding a NUL byte. ``first_byte`` is
    the (decompressed) byte offset of the chunk's first line; ``line_starts`` the offsets of
    the lines in ``nul`` and ``not_utf8`` within the chunk.
    """

    lines: pa.StringArray
    first_line: int
    nbytes: int
    not_utf8: tuple[int, ...] = ()
    nul: tuple[int, ...] = ()
    first_byte: int = 0
    line_starts: dict[int, int] | None = None


def _open_compressed(path: str, raw: BinaryIO, head: bytes) -> BinaryIO:
    if head.startswith(_GZIP):
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if head.startswith(_XZ):
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if head.startswith(_BZ2):
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if head.startswith(_ZSTD):
        try:
            import zstandard
        except ImportError as exc:
            raise MissingExtraError("zstandard", "zstd", f"{path}: zstd-compressed input") from exc
        return zstandard.ZstdDecompressor().stream_reader(raw)
    return raw


def is_compressed(path: str | Path) -> bool:
    """Whether ``path`` starts with the magic bytes of a compression format we read."""
    with open_raw(path) as f:
        head = f.read(8)
    return head.startswith((_GZIP, _XZ, _ZSTD, _BZ2))


def open_raw(path: str | Path) -> BinaryIO:
    """Open ``path`` as bytes, as stored (no decompression).

    Raises:
        TraceFormatError: the file is missing, unreadable or a directory.
    """
    name = str(path)
    try:
        return open(name, "rb")  # noqa: SIM115 - returned to the caller
    except IsADirectoryError:
        raise TraceFormatError(name, "is a directory, not a trace file") from None
    except FileNotFoundError:
        raise TraceFormatError(name, "no such file") from None
    except OSError as exc:
        raise TraceFormatError(name, f"cannot read: {exc.strerror or exc}") from None


def open_text(path: str | Path) -> BinaryIO:
    """Open ``path`` for reading, decompressing transparently by content (not by name).

    Raises:
        TraceFormatError: the file is missing, unreadable or a directory.
    """
    name = str(path)
    raw = open_raw(name)
    head = raw.read(8)
    raw.seek(0)
    return _open_compressed(name, raw, head)


def sniff(path: str | Path, size: int = 64 << 10) -> bytes:
    """The first ``size`` bytes of ``path``, decompressed when the file is compressed (those
    that decompress, when the compressed data breaks off before ``size``)."""
    with open_text(path) as f:
        cut: list[str] = []
        head = _read_salvaging(str(path), f, size, cut)
        if cut and not head:  # nothing decompresses at all; a cut later is the reader's
            raise TraceFormatError(str(path), f"cannot decompress: {cut[0]}")
        return head


def _read(path: str, f: BinaryIO, size: int) -> bytes:
    try:
        return f.read(size)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:  # zlib.error: corrupt gzip data
        raise TraceParseError(path, f"cannot decompress: {exc}") from None
    except Exception as exc:  # zstandard raises its own ZstdError
        if type(exc).__name__ == "ZstdError":
            raise TraceParseError(path, f"cannot decompress: {exc}") from None
        raise


def _read_salvaging(path: str, f: BinaryIO, size: int, cut: list[str]) -> bytes:
    """Like :func:`_read`, but a compressed stream that breaks off gives the bytes that
    decompressed before the break (read in small steps), and the reason goes into ``cut``."""
    parts: list[bytes] = []
    got = 0
    step = getattr(f, "read1", f.read)
    while got < size:
        try:
            piece = step(min(64 << 10, size - got))
        except Exception as exc:  # OSError, EOFError, LZMAError, ZstdError
            cut.append(str(exc) or type(exc).__name__)
            break
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def _to_lines(data: bytes) -> tuple[pa.StringArray, tuple[int, ...], tuple[int, ...], I32]:
    """Split ``data`` (ending in ``\n``) at newlines into a string array sharing its buffer;
    also the lines that are not UTF-8, those holding a NUL byte, and the line offsets."""
    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    offsets = np.empty(len(ends) + 1, dtype=np.int32)
    offsets[0] = 0
    offsets[1:] = ends + 1
    nul = tuple(np.unique(np.searchsorted(ends, np.flatnonzero(arr == 0))).tolist())
    buf = pa.py_buffer(data)
    binary = pa.Array.from_buffers(pa.binary(), len(ends), [None, pa.py_buffer(offsets), buf])
    try:
        return binary.cast(pa.string()), (), nul, offsets  # validates UTF-8
    except pa.ArrowInvalid:
        pass
    # Rare: invalid UTF-8 (binary garbage or a corrupt line): decode those lines with
    # replacement characters and report them, so nothing is dropped silently.
    texts: list[str] = []
    bad: list[int] = []
    for i, line in enumerate(data.split(b"\n")[:-1]):
        try:
            texts.append(line.decode("utf-8") + "\n")
        except UnicodeDecodeError:
            texts.append(line.decode("utf-8", "replace") + "\n")
            bad.append(i)
    return pa.array(texts, pa.string()), tuple(bad), nul, offsets


def _chunk(data: bytes, line_no: int, nbytes: int, first_byte: int) -> LineChunk:
    lines, bad, nul, offsets = _to_lines(data)
    starts = {i: int(offsets[i]) for i in (*bad, *nul)} if bad or nul else None
    return LineChunk(lines, line_no, nbytes, bad, nul, first_byte, starts)


def iter_line_chunks(
    path: str | Path, *, chunk_bytes: int = CHUNK_BYTES, salvage: bool = False,
    notes: list[str] | None = None, span: tuple[int, int] | None = None,
) -> Iterator[LineChunk]:
    """Yield the file's lines in chunks of about ``chunk_bytes``, cut at line boundaries.

    ``span`` (uncompressed files only): read bytes ``[start, stop)`` only, where ``start``
    is where a chunk of the whole file begins and ``stop`` where one ends (or the file's
    end); the chunks are then those of the whole file, but line numbers count from 1 at
    ``start`` (byte offsets stay the file's).

    Each line keeps its ``\\n``; a final line without one gets it added. With ``salvage``, a
    compressed stream that breaks off (a truncated ``.gz``) ends the file after its last
    complete line, and a note naming the offsets goes into ``notes``.

    Raises:
        TraceParseError: a line is longer than :data:`MAX_LINE_BYTES` (not trace text), or
            (without ``salvage``) the compressed data cannot be decompressed.
    """
    name = str(path)
    cut_off: list[str] = []
    start, stop = span if span is not None else (0, -1)
    with open_text(path) if span is None else open_raw(path) as f:
        carry = b""
        line_no, offset = 1, start
        if start:  # the whole file's reads end at multiples of chunk_bytes: keep to them
            f.seek(start)
            carry = f.read(min(-start % chunk_bytes, stop - start))
        while True:
            size = chunk_bytes if stop < 0 else min(chunk_bytes, stop - offset - len(carry))
            block = (_read_salvaging(name, f, size, cut_off) if salvage
                     else _read(name, f, size))
            if not block:
                break
            data = carry + block
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if len(data) > MAX_LINE_BYTES:
                    raise TraceParseError(
                        name, f"line longer than {MAX_LINE_BYTES} bytes: not trace text",
                        lineno=line_no)
                carry = data
                if cut_off:
                    break
                continue
            carry = data[cut:]
            chunk = _chunk(data[:cut], line_no, cut, offset)
            yield chunk
            line_no += len(chunk.lines)
            offset += cut
            if cut_off:
                break
        if cut_off:
            if notes is not None:
                notes.append(
                    f"salvaged: the compressed data breaks off ({cut_off[0]}) at byte "
                    f"{offset + len(carry)} of the decompressed text: kept the {line_no - 1} "
                    f"complete lines before byte {offset}, dropped the {len(carry)}-byte "
                    "partial line after them")
            return
        if carry:
            chunk = _chunk(carry + b"\n", line_no, len(carry), offset)
            yield chunk
