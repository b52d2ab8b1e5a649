"""The holes of issue 16 ("True answers at the edges"), one scripted interleaving each, on the
production saga code over the fakes. Each failed against the code of 06b336f; the contract they
check is the README's: 200 only once the order is paid, 400 only once it is not paid and holds
nothing, nothing lost or created."""

from __future__ import annotations

import asyncio

from aiokafka.structs import TopicPartition

from common.bus import ConsumerLoop
from common.errors import Refused
from common.messages import (
    PAYMENT_PROCESSING,
    PaymentCancelled,
    PaymentCompleted,
    StockCompensated,
    StockUpdated,
    encode,
)
from common.saga.sweeper import Sweeper
from order.saga import order_key
from test.unit.fake_bus import FakeBus
from test.unit.fake_redis import FakeRedis, master_of
from test.unit.scenario_kit import (
    DEADLINE_MS,
    STEP_MS,
    Clock,
    Hold,
    checkout_edge,
    checkout_saga,
    given,
    one_unpaid_order,
    until,
)


async def answered_paid(answer: asyncio.Task[None]) -> bool:
    try:
        await answer
    except Refused:
        return False
    return True


async def test_hole1_a_paid_answer_on_the_slow_start_rests_on_a_replica(clock: Clock) -> None:
    """The one-round-trip start fails (a WAIT that timed out, NOSCRIPT, MOVED...), so the
    start looks first: it finds the order paid by a move that no replica holds yet."""
    redis, hold = FakeRedis(clock), Hold()
    store, log, orchestrator = checkout_saga(redis, hold)
    order_id = one_unpaid_order(redis)
    started = await store.durable(lambda: orchestrator.start(order_id))
    ids = {"saga_id": started.saga_id, "order_id": order_id}
    await store.durable(lambda: orchestrator.on_reply(StockUpdated(**ids)))
    bus = FakeBus()
    consumer = ConsumerLoop(
        name="orchestrator",
        bus=bus,  # type: ignore[arg-type]
        store=store,  # type: ignore[arg-type]
        topics=[],
        group_id="order",
        handlers=orchestrator.handlers(),
    )
    # The payment's reply arrives late (past the deadline): the move to 'succeeded' is made on
    # the order's master, its barrier still pending.
    clock.ms += DEADLINE_MS
    reply = PaymentCompleted(**ids)
    bus.append(PAYMENT_PROCESSING, order_id.encode(), encode(reply))
    (topic, partition), *_ = [k for k, entries in bus.logs.items() if entries]
    batch = {TopicPartition(topic, partition): bus.records(topic, partition, 0, 1)}
    hold.rules[("O", "replicate")] = asyncio.Event()
    moving = asyncio.create_task(hold.run_as("O", consumer._process(batch)))
    await until(lambda: hold.parked.get("O", 0) >= 1, moving)
    given(redis.hget(order_key(order_id), b"paid") == b"1", "the move is on the master")
    # A second checkout of the order, on the slow start.
    store.one_round_trip = False
    answer = asyncio.create_task(hold.run_as("C", checkout_edge(orchestrator, store)(order_id)))
    await asyncio.wait({answer}, timeout=5.0)
    # The order's master fails over before the move was replicated.
    redis.failover(master_of(order_key(order_id)))
    moving.cancel()
    # The sweeper finds the saga past its deadline and turns it back; the participants comply.
    sweeper = Sweeper(orchestrator, store, bus, "order-0", interval_ms=500)  # type: ignore[arg-type]
    clock.ms += STEP_MS
    await sweeper.sweep()
    await store.durable(lambda: orchestrator.on_reply(PaymentCancelled(**ids)))
    await store.durable(lambda: orchestrator.on_reply(StockCompensated(**ids)))
    said_paid = await answered_paid(answer)
    paid = redis.hget(order_key(order_id), b"paid") == b"1"
    assert said_paid == paid, f"checkout answered paid={said_paid}, the order ends paid={paid}"
