"""Records that are no message of their topic (foreign bytes, an unknown message type, a record
with no value) published to every topic while checkouts run: each is logged, counted and
skipped; no consumer stops or stalls its partition, and every checkout gets a true answer."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import aiohttp
import msgspec
from aiokafka import AIOKafkaProducer

from common.messages import ALL_TOPICS
from test.client import Api, until
from test.conftest import Stack

POISON_PER_TOPIC = 3  # one of each kind below, each keyed to a partition of its own


def poison_records() -> list[bytes | None]:
    unknown_type = msgspec.msgpack.encode(
        {"type": "NoSuchMessage", "saga_id": "x", "order_id": "x"}
    )
    return [b"\xc1 not msgpack at all", unknown_type, None]


async def poison_seen(stack: Stack) -> Counter[str]:
    """bus_poison_messages_total by topic, summed over every worker."""
    seen: Counter[str] = Counter()
    env = stack.env()
    addresses = [a for s in ("ORDER", "STOCK", "PAYMENT") for a in env[f"{s}_WORKERS"].split(",")]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        for address in addresses:
            async with session.get(f"http://{address}/metrics") as reply:
                for line in (await reply.text()).splitlines():
                    if line.startswith("bus_poison_messages_total{"):
                        labels, value = line.rsplit(" ", 1)
                        topic = labels.split('topic="', 1)[1].split('"', 1)[0]
                        seen[topic] += int(float(value))
    return seen


async def test_poison_records_are_skipped_while_checkouts_run(api: Api, stack: Stack) -> None:
    before = await poison_seen(stack)
    item_id = await api.item(price=1, stock=30)
    users = [await api.user(credit=1) for _ in range(40)]
    orders = [await api.order(user, [(item_id, 1)]) for user in users]
    producer = AIOKafkaProducer(bootstrap_servers=stack.env()["KAFKA_BOOTSTRAP_SERVERS"])
    await producer.start()
    try:
        checkouts = [asyncio.ensure_future(api.post(f"/orders/checkout/{o}")) for o in orders]
        for topic in ALL_TOPICS:
            for value in poison_records():
                key = uuid.uuid4().hex.encode()
                await producer.send_and_wait(topic, value, key=key)
        replies = await asyncio.gather(*checkouts)
    finally:
        await producer.stop()
    assert Counter(r.status for r in replies) == {200: 30, 400: 10}
    paid = [await api.paid(o) for o in orders]
    assert paid == [r.status == 200 for r in replies]
    assert [await api.credit(u) for u in users] == [0 if p else 1 for p in paid]
    assert await api.stock(item_id) == 0

    async def all_counted() -> bool:
        seen = await poison_seen(stack)
        return all(seen[t] - before[t] >= POISON_PER_TOPIC for t in ALL_TOPICS)

    await until(all_counted, within=15)
    # The consumers went on: a checkout after the poison still works end to end.
    user = await api.user(credit=1)
    fresh_item = await api.item(price=1, stock=1)
    order = await api.order(user, [(fresh_item, 1)])
    assert (await api.post(f"/orders/checkout/{order}")).status == 200
