"""The Perfetto reader's fast paths against straightforward references.

* Varints: the word-at-a-time decoder (:func:`parsers.perfetto.wire._varints`) against the
  byte-by-byte walk (values, next positions, and the same error at the same offset) and
  against the scalar :func:`~parsers.perfetto.wire.read_varint`.
* Leading varints (the events' ``timestamp, pid`` headers) against a scalar field walk.
* Legacy generic events: :func:`~parsers.perfetto.legacy.legacy_groups` (templates checked
  with NumPy) against :func:`~parsers.perfetto.legacy.reference_groups` (the general
  decoder), on events that mostly share a template per name and sometimes do not (a field
  missing, added, reordered, retyped, a second value, a repeated ``event_name``, unknown
  fields, long or invalid UTF-8 names), and on damaged bytes (same error).
* Whole reads: the reader with the fast legacy path and with the reference one give the same
  tables on the bundled legacy sample and on generated traces.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_perfetto_fast_paths import _ROW, generated_trace

import parsers.perfetto.events as events_module
from parsers.perfetto.assemble import _unique_inverse
from parsers.perfetto.columns import FieldColumn
from parsers.perfetto.legacy import LegacyGroup, legacy_groups, reference_groups
from parsers.perfetto.reader import read_perfetto
from parsers.perfetto.wire import (
    WireError,
    _varints,
    _varints_bytewise,
    iter_fields,
    leading_varints,
    read_varint,
)
from parsers.perfetto.writer import write_perfetto
from parsers.trace import Trace


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _outcome(f: Callable[..., Any], buf: np.ndarray, pos: np.ndarray, end: np.ndarray
             ) -> tuple[object, ...]:
    try:
        values, nxt = f(buf, pos, end)
    except WireError as exc:
        return ("error", exc.offset, exc.expected)
    return ("ok", values.tolist(), nxt.tolist())


_BYTES = st.lists(st.one_of(st.integers(0x80, 0xFF), st.integers(0, 0xFF)), min_size=1,
                  max_size=80)


@settings(max_examples=400, deadline=None)
@given(data=_BYTES, picks=st.lists(st.tuples(st.integers(0, 79), st.integers(0, 14)),
                                   min_size=1, max_size=12),
       pad=st.sampled_from([0, 8]))
def test_varints_match_bytewise_walk(data: list[int], picks: list[tuple[int, int]],
                                     pad: int) -> None:
    """``pad`` bytes after the varints' messages let every varint take the 8-byte path."""
    buf = np.array(data + [0xFF] * pad, np.uint8)
    pos = np.array([p % len(data) for p, _ in picks], np.int64)
    end = np.minimum(pos + np.array([r for _, r in picks], np.int64), len(data))
    assert _outcome(_varints, buf, pos, end) == _outcome(_varints_bytewise, buf, pos, end)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=40),
       pad=st.integers(0, 12))
def test_varints_decode_what_was_encoded(values: list[int], pad: int) -> None:
    data = b"".join(_varint(v) for v in values) + b"\x00" * pad
    pos, p = [], 0
    for _ in values:
        pos.append(p)
        p = read_varint(data, p, len(data))[1]
    buf = np.frombuffer(data, np.uint8)
    got, nxt = _varints(buf, np.array(pos, np.int64), np.full(len(pos), len(data), np.int64))
    assert got.tolist() == values
    assert nxt.tolist() == [*pos[1:], p]


@settings(max_examples=100, deadline=None)
@given(msgs=st.lists(st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.integers(0, 2**64 - 1)),
                              max_size=4), min_size=1, max_size=10))
def test_leading_varints_match_a_field_walk(msgs: list[list[tuple[int, int]]]) -> None:
    blobs = [b"".join(_int_field(n, v) for n, v in m) for m in msgs]
    data = b"".join(blobs)
    starts = np.cumsum([0] + [len(b) for b in blobs[:-1]]).astype(np.int64)
    ends = starts + np.array([len(b) for b in blobs], np.int64)
    buf = np.frombuffer(data, np.uint8) if data else np.zeros(0, np.uint8)
    values, ok, pos = leading_varints(buf, starts, ends, [1 << 3, 2 << 3])
    for i in range(len(msgs)):
        fields = list(iter_fields(data, int(starts[i]), int(ends[i])))
        expect = [f[0] for f in fields[:2]] == [1, 2]
        assert bool(ok[i]) == expect
        if expect:
            assert [int(values[0][i]), int(values[1][i])] == [fields[0][2], fields[1][2]]
            assert int(pos[i]) == fields[2][3] if len(fields) > 2 else int(pos[i]) == ends[i]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(-1, 5000) | st.integers(-1, 2**40), max_size=50))
def test_unique_inverse_is_numpys(values: list[int]) -> None:
    arr = np.array(values, np.int64)
    uniq, inverse = np.unique(arr, return_inverse=True)
    got_uniq, got_inverse = _unique_inverse(arr)
    assert got_uniq.tolist() == uniq.tolist()
    assert got_inverse.tolist() == inverse.ravel().tolist()


# --- legacy generic events ------------------------------------------------------------

_NAMES = ["kvm_mmu_get_page", "sched_switch", "x", "kvm_tdp_mmu_spte_changed_but_longer_than_32",
          "kvm_exit", ""]
_FIELD_NAMES = ["gfn", "role", "comm", "a", "prev_state", "f" * 130]
_TEMPLATES = {name: [(_FIELD_NAMES[(i * 7 + j) % 5], ("str", "int", "uint", "none")[(i + j) % 4])
                     for j in range(i % 4 + 1)] for i, name in enumerate(_NAMES)}
_VALUE = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 200))


def _field(name: bytes, kind: str, value: int) -> bytes:
    body = _len_field(1, name)
    if kind == "str":
        body += _len_field(3, str(value).encode() * (value % 9))  # some over 127 bytes
    elif kind in ("int", "uint"):
        body += _int_field(4 if kind == "int" else 5, value)
    elif kind == "both":
        body += _int_field(5, value) + _len_field(3, b"s")
    return _len_field(2, body)


_CHANGE = st.sampled_from(["none"] * 12 + ["drop", "add", "swap", "retype", "both", "rename",
                                           "unknown", "bad_utf8", "long_name", "no_name"])


@st.composite
def legacy_event(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(_NAMES))
    fields = list(_TEMPLATES[name])
    change = draw(_CHANGE)
    if change == "drop" and fields:
        fields.pop(draw(st.integers(0, len(fields) - 1)))
    elif change == "add":
        fields.append(("extra", "uint"))
    elif change == "swap" and len(fields) > 1:
        fields[0], fields[1] = fields[1], fields[0]
    elif change in ("retype", "both") and fields:
        fields[0] = (fields[0][0], "both" if change == "both" else "str")
    elif change == "long_name":
        fields.append((_FIELD_NAMES[5], "int"))
    head = b"" if change == "no_name" else _len_field(1, name.encode())
    if change == "bad_utf8":
        head = _len_field(1, b"\xff" + name.encode())
    body = head + b"".join(_field(f.encode(), k, draw(_VALUE)) for f, k in fields)
    if change == "rename":
        body += _len_field(1, b"sched_switch")
    if change == "unknown":
        body += _int_field(9, 1)
    return body


def _assert_same_groups(got: tuple[list[LegacyGroup], np.ndarray],
                        want: tuple[list[LegacyGroup], np.ndarray]) -> None:
    assert got[1].tolist() == want[1].tolist()
    assert [(g.name, g.local.tolist()) for g in got[0]] == [
        (g.name, g.local.tolist()) for g in want[0]]
    for g, w in zip(got[0], want[0], strict=True):
        assert [_column(c) for c in g.cols] == [_column(c) for c in w.cols]


def _column(c: FieldColumn) -> tuple[object, ...]:
    return (c.name, c.kind, c.present.tolist(), None if c.values is None else c.values.tolist(),
            None if c.strings is None else pa.array(c.strings, pa.large_binary()).to_pylist())


def _events_buffer(blobs: list[bytes], gap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = bytearray()
    starts = []
    for b in blobs:
        data += b"\x00" * gap
        starts.append(len(data))
        data += b
    buf = np.frombuffer(bytes(data) + b"\x00" * gap, np.uint8)
    start = np.array(starts, np.int64)
    return buf, start, start + np.array([len(b) for b in blobs], np.int64)


@settings(max_examples=300, deadline=None)
@given(blobs=st.lists(legacy_event(), min_size=1, max_size=40), gap=st.integers(0, 9))
def test_legacy_groups_match_reference(blobs: list[bytes], gap: int) -> None:
    buf, start, end = _events_buffer(blobs, gap)
    _assert_same_groups(legacy_groups(buf, start, end), reference_groups(buf, start, end))


@settings(max_examples=300, deadline=None)
@given(blobs=st.lists(legacy_event(), min_size=1, max_size=12),
       cuts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3))
def test_damaged_legacy_events_fail_like_reference(blobs: list[bytes],
                                                   cuts: list[tuple[int, int]]) -> None:
    data = bytearray(b"".join(blobs))
    for at, byte in cuts:
        if data:
            data[at % len(data)] = byte
    sizes = [len(b) for b in blobs]
    buf = np.frombuffer(bytes(data), np.uint8)
    start = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
    end = start + np.array(sizes, np.int64)

    def run(f: Callable[..., Any]) -> Any:
        try:
            return f(buf, start, end)
        except WireError as exc:
            return (exc.offset, exc.expected)

    got, want = run(legacy_groups), run(reference_groups)
    if isinstance(want, tuple) and isinstance(want[0], int):
        assert got == want
    else:
        assert not isinstance(got[0], int)
        _assert_same_groups(got, want)


def _tables(trace: Trace) -> dict[str, pa.Table]:
    return {name: trace.table(name) for name in ["events", *trace.names]}


def _reads_alike(path: Path, monkeypatch: pytest.MonkeyPatch, batch_events: int) -> None:
    fast = read_perfetto(path, batch_events=batch_events)
    with monkeypatch.context() as m:
        m.setattr(events_module, "legacy_groups", reference_groups)
        ref = read_perfetto(path, batch_events=batch_events)
    assert fast.metadata.to_json() == ref.metadata.to_json()
    got, want = _tables(fast), _tables(ref)
    assert got.keys() == want.keys()
    for name, table in want.items():
        assert got[name].equals(table), name


@pytest.mark.parametrize("batch_events", [7, 1 << 17])
def test_reader_fast_legacy_path_on_sample(monkeypatch: pytest.MonkeyPatch,
                                           batch_events: int) -> None:
    _reads_alike(SAMPLES / "perfetto_kvm_legacy.pftrace", monkeypatch, batch_events)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(_ROW, min_size=1, max_size=60), batch_events=st.sampled_from([1, 4, 1024]))
def test_reader_fast_legacy_path_on_generated_traces(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        picks: list[tuple[int, int | None, int, bool]], batch_events: int) -> None:
    path = tmp_path / "g.pftrace"
    write_perfetto(generated_trace(picks), path, encoding="legacy", bundle_events=5, force=True)
    _reads_alike(path, monkeypatch, batch_events)
