"""The trace context: one trace id per saga (derived from the saga id, so re-sends and aborts
keep it), a W3C traceparent header on every message, and, with OpenTelemetry on, spans that
chain across a producer and a consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common.messages import StockUpdated, StockUpdateRequested
from common.observability import logs, telemetry, tracing
from common.saga import SagaRun
from common.saga.state import SagaState
from common.settings import load_settings
from order.saga import CHECKOUT


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    token = logs._ids.set(None)
    yield
    tracing.shutdown()
    logs._ids.reset(token)


def test_trace_id_is_a_function_of_the_saga_id() -> None:
    one = tracing.trace_id_for("o:1:aa")
    assert one == tracing.trace_id_for("o:1:aa") and len(one) == 32
    assert int(one, 16) != 0
    assert one != tracing.trace_id_for("o:2:aa")


def test_every_saga_run_carries_its_trace_id() -> None:
    """A re-send built from the saga state alone has the same trace id as the first command."""
    first = SagaRun(saga_id="o:1:aa", entity_id="o", snapshot={}, trace_id="")
    state = SagaState("o:1:aa", "running", 0, 0, 0, 0, {"items": "[]"}, "", 0)
    resent = state.run("o")
    assert first.trace_id == resent.trace_id == tracing.trace_id_for("o:1:aa")
    command = CHECKOUT.steps[0].command(resent)
    assert command.trace_id == first.trace_id
    given = SagaRun(saga_id="o:1:aa", entity_id="o", snapshot={}, trace_id="c" * 32)
    assert given.trace_id == "c" * 32


def test_traceparent_round_trip_and_garbage() -> None:
    value = tracing.traceparent("a" * 32, "b" * 16)
    assert value == b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"
    assert tracing.parse_traceparent(value) == ("a" * 32, "b" * 16)
    for bad in (None, b"", b"00-xyz-abc-01", b"00-" + b"0" * 32 + b"-" + b"b" * 16 + b"-01"):
        assert tracing.parse_traceparent(bad) is None
    assert tracing.header([("other", b"x"), ("traceparent", value)]) == value
    assert tracing.header(None) is None


def test_headers_carry_the_messages_trace_id_with_a_fresh_span() -> None:
    message = StockUpdated(saga_id="o:1:aa", order_id="o", trace_id="d" * 32)
    ((_, first),) = telemetry.headers(message)
    ((_, second),) = telemetry.headers(message)
    assert tracing.parse_traceparent(first)[0] == "d" * 32  # type: ignore[index]
    assert first != second  # without tracing, each send names a new span
    legacy = StockUpdated(saga_id="o:1:aa", order_id="o")  # a message without a trace id
    ((_, derived),) = telemetry.headers(legacy)
    assert tracing.parse_traceparent(derived)[0] == tracing.trace_id_for("o:1:aa")  # type: ignore[index]


def test_tracing_is_off_by_default_and_refuses_unknown_exporters() -> None:
    tracing.configure(load_settings({}))
    assert not tracing.enabled()
    assert tracing.start_span("x", "o:1:aa", "a" * 32, kind="server") is None
    with pytest.raises(ValueError, match="OTEL_EXPORTER"):
        tracing.configure(load_settings({"OTEL_EXPORTER": "jaeger"}))


def test_spans_chain_from_the_checkout_to_the_participant() -> None:
    """Order's checkout span is the parent named in the first command's header; stock's span
    for that command is its child, in the saga's trace."""
    exporter = InMemorySpanExporter()
    tracing.configure(load_settings({"SERVICE_NAME": "order"}), exporter=exporter)
    saga_id = "o:1:aa"
    trace_id = tracing.trace_id_for(saga_id)
    command = StockUpdateRequested(saga_id=saga_id, order_id="o", trace_id=trace_id, items=())

    async def checkout_then_consume() -> None:
        telemetry.saga_begun("checkout", "started", saga_id)  # the HTTP request's span
        headers = telemetry.headers(command)  # order publishes the first command
        telemetry.received(command, headers)  # stock reads it
        with telemetry.handling("stock", command):
            pass
        telemetry.saga_answered(True)

    asyncio.run(checkout_then_consume())
    spans = {span.name: span for span in exporter.get_finished_spans()}
    root, child = spans[f"checkout {saga_id}"], spans["stock StockUpdateRequested"]
    assert f"{root.context.trace_id:032x}" == trace_id
    assert root.parent is None
    assert child.context.trace_id == root.context.trace_id
    assert child.parent is not None and child.parent.span_id == root.context.span_id
    assert child.attributes is not None and child.attributes["saga.id"] == saga_id


def test_a_failed_handler_marks_its_span() -> None:
    exporter = InMemorySpanExporter()
    tracing.configure(load_settings({}), exporter=exporter)
    message = StockUpdated(saga_id="o:1:aa", order_id="o")
    with pytest.raises(KeyError), telemetry.handling("orchestrator", message):
        raise KeyError("x")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    assert span.parent is None  # no header was read: a root span in the saga's trace
    assert f"{span.context.trace_id:032x}" == tracing.trace_id_for("o:1:aa")
