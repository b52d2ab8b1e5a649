"""Metrics, traces and logs on the live stack: the metrics move when checkouts happen, the
gateway hides /metrics, and one checkout's trace id crosses the three services (in the Kafka
headers, in every message, in the HTTP answer and in each service's JSON logs)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from common.messages import (
    ALL_TOPICS,
    ORDER_STATUS_UPDATE,
    STOCK,
    STOCK_PROCESSING,
    CheckoutFinished,
    StockCompensationRequested,
    StockUpdated,
    decode,
    encode,
)
from common.observability.tracing import header, parse_traceparent
from test.client import Api, until
from test.conftest import Stack
from test.system.ops import SERVICES, admin, delta, scrape, warm_up, workers

CHECKOUT_ROUTE = "/checkout/<order_id>"


@pytest.fixture(scope="module", autouse=True)
async def warm(api: Api) -> None:
    await warm_up(api)


async def test_metrics_move_when_checkouts_happen(api: Api, stack: Stack) -> None:
    item = await api.item(price=2, stock=10)
    scarce = await api.item(price=1, stock=0)
    rich = await api.user(credit=100)
    poor = await api.user(credit=1)
    paid = [await api.order(rich, [(item, 1)]) for _ in range(3)]
    no_credit = await api.order(poor, [(item, 1)])
    no_stock = await api.order(rich, [(scarce, 1)])
    before = {service: await scrape(stack, service) for service in SERVICES}

    replies = await asyncio.gather(*(api.post(f"/orders/checkout/{o}") for o in paid))
    assert [r.status for r in replies] == [200, 200, 200]
    assert (await api.post(f"/orders/checkout/{no_credit}")).status == 400
    assert (await api.post(f"/orders/checkout/{no_stock}")).status == 400
    after = {service: await scrape(stack, service) for service in SERVICES}

    def moved(where: str, name: str, **labels: str) -> float:
        return delta(before[where], after[where], name, **labels)

    route = {"service": "order", "route": CHECKOUT_ROUTE, "method": "POST"}
    assert moved("order", "http_requests_total", **route, status="200") >= 3
    assert moved("order", "http_requests_total", **route, status="400") >= 2
    assert moved("order", "http_request_duration_seconds_count", **route) >= 5
    saga = {"saga": "checkout"}
    assert moved("order", "saga_requests_total", **saga, found="started") >= 5
    assert moved("order", "saga_finished_total", **saga, outcome="succeeded") >= 3
    assert moved("order", "saga_finished_total", **saga, outcome="failed") >= 2
    assert moved("order", "saga_duration_seconds_count", **saga, outcome="succeeded") >= 3
    assert moved("order", "saga_duration_seconds_count", **saga, outcome="failed") >= 2
    assert moved("order", "saga_replies_total", **saga, step="charge_user", kind="failed") >= 1
    assert moved("order", "saga_replies_total", **saga, step="reserve_stock", kind="failed") >= 1
    assert moved("order", "saga_compensations_total", **saga, step="reserve_stock") >= 1
    assert moved("stock", "ledger_takes_total", ledger="item", result="taken") >= 4
    assert moved("stock", "ledger_takes_total", ledger="item", result="short") >= 1
    assert moved("stock", "ledger_compensations_total", ledger="item", result="refunded") >= 1
    assert moved("payment", "ledger_takes_total", ledger="user", result="taken") >= 3
    assert moved("payment", "ledger_takes_total", ledger="user", result="short") >= 1
    handled = {"consumer": "stock", "type": "StockUpdateRequested"}
    assert moved("stock", "bus_messages_handled_total", **handled) >= 5
    assert moved("order", "bus_messages_published_total", type="CheckoutFinished") >= 5

    # Consumer lag is sampled per consumer and topic (every few seconds).
    lag_topics = {
        "order": {"STOCK_PROCESSING", "PAYMENT_PROCESSING", "ORDER_STATUS_UPDATE"},
        "stock": {"STOCK"},
        "payment": {"PAYMENT"},
    }
    for service, topics in lag_topics.items():
        seen = {
            dict(labels)["topic"]
            for (name, labels) in after[service]
            if name == "bus_consumer_lag" and dict(labels)["service"] == service
        }
        assert topics <= seen, (service, seen)


async def test_dedup_hits_are_counted(api: Api, stack: Stack, producer: AIOKafkaProducer) -> None:
    """A replayed reply (order drops it) and a repeated compensation (stock changes nothing)."""
    item = await api.item(price=1, stock=5)
    user = await api.user(credit=10)
    order = await api.order(user, [(item, 1)])
    assert (await api.post(f"/orders/checkout/{order}")).status == 200
    _, report = await admin(stack, "show", order)
    saga = report["saga"]["saga_id"]
    before = {s: await scrape(stack, s) for s in ("order", "stock")}

    ids = {"saga_id": saga, "order_id": order, "trace_id": ""}
    await producer.send_and_wait(STOCK_PROCESSING, encode(StockUpdated(**ids)), key=order.encode())
    other = {**ids, "saga_id": f"dedup-{uuid.uuid4().hex}"}
    compensation = StockCompensationRequested(**other, items=((item, 1),))
    for _ in range(2):
        await producer.send_and_wait(STOCK, encode(compensation), key=order.encode())

    async def counted() -> bool:
        order_now = await scrape(stack, "order")
        stock_now = await scrape(stack, "stock")
        return (
            delta(before["order"], order_now, "dedup_hits_total", kind="reply") >= 1
            and delta(before["stock"], stock_now, "dedup_hits_total", kind="compensation") >= 1
            and delta(
                before["stock"],
                stock_now,
                "ledger_compensations_total",
                ledger="item",
                result="tombstoned",
            )
            >= 1
        )

    await until(counted, within=20)
    assert (await api.stock(item), await api.credit(user), await api.paid(order)) == (4, 9, True)


async def test_gateway_hides_metrics(gateway_url: str, stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        for prefix in ("orders", "payment", "stock"):
            for path in (f"/{prefix}/metrics", f"/{prefix}/metrics/", f"/{prefix}/metrics?x=1"):
                async with session.get(gateway_url + path) as reply:
                    assert reply.status == 404, path
        address = workers(stack, "order")[0]
        async with session.get(f"http://{address}/metrics") as reply:
            assert reply.status == 200
            assert reply.content_type == "text/plain"
            assert "http_requests_total" in await reply.text()
        # Whatever comes through a proxy (it sets these) is refused by the service itself.
        for name in ("X-Request-Id", "X-Forwarded-For"):
            async with session.get(f"http://{address}/metrics", headers={name: "abc"}) as reply:
                assert reply.status == 404, name


async def test_one_trace_id_crosses_the_three_services(
    api: Api, gateway_url: str, stack: Stack
) -> None:
    """A checkout that reserves stock, fails at payment and gives the stock back: every
    message of it, on all five topics, carries one trace id in its body and in its
    ``traceparent`` header; the HTTP answer names it; each service's log has it."""
    item = await api.item(price=5, stock=10)
    user = await api.user(credit=1)
    order = await api.order(user, [(item, 1)])
    consumer = await _tail(stack)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{gateway_url}/orders/checkout/{order}") as reply,
        ):
            assert reply.status == 400
            trace_id = reply.headers["X-Trace-Id"]
        records = await _records_of(consumer, order)
    finally:
        await consumer.stop()

    messages = [decode(record.topic, record.value) for record in records]
    assert {record.topic for record in records} == set(ALL_TOPICS), records
    # The reservation and its compensation (a slow step may also have been re-sent by the
    # sweeper: a re-send carries the same trace id, derived from the saga id).
    kinds = {type(message).__name__ for message in messages}
    assert {"StockUpdateRequested", "StockCompensationRequested", "PaymentFailed"} <= kinds
    for record, message in zip(records, messages, strict=True):
        assert message.trace_id == trace_id, (record.topic, message)
        context = parse_traceparent(header(record.headers))
        assert context is not None and context[0] == trace_id, record.headers
    _, report = await admin(stack, "show", order)
    assert report["saga"]["trace_id"] == trace_id

    logs = Path(stack.env()["STATE_DIR"]) / "logs"
    await until(lambda: _logged_in_every_service(logs, trace_id), within=10)


async def _tail(stack: Stack) -> AIOKafkaConsumer:
    """A consumer of every partition of every topic, positioned at the end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.env()["KAFKA_BOOTSTRAP_SERVERS"],
        enable_auto_commit=False,
        auto_offset_reset="latest",
    )
    consumer.subscribe(list(ALL_TOPICS))  # no group: every partition, from the end
    await consumer.start()
    await until(lambda: _assigned(consumer), within=10)
    for tp in consumer.assignment():
        await consumer.position(tp)
    return consumer


async def _assigned(consumer: AIOKafkaConsumer) -> bool:
    return {tp.topic for tp in consumer.assignment()} == set(ALL_TOPICS)


async def _records_of(consumer: AIOKafkaConsumer, order: str) -> list[ConsumerRecord]:
    """The order's records, until its outcome has been read."""
    found: list[ConsumerRecord] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while loop.time() < end:
        batch = await consumer.getmany(timeout_ms=200)
        for records in batch.values():
            found += [r for r in records if r.key == order.encode()]
        if any(
            r.topic == ORDER_STATUS_UPDATE
            and isinstance(decode(r.topic, r.value), CheckoutFinished)
            for r in found
        ):
            return sorted(found, key=lambda r: r.timestamp)
    raise AssertionError(f"no outcome of {order} on the bus: {found}")


def _lines_with(path: Path, trace_id: str) -> list[dict[str, object]]:
    lines = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if trace_id in line and line.startswith("{"):
                lines.append(json.loads(line))
    return lines


async def _logged_in_every_service(logs: Path, trace_id: str) -> bool:
    return await asyncio.to_thread(_in_every_log, logs, trace_id)


def _in_every_log(logs: Path, trace_id: str) -> bool:
    for service in SERVICES:
        lines = [
            line for path in logs.glob(f"{service}-*.log") for line in _lines_with(path, trace_id)
        ]
        if not any(line.get("trace_id") == trace_id for line in lines):
            return False
    return True
