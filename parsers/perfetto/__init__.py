"""Perfetto protobuf traces: the reader, the writer, wire decoding and the SQL bridge.

In: ``TracePacket`` streams (ftrace bundles, both generic-event encodings, compact sched,
compressed packets); out: batches in the schemas of :mod:`parsers.schema` — and back, a
:class:`~parsers.trace.Trace` written as traced_probes would. Never imports ``replay``.
"""
