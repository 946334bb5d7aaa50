"""Damaged trace.dat files: clear errors with byte offsets, salvage, and fuzzing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tracedat_support import REAL, SAMPLE, shared

from parsers.errors import KvmMmuError, TraceFormatError, TraceParseError, TraceTruncatedError
from parsers.tracedat.header import read_info
from parsers.tracedat.reader import read_tracedat

DATA = SAMPLE.read_bytes()
INFO = read_info(DATA, str(SAMPLE))
CPU0 = INFO.buffers[0].cpus[0]


def _write(tmp_path: Path, data: bytes, name: str = "bad.dat") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_not_a_trace(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="magic"):
        read_tracedat(_write(tmp_path, b"# tracer: nop\n"))


def test_unknown_version(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="version"):
        read_tracedat(_write(tmp_path, b"\x17\x08Dtracing9\x00" + bytes(64)))


def test_truncated_header_names_offset(tmp_path: Path) -> None:
    with pytest.raises(TraceTruncatedError) as err:
        read_tracedat(_write(tmp_path, DATA[:30]))
    assert err.value.offset is not None and err.value.offset <= 30
    assert "expected" in str(err.value)


def test_truncated_v7_loses_its_buffer_option(tmp_path: Path) -> None:
    path = _write(tmp_path, DATA[:CPU0.offset + 100])
    with pytest.raises(TraceParseError, match="outside the"):
        read_tracedat(path)
    trace = read_tracedat(path, salvage=True)
    assert trace.events.num_rows == 0
    assert any("options section lost" in w for w in trace.metadata.warnings)


@pytest.mark.shared
def test_truncated_cpu_data_raises_then_salvages(tmp_path: Path) -> None:
    raw = shared(REAL / "tc_kvm.v6.dat").read_bytes()
    cpu1 = read_info(raw, "v6").buffers[0].cpus[1]
    path = _write(tmp_path, raw[:cpu1.offset + 5 * 4096 + 100])
    with pytest.raises(TraceTruncatedError) as err:
        read_tracedat(path)
    assert err.value.offset is not None and err.value.offset >= cpu1.offset
    assert "CPU 1" in str(err.value)
    trace = read_tracedat(path, salvage=True)
    assert any("salvaged" in w for w in trace.metadata.warnings)
    assert 10022 < trace.events.num_rows < 18836


def test_salvage_keeps_events_before_damage(tmp_path: Path) -> None:
    full = read_tracedat(REAL / "tc_kvm.v6.dat") if (REAL / "tc_kvm.v6.dat").exists() else None
    if full is None:
        pytest.skip("../shared/traces/real/tc_kvm.v6.dat is absent")
    data = bytearray(shared(REAL / "tc_kvm.v6.dat").read_bytes())
    info = read_info(bytes(data), "v6")
    cpu1 = info.buffers[0].cpus[1]
    page = cpu1.offset + 10 * info.page_size
    data[page + 8:page + 12] = (4000).to_bytes(4, "little")  # commit larger than the page
    data[page + 16:page + 20] = (0x1F_FFFF_E0 | 28).to_bytes(4, "little")
    path = _write(tmp_path, bytes(data))
    with pytest.raises(TraceParseError) as err:
        read_tracedat(path)
    assert err.value.offset is not None and page <= err.value.offset < page + info.page_size
    salvaged = read_tracedat(path, salvage=True)
    assert 0 < salvaged.events.num_rows < full.events.num_rows
    assert any("salvaged" in w for w in salvaged.metadata.warnings)
    cpu1_rows = salvaged.events.filter(salvaged.events["cpu"].to_numpy() == 1).num_rows
    assert cpu1_rows < full.events.filter(full.events["cpu"].to_numpy() == 1).num_rows


def test_lying_section_size_is_bounded(tmp_path: Path) -> None:
    data = bytearray(DATA)
    # the first options section's u64 size (section header at the options offset)
    off = int.from_bytes(data[INFO_OPT:INFO_OPT + 8], "little")
    data[off + 8:off + 16] = (1 << 62).to_bytes(8, "little")
    with pytest.raises(TraceTruncatedError):
        read_tracedat(_write(tmp_path, bytes(data)))


#: Where the v7 header stores the offset of the first options section.
INFO_OPT = DATA.index(b"1.5.4\0") + 6


def test_missing_zstd_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from parsers.errors import MissingExtraError

    real_import = builtins.__import__

    def no_zstd(name: str, *args: object, **kwargs: object) -> object:
        if name == "zstandard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_zstd)
    with pytest.raises(MissingExtraError, match=r"kvm-mmu-replay\[zstd\]"):
        read_tracedat(SAMPLE)


FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(cut=st.integers(min_value=0, max_value=len(DATA) - 1))
def test_fuzz_truncation(cut: int, tmp_path: Path) -> None:
    path = _write(tmp_path, DATA[:cut], f"cut{cut}.dat")
    try:
        read_tracedat(path)
    except KvmMmuError:
        pass
    try:
        read_tracedat(path, salvage=True)
    except KvmMmuError:
        pass


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, len(DATA) - 1), st.integers(1, 255)),
                      min_size=1, max_size=8),
       region=st.sampled_from(["any", "data", "header"]))
def test_fuzz_byte_flips(flips: list[tuple[int, int]], region: str, tmp_path: Path) -> None:
    data = bytearray(DATA)
    for pos, xor in flips:
        if region == "data":
            pos = CPU0.offset + pos % (len(DATA) - CPU0.offset)
        elif region == "header":
            pos = pos % 4096
        data[pos] ^= xor
    path = _write(tmp_path, bytes(data), "flip.dat")
    for salvage in (False, True):
        try:
            read_tracedat(path, salvage=salvage)
        except KvmMmuError:
            pass


@pytest.mark.shared
@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 1 << 40), st.integers(1, 255)), min_size=1,
                      max_size=16))
def test_fuzz_uncompressed_pages(flips: list[tuple[int, int]], tmp_path: Path) -> None:
    raw = shared(REAL / "tc_kvm.v6.dat").read_bytes()
    start = read_info(raw, "v6").buffers[0].cpus[0].offset
    data = bytearray(raw)
    for pos, xor in flips:
        data[start + pos % (len(raw) - start)] ^= xor
    path = _write(tmp_path, bytes(data), "v6flip.dat")
    for salvage in (False, True):
        try:
            read_tracedat(path, salvage=salvage)
        except KvmMmuError:
            pass


def test_event_format_with_no_typed_field(tmp_path: Path) -> None:
    """A flipped byte in the embedded formats can leave a typed event with none of its
    fields (found by test_fuzz_byte_flips): its rows still come out, fields null."""
    data = bytearray(DATA)
    data[13470] ^= 1
    trace = read_tracedat(_write(tmp_path, bytes(data), "flip.dat"))
    table = trace.table("kvm_mmu_set_dirty_bit")
    assert table.num_rows == 19
    assert table.column("gpa").null_count == table.num_rows
