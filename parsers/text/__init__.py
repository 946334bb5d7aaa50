"""Kernel ftrace text and ``trace-cmd report`` text → Arrow record batches.

In: a text trace (tracefs ``trace``/``trace_pipe``, every ``trace-cmd report`` layout the
grammar knows, gzip/xz/bzip2/zstd compressed). Out: batches in the declared schemas of
:mod:`parsers.schema`. Never imports another format's reader, ``parsers.recording`` or ``replay``.
"""
