"""Run a fleet on Dask: one task per input, results committed by the workers.

The only module that imports ``dask.distributed`` (the optional extra ``fleet``). Each input
is first hashed (:func:`replay.fleets.task.identify`, on a worker: the bytes may only be
readable there), a few inputs per task (:data:`HASH_BATCH`) so that small traces do not cost
the scheduler and the client one more round trip each; each new trace id is then submitted
once (:func:`replay.fleets.task.process`), keyed by the id so the scheduler never runs it
twice at once. A worker that dies takes its task with it and the scheduler reruns it
elsewhere; the rerun replaces whatever partitions the dead attempt had renamed (the trace
was not committed). Without a ``client`` a ``LocalCluster`` of worker processes (one thread
each) is started and closed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from parsers.errors import MissingExtraError
from replay.fleets.inputs import path_id
from replay.fleets.result import FleetResult
from replay.fleets.store import TRACES, commit, committed_ids
from replay.fleets.task import TRACES_SCHEMA, identify_all, process

__all__ = ["run_on_dask", "local_client", "require_dask", "Progress", "HASH_BATCH",
           "LEAN_WORKERS"]

#: Dask settings of the workers :func:`local_client` starts: no statistical profiler (it
#: samples the busy thread's stack every 10 ms, CPU the replay needs; in a 10 s idle run
#: of 2 workers it was a third of their CPU).
LEAN_WORKERS: Final = {"distributed.worker.profile.enabled": False}

#: Inputs hashed by one task at most; fewer when that would leave a worker without any.
HASH_BATCH: Final = 16

#: Called with each event of the run: ``("total", n)``, ``("row", traces row)``,
#: ``("skipped", source)``, ``("duplicate", source)``.
Progress = Callable[[str, Any], None]


def require_dask() -> Any:
    """The ``distributed`` module.

    Raises:
        MissingExtraError: the ``fleet`` extra is not installed.
    """
    return _distributed()


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise MissingExtraError("distributed", "fleet", "kvm-mmu-replay fleet") from exc
    return distributed


@contextmanager
def local_client(workers: int | None = None, address: str | None = None) -> Iterator[Any]:
    """A Dask client: of the scheduler at ``address``, or of a new ``LocalCluster`` of
    ``workers`` processes (default: the machine's cores), one thread each, closed at the
    end."""
    distributed = _distributed()
    if address is not None:
        with distributed.Client(address) as client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    import dask

    with dask.config.set(LEAN_WORKERS), \
            distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                     dashboard_address=":0", silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def run_on_dask(client: Any, sources: Sequence[str], root: Path, policies: Sequence[str],
                *, events: bool, resume: bool, progress: Progress | None = None) -> FleetResult:
    """Hash, then replay, every source on ``client``'s cluster; see the module doc."""
    distributed = _distributed()
    start = time.perf_counter_ns()
    done = committed_ids(root) if resume else set()
    seen: dict[str, str] = {}
    result = FleetResult(root, workers=len(client.scheduler_info().get("workers", {})))
    tell = progress or (lambda kind, value: None)
    tell("total", len(sources))
    base = str(root)
    owner: dict[str, list[tuple[str, str]]] = {}  # task key -> (source, id to commit under)
    hashes: list[Any] = []
    for batch in _batches(sources, result.workers or 1):
        key = f"kvm-fleet-id-{len(hashes)}-{_token()}"
        owner[key] = [(source, path_id(source)) for source in batch]
        hashes.append(client.submit(identify_all, batch, base, key=key, pure=False))
    pending = distributed.as_completed(hashes)
    try:
        for future in pending:
            for out in _outcomes(future, base, owner):
                if out["kind"] == "row":
                    result.rows.append(out)
                    tell("row", out)
                elif out["trace"] in done:
                    result.skipped.append((out["source"], out["trace"]))
                    tell("skipped", out["source"])
                elif out["trace"] in seen:
                    result.duplicates.append((out["source"], out["trace"]))
                    tell("duplicate", out["source"])
                else:
                    seen[out["trace"]] = out["source"]
                    key = f"kvm-fleet-replay-{out['trace']}"
                    owner[key] = [(out["source"], out["trace"])]
                    pending.add(client.submit(
                        process, out["source"], out["trace"], out["size"], base,
                        list(policies), events, key=key, pure=False))
    except BaseException:
        for future in [*hashes, *pending.futures]:
            future.cancel()
        raise
    finally:
        result.elapsed_ns = time.perf_counter_ns() - start
    return result


def _batches(sources: Sequence[str], workers: int) -> list[list[str]]:
    """``sources`` in order, cut into batches of at most :data:`HASH_BATCH`, and small
    enough that every worker gets about four."""
    size = max(1, min(HASH_BATCH, len(sources) // (4 * workers)))
    return [list(sources[i:i + size]) for i in range(0, len(sources), size)]


def _outcomes(future: Any, root: str,
              owner: dict[str, list[tuple[str, str]]]) -> list[dict[str, Any]]:
    """The dicts of a hashing task (one per input) or of a replay task (one); a task the
    cluster lost for good (the workers running it kept dying: ``KilledWorker``) becomes an
    error row for each of its traces, committed here."""
    try:
        out: dict[str, Any] | list[dict[str, Any]] = future.result()
    except Exception as exc:  # noqa: BLE001 - a lost task is its traces' error, not the fleet's
        message = " ".join(str(exc).split())
        rows = []
        for source, trace_id in owner[str(future.key)]:
            row: dict[str, Any] = {f.name: None for f in TRACES_SCHEMA}
            row.update(path=source, policies=[], status="error",
                       error=f"{source}: {type(exc).__name__}: {message}")
            commit(Path(root), trace_id,
                   {TRACES: pa.Table.from_pylist([row], schema=TRACES_SCHEMA)})
            rows.append({"kind": "row", "trace": trace_id, "reused": False, **row})
        return rows
    return out if isinstance(out, list) else [out]


def _token() -> str:
    return os.urandom(4).hex()

