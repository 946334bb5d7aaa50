"""The discrete-event model of the TDP MMU root lifecycle, under each era's zap policy.

In: a :class:`~replay.model.workload.Workload`, a policy and a cost model; out: recorder
tables (blocks, refcount history, roots) in a :class:`~replay.result.ReplayResult`. Never
imports ``replay.infer``, ``replay.render`` or a ``parsers`` reader (``parsers.errors`` only).
"""
