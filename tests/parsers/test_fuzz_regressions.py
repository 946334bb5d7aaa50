"""Inputs the fuzzing campaigns (``benchmarks/fuzz.py``) found crashing a reader, replayed.

Each file in ``tests/fuzz_regressions/<reader>/`` once made the reader raise something other
than a :class:`~parsers.errors.KvmMmuError`. Replayed the way the fuzzer ran it (the reader's
own function with ``salvage`` off and on, :func:`~parsers.detect.detect_format`, and
:func:`~parsers.detect.read_trace`), it must now read, or fail with the project's errors
only. No atheris needed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from parsers.detect import detect_format, read_trace
from parsers.errors import KvmMmuError
from parsers.perfetto.reader import read_perfetto
from parsers.text.reader import read_ftrace_text
from parsers.tracedat.reader import read_tracedat

FOLDER = Path(__file__).resolve().parents[1] / "fuzz_regressions"
READERS: dict[str, Callable[..., Any]] = {
    "text": read_ftrace_text, "tracedat": read_tracedat, "perfetto": read_perfetto}
CASES = sorted(FOLDER.glob("*/*.bin"))

#: What each kept input gives now: (reader with salvage off, with salvage on, read_trace),
#: each "read" or the project error raised, and the finding it once was.
EXPECTED: dict[str, tuple[str, str, str]] = {
    # zlib.error out of gzip on a corrupt deflate stream (text/source.py _read): now a
    # TraceParseError "cannot decompress"; salvage keeps the lines before the damage.
    "text/5bb3575d26192a2d.bin": ("TraceParseError", "read", "TraceFormatError"),
    # ArrowInvalid casting a timestamp cut from the wrong bytes (text/fixed.py _ints): the
    # fast path's flags pattern [^ ]{4,5} took a multi-byte character, shifting the byte
    # columns after it; the flags are ASCII now and such a line takes the general grammar.
    "text/bdfdba8f992b72d9.bin": ("read", "read", "read"),
    # ValueError "cannot reshape" (text/numbers.py hex_to_uint64): a non-ASCII value padded
    # to 16 characters is more than 16 bytes; such values are not hex (null) now.
    "text/a56386dfc5483a3f.bin": ("read", "read", "read"),
    # ArrowInvalid casting a 53-digit seconds field (text/numbers.py dec_to_int): values out
    # of range are null now, and a line whose timestamp, pid or cpu does not fit is unparsed.
    "text/ae3860840db34611.bin": ("read", "read", "read"),
    # ArrowInvalid "Index 0 is out of bounds" (text/reader.py _split_prefix): a multi-input
    # report with a line lacking the "name: " prefix; such rows keep their comm now.
    "text/03aaea05c040d33f.bin": ("read", "read", "read"),
}


def _outcome(call: Callable[[], Any]) -> str:
    """``"read"`` (every table valid) or the project error's class name; anything else raises."""
    try:
        trace = call()
    except KvmMmuError as exc:
        return type(exc).__name__
    trace.info()
    for name in ["events", *trace.names]:
        trace.table(name).validate(full=True)
    return "read"


def test_every_reader_has_its_folder() -> None:
    assert {p.name for p in FOLDER.iterdir() if p.is_dir()} <= set(READERS)
    assert CASES, "no regression input kept: the parametrised test below would test nothing"
    assert {f"{p.parent.name}/{p.name}" for p in CASES} == set(EXPECTED)


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}/{p.name}" for p in CASES])
def test_fuzz_finding_stays_fixed(case: Path, tmp_path: Path) -> None:
    path = tmp_path / "input"
    path.write_bytes(case.read_bytes())
    read = READERS[case.parent.name]
    try:
        detect_format(path)
    except KvmMmuError:
        pass
    outcomes = tuple(_outcome(lambda s=salvage: read(path, salvage=s)) for salvage in (False, True))
    got = (*outcomes, _outcome(lambda: read_trace(path)))
    assert got == EXPECTED[f"{case.parent.name}/{case.name}"]
