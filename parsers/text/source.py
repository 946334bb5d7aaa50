"""Open a text trace (plain, gzip, xz or zstd, detected from magic bytes) and cut it into
chunks of whole lines, each turned into an Arrow string array without a Python loop per line.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa

from parsers.errors import MissingExtraError, TraceFormatError, TraceParseError

__all__ = ["LineChunk", "open_raw", "open_text", "iter_line_chunks", "sniff", "CHUNK_BYTES"]

#: Bytes read per chunk; a batch of the output holds the events of one chunk.
CHUNK_BYTES = 8 << 20

_GZIP, _XZ, _ZSTD, _BZ2 = b"\x1f\x8b", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"BZh"


#: A line longer than this is not trace text (bounds memory on binary input).
MAX_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class LineChunk:
    """Whole lines of the input: ``lines[i]`` is line number ``first_line + i`` (1-based).

    ``not_utf8`` lists (0-based, within the chunk) lines that were not valid UTF-8 and were
    decoded with replacement characters.
    """

    lines: pa.StringArray
    first_line: int
    nbytes: int
    not_utf8: tuple[int, ...] = ()


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
    """The first ``size`` bytes of ``path``, decompressed when the file is compressed."""
    with open_text(path) as f:
        try:
            return f.read(size)
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise TraceFormatError(str(path), f"cannot decompress: {exc}") from None


def _read(path: str, f: BinaryIO, size: int) -> bytes:
    try:
        return f.read(size)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise TraceParseError(path, f"cannot decompress: {exc}") from None
    except Exception as exc:  # zstandard raises its own ZstdError
        if type(exc).__name__ == "ZstdError":
            raise TraceParseError(path, f"cannot decompress: {exc}") from None
        raise


def _to_lines(data: bytes) -> tuple[pa.StringArray, tuple[int, ...]]:
    """Split ``data`` (ending in ``\\n``) at newlines into a string array sharing its buffer."""
    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    offsets = np.empty(len(ends) + 1, dtype=np.int32)
    offsets[0] = 0
    offsets[1:] = ends + 1
    buf = pa.py_buffer(data)
    binary = pa.Array.from_buffers(pa.binary(), len(ends), [None, pa.py_buffer(offsets), buf])
    try:
        return binary.cast(pa.string()), ()  # validates UTF-8
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
    return pa.array(texts, pa.string()), tuple(bad)


def iter_line_chunks(
    path: str | Path, *, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[LineChunk]:
    """Yield the file's lines in chunks of about ``chunk_bytes``, cut at line boundaries.

    Each line keeps its ``\\n``; a final line without one gets it added.

    Raises:
        TraceParseError: a line is longer than :data:`MAX_LINE_BYTES` (not trace text).
    """
    name = str(path)
    with open_text(path) as f:
        carry = b""
        line_no = 1
        while True:
            block = _read(name, f, chunk_bytes)
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
                continue
            carry = data[cut:]
            lines, bad = _to_lines(data[:cut])
            yield LineChunk(lines, line_no, cut, bad)
            line_no += len(lines)
        if carry:
            lines, bad = _to_lines(carry + b"\n")
            yield LineChunk(lines, line_no, len(carry), bad)
