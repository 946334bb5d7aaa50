"""Split a Perfetto trace file into its ``TracePacket`` s, reading in bounded blocks.

A trace is ``Trace { repeated TracePacket packet = 1; }``: a flat run of length-prefixed
packets. Each announced length is checked against the bytes the file really has before
anything is allocated, so a lying length is a :class:`~parsers.errors.TraceTruncatedError`,
never a huge allocation or a hang. ``compressed_packets`` payloads (zlib, as written by
traced with ``compression_type: DEFLATE``) are inflated with a size cap and split the same
way by :func:`inner_packets`.
"""

from __future__ import annotations

import contextlib
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from parsers.perfetto.protos import field_number
from parsers.perfetto.wire import LEN, WireError, read_varint

__all__ = ["Block", "iter_blocks", "inner_packets", "TruncatedPacket", "MAX_PACKET_BYTES",
           "MAX_INFLATED_BYTES", "Source"]

#: Largest single packet we accept (traced's own limit on a packet is far smaller).
MAX_PACKET_BYTES: Final = 256 << 20
#: Largest inflated ``compressed_packets`` payload we accept.
MAX_INFLATED_BYTES: Final = 256 << 20
_BLOCK: Final = 4 << 20

Source = str | Path | bytes | bytearray | memoryview


@dataclass(frozen=True)
class Block:
    """Complete packets in one buffer: ``spans`` are the packets' payload ``(start, end)``.

    ``base`` is the file offset of ``buf[0]``; for packets inflated from
    ``compressed_packets`` (``inflated``) it is the file offset of the compressed payload.
    """

    buf: bytes
    base: int
    spans: list[tuple[int, int]]
    inflated: bool = False


def _open(source: Source) -> tuple[BinaryIO, int]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return io.BytesIO(data), len(data)
    fh = open(source, "rb")  # noqa: SIM115 - closed by iter_blocks
    return fh, os.fstat(fh.fileno()).st_size


def iter_blocks(source: Source, block_bytes: int = _BLOCK) -> Iterator[Block]:
    """Yield the top-level packets of ``source`` (a path or the trace bytes) in blocks.

    Raises:
        WireError: a tag or length is broken (offset is the file offset).
        TruncatedPacket: a packet announces more bytes than the file holds.
    """
    fh, size = _open(source)
    packet_tag = (field_number("Trace", "packet") << 3) | LEN
    with fh:
        buf, base = b"", 0  # base: file offset of buf[0]
        while base + len(buf) < size or buf:
            if base + len(buf) < size and len(buf) < block_bytes:
                buf += fh.read(block_bytes)
            try:
                spans, pos = _split(buf, base, size, packet_tag)
            except _Broken as broken:
                if broken.spans:
                    yield Block(buf, base, broken.spans)
                raise broken.error from None
            if not spans:
                need = block_bytes
                with contextlib.suppress(WireError):
                    length, p = read_varint(buf, 1, len(buf))
                    need = max(need, p + length - len(buf))
                more = fh.read(need)
                if not more:
                    raise TruncatedPacket(base, None, len(buf))
                buf += more
                continue
            yield Block(buf, base, spans)
            buf, base = buf[pos:], base + pos


def _split(buf: bytes, base: int, size: int, packet_tag: int) -> tuple[list[tuple[int, int]], int]:
    """The complete packets at the start of ``buf``; returns them and where the rest starts.

    Raises:
        _Broken: the packets before the damage, and the error to raise after them.
    """
    spans: list[tuple[int, int]] = []
    try:
        return _split_into(buf, base, size, packet_tag, spans)
    except (WireError, TruncatedPacket) as exc:
        raise _Broken(spans, exc) from exc


class _Broken(Exception):
    def __init__(self, spans: list[tuple[int, int]], error: WireError | TruncatedPacket) -> None:
        self.spans, self.error = spans, error
        super().__init__(str(error))


def _split_into(buf: bytes, base: int, size: int, packet_tag: int,
                spans: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], int]:
    pos, n = 0, len(buf)
    while pos < n:
        if buf[pos] != packet_tag:
            raise WireError(base + pos, "a TracePacket (field 1, length-delimited) at the top "
                                        f"level of the trace, got tag {buf[pos]:#x}")
        if pos + 1 < n and buf[pos + 1] < 0x80:
            length, p = buf[pos + 1], pos + 2
        else:
            try:
                length, p = read_varint(buf, pos + 1, n)
            except WireError:
                if base + n >= size:
                    raise TruncatedPacket(base + pos, None, size - base - pos) from None
                break
        if p + length > n:
            if base + p + length > size or length > MAX_PACKET_BYTES:
                raise TruncatedPacket(base + pos, length, size - (base + p))
            break
        spans.append((p, p + length))
        pos = p + length
    return spans, pos


class TruncatedPacket(Exception):
    """A packet header announces more bytes than remain (internal; becomes a
    :class:`~parsers.errors.TraceTruncatedError`)."""

    def __init__(self, offset: int, length: int | None, remaining: int) -> None:
        self.offset = offset
        self.length = length
        self.remaining = remaining
        what = "a complete packet header" if length is None else f"a TracePacket of {length} bytes"
        super().__init__(f"byte {offset}: expected {what}, but only {remaining} bytes remain")


def inner_packets(payload: bytes, offset: int) -> Block:
    """Inflate a ``compressed_packets`` payload into a block of the packets inside it.

    Raises:
        WireError: the payload is not zlib data, inflates past :data:`MAX_INFLATED_BYTES`,
            or its packets are broken (``offset`` is the compressed payload's file offset).
    """
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(payload, MAX_INFLATED_BYTES + 1)
    except zlib.error as exc:
        raise WireError(offset, f"zlib-compressed packets ({exc})") from exc
    if len(data) > MAX_INFLATED_BYTES:
        raise WireError(offset, f"compressed packets that inflate to at most "
                                f"{MAX_INFLATED_BYTES} bytes")
    if not inflater.eof:
        raise WireError(offset, "a complete zlib stream in compressed_packets (it is cut short)")
    packet_tag = (field_number("Trace", "packet") << 3) | LEN
    try:
        spans, end = _split(data, 0, len(data), packet_tag)
    except _Broken as exc:
        at = exc.error.offset
        raise WireError(offset, f"whole TracePackets in the inflated compressed_packets "
                                f"(broken at its byte {at})") from exc
    if end != len(data):
        raise WireError(offset, f"whole TracePackets in the inflated compressed_packets "
                                f"(cut at its byte {end})")
    return Block(data, offset, spans, inflated=True)
