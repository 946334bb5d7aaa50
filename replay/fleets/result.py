"""What a fleet run returns: where its dataset is, and what happened to each input."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from parsers.trace import table_to_pandas
from replay.fleets.store import read_table, table_names

__all__ = ["FleetResult"]


@dataclass
class FleetResult:
    """The outcome of :func:`replay.fleets.fleet`.

    Attributes:
        dataset: the dataset directory (``<table>/trace=<id>/part-0.parquet``).
        rows: the ``traces`` row of each trace this run processed (plus ``trace``, its id,
            and ``reused``: an earlier attempt had committed it), in completion order.
        skipped: ``(source, trace id)`` of inputs already committed (``resume``).
        duplicates: ``(source, trace id)`` of inputs whose bytes equal an earlier input's
            (one trace, replayed once).
        elapsed_ns: wall time of the run.
        workers: Dask workers that ran it.
    """

    dataset: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    elapsed_ns: int = 0
    workers: int = 0

    @property
    def ok(self) -> int:
        """Traces of this run replayed without error."""
        return sum(r["status"] == "ok" for r in self.rows)

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The rows of this run's traces that failed (``path``, ``error``, ...)."""
        return [r for r in self.rows if r["status"] != "ok"]

    @property
    def events(self) -> int:
        """Events read by this run's traces."""
        return sum(r["events"] or 0 for r in self.rows)

    def tables(self) -> list[str]:
        """The dataset's tables."""
        return table_names(self.dataset)

    def table(self, name: str) -> pa.Table:
        """Table ``name`` of every committed trace (``trace`` column: its id).

        Raises:
            KeyError: the dataset has no such table.
        """
        if name not in self.tables():
            raise KeyError(f"no table {name!r} in {self.dataset}; have {self.tables()}")
        return read_table(self.dataset, name)

    def write_report(self, path: str | os.PathLike[str], *,
                     policies: Sequence[str] | None = None, force: bool = False) -> Path:
        """The dataset's fleet report, one self-contained HTML file
        (:func:`replay.fleets.report.write_fleet_report`)."""
        from replay.fleets.report import write_fleet_report

        return write_fleet_report(self.dataset, path, policies=policies, force=force)

    def to_pandas(self, name: str) -> pd.DataFrame:
        """:meth:`table` as a DataFrame (nullable integer columns stay integers)."""
        return table_to_pandas(self.table(name))
