"""The hooks the message path calls: one call per event, each a few counter increments, a
context binding for the logs and, only when tracing is on, a span.

Kept cheap on purpose (no I/O, no per-call registry lookups: label children are cached), so
that the bus, the orchestrator and the ledger can call them on every message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Protocol

from common.observability import logs, metrics, tracing
from common.settings import Settings
from common.terms import ENDED, TAKEN_PREFIX, AbortReason, Restored, SagaStatus, Taken

log = logging.getLogger("checkout.trace")

_service = "service"
_log_messages = False
_children: dict[tuple[Any, ...], Any] = {}

# The saga the current HTTP request started: (saga name, perf_counter at start, its span).
_begun: ContextVar[tuple[str, float, Any] | None] = ContextVar("saga_begun", default=None)

_ABORT_REASONS = frozenset(AbortReason)


class _Step(Protocol):
    @property
    def name(self) -> str: ...


class _Definition(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def steps(self) -> tuple[_Step, ...]: ...


def configure(settings: Settings) -> None:
    """Logs, tracing and the labels this process puts on its metrics (at startup)."""
    global _service, _log_messages
    _service = settings.service_name
    _log_messages = settings.log_messages
    _children.clear()
    logs.configure(settings)
    tracing.configure(settings)


def _child(metric: Any, *labels: str) -> Any:
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


# --- the HTTP edge ----------------------------------------------------------------------------
def http_answered(service: str, route: str, method: str, status: int, seconds: float) -> None:
    _child(metrics.HTTP_REQUESTS, service, route, method, str(status)).inc()
    _child(metrics.HTTP_LATENCY, service, route, method).observe(seconds)


# --- the bus ----------------------------------------------------------------------------------
def headers(message: Any) -> list[tuple[str, bytes]]:
    """The Kafka headers of an outgoing message: its trace context."""
    kind = type(message)
    _child(metrics.MESSAGES_PUBLISHED, _service, kind.__name__).inc()
    trace_id = tracing.trace_of(message)
    if _log_messages or message.notable:
        log.info(
            "sent %s%s",
            kind.__name__,
            f" ({message.reason})" if getattr(message, "reason", "") else "",
            extra={"saga_id": message.saga_id, "trace_id": trace_id, "order_id": message.order_id},
        )
    return [
        (tracing.TRACEPARENT, tracing.traceparent(trace_id, tracing.outgoing_span(message.saga_id)))
    ]


def received(message: Any, record_headers: Any) -> None:
    """A consumed record was decoded into ``message`` (its header matters only to tracing)."""
    tracing.received(message, record_headers)


def poison(consumer: str, topic: str, partition: int, offset: int, error: Exception) -> None:
    """A record that is no message of its topic was skipped."""
    _child(metrics.POISON_MESSAGES, _service, consumer, topic).inc()
    log.error(
        "%s: record %s/%d@%d is no message of its topic, skipped: %s",
        consumer,
        topic,
        partition,
        offset,
        error,
    )


class handling:  # lower case: used as ``with telemetry.handling(...)``
    """Around one handler call: the logs carry the message's saga and trace ids, the handled
    message is counted (and its error, if any), and a span is made when tracing is on."""

    __slots__ = ("_consumer", "_message", "_token", "_span")

    def __init__(self, consumer: str, message: Any) -> None:
        self._consumer = consumer
        self._message = message

    def __enter__(self) -> None:
        message = self._message
        self._token = logs.bind(message.saga_id, tracing.trace_of(message))
        self._span = tracing.consumer_span(self._consumer, message) if tracing.enabled() else None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        name = type(self._message).__name__
        _child(metrics.MESSAGES_HANDLED, _service, self._consumer, name).inc()
        if kind is not None:
            _child(metrics.HANDLER_ERRORS, _service, self._consumer, name, kind.__name__).inc()
        elif _log_messages:
            log.info("handled %s", name)
        if self._span is not None:
            tracing.end_span(self._span, error)
        logs.unbind(self._token)


# --- the saga orchestrator (order) -------------------------------------------------------------
def saga_reply(
    definition: _Definition,
    index: int,
    kind: str,
    to: tuple[str, int] | None,
    compensating: Iterable[int] = (),
) -> None:
    """A participant's reply was applied to the saga log (it stands at ``to`` now), or found
    stale (``to`` None); ``compensating`` are the steps whose compensations it sends."""
    if to is None:
        _child(metrics.DEDUP_HITS, _service, "reply").inc()
        return
    name = definition.name
    _child(metrics.SAGA_REPLIES, name, definition.steps[index].name, kind).inc()
    for step in compensating:
        _child(metrics.SAGA_COMPENSATIONS, name, definition.steps[step].name).inc()
    if to[0] in ENDED:
        _child(metrics.SAGA_FINISHED, name, to[0]).inc()


def saga_aborted(definition: _Definition, steps: Iterable[int], saga_id: str, reason: str) -> None:
    """A running saga was turned back (the compensations of ``steps`` are being sent)."""
    logs.bind(saga_id, tracing.trace_id_for(saga_id))
    label = reason if reason in _ABORT_REASONS else AbortReason.OTHER
    _child(metrics.SAGA_ABORTS, definition.name, label).inc()
    for step in steps:
        _child(metrics.SAGA_COMPENSATIONS, definition.name, definition.steps[step].name).inc()


def swept(saga: str, action: str, saga_id: str) -> None:
    """The sweeper re-sends a step (``resend``) or found a saga past its deadline (``abort``)."""
    logs.bind(saga_id, tracing.trace_id_for(saga_id))
    metric = metrics.SWEEPER_RESENDS if action == "resend" else metrics.SWEEPER_ABORTS
    _child(metric, saga).inc()


def saga_begun(saga: str, found: str, saga_id: str) -> None:
    """The checkout request started (``found == "started"``) or found a saga; the rest of the
    request logs its ids, and the saga's duration is measured from here."""
    _child(metrics.SAGA_REQUESTS, saga, found).inc()
    if not saga_id:
        return
    trace_id = tracing.trace_id_for(saga_id)
    logs.bind(saga_id, trace_id)  # for the rest of this request's task
    if found == "started":
        span = None
        if tracing.enabled():
            span = tracing.start_span(f"{saga} {saga_id}", saga_id, trace_id, kind="server")
        _begun.set((saga, time.perf_counter(), span))


def saga_answered(paid: bool) -> None:
    """The checkout request got its verdict."""
    begun = _begun.get()
    if begun is None:
        return
    _begun.set(None)
    saga, started, span = begun
    outcome = SagaStatus.SUCCEEDED if paid else SagaStatus.FAILED
    _child(metrics.SAGA_DURATION, saga, outcome).observe(time.perf_counter() - started)
    tracing.end_span(span)


def request_done() -> None:
    """End of an HTTP request: a checkout span still open (the request failed) is closed."""
    begun = _begun.get()
    if begun is not None:
        _begun.set(None)
        tracing.end_span(begun[2])


# --- the ledger (stock, payment) ---------------------------------------------------------------
def took(ledger: str, result: Taken) -> None:
    """A take answered ``result`` (its operation record's code)."""
    _child(metrics.LEDGER_TAKES, ledger, result.label).inc()


def restored(ledger: str, before: bytes | None) -> None:
    """A compensation found the operation record ``before`` (restore.lua's reply)."""
    if before is None:
        result = Restored.TOMBSTONED
    elif before.startswith(TAKEN_PREFIX.encode()):
        result = Restored.REFUNDED
    elif before == Taken.REFUSED.value.encode():
        result = Restored.REPEATED
        _child(metrics.DEDUP_HITS, _service, "compensation").inc()
    else:
        result = Restored.NOTHING
    _child(metrics.LEDGER_COMPENSATIONS, ledger, result).inc()
