"""Redelivery: every command and reply published again (and out of order where the protocol
allows) changes nothing. Messages are published straight to the broker, as a redelivery or a
sweeper re-send would; a later marker message on the same key tells when they were consumed."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import TypedDict

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from redis.asyncio.cluster import RedisCluster

from common import messages as m
from common.messages import Message, encode
from test.client import Api, until
from test.conftest import Stack


async def publish(producer: AIOKafkaProducer, topic: str, *messages: Message) -> None:
    for message in messages:
        await producer.send_and_wait(topic, encode(message), key=message.order_id.encode())


class Ids(TypedDict):
    """The fields that name a saga in every message."""

    saga_id: str
    order_id: str


def ids(order_key: str) -> Ids:
    return {"saga_id": f"redelivery-{uuid.uuid4().hex}", "order_id": order_key}


async def test_stock_commands_twice_and_reordered(api: Api, producer: AIOKafkaProducer) -> None:
    item = await api.item(price=1, stock=10)
    marker_item = await api.item(price=1, stock=10)
    key = uuid.uuid4().hex
    once = ids(key)
    reserve = m.StockUpdateRequested(**once, items=((item, 3),))
    await publish(producer, m.STOCK, reserve, reserve)
    # A compensation that arrives before its command leaves a tombstone: the command is refused.
    barred = ids(key)
    await publish(
        producer,
        m.STOCK,
        m.StockCompensationRequested(**barred, items=((item, 2),)),
        m.StockUpdateRequested(**barred, items=((item, 2),)),
        m.StockUpdateRequested(**barred, items=((item, 2),)),
    )
    await publish(producer, m.STOCK, m.StockUpdateRequested(**ids(key), items=((marker_item, 1),)))
    await until(lambda: _equals(api.stock(marker_item), 9))
    assert await api.stock(item) == 7
    # Compensating the first saga twice gives its 3 units back exactly once.
    release = m.StockCompensationRequested(**once, items=((item, 3),))
    await publish(producer, m.STOCK, release, release, reserve)
    await publish(producer, m.STOCK, m.StockUpdateRequested(**ids(key), items=((marker_item, 1),)))
    await until(lambda: _equals(api.stock(marker_item), 8))
    assert await api.stock(item) == 10


async def test_payment_commands_twice_and_reordered(api: Api, producer: AIOKafkaProducer) -> None:
    user = await api.user(credit=10)
    marker_user = await api.user(credit=10)
    key = uuid.uuid4().hex
    once = ids(key)
    charge = m.PaymentRequested(**once, user_id=user, amount=4)
    await publish(producer, m.PAYMENT, charge, charge)
    barred = ids(key)
    await publish(
        producer,
        m.PAYMENT,
        m.PaymentCancelRequested(**barred, user_id=user, amount=5),
        m.PaymentRequested(**barred, user_id=user, amount=5),
        m.PaymentRequested(**ids(key), user_id=marker_user, amount=1),
    )
    await until(lambda: _equals(api.credit(marker_user), 9))
    assert await api.credit(user) == 6
    cancel = m.PaymentCancelRequested(**once, user_id=user, amount=4)
    await publish(producer, m.PAYMENT, cancel, cancel, charge)
    marker = m.PaymentRequested(**ids(key), user_id=marker_user, amount=1)
    await publish(producer, m.PAYMENT, marker)
    await until(lambda: _equals(api.credit(marker_user), 8))
    assert await api.credit(user) == 10


async def test_replies_twice_change_nothing(
    api: Api, producer: AIOKafkaProducer, stack: Stack
) -> None:
    """Every reply type of a finished saga and of a failed one, replayed with the real saga ids:
    no state moves."""
    item = await api.item(price=2, stock=5)
    rich = await api.user(credit=100)
    poor = await api.user(credit=1)
    paid_order = await api.order(rich, [(item, 1)])
    failed_order = await api.order(poor, [(item, 1)])
    assert (await api.post(f"/orders/checkout/{paid_order}")).status == 200
    assert (await api.post(f"/orders/checkout/{failed_order}")).status == 400
    assert (await api.stock(item), await api.credit(rich), await api.credit(poor)) == (4, 98, 1)
    nodes = stack.env()["ORDER_REDIS_NODES"]
    for order_id in (paid_order, failed_order):
        base: Ids = {"saga_id": await saga_id_of(nodes, order_id), "order_id": order_id}
        await publish(
            producer,
            m.STOCK_PROCESSING,
            m.StockUpdated(**base),
            m.StockUpdateFailed(**base, reason="replayed"),
            m.StockCompensated(**base),
        )
        await publish(
            producer,
            m.PAYMENT_PROCESSING,
            m.PaymentCompleted(**base),
            m.PaymentFailed(**base, reason="replayed"),
            m.PaymentCancelled(**base),
        )
        await publish(producer, m.ORDER_STATUS_UPDATE, m.CheckoutFinished(**base, paid=True))
    # Markers: checkouts whose replies share the replays' partitions finish only after them.
    await api.ok("POST", f"/payment/add_funds/{poor}/1")
    assert (await api.post(f"/orders/checkout/{failed_order}")).status == 200
    marker = await order_on_partition_of(api, producer, rich, item, paid_order)
    assert (await api.post(f"/orders/checkout/{marker}")).status == 200
    assert await api.paid(paid_order)
    assert (await api.stock(item), await api.credit(rich), await api.credit(poor)) == (2, 96, 0)
    assert (await api.post(f"/orders/checkout/{paid_order}")).status == 200
    assert (await api.stock(item), await api.credit(rich)) == (2, 96)


async def saga_id_of(nodes: str, order_id: str) -> str:
    host, port = nodes.split(",")[0].rsplit(":", 1)
    async with RedisCluster(host=host, port=int(port)) as redis:
        saga_id = await redis.hget(f"{{order:{order_id}}}", "saga_id")
    assert isinstance(saga_id, bytes) and saga_id, order_id
    return saga_id.decode()


async def order_on_partition_of(
    api: Api, producer: AIOKafkaProducer, user: str, item: str, other: str
) -> str:
    partitions: list[int] = sorted(await producer.partitions_for(m.STOCK_PROCESSING))

    def partition(key: str) -> int:
        return partitions[(int(murmur2(key.encode())) & 0x7FFFFFFF) % len(partitions)]

    for _ in range(500):
        order_id = await api.order(user, [(item, 1)])
        if partition(order_id) == partition(other):
            return order_id
    raise AssertionError("no order landed on the partition")


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
