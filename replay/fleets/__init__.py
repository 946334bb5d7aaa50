"""Fleet scale: many traces in, one hive-partitioned Parquet dataset out, on Dask.

:func:`fleet` takes files, directories, globs or URLs and a dataset directory, runs one
Dask task per trace (read, observe, derive, replay: :func:`replay.trace_replay.replay`) and
returns a :class:`FleetResult` (``.to_pandas(table)``). The dataset holds
``<table>/trace=<id>/part-0.parquet`` per trace, the id a hash of the trace's bytes, plus the
``traces`` table. Dask is the optional extra ``fleet``: this package imports without it and
:func:`fleet` raises :class:`~parsers.errors.MissingExtraError` when it is missing.
:mod:`replay.fleets.report` reads a dataset back, one trace at a time, into the fleet's HTML
page (``FleetResult.write_report``, ``kvm-mmu-replay report DATASET``).
"""

from replay.fleets.api import fleet
from replay.fleets.result import FleetResult

__all__ = ["fleet", "FleetResult"]
