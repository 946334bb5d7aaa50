"""One trace of a fleet, start to end, in whatever process runs it (a Dask worker or this one).

:func:`identify` hashes an input into its trace id; :func:`process` reads the trace, replays
it with :func:`replay.trace_replay.replay` (observe, derive, replay: nothing of it is redone
here) and commits its partitions (:func:`replay.fleets.store.commit`). Any failure becomes
the trace's ``traces`` row with status ``error`` and the message: a bad trace never stops a
fleet. Both return plain dicts (cheap to send back to the client).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from parsers.detect import read_trace
from parsers.errors import KvmMmuError
from parsers.trace import Trace
from replay.fleets.inputs import content_id, local_copy, path_id
from replay.fleets.store import TRACES, commit, committed_ids, read_row
from replay.trace_replay import load_for_replay, replay
from replay.trace_result import TraceReplayResult

__all__ = ["TRACES_SCHEMA", "WARNINGS_SCHEMA", "RESULT_TABLES", "identify", "identify_all",
           "process"]

#: One row per trace: what it was, what it held, how it went.
TRACES_SCHEMA: Final = pa.schema([
    ("path", pa.string()), ("size", pa.int64()), ("format", pa.string()),
    ("ts_unit", pa.string()), ("era", pa.string()), ("backend", pa.string()), ("events", pa.int64()),
    ("event_counts", pa.map_(pa.string(), pa.int64())), ("lost_events", pa.int64()),
    ("lost_markers_uncounted", pa.int64()), ("vms", pa.int32()), ("vcpus", pa.int32()),
    ("policies", pa.list_(pa.string())), ("warnings", pa.int32()), ("status", pa.string()),
    ("error", pa.string()),
])
WARNINGS_SCHEMA: Final = pa.schema([("seq", pa.int32()), ("warning", pa.string())])
#: Tables a replayed trace writes besides ``traces`` (those with rows).
RESULT_TABLES: Final = ("block_intervals", "refcount_history", "roots", "summary", "vcpus",
                        "evidence", "fidelity", "warnings")


def identify(source: str, root: str) -> dict[str, Any]:
    """``{"kind": "id", "source", "trace", "size"}``; when ``source`` cannot be read, its
    error row is committed under :func:`~replay.fleets.inputs.path_id` and returned as
    ``{"kind": "row", ...}``."""
    try:
        trace_id, size = content_id(source)
    except (OSError, KvmMmuError) as exc:
        row = _row(source, None, None, None, [], error=_message(exc, source))
        trace_id = path_id(source)
        commit(Path(root), trace_id, {TRACES: _traces_table(row)})
        return {"kind": "row", "trace": trace_id, "reused": False, **row}
    return {"kind": "id", "source": source, "trace": trace_id, "size": size}


def identify_all(sources: Sequence[str], root: str) -> list[dict[str, Any]]:
    """:func:`identify` of each source, in order: one task hashes a batch of inputs, so a
    fleet of small traces does not pay one round trip to the scheduler per hash."""
    return [identify(source, root) for source in sources]


def process(source: str, trace_id: str, size: int, root: str, policies: Sequence[str],
            events: bool = False) -> dict[str, Any]:
    """Replay ``source`` under ``policies`` and commit its partitions; return its ``traces``
    row (plus ``trace`` and ``reused``: true when an earlier attempt had committed it)."""
    base = Path(root)
    if trace_id in committed_ids(base):
        return {"kind": "row", "reused": True, **read_row(base, trace_id)}
    tables: dict[str, pa.Table] = {}
    try:
        with local_copy(source) as path:
            trace = (read_trace(path, workers=1) if events else
                     load_for_replay(path, workers=1))
            result = replay(trace, policy=list(policies))
        row = _row(source, size, trace, result, result.policies)
        tables = _result_tables(result)
        if events:
            tables["events"] = trace.events
            tables.update({n: trace.table(n) for n in trace.names})
    except Exception as exc:  # noqa: BLE001 - every failure is the trace's error row
        tables = {}
        row = _row(source, size, None, None, list(policies), error=_message(exc, source))
    tables = {k: v for k, v in tables.items() if v.num_rows}
    tables[TRACES] = _traces_table(row)
    commit(base, trace_id, tables)
    return {"kind": "row", "trace": trace_id, "reused": False, **row}


def _message(exc: BaseException, source: str) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, KvmMmuError) and source in text:
        return text
    return f"{source}: {type(exc).__name__}: {text}" if text else f"{source}: {type(exc).__name__}"


def _result_tables(result: TraceReplayResult) -> dict[str, pa.Table]:
    tables = dict(result.tables())
    tables["warnings"] = pa.table({"seq": pa.array(range(len(result.warnings)), pa.int32()),
                                   "warning": pa.array(result.warnings, pa.string())},
                                  schema=WARNINGS_SCHEMA)
    return tables


def _row(source: str, size: int | None, trace: Trace | None,
         result: TraceReplayResult | None, policies: list[str],
         error: str | None = None) -> dict[str, Any]:
    counts = trace.event_counts() if trace is not None else {}
    lost = trace.lost_events() if trace is not None else {}
    return {
        "path": source, "size": size,
        "format": trace.metadata.format if trace is not None else None,
        "ts_unit": trace.metadata.ts_unit if trace is not None else None,
        "era": result.derived.era if result is not None else None,
        "backend": result.derived.backend if result is not None else None,
        "events": sum(counts.values()) if trace is not None else None,
        "event_counts": sorted(counts.items()),
        "lost_events": sum(v or 0 for v in lost.values()) if trace is not None else None,
        "lost_markers_uncounted": (sum(trace.lost_markers_uncounted().values())
                                   if trace is not None else None),
        "vms": len(result.threads.vms) if result is not None else None,
        "vcpus": len(result.threads.vcpus) if result is not None else None,
        "policies": policies,
        "warnings": len(result.warnings) if result is not None else None,
        "status": "ok" if error is None else "error",
        "error": error,
    }


def _traces_table(row: dict[str, Any]) -> pa.Table:
    return pa.Table.from_pylist([row], schema=TRACES_SCHEMA)
