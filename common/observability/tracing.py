"""Trace context of a saga, across the three services.

Every saga has one trace id, a hash of its saga id (``trace_id_for``): the orchestrator, a
sweeper re-send, an abort or an operator's retry all derive the same one from the saga state
alone, so one checkout is one trace whatever path its messages took. Every message carries it
(``Message.trace_id``) and every Kafka record also has a W3C ``traceparent`` header.

OpenTelemetry spans are made only when ``OTEL_EXPORTER`` is ``console`` or ``otlp``; with the
default ``none`` the SDK is not even imported, and the hot path pays a hash and a header.
"""

from __future__ import annotations

import hashlib
import random
import sys
from contextvars import ContextVar
from typing import Any

from common.settings import Settings

TRACEPARENT = "traceparent"
EXPORTERS = ("none", "console", "otlp")
_MAX_REMEMBERED = 50_000


def trace_id_for(saga_id: str) -> str:
    """The saga's trace id: 32 hex digits, the same wherever it is computed."""
    return hashlib.blake2b(saga_id.encode(), digest_size=16).hexdigest()


def trace_of(message: Any) -> str:
    """The trace id a message carries (derived from its saga id if it carries none)."""
    trace_id: str = message.trace_id
    return trace_id if len(trace_id) == 32 else trace_id_for(message.saga_id)


def traceparent(trace_id: str, span_id: str) -> bytes:
    return f"00-{trace_id}-{span_id}-01".encode()


def parse_traceparent(value: bytes | str | None) -> tuple[str, str] | None:
    """(trace id, parent span id) of a ``traceparent`` value, or None if it is not one."""
    if value is None:
        return None
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    parts = text.strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        if int(parts[1], 16) == 0 or int(parts[2], 16) == 0:
            return None
    except ValueError:
        return None
    return parts[1], parts[2]


def header(headers: Any) -> bytes | None:
    """The ``traceparent`` value among a record's headers (a sequence of (key, value))."""
    for key, value in headers or ():
        if key == TRACEPARENT:
            return bytes(value)
    return None


def random_span_id() -> str:
    return f"{random.getrandbits(64) or 1:016x}"


# --- OpenTelemetry, only when enabled --------------------------------------------------------
_forced_trace: ContextVar[int | None] = ContextVar("forced_trace", default=None)


class _Otel:
    """The SDK objects while tracing is on."""

    def __init__(self, provider: Any, tracer: Any) -> None:
        self.provider = provider
        self.tracer = tracer
        # id(message) -> (its saga id, the header's trace id and span id)
        self.remote: dict[int, tuple[str, str, str]] = {}
        self.last_span: dict[str, str] = {}  # saga id -> span that produced its next message


_otel: _Otel | None = None


def enabled() -> bool:
    return _otel is not None


def configure(settings: Settings, exporter: Any = None) -> None:
    """Turn tracing on per ``settings.otel_exporter`` (or with ``exporter``, for tests: spans
    are then exported synchronously), or off."""
    global _otel
    shutdown()
    kind = settings.otel_exporter
    if kind not in EXPORTERS:
        raise ValueError(f"OTEL_EXPORTER must be one of {EXPORTERS}, got {kind!r}")
    if exporter is None and kind == "none":
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class SagaIds(RandomIdGenerator):
        """Random ids, except that a span begun for a saga gets the saga's trace id."""

        def generate_trace_id(self) -> int:
            forced = _forced_trace.get()
            return forced if forced is not None else super().generate_trace_id()

    resource = Resource.create(
        {"service.name": settings.service_name, "service.instance.id": settings.worker_id}
    )
    provider = TracerProvider(resource=resource, id_generator=SagaIds())
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
    _otel = _Otel(provider, provider.get_tracer("checkout"))


def _exporter(settings: Settings) -> Any:
    if settings.otel_exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # One line per span, on stdout next to the JSON logs.
        return ConsoleSpanExporter(
            out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=settings.otel_endpoint or None)


def shutdown() -> None:
    """Flush and turn tracing off (safe to call twice)."""
    global _otel
    otel, _otel = _otel, None
    if otel is not None:
        otel.provider.shutdown()


def received(message: Any, headers: Any) -> None:
    """Remember the ``traceparent`` of a consumed record until its message is handled."""
    otel = _otel
    if otel is None:
        return
    context = parse_traceparent(header(headers))
    if context is not None:
        if len(otel.remote) > _MAX_REMEMBERED:
            otel.remote.clear()
        otel.remote[id(message)] = (message.saga_id, *context)


def outgoing_span(saga_id: str) -> str:
    """The span id to put in the header of a message of this saga."""
    otel = _otel
    if otel is not None:
        span_id = otel.last_span.get(saga_id)
        if span_id is not None:
            return span_id
    return random_span_id()


def start_span(
    name: str,
    saga_id: str,
    trace_id: str,
    *,
    kind: str,
    parent_span: str | None = None,
    start_time_ns: int | None = None,
    attributes: dict[str, str] | None = None,
) -> Any:
    """A span in the saga's trace (None when tracing is off): a child of ``parent_span`` if
    given, else a root span whose trace id is ``trace_id``. Messages this process sends for
    the saga next name it as their parent."""
    otel = _otel
    if otel is None:
        return None
    from opentelemetry import trace

    span_kind = {"server": trace.SpanKind.SERVER, "consumer": trace.SpanKind.CONSUMER}[kind]
    context = None
    token = None
    if parent_span is not None:
        parent = trace.SpanContext(
            int(trace_id, 16),
            int(parent_span, 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
    else:
        token = _forced_trace.set(int(trace_id, 16))
    try:
        span = otel.tracer.start_span(
            name,
            context=context,
            kind=span_kind,
            attributes={"saga.id": saga_id, **(attributes or {})},
            start_time=start_time_ns,
        )
    finally:
        if token is not None:
            _forced_trace.reset(token)
    if len(otel.last_span) > _MAX_REMEMBERED:
        otel.last_span.clear()
    otel.last_span[saga_id] = f"{span.get_span_context().span_id:016x}"
    return span


def consumer_span(consumer: str, message: Any) -> Any:
    """The span of handling one consumed message, child of the span that sent it."""
    otel = _otel
    if otel is None:
        return None
    remote = otel.remote.pop(id(message), None)
    if remote is not None and remote[0] != message.saga_id:  # an id reused: not this message's
        remote = None
    return start_span(
        f"{consumer} {type(message).__name__}",
        message.saga_id,
        remote[1] if remote is not None else trace_of(message),
        kind="consumer",
        parent_span=remote[2] if remote is not None else None,
        attributes={"order.id": message.order_id, "messaging.consumer": consumer},
    )


def end_span(span: Any, error: BaseException | None = None) -> None:
    if span is None:
        return
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()
