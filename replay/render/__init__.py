"""Results made visible: terminal tables, the HTML report, the Perfetto timeline, and the
kernel text a model run would have printed.

In: result tables (observed and replayed) or a model run; out: text, HTML, protobuf files.
Never imports a ``parsers`` reader or ``replay.infer``.
"""
