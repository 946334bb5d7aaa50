"""Unit tests of the trace.dat building blocks: formats, -R rendering, flags, page walk."""

from __future__ import annotations

import numpy as np
import pytest
from tracedat_support import SAMPLE

from parsers.tracedat.fields import irq_flags, render_args
from parsers.tracedat.formats import PageLayout, parse_format
from parsers.tracedat.header import is_tracedat, read_info
from parsers.tracedat.pages import walk_pages

PIO = """name: kvm_pio
ID: 110
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned int rw;\toffset:8;\tsize:4;\tsigned:0;
\tfield:unsigned int port;\toffset:12;\tsize:4;\tsigned:0;
\tfield:__data_loc char[] name;\toffset:16;\tsize:4;\tsigned:0;
\tfield:short s;\toffset:20;\tsize:2;\tsigned:1;

print fmt: "pio_%s at 0x%x %s", REC->rw ? "write" : "read", REC->port, __get_str(name)
"""


def test_is_tracedat() -> None:
    assert is_tracedat(SAMPLE.read_bytes()[:16])
    assert not is_tracedat(b"cpus=2\n")


@pytest.mark.parametrize(("flags", "pc", "text"), [
    (0x00, 0x00, "....."), (0x01, 0x01, "d..1."), (0x24, 0, ".N..."), (0x04, 0, ".n..."),
    (0x81, 0, "D...."), (0x48, 0x21, "..Z12"), (0x18, 0, "..H.."), (0x10, 0x0F, "..sf."),
])
def test_irq_flags_like_the_kernel(flags: int, pc: int, text: str) -> None:
    assert irq_flags(flags, pc) == text


def test_format_fields_and_raw_rendering() -> None:
    ev = parse_format(PIO, "kvm")
    assert ev is not None and ev.id == 110
    name = ev.find("name")
    assert name is not None and name.dynamic and name.string
    assert ev.raw_specs["port"].prefix == "0x"
    rec = bytearray(32)
    rec[8:12] = (1).to_bytes(4, "little")
    rec[12:16] = (0x80).to_bytes(4, "little")
    rec[16:20] = (24 | 4 << 16).to_bytes(4, "little")
    rec[20:22] = (-3 & 0xFFFF).to_bytes(2, "little")
    rec[24:28] = b"abc\0"
    buf = np.frombuffer(bytes(rec), np.uint8)
    texts, index = render_args(ev, buf, np.array([0, 0]), np.array([32, 32]), False)
    assert [texts[i] for i in index] == ["rw=1 port=0x80 name=abc s=-3"] * 2


def _page(records: list[bytes], base_ts: int, big: bool, missed: int = 0) -> bytes:
    order = "big" if big else "little"
    body = b"".join(records)
    commit = len(body) | missed
    page = base_ts.to_bytes(8, order) + commit.to_bytes(8, order) + body
    return page + bytes(4096 - len(page))


def _hdr(type_len: int, delta: int, big: bool) -> bytes:
    word = (type_len << 27 | delta) if big else (delta << 5 | type_len)
    return word.to_bytes(4, "big" if big else "little")


@pytest.mark.parametrize("big", [False, True])
def test_walk_extend_absolute_padding_and_missed(big: bool) -> None:
    order = "big" if big else "little"
    recs = [
        _hdr(2, 5, big) + bytes(8),                                  # data, +5
        _hdr(30, 3, big) + (2).to_bytes(4, order),                   # extend: + (2<<27) + 3
        _hdr(2, 1, big) + bytes(8),                                  # data, +1
        _hdr(29, 7, big) + (8).to_bytes(4, order) + bytes(4),        # padding, +7
        _hdr(31, 9, big) + (1).to_bytes(4, order),                   # absolute: 1<<27 | 9
        _hdr(0, 2, big) + (12).to_bytes(4, order) + bytes(8),        # long form, 8 bytes
    ]
    page = _page(recs, 1000, big, missed=1 << 31 | 1 << 30)
    buf = np.frombuffer(page, np.uint8)
    out = walk_pages(buf, 4096, PageLayout(), big)
    assert out.damage is None
    base = 1000
    assert out.ts.tolist() == [base + 5, base + 5 + (2 << 27) + 3 + 1, (1 << 27 | 9) + 2]
    assert out.length.tolist() == [8, 8, 8]
    assert out.missed.tolist() == [True]


def test_walk_reports_record_past_commit() -> None:
    page = _page([_hdr(28, 1, False)], 0, False)
    out = walk_pages(np.frombuffer(page, np.uint8), 4096, PageLayout(), False)
    assert out.damage is not None and out.damage.pos == 16 and len(out.ts) == 0


def test_header_of_sample() -> None:
    info = read_info(SAMPLE.read_bytes(), str(SAMPLE))
    assert (info.version, info.compression, info.long_size, info.cpus) == (7, "zstd", 8, 2)
    assert info.trace_clock == "local"
