"""Acquisition, not parsing: record kvm events from tracefs around a command.

In: a command to run and a preset of events; out: an ftrace text file (or a ``trace.dat``
through ``trace-cmd extract``) and a :class:`~parsers.recording.record.RecordReport`. Never
imports a reader or ``replay``; every tracefs file it changes is restored.
"""
