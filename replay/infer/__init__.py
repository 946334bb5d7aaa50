"""From a parsed trace to what it shows: threads and VMs, observed blocks and roots, the
workload the trace implies, the kernel era, and the costs it measures.

In: :class:`parsers.trace.Trace` tables; out: observed tables and a model
:class:`~replay.model.workload.Workload` with evidence. May import ``replay.model`` and
``parsers``; never ``replay.render``.
"""
