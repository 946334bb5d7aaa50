"""Assemble typed-table record batches in their declared schema, whatever the reader."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc

from parsers.schema import PAGE_EVENTS, ROLE_BITS, decode_role_bits, typed_schema

__all__ = ["build_typed_batch"]


def build_typed_batch(
    name: str,
    *,
    seq: pa.Array,
    ts: pa.Array,
    cpu: pa.Array,
    pid: pa.Array,
    fields: Mapping[str, pa.Array],
) -> pa.RecordBatch:
    """A record batch of the typed table ``name`` from its prefix columns and decoded fields.

    Fields absent from ``fields`` are all-null (a rendering that drops a field yields null,
    never 0). Values are cast (safely) to the declared types. For the shadow-page events the
    role bit columns come from the ``role`` word where it is known, else from the bit
    columns the caller decoded from text (``level``, ``access``, ...), else null.
    """
    schema = typed_schema(name)
    n = len(seq)
    cols: dict[str, pa.Array] = {"seq": seq, "ts": ts, "cpu": cpu, "pid": pid}
    for fld in schema:
        if fld.name in cols:
            continue
        given = fields.get(fld.name)
        cols[fld.name] = pa.nulls(n, fld.type) if given is None else given
    if name in PAGE_EVENTS and cols["role"].null_count < n:
        decoded = decode_role_bits(cols["role"])
        for bit, _, _, typ in ROLE_BITS:
            cols[bit] = pc.coalesce(decoded[bit].cast(typ), cols[bit].cast(typ))
    arrays = [cols[f.name].cast(f.type) for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
