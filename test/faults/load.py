"""A steady checkout load for fault tests: many clients check out fresh multi-item orders over
scarce stock and credit, recording every reply and the throughput over time."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from redis.asyncio.cluster import RedisCluster

from test.client import Api, until
from test.conftest import Stack


@dataclass
class Shop:
    """Items, users and orders made for one run, with what was given to them."""

    items: list[str]
    users: list[str]
    orders: dict[str, tuple[str, list[tuple[str, int]]]]  # order -> (user, lines)
    stock_each: int
    credit_each: int
    price: int

    @classmethod
    async def make(
        cls,
        api: Api,
        *,
        n_items: int,
        n_users: int,
        n_orders: int,
        stock_each: int,
        credit_each: int,
        price: int = 1,
    ) -> Shop:
        rng = random.Random()
        items = await asyncio.gather(*(api.item(price, stock_each) for _ in range(n_items)))
        users = await asyncio.gather(*(api.user(credit_each) for _ in range(n_users)))
        plans = []
        for _ in range(n_orders):
            lines = [(rng.choice(items), rng.randint(1, 2)), (rng.choice(items), 1)]
            plans.append((rng.choice(users), lines))
        sem = asyncio.Semaphore(100)

        async def make_order(user: str, lines: list[tuple[str, int]]) -> str:
            async with sem:
                return await api.order(user, lines)

        ids = await asyncio.gather(*(make_order(u, ls) for u, ls in plans))
        orders = {oid: plan for oid, plan in zip(ids, plans, strict=True)}
        return cls(list(items), list(users), orders, stock_each, credit_each, price)


@dataclass
class Load:
    """``clients`` concurrent checkouts of the shop's orders, one order per request."""

    api: Api
    shop: Shop
    clients: int = 24
    replies: dict[str, int] = field(default_factory=dict)  # order -> status (-1: no reply)
    done_at: list[float] = field(default_factory=list)
    _queue: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        self._queue = list(self.shop.orders)
        random.shuffle(self._queue)
        await asyncio.gather(*(self._client() for _ in range(self.clients)))

    def stop(self) -> None:
        self._stop.set()

    async def _client(self) -> None:
        while not self._stop.is_set() and self._queue:
            order_id = self._queue.pop()
            try:
                reply = await self.api.post(f"/orders/checkout/{order_id}")
                status = reply.status
            except (aiohttp.ClientError, TimeoutError):
                status = -1
            self.replies[order_id] = status
            self.done_at.append(time.monotonic())

    def rate(self, start: float, end: float) -> float:
        """Replies per second in [start, end)."""
        return sum(start <= t < end for t in self.done_at) / (end - start)

    def statuses(self) -> Counter[int]:
        return Counter(self.replies.values())


async def all_sagas_ended(stack: Stack, orders: list[str]) -> None:
    """Wait (up to 60 s) until no saga of ``orders`` is running or compensating."""
    nodes = stack.env()["ORDER_REDIS_NODES"].split(",")
    host, port = nodes[0].rsplit(":", 1)
    async with RedisCluster(host=host, port=int(port)) as redis:

        async def none_live() -> bool:
            for order_id in orders:
                status = await redis.hget(f"{{order:{order_id}}}", "saga_status")
                if status in (b"running", b"compensating"):
                    return False
            return True

        await until(none_live, within=60)
