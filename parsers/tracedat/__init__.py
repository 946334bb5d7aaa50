"""trace-cmd ``trace.dat`` (versions 6 and 7) → Arrow record batches, natively.

In: the file's header, embedded event formats and per-CPU ring-buffer pages. Out: batches in
the declared schemas of :mod:`parsers.schema`, in the order ``trace-cmd report`` prints them.
Never imports another format's reader, ``parsers.recording`` or ``replay``.
"""
