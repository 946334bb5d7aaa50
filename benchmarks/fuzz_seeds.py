"""Seed corpora for ``benchmarks/fuzz.py``, made from the bundled ``sample_traces/``.

Nothing is copied into the repository: the seeds are written to a scratch folder each run.

- text: the first lines (about 4 KiB, cut at a line end) of every bundled text trace, the
  small ones whole, and a gzip and an xz of one of them (the reader decompresses).
- perfetto: the three bundled ``.pftrace`` files (under 30 KiB each) as they are.
- tracedat: the bundled trace.dat files are ~1 MiB of metadata and compressed pages, too big
  to mutate usefully, so small trace.dat files are rebuilt from them: the same header_page,
  ftrace formats, the formats of the events the kept pages hold, the saved cmdlines, and the
  first page of each CPU, written as version 6, version 7 uncompressed and version 7 zstd
  (sections and page chunks compressed), plus a v6 file with options (TRACECLOCK, CPUCOUNT,
  OFFSET, TSC2NSEC, saved tgids). The layouts are trace-cmd's
  ``Documentation/trace-cmd/trace-cmd.dat.v6.5.txt`` / ``.v7.5.txt``; each rebuilt file is
  read back by the project's reader and must give events with no warning.
"""

from __future__ import annotations

import gzip
import lzma
import struct
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_traces"
READERS = ("text", "tracedat", "perfetto")
#: Largest text seed (bytes): libFuzzer's default -max_len follows the largest seed.
TEXT_HEAD = 4096

#: The kernel's header_event text (kernel/trace/ring_buffer.c ring_buffer_print_entry_header);
#: the reader does not use it, trace-cmd writes it.
HEADER_EVENT = (
    "# compressed entry header\n\ttype_len    :    5 bits\n\ttime_delta  :   27 bits\n"
    "\tarray       :   32 bits\n\n\tpadding     : type == 29\n\ttime_extend : type == 30\n"
    "\ttime_stamp : type == 31\n\tdata max type_len  == 28\n")


def write_seeds(reader: str, out: Path) -> list[Path]:
    """Write ``reader``'s seeds into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    made = {"text": _text_seeds, "perfetto": _perfetto_seeds, "tracedat": _tracedat_seeds}[reader]()
    paths = []
    for name, data in made:
        path = out / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def _text_seeds() -> Iterator[tuple[str, bytes]]:
    files = sorted(p for p in SAMPLES.rglob("*.txt") if "workloads" not in p.parts)
    for path in files:
        data = path.read_bytes()
        if len(data) > TEXT_HEAD:
            data = data[:data.rindex(b"\n", 0, TEXT_HEAD) + 1]
        yield f"{path.parent.name}_{path.name}", data
    with gzip.open(SAMPLES / "recorded_kvm_full.txt.gz", "rb") as f:
        head = f.read(TEXT_HEAD)
    head = head[:head.rindex(b"\n") + 1]
    yield "recorded_kvm_full.head.txt", head
    yield "recorded_kvm_full.head.txt.gz", gzip.compress(head, mtime=0)
    yield "recorded_kvm_full.head.txt.xz", lzma.compress(head[:1024])


def _perfetto_seeds() -> Iterator[tuple[str, bytes]]:
    for path in sorted(SAMPLES.glob("*.pftrace")):
        yield path.name, path.read_bytes()


# --- small trace.dat files ----------------------------------------------------------------


def _tracedat_seeds() -> Iterator[tuple[str, bytes]]:
    from parsers.tracedat.header import read_info  # noqa: PLC0415 (the seeds need the repo)

    src = SAMPLES / "tc_kvm.head.dat"
    info = read_info(src.read_bytes(), str(src))
    pages = _first_pages(src.read_bytes(), info)
    formats = _used_formats(info, pages)
    parts = (info.header_page, info.ftrace_formats, formats, info.cmdlines)
    yield "mini_v6.dat", _v6(info.page_size, pages, parts, options=b"")
    yield "mini_v6_options.dat", _v6(info.page_size, pages, parts, options=_v6_options())
    yield "mini_v7_none.dat", _v7(info.page_size, pages, parts, zstd=False)
    yield "mini_v7_zstd.dat", _v7(info.page_size, pages, parts, zstd=True)


def _first_pages(data: bytes, info: object) -> list[bytes]:
    """The first page of each CPU of the top instance (decompressed when stored in chunks)."""
    from parsers.tracedat.binary import decompress  # noqa: PLC0415

    buf = info.buffers[0]  # type: ignore[attr-defined]
    pages = []
    for cpu in buf.cpus:
        if not buf.compressed:
            pages.append(data[cpu.offset:cpu.offset + buf.page_size])
            continue
        at = cpu.offset + 4  # u32 chunk count, then (u32 csize, u32 usize, blob) chunks
        csize, usize = struct.unpack_from("<II", data, at)
        chunk = decompress(info.compression, data[at + 8:at + 8 + csize], usize,  # type: ignore[attr-defined]
                           path="seed", offset=at)
        pages.append(chunk[:buf.page_size])
    return pages


def _used_formats(info: object, pages: list[bytes]) -> list[tuple[str, str]]:
    """The event formats whose ids occur in ``pages`` (found by reading a file with all)."""
    import tempfile  # noqa: PLC0415

    from parsers.tracedat.reader import read_tracedat  # noqa: PLC0415

    every = info.event_formats  # type: ignore[attr-defined]
    parts = (info.header_page, info.ftrace_formats, every, info.cmdlines)  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "all.dat"
        path.write_bytes(_v6(info.page_size, pages, parts, options=b""))  # type: ignore[attr-defined]
        names = set(read_tracedat(path).events["event"].to_pylist())
    return [(sys_, text) for sys_, text in every if _format_name(text) in names]


def _format_name(text: str) -> str:
    first = text.split("\n", 1)[0]
    return first.split(":", 1)[1].strip() if first.startswith("name:") else ""


def _sized(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _headers(header_page: str) -> bytes:
    return b"header_page\0" + _sized(header_page) + b"header_event\0" + _sized(HEADER_EVENT)


def _ftrace(ftrace: list[str]) -> bytes:
    return struct.pack("<I", len(ftrace)) + b"".join(_sized(t) for t in ftrace)


def _events(formats: list[tuple[str, str]]) -> bytes:
    systems: dict[str, list[str]] = {}
    for system, text in formats:
        systems.setdefault(system, []).append(text)
    out = struct.pack("<I", len(systems))
    for system, texts in systems.items():
        out += system.encode() + b"\0" + struct.pack("<I", len(texts))
        out += b"".join(_sized(t) for t in texts)
    return out


def _option(opt: int, body: bytes) -> bytes:
    return struct.pack("<HI", opt, len(body)) + body


def _v6_options() -> bytes:
    return (_option(4, b"local global [mono] boot\0") + _option(8, struct.pack("<I", 2))
            + _option(7, b"0x10\0") + _option(14, struct.pack("<IIQ", 1, 0, 0))
            + _option(32, b"1234 1230\n4321 4300\n\0") + struct.pack("<H", 0))


def _pad(out: bytes, page_size: int) -> bytes:
    return out + bytes(-len(out) % page_size)


def _v6(page_size: int, pages: list[bytes], parts: tuple, options: bytes) -> bytes:  # type: ignore[type-arg]
    header_page, ftrace, formats, cmdlines = parts
    out = b"\x17\x08Dtracing6\0" + bytes([0, 8]) + struct.pack("<I", page_size)
    out += _headers(header_page) + _ftrace(ftrace) + _events(formats)
    out += struct.pack("<I", 0) + struct.pack("<I", 0) + _sized(cmdlines)
    out += struct.pack("<I", len(pages))
    if options:
        out += b"options  \0" + options
    out += b"flyrecord\0"
    clock = b"[local] global\n"
    start = len(out) + 16 * len(pages) + 8 + len(clock)
    start += -start % page_size
    for i, page in enumerate(pages):
        out += struct.pack("<QQ", start + i * page_size, len(page))
    out += struct.pack("<Q", len(clock)) + clock
    out = _pad(out, page_size)
    return out + b"".join(page.ljust(page_size, b"\0") for page in pages)


def _section(sec_id: int, body: bytes, zstd: bool) -> bytes:
    if not zstd:
        return struct.pack("<HHIQ", sec_id, 0, 0, len(body)) + body
    import zstandard  # noqa: PLC0415

    blob = zstandard.ZstdCompressor().compress(body)
    payload = struct.pack("<II", len(blob), len(body)) + blob
    return struct.pack("<HHIQ", sec_id, 1, 0, len(payload)) + payload


def _v7(page_size: int, pages: list[bytes], parts: tuple, zstd: bool) -> bytes:  # type: ignore[type-arg]
    header_page, ftrace, formats, cmdlines = parts
    algo = b"zstd\0" + b"1.5.4\0" if zstd else b"none\0" + b"\0"
    head = b"\x17\x08Dtracing7\0" + bytes([0, 8]) + struct.pack("<I", page_size) + algo
    bodies = [(16, _headers(header_page)), (17, _ftrace(ftrace)), (18, _events(formats)),
              (21, _sized(cmdlines))]
    pos = len(head) + 8
    sections, offsets = b"", {}
    for sec_id, body in bodies:
        offsets[sec_id] = pos + len(sections)
        sections += _section(sec_id, body, zstd)
    options_at = pos + len(sections)
    # the options section's size is known once the BUFFER option is: its length is fixed
    opts_len = sum(6 + 8 for _ in offsets) + 6 + _buffer_len(len(pages)) + 6 + 8
    buffer_at = options_at + 16 + opts_len
    data_at = buffer_at + 16
    data_at += -data_at % page_size
    cpu_data = [_cpu_data(page, page_size, zstd) for page in pages]
    cpus, at = [], data_at
    for i, blob in enumerate(cpu_data):
        cpus.append((i, at, len(blob) - 4 if zstd else len(blob)))
        at += len(blob) + (-len(blob) % page_size)
    opts = b"".join(_option(k, struct.pack("<Q", v)) for k, v in offsets.items())
    opts += _option(3, _buffer_body(buffer_at, page_size, cpus))
    opts += _option(0, struct.pack("<Q", 0))
    assert len(opts) == opts_len
    out = head + struct.pack("<Q", options_at) + sections
    out += struct.pack("<HHIQ", 0, 0, 0, len(opts)) + opts
    out += struct.pack("<HHIQ", 3, 1 if zstd else 0, 0, 0)
    out = _pad(out, page_size)
    for blob in cpu_data:
        out = _pad(out + blob, page_size)
    return out


def _buffer_len(ncpus: int) -> int:
    return 8 + 1 + len(b"local\0") + 8 + 20 * ncpus


def _buffer_body(at: int, page_size: int, cpus: list[tuple[int, int, int]]) -> bytes:
    body = struct.pack("<Q", at) + b"\0" + b"local\0" + struct.pack("<II", page_size, len(cpus))
    return body + b"".join(struct.pack("<IQQ", c, off, size) for c, off, size in cpus)


def _cpu_data(page: bytes, page_size: int, zstd: bool) -> bytes:
    page = page.ljust(page_size, b"\0")
    if not zstd:
        return page
    import zstandard  # noqa: PLC0415

    blob = zstandard.ZstdCompressor().compress(page)
    return struct.pack("<III", 1, len(blob), len(page)) + blob
