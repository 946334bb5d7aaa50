"""Damaged Perfetto input: clear errors with byte offsets, salvage, no hangs, only our errors."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from perfetto.trace_builder.proto_builder import TraceProtoBuilder
from perfetto_traces import builder_trace, events_view, synthetic_trace

from parsers.errors import KvmMmuError, TraceParseError, TraceTruncatedError
from parsers.perfetto.reader import is_perfetto, read_perfetto
from parsers.perfetto.writer import write_perfetto


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("pf") / "w.pftrace"
    write_perfetto(synthetic_trace(), out)
    return out.read_bytes()


def test_truncated_file_names_offset_and_what_was_expected(tmp_path: Path,
                                                           written: bytes) -> None:
    cut = tmp_path / "cut.pftrace"
    cut.write_bytes(written[:-5])
    with pytest.raises(TraceTruncatedError) as info:
        read_perfetto(cut)
    err = info.value
    assert err.offset is not None and 0 <= err.offset < len(written)
    assert str(cut) in str(err) and f"byte {err.offset}" in str(err)
    assert "TracePacket of" in str(err) and "remain" in str(err)


def test_salvage_keeps_packets_before_the_damage(tmp_path: Path, written: bytes) -> None:
    whole = read_perfetto(written)
    cut = tmp_path / "cut.pftrace"
    cut.write_bytes(written[: len(written) // 2])
    saved = read_perfetto(cut, salvage=True)
    n = saved.events.num_rows
    assert 0 < n < whole.events.num_rows
    cols = tuple(saved.events.column_names)
    assert events_view(saved, cols).equals(events_view(whole, cols).slice(0, n))
    assert any("salvaged" in w and "byte" in w for w in saved.metadata.warnings)


def test_lying_length_fails_fast_without_allocating() -> None:
    huge = b"\x0a" + b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f" + b"\x08\x01"
    with pytest.raises(TraceTruncatedError, match="byte 0"):
        read_perfetto(huge)
    lying_bundle = b"\x0a\x06" + b"\x0a\x04" + b"\x12\x7f\x08\x01"  # event says 127 bytes
    with pytest.raises(TraceParseError, match=r"byte 4: expected 127 bytes of an FtraceEvent"):
        read_perfetto(lying_bundle)


def test_corrupt_inner_field_names_file_offset() -> None:
    # packet -> bundle -> event whose payload holds wire type 7 (invalid)
    event = b"\x08\x05" + b"\x1a\x02\x0f\x00"
    bundle = b"\x08\x00" + b"\x12" + bytes([len(event)]) + event
    packet = b"\x0a" + bytes([len(bundle)]) + bundle
    data = b"\x0a" + bytes([len(packet)]) + packet
    with pytest.raises(TraceParseError) as info:
        read_perfetto(data)
    assert info.value.offset == 12 and "wire type" in str(info.value)


def test_bad_compressed_packets() -> None:
    b = TraceProtoBuilder()
    b.add_packet().compressed_packets = zlib.compress(builder_trace("dense"))[:-8]
    with pytest.raises(TraceParseError, match="zlib|cut short"):
        read_perfetto(b.serialize())
    b = TraceProtoBuilder()
    b.add_packet().compressed_packets = b"not zlib at all"
    with pytest.raises(TraceParseError, match="zlib"):
        read_perfetto(b.serialize())


def test_not_perfetto_at_all() -> None:
    with pytest.raises(TraceParseError, match="byte 0: expected a TracePacket"):
        read_perfetto(b"# tracer: nop\n")
    assert not is_perfetto(b"# tracer: nop\n")
    assert not is_perfetto(b"\x17\x08\x44tracing6")
    assert read_perfetto(b"").events.num_rows == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), encoding=st.sampled_from(["dense", "legacy"]))
def test_mutations_raise_only_our_errors(data: st.DataObject, encoding: str) -> None:
    trace = bytearray(builder_trace(encoding, compress=data.draw(st.booleans())))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(trace) - 1))
        how = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if how == "flip":
            trace[at] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del trace[at:]
            break
        elif how == "insert":
            trace[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del trace[at:at + data.draw(st.integers(1, 8))]
    salvage = data.draw(st.booleans())
    try:
        read_perfetto(bytes(trace), salvage=salvage)
    except KvmMmuError as exc:
        assert not salvage or isinstance(exc, KvmMmuError)
