"""Issue 16's edges through the gateway: batch_init over live sagas leaves every entity exactly
as it sets it, and an order is bounded so that every message of its checkout fits in Kafka."""

from __future__ import annotations

import asyncio
import time

import pytest

from order.orders import MAX_ORDER_LINES
from test.client import Api, until
from test.conftest import Stack
from test.system.ops import by_status, warm_up


@pytest.fixture(scope="module", autouse=True)
async def warm(api: Api) -> None:
    await warm_up(api)


async def _init(api: Api, n: int, *, stock: int, credit: int) -> None:
    """The benchmark's init: stock, payment, then orders (two one-unit lines each, price 1)."""
    await api.ok("POST", f"/stock/batch_init/{n}/{stock}/1")
    await api.ok("POST", f"/payment/batch_init/{n}/{credit}")
    await api.ok("POST", f"/orders/batch_init/{n}/{n}/{n}/1")


async def test_batch_init_over_live_sagas_leaves_every_entity_as_it_sets_it(
    api: Api, stack: Stack
) -> None:
    """Checkouts of every order reserve their stock and wait for payment, which is down; the
    init runs again over them (stock and orders while payment is down, the users as soon as
    payment answers again, racing its consumers' backlog). Once they are over, every item, user
    and order holds exactly what the second init gave it (before the fix: the orders' sagas
    were wiped and their charges, made later on the new credit, never refunded)."""
    n = 8
    await _init(api, n, stock=100, credit=10)
    payments = sorted(by_status(stack, "payment-"))
    stack.run("ctl", "stop", *payments)
    try:
        checkouts = [asyncio.create_task(api.post(f"/orders/checkout/{i}")) for i in range(n)]

        async def all_reserved() -> bool:
            return sum([await api.stock(str(i)) for i in range(n)]) == 100 * n - 2 * n

        await until(all_reserved, within=30)
        await api.ok("POST", f"/stock/batch_init/{n}/7/1")
        await api.ok("POST", f"/orders/batch_init/{n}/{n}/{n}/1")
    finally:
        stack.run("ctl", "start", *payments)

    async def payment_answers() -> bool:
        return (await api.get("/payment/find_user/0")).status == 200

    await until(payment_answers, within=30)
    await api.ok("POST", f"/payment/batch_init/{n}/5")
    replies = await asyncio.wait_for(asyncio.gather(*checkouts), 90)
    assert [r.status for r in replies] == [400] * n, replies  # turned back: not paid

    async def as_reset() -> bool:
        stocks = [await api.stock(str(i)) for i in range(n)]
        credits = [await api.credit(str(i)) for i in range(n)]
        return stocks == [7] * n and credits == [5] * n

    # Late takes are refused and late compensations give nothing back: the state only ever
    # moves towards what the reset gave, and stays there.
    await until(as_reset, within=30)
    probe = await api.order(await api.user(credit=1), [(await api.item(price=1, stock=1), 1)])
    assert (await api.post(f"/orders/checkout/{probe}")).status == 200
    assert await as_reset()
    assert not any([await api.paid(str(i)) for i in range(n)])
    # The reset orders check out as new ones.
    assert (await api.post("/orders/checkout/0")).status == 200


async def test_batch_init_of_the_benchmark_s_size_takes_seconds(api: Api) -> None:
    """100,000 items, users and orders, as the benchmark inits them (one script per entity
    since the reset fences sagas off): each call well inside the client's 300 s."""
    n = 100_000
    for path in (
        f"/stock/batch_init/{n}/100/1",
        f"/payment/batch_init/{n}/100",
        f"/orders/batch_init/{n}/{n}/{n}/1",
    ):
        began = time.monotonic()
        await api.ok("POST", path)
        assert time.monotonic() - began < 30, path
    assert await api.stock(str(n - 1)) == 100
    assert await api.credit(str(n - 1)) == 100
    found = await api.ok("GET", f"/orders/find/{n - 1}")
    assert (found["paid"], len(found["items"]), found["total_cost"]) == (False, 2, 2)


async def test_an_order_is_bounded_and_one_at_its_bound_checks_out(api: Api) -> None:
    """addItem stops an order at its bound (400, the order unchanged); an order at the bound
    has every message of its checkout delivered: its stock command and compensation (every
    line) when the charge fails, then a paid checkout."""
    item = await api.item(price=1, stock=MAX_ORDER_LINES + 10)
    user = await api.user(credit=MAX_ORDER_LINES - 1)
    order = await api.order(user)
    for start in range(0, MAX_ORDER_LINES, 50):
        count = min(50, MAX_ORDER_LINES - start)
        path = f"/orders/addItem/{order}/{item}/1"
        await asyncio.gather(*(api.ok("POST", path) for _ in range(count)))
    reply = await api.post(f"/orders/addItem/{order}/{item}/1")
    assert reply.status == 400, reply
    found = await api.ok("GET", f"/orders/find/{order}")
    assert (len(found["items"]), found["total_cost"]) == (MAX_ORDER_LINES, MAX_ORDER_LINES)

    reply = await api.post(f"/orders/checkout/{order}")  # one credit short
    assert reply.status == 400, reply
    assert (await api.stock(item), await api.credit(user)) == (
        MAX_ORDER_LINES + 10,
        MAX_ORDER_LINES - 1,
    )
    await api.ok("POST", f"/payment/add_funds/{user}/1")
    assert (await api.post(f"/orders/checkout/{order}")).status == 200
    assert (await api.stock(item), await api.credit(user), await api.paid(order)) == (10, 0, True)
