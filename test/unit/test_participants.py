"""Stock's and payment's saga handlers over a ``FakeStore``: all-or-nothing reservations,
exactly-once effects under redelivery, and compensations that leave tombstones."""

from __future__ import annotations

import uuid

import pytest

from common.ledger import LUA_DIR, Ledger
from common.messages import (
    PAYMENT_PROCESSING,
    STOCK_PROCESSING,
    PaymentCancelled,
    PaymentCancelRequested,
    PaymentCompleted,
    PaymentFailed,
    PaymentRequested,
    SagaIds,
    StockCompensated,
    StockCompensationRequested,
    StockUpdated,
    StockUpdateFailed,
    StockUpdateRequested,
    saga_ids,
)
from common.terms import ITEMS, USERS
from payment.handlers import cancel, charge
from stock.handlers import merge_lines, release, reserve
from test.unit.fake_redis import FakeRedis
from test.unit.fake_store import FakeStore


def fresh(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize(
    ("lines", "merged"),
    [
        ((), {}),
        ((("a", 1),), {"a": 1}),
        ((("a", 1), ("b", 2), ("a", 3)), {"a": 4, "b": 2}),
        ((("b", 1), ("a", 1), ("b", 1)), {"b": 2, "a": 1}),
    ],
)
def test_merge_lines(lines: tuple[tuple[str, int], ...], merged: dict[str, int]) -> None:
    result = merge_lines(lines)
    assert result == merged
    assert list(result) == list(merged)  # first-seen order


class World:
    def __init__(self) -> None:
        self.redis = FakeRedis()
        store = FakeStore(self.redis)
        store.load_scripts(LUA_DIR)
        self.items = Ledger(store, ITEMS)
        self.users = Ledger(store, USERS)
        self.store = store

    def item(self, stock: int) -> str:
        item_id = fresh("i")
        self.redis.hset(f"{{item:{item_id}}}", {b"stock": b"%d" % stock, b"price": b"1"})
        return item_id

    def user(self, credit: int) -> str:
        user_id = fresh("u")
        self.redis.hset(f"{{user:{user_id}}}", {b"credit": b"%d" % credit})
        return user_id

    def stock(self, item_id: str) -> int:
        return int(self.redis.hget(f"{{item:{item_id}}}", b"stock") or b"-1")

    def credit(self, user_id: str) -> int:
        return int(self.redis.hget(f"{{user:{user_id}}}", b"credit") or b"-1")


def ids() -> SagaIds:
    order_id = fresh("o")
    return saga_ids(f"{order_id}:1:{fresh('')}", order_id, fresh("t"))


async def test_reserve_takes_every_line_once() -> None:
    w = World()
    a, b = w.item(5), w.item(1)
    command = StockUpdateRequested(**ids(), items=((a, 2), (b, 1), (a, 1)))
    for _ in range(3):  # redeliveries
        assert await reserve(command, w.items) == [
            (STOCK_PROCESSING, StockUpdated(**command.reply_ids()))
        ]
    assert (w.stock(a), w.stock(b)) == (2, 0)


async def test_a_short_line_gives_every_line_back() -> None:
    w = World()
    plenty, scarce = w.item(5), w.item(1)
    command = StockUpdateRequested(**ids(), items=((plenty, 2), (scarce, 2)))
    [(topic, reply)] = await reserve(command, w.items)
    assert topic == STOCK_PROCESSING and isinstance(reply, StockUpdateFailed)
    assert reply.reason == f"{scarce}: short"
    assert (w.stock(plenty), w.stock(scarce)) == (5, 1)
    # More stock arrives, but the saga's reservation failed for good.
    w.redis.hset(f"{{item:{scarce}}}", {b"stock": b"10"})
    [(_, again)] = await reserve(command, w.items)
    assert isinstance(again, StockUpdateFailed)
    assert (w.stock(plenty), w.stock(scarce)) == (5, 10)


async def test_an_unknown_item_fails_the_reservation() -> None:
    w = World()
    known, unknown = w.item(3), fresh("i")
    [(_, reply)] = await reserve(
        StockUpdateRequested(**ids(), items=((known, 1), (unknown, 1))), w.items
    )
    assert isinstance(reply, StockUpdateFailed) and reply.reason == f"{unknown}: unknown"
    assert w.stock(known) == 3


async def test_release_gives_back_and_bars_a_late_reservation() -> None:
    w = World()
    a = w.item(4)
    saga = ids()
    await reserve(StockUpdateRequested(**saga, items=((a, 3),)), w.items)
    for _ in range(2):
        assert await release(StockCompensationRequested(**saga, items=((a, 3),)), w.items) == [
            (STOCK_PROCESSING, StockCompensated(**saga))
        ]
    assert w.stock(a) == 4
    late = ids()
    await release(StockCompensationRequested(**late, items=((a, 1),)), w.items)
    [(_, reply)] = await reserve(StockUpdateRequested(**late, items=((a, 1),)), w.items)
    assert isinstance(reply, StockUpdateFailed) and reply.reason == f"{a}: refused"
    assert w.stock(a) == 4


async def test_charge_once_cancel_once() -> None:
    w = World()
    u = w.user(10)
    saga = ids()
    for _ in range(2):
        assert await charge(PaymentRequested(**saga, user_id=u, amount=7), w.users) == [
            (PAYMENT_PROCESSING, PaymentCompleted(**saga))
        ]
    assert w.credit(u) == 3
    for _ in range(2):
        assert await cancel(PaymentCancelRequested(**saga, user_id=u, amount=7), w.users) == [
            (PAYMENT_PROCESSING, PaymentCancelled(**saga))
        ]
    assert w.credit(u) == 10


@pytest.mark.parametrize(
    ("credit", "cancel_first", "reason"),
    [
        (5, False, "not enough credit"),
        (None, False, "unknown user"),
        (50, True, "payment cancelled"),
    ],
)
async def test_charge_failures(credit: int | None, cancel_first: bool, reason: str) -> None:
    w = World()
    u = w.user(credit) if credit is not None else fresh("u")
    saga = ids()
    if cancel_first:
        await cancel(PaymentCancelRequested(**saga, user_id=u, amount=7), w.users)
    [(_, reply)] = await charge(PaymentRequested(**saga, user_id=u, amount=7), w.users)
    assert reply == PaymentFailed(**saga, reason=reason)
    if credit is not None:
        assert w.credit(u) == credit
