"""Inputs for the fleet tests and a way to compare two datasets partition by partition.

The inputs are real and model-made traces: the hand-written traces of sample_traces (each
written from the kernel's print formats), a trace-cmd trace.dat, traces the model emitted
with ``scenario --emit-trace`` (model -> emitted trace -> reader -> derivation -> model),
a truncated trace.dat and bytes that are no trace at all.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from replay.compare import run_scenario

SAMPLES = Path(__file__).resolve().parents[2] / "sample_traces"
MiB = 1 << 20


@contextmanager
def local_client() -> Iterator[Any]:
    """A client of a LocalCluster the fleet tests share: 2 worker processes, 1 thread each."""
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=40) as cluster, \
            distributed.Client(cluster) as c:
        yield c


def make_inputs(folder: Path, emitted: int = 3) -> dict[str, Path]:
    """Write the fleet's inputs under ``folder``; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for src in sorted((SAMPLES / "handwritten").glob("*.txt")):
        out[src.stem] = Path(shutil.copy(src, folder / src.name))
    out["dat"] = Path(shutil.copy(SAMPLES / "tc_kvm.head.dat", folder / "host-dat.dat"))
    for i in range(emitted):
        path = folder / f"host-emitted-{i}.txt"
        run_scenario("max-guest-memory", policies=["6.9"], memory=2 * MiB, slot_size=MiB,
                     vcpus=1 + i, emit_trace=path)
        out[path.stem] = path
    truncated = folder / "host-truncated.dat"
    truncated.write_bytes((SAMPLES / "tc_kvm.head.dat").read_bytes()[:300_000])
    out["truncated"] = truncated
    garbage = folder / "host-garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 64)
    out["garbage"] = garbage
    return out


def partitions(root: Path) -> dict[str, pa.Table]:
    """``<table>/trace=<id>`` -> its table, for every partition of the dataset ``root``."""
    return {str(p.parent.relative_to(root)): pq.read_table(p)
            for p in sorted(root.glob("*/trace=*/*.parquet"))}


def assert_same_dataset(got: Path, want: Path) -> None:
    """Same partitions (none lost, none extra), each with the same rows; no staging left."""
    a, b = partitions(got), partitions(want)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].equals(b[key]), key
    assert [p.name for p in got.glob("*/trace=*/*")] == ["part-0.parquet"] * len(a)
    assert not any(got.glob(".staging/*"))
