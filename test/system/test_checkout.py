"""Checkout through the gateway: true answers, exactly-once charges, nothing held on failure."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import aiohttp

from test.client import Api


async def test_checkout_pays_once_and_repeats_charge_nothing(api: Api) -> None:
    item_id = await api.item(price=4, stock=10)
    user_id = await api.user(credit=100)
    order_id = await api.order(user_id, [(item_id, 3)])
    reply = await api.post(f"/orders/checkout/{order_id}")
    assert reply.status == 200, reply
    assert await api.paid(order_id)
    assert (await api.stock(item_id), await api.credit(user_id)) == (7, 88)
    for _ in range(3):
        assert (await api.post(f"/orders/checkout/{order_id}")).status == 200
    assert (await api.stock(item_id), await api.credit(user_id)) == (7, 88)
    assert (await api.post(f"/orders/addItem/{order_id}/{item_id}/1")).status == 400


async def test_multi_item_shortage_holds_nothing(api: Api) -> None:
    plenty = await api.item(price=1, stock=10)
    scarce = await api.item(price=1, stock=1)
    user_id = await api.user(credit=100)
    order_id = await api.order(user_id, [(plenty, 2), (scarce, 1), (plenty, 1), (scarce, 1)])
    reply = await api.post(f"/orders/checkout/{order_id}")
    assert reply.status == 400, reply
    assert not await api.paid(order_id)
    assert (await api.stock(plenty), await api.stock(scarce), await api.credit(user_id)) == (
        10,
        1,
        100,
    )


async def test_out_of_credit_gives_stock_back(api: Api) -> None:
    item_id = await api.item(price=10, stock=5)
    user_id = await api.user(credit=15)
    order_id = await api.order(user_id, [(item_id, 2)])
    assert (await api.post(f"/orders/checkout/{order_id}")).status == 400
    assert (await api.stock(item_id), await api.credit(user_id)) == (5, 15)
    assert not await api.paid(order_id)
    # After more funds, a new checkout of the same order is a new saga, and succeeds.
    await api.ok("POST", f"/payment/add_funds/{user_id}/5")
    assert (await api.post(f"/orders/checkout/{order_id}")).status == 200
    assert (await api.stock(item_id), await api.credit(user_id)) == (3, 0)
    assert await api.paid(order_id)


async def test_concurrent_checkouts_of_one_order_charge_once(api: Api) -> None:
    item_id = await api.item(price=7, stock=3)
    user_id = await api.user(credit=7)
    order_id = await api.order(user_id, [(item_id, 1)])
    replies = await asyncio.gather(*(api.post(f"/orders/checkout/{order_id}") for _ in range(50)))
    assert Counter(r.status for r in replies) == {200: 50}
    assert (await api.stock(item_id), await api.credit(user_id)) == (2, 0)
    assert await api.paid(order_id)


async def test_unknown_order_checkout_is_400(api: Api) -> None:
    assert (await api.post("/orders/checkout/no-such-order")).status == 400


async def test_empty_order_checks_out_for_nothing(api: Api) -> None:
    user_id = await api.user(credit=3)
    order_id = await api.order(user_id)
    assert (await api.post(f"/orders/checkout/{order_id}")).status == 200
    assert await api.credit(user_id) == 3


async def test_racing_orders_for_scarce_stock_and_credit(api: Api) -> None:
    """Many orders compete: every 2xx is paid and charged once, every 4xx holds nothing."""
    items = [await api.item(price=1, stock=5) for _ in range(3)]
    users = [await api.user(credit=4) for _ in range(6)]
    orders = []
    for n in range(30):
        lines = [(items[n % 3], 1), (items[(n + 1) % 3], 1)]
        orders.append((await api.order(users[n % 6], lines), users[n % 6], lines))
    replies = await asyncio.gather(*(api.post(f"/orders/checkout/{o}") for o, _, _ in orders))
    assert {r.status for r in replies} <= {200, 400}
    paid_units: Counter[str] = Counter()
    spent: Counter[str] = Counter()
    for (order_id, user_id, lines), reply in zip(orders, replies, strict=True):
        assert await api.paid(order_id) == (reply.status == 200)
        if reply.status == 200:
            spent[user_id] += 2
            for item_id, qty in lines:
                paid_units[item_id] += qty
    for item_id in items:
        assert await api.stock(item_id) == 5 - paid_units[item_id]
    for user_id in users:
        assert await api.credit(user_id) == 4 - spent[user_id]
    assert sum(r.status == 200 for r in replies) > 0


async def test_a_client_that_hangs_up_does_not_stall_its_saga(api: Api) -> None:
    """Checkouts abandoned a few milliseconds in (the gateway then drops the worker's request
    and the handler is cancelled): a saga that began moves on at once, not after the sweeper's
    re-send (SAGA_STEP_TIMEOUT_MS, 2 s), so nothing is paid late."""
    item_id = await api.item(price=1, stock=1000)
    warm = await api.order(await api.user(credit=10), [(item_id, 1)])
    assert (await api.post(f"/orders/checkout/{warm}")).status == 200  # consumers are up
    orders = [await api.order(await api.user(credit=10), [(item_id, 1)]) for _ in range(60)]
    url = api.base_url + "/orders/checkout/{}"
    async with aiohttp.ClientSession() as session:

        async def abandon(order_id: str, after_s: float) -> None:
            with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                timeout = aiohttp.ClientTimeout(total=after_s)
                async with session.post(url.format(order_id), timeout=timeout) as reply:
                    await reply.read()

        await asyncio.gather(*(abandon(o, 0.001 * (i % 6 + 1)) for i, o in enumerate(orders)))
    await asyncio.sleep(1.5)
    paid_soon = [await api.paid(o) for o in orders]
    await asyncio.sleep(3.0)  # past a step timeout: a stalled saga would be re-sent by now
    paid_later = [await api.paid(o) for o in orders]
    assert paid_later == paid_soon, f"{sum(paid_later) - sum(paid_soon)} sagas stalled"
    assert await api.stock(item_id) == 999 - sum(paid_later)
