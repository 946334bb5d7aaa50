"""Every table of the API: no column named like a pandas attribute (``df.count`` is a
method, ``df.flags`` a property), and ids and timestamps as nullable integers in pandas."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import SAMPLES

from parsers import read_trace
from parsers.schema import EVENTS_SCHEMA, typed_event_names, typed_schema
from replay import replay, run_scenario

PANDAS_NAMES = set(dir(pd.DataFrame)) | set(dir(pd.Series))
TRACE = SAMPLES / "tracefs_record_tgid.txt"


@pytest.fixture(scope="module")
def result():  # type: ignore[no-untyped-def]
    return replay(str(TRACE), policy=["sync", "6.9"])


def test_parser_tables_have_no_pandas_attribute_names() -> None:
    clashes = [("events", f.name) for f in EVENTS_SCHEMA if f.name in PANDAS_NAMES]
    clashes += [(n, f.name) for n in typed_event_names() for f in typed_schema(n)
                if f.name in PANDAS_NAMES]
    assert clashes == []


def test_replay_and_model_tables_have_no_pandas_attribute_names(result) -> None:  # type: ignore[no-untyped-def]
    clashes = [(n, c) for n, t in result.tables().items() for c in t.column_names
               if c in PANDAS_NAMES]
    comp = run_scenario("max-guest-memory", policies=["sync"], memory=4 << 30, vcpus=1)
    model = comp.results["sync"]
    clashes += [(n, c) for n, t in model.tables.items() for c in t.column_names
                if c in PANDAS_NAMES]
    assert clashes == []


@pytest.mark.parametrize("name", ["block_intervals", "refcount_history", "roots", "summary",
                                  "vcpus", "evidence"])
def test_replay_ids_and_timestamps_are_nullable_integers(result, name: str) -> None:  # type: ignore[no-untyped-def]
    frame = result.to_pandas(name)
    table = result.tables()[name]
    for field in table.schema:
        if str(field.type).startswith(("int", "uint")):
            assert isinstance(frame[field.name].dtype, pd.api.extensions.ExtensionDtype), \
                (name, field.name, frame[field.name].dtype)
    if name == "roots":
        for col in ("root", "created", "invalidated", "zap_start", "zap_end", "freed"):
            assert str(frame[col].dtype) == "Int64", col


def test_nanoseconds_survive_in_pandas(result) -> None:  # type: ignore[no-untyped-def]
    roots = result.tables()["roots"]
    exact = [v for v in roots.column("zap_start").to_pylist() if v is not None]
    frame = result.to_pandas("roots")
    assert [int(v) for v in frame["zap_start"].dropna()] == exact


def test_model_result_to_pandas_is_nullable() -> None:
    comp = run_scenario("max-guest-memory", policies=["sync"], memory=4 << 30, vcpus=1)
    roots = comp.results["sync"].to_pandas("roots")
    assert str(roots["freed"].dtype) == "Int64" and str(roots["root"].dtype) == "Int64"


def test_renamed_columns() -> None:
    trace = read_trace(SAMPLES / "trace_pipe_lost_events.txt")
    assert "latency_flags" in trace.events.column_names
    assert trace.table("lost_events").column_names[-1] == "lost"
    r = replay(str(TRACE), policy=["6.9"])
    assert "n_blocks" in r.block_intervals.column_names
    assert "refcount" in r.refcount_history.column_names
    assert {"step", "ts"} <= set(r.derived.evidence.column_names)
