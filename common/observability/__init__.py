"""What an operator sees of a running service: ``metrics`` (the Prometheus series),
``monitoring`` (``/metrics``, request metrics, consumer lag), ``telemetry`` (the one-line hooks
the message path calls), ``tracing`` (a saga's trace id and spans) and ``logs`` (JSON logs
carrying saga and trace ids)."""
