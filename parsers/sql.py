"""SQL without a native helper: DuckDB over a trace's Arrow tables or a directory of tables.

:func:`query_tables` runs DuckDB SQL over Arrow tables, each registered as a view under its
own name (``events``, ``kvm_entry``, ...). :func:`dataset_views` finds the tables of a
directory kvm-mmu-replay wrote: a fleet dataset (``DIR/<table>/trace=<id>/part-*.parquet``,
the ``trace`` partition key a string column) or a ``parse``/``replay -o`` directory (one
``<table>.parquet|.feather|.arrow`` file per table); :func:`query_dataset` queries them.
DuckDB (a dependency, in-process) needs no binary: this is the default ``query`` engine, the
Perfetto trace processor (:mod:`parsers.perfetto.sql`) the optional one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.feather as feather

from parsers.errors import QueryError

__all__ = ["query_tables", "query_dataset", "dataset_views", "QueryError"]

#: Table file suffixes a ``parse``/``replay -o`` directory may hold (Parquet read by DuckDB).
_ARROW_SUFFIXES: Final = (".feather", ".arrow", ".ipc")


def _connect() -> Any:
    import duckdb

    return duckdb.connect()


def _run(con: Any, sql: str, where: str) -> pa.Table:
    import duckdb

    try:
        rel = con.sql(sql)
        if rel is None:  # a statement without a result (CREATE, SET, ...)
            return pa.table({})
        fetch = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table
        table: pa.Table = fetch()
    except duckdb.Error as exc:
        raise QueryError(where, _one_line(exc)) from None
    return table


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def query_tables(tables: Mapping[str, pa.Table], sql: str, *, where: str = "query") -> pa.Table:
    """Run DuckDB ``sql`` with each of ``tables`` a view under its name.

    Raises:
        QueryError: DuckDB refused or failed the query (its message, on one line, names
            ``where``).

    Examples:
        >>> import pyarrow as pa
        >>> query_tables({"t": pa.table({"x": [1, 2, 3]})}, "select max(x) m from t").to_pylist()
        [{'m': 3}]
    """
    con = _connect()
    for name, table in tables.items():
        con.register(name, table)
    return _run(con, sql, where)


def dataset_views(path: str | Path) -> dict[str, str]:
    """Table name → the DuckDB expression that reads it, for a directory of tables.

    Raises:
        QueryError: ``path`` is not a directory or holds no table kvm-mmu-replay reads.
    """
    root = Path(path)
    if not root.is_dir():
        raise QueryError(str(path), "not a directory of tables")
    views: dict[str, str] = {}
    for child in sorted(root.iterdir()):
        if child.name.startswith((".", "_")):
            continue
        if child.is_dir() and any(child.glob("trace=*/*.parquet")):
            glob = _quote(str(child / "trace=*" / "*.parquet"))
            views[child.name] = (f"read_parquet({glob}, hive_partitioning = true, "
                                 "hive_types = {'trace': VARCHAR}, union_by_name = true)")
        elif child.is_file() and child.suffix == ".parquet":
            views[child.stem] = f"read_parquet({_quote(str(child))})"
        elif child.is_file() and child.suffix in _ARROW_SUFFIXES:
            views[child.stem] = "arrow:" + str(child)
    if not views:
        raise QueryError(str(path), "holds no table: expected a fleet dataset "
                         "(<table>/trace=<id>/part-*.parquet) or <table>.parquet|.feather|.arrow "
                         "files")
    return views


def query_dataset(path: str | Path, sql: str) -> pa.Table:
    """Run DuckDB ``sql`` over the tables of directory ``path`` (see :func:`dataset_views`),
    each a view under its own name.

    Raises:
        QueryError: no tables there, or DuckDB refused or failed the query.
    """
    con = _connect()
    for name, expr in dataset_views(path).items():
        if expr.startswith("arrow:"):
            con.register(name, feather.read_table(expr.removeprefix("arrow:")))
        else:
            _run(con, f"create view {_ident(name)} as select * from {expr}", str(path))
    return _run(con, sql, str(path))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
