"""A steady checkout load for fault tests: many clients check out fresh multi-item orders over
scarce stock and credit, recording every reply and the throughput over time."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field

import aiohttp
from redis.asyncio.cluster import RedisCluster

from test.client import Api, until
from test.conftest import Stack


@dataclass(frozen=True)
class Shop:
    """The course's ``batch_init`` data for one run: items ``0..n_items-1`` with ``stock_each``
    units at price 1, users ``0..n_users-1`` with ``credit_each``, orders ``0..n_orders-1`` of a
    random user and two random one-unit lines. Three calls make thousands of orders in about a
    second (one by one through the API, 9,000 orders took 23 s of every fault's 36 s on
    2026-11-30). Each run resets the same ids; the previous run's sagas have all ended."""

    n_items: int
    n_users: int
    n_orders: int
    stock_each: int
    credit_each: int

    @property
    def orders(self) -> list[str]:
        return [str(i) for i in range(self.n_orders)]

    @property
    def stock(self) -> dict[str, int]:
        """Each item's stock as ``init`` left it."""
        return {str(i): self.stock_each for i in range(self.n_items)}

    @property
    def credit(self) -> dict[str, int]:
        """Each user's credit as ``init`` left it."""
        return {str(u): self.credit_each for u in range(self.n_users)}

    async def init(self, api: Api) -> None:
        await api.ok("POST", f"/stock/batch_init/{self.n_items}/{self.stock_each}/1")
        await api.ok("POST", f"/payment/batch_init/{self.n_users}/{self.credit_each}")
        await api.ok("POST", f"/orders/batch_init/{self.n_orders}/{self.n_items}/{self.n_users}/1")


async def check_conservation(
    api: Api, replies: dict[str, int], stock: dict[str, int], credit: dict[str, int]
) -> None:
    """2xx <=> paid, and each item's stock and each user's credit are exactly what the paid
    orders left of ``stock`` and ``credit`` (the balances before the run; orders never checked
    out are unpaid: no request ever named them)."""
    limit = asyncio.Semaphore(64)

    async def find(order_id: str) -> dict[str, object]:
        async with limit:
            found: dict[str, object] = await api.ok("GET", f"/orders/find/{order_id}")
            return found

    orders = dict(zip(replies, await asyncio.gather(*map(find, replies)), strict=True))
    wrong = {o: s for o, s in replies.items() if (s == 200) != orders[o]["paid"]}
    assert not wrong, f"replies that are not the order's state: {list(wrong.items())[:5]}"
    stock, credit = dict(stock), dict(credit)
    for order in orders.values():
        if order["paid"]:
            credit[str(order["user_id"])] -= int(str(order["total_cost"]))
            for item, quantity in order["items"]:  # type: ignore[attr-defined]
                stock[item] -= quantity

    async def limited(read: Awaitable[int]) -> int:
        async with limit:
            return await read

    items = await asyncio.gather(*(limited(api.stock(i)) for i in stock))
    assert dict(zip(stock, items, strict=True)) == stock
    users = await asyncio.gather(*(limited(api.credit(u)) for u in credit))
    assert dict(zip(credit, users, strict=True)) == credit


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
