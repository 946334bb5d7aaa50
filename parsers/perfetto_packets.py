"""Split a Perfetto trace file into its ``TracePacket`` s, reading in bounded blocks.

A trace is ``Trace { repeated TracePacket packet = 1; }``: a flat run of length-prefixed
packets. Each announced length is checked against the bytes the file really has before
anything is allocated, so a lying length is a :class:`~parsers.errors.TraceTruncatedError`,
never a huge allocation or a hang. ``compressed_packets`` payloads (zlib, as written by
traced with ``compression_type: DEFLATE``) are inflated with a size cap and split the same
way by :func:`inner_packets`.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from parsers.perfetto_protos import field_number
from parsers.perfetto_wire import LEN, WireError, read_varint

__all__ = ["Packet", "iter_packets", "inner_packets", "MAX_PACKET_BYTES", "MAX_INFLATED_BYTES",
           "Source"]

#: Largest single packet we accept (traced's own limit on a packet is far smaller).
MAX_PACKET_BYTES: Final = 256 << 20
#: Largest inflated ``compressed_packets`` payload we accept.
MAX_INFLATED_BYTES: Final = 256 << 20
_BLOCK: Final = 4 << 20

Source = str | Path | bytes | bytearray | memoryview


@dataclass(frozen=True)
class Packet:
    """One packet's bytes and where it came from.

    ``offset`` is the file offset of the packet's payload; packets inflated from
    ``compressed_packets`` have ``inner`` set to their offset inside the inflated data
    (and ``offset`` is then the file offset of the compressed payload).
    """

    data: bytes
    offset: int
    inner: int | None = None


def _open(source: Source) -> tuple[BinaryIO, int]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return io.BytesIO(data), len(data)
    fh = open(source, "rb")  # noqa: SIM115 - closed by iter_packets
    return fh, os.fstat(fh.fileno()).st_size


def iter_packets(source: Source) -> Iterator[Packet]:
    """Yield every top-level packet of ``source`` (a path or the trace bytes).

    Raises:
        WireError: a tag or length is broken (offset is the file offset).
        TruncatedPacket: a packet announces more bytes than the file holds.
    """
    fh, size = _open(source)
    with fh:
        buf, pos, base = b"", 0, 0  # base: file offset of buf[0]
        packet_tag = (field_number("Trace", "packet") << 3) | LEN
        while True:
            if len(buf) - pos < 20 and base + len(buf) < size:
                buf, base, pos = buf[pos:] + fh.read(_BLOCK), base + pos, 0
            if pos >= len(buf):
                return
            tag, p = _header_varint(buf, pos, base, size)
            if tag != packet_tag:
                raise WireError(base + pos, "a TracePacket (field 1, length-delimited) at the "
                                            f"top level of the trace, got tag {tag:#x}")
            length, p = _header_varint(buf, p, base, size)
            remaining = size - (base + p)
            if length > remaining or length > MAX_PACKET_BYTES:
                raise TruncatedPacket(base + pos, length, remaining)
            if len(buf) < p + length:
                need = p + length - len(buf)
                buf, base, p = buf[pos:] + fh.read(max(_BLOCK, need)), base + pos, p - pos
                if len(buf) < p + length:
                    raise TruncatedPacket(base, length, len(buf) - p)
            yield Packet(buf[p:p + length], base + p)
            pos = p + length


def _header_varint(buf: bytes, pos: int, base: int, size: int) -> tuple[int, int]:
    try:
        return read_varint(buf, pos, len(buf))
    except WireError as exc:
        if base + len(buf) >= size:
            raise TruncatedPacket(base + pos, None, size - base - pos) from exc
        raise WireError(base + exc.offset, exc.expected) from exc


class TruncatedPacket(Exception):
    """A packet header announces more bytes than remain (internal; becomes a
    :class:`~parsers.errors.TraceTruncatedError`)."""

    def __init__(self, offset: int, length: int | None, remaining: int) -> None:
        self.offset = offset
        self.length = length
        self.remaining = remaining
        what = "a complete packet header" if length is None else f"a TracePacket of {length} bytes"
        super().__init__(f"byte {offset}: expected {what}, but only {remaining} bytes remain")


def inner_packets(payload: bytes, offset: int) -> Iterator[Packet]:
    """Inflate a ``compressed_packets`` payload and yield the packets inside it.

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
    pos = 0
    while pos < len(data):
        at = pos
        tag, pos = read_varint(data, pos, len(data))
        if tag != packet_tag:
            raise WireError(offset, f"a TracePacket tag at byte {at} of the inflated "
                                    f"compressed_packets, got {tag:#x}")
        length, pos = read_varint(data, pos, len(data))
        if length > len(data) - pos:
            raise WireError(offset, f"a TracePacket of {length} bytes at byte {at} of the "
                                    f"inflated compressed_packets ({len(data) - pos} remain)")
        yield Packet(data[pos:pos + length], offset, pos)
        pos += length
