"""Kill a process under load: the gateway routes around a dead worker, and the saga machinery
finishes every checkout truthfully, even through a broker that restarts empty."""

from __future__ import annotations

import asyncio
from collections import Counter

from test.client import Api, until
from test.conftest import Stack


async def running(stack: Stack, name: str, old_pid: int) -> bool:
    state, pid = stack.status()[name]
    return state == "RUNNING" and pid != str(old_pid)


async def test_killed_stock_worker_is_routed_around(api: Api, stack: Stack) -> None:
    item_id = await api.item(price=1, stock=1000)
    killed = stack.kill("stock-0")
    replies = [await api.post(f"/stock/subtract/{item_id}/1") for _ in range(40)]
    replies += await asyncio.gather(*(api.post(f"/stock/add/{item_id}/1") for _ in range(40)))
    assert Counter(r.status for r in replies) == {200: 80}
    assert await api.stock(item_id) == 1000
    await until(lambda: running(stack, "stock-0", killed), within=30)


async def test_killed_order_worker_loses_no_checkout(api: Api, stack: Stack) -> None:
    """Checkouts in flight on the killed worker are retried by the gateway on another one."""
    item_id = await api.item(price=1, stock=60)
    users = [await api.user(credit=1) for _ in range(80)]
    orders = [await api.order(user, [(item_id, 1)]) for user in users]
    checkouts = [asyncio.ensure_future(api.post(f"/orders/checkout/{o}")) for o in orders]
    await asyncio.sleep(0.05)  # let the checkouts reach the workers before the kill
    killed = stack.kill("order-0")
    replies = await asyncio.gather(*checkouts)
    assert {r.status for r in replies} <= {200, 400}, Counter(r.status for r in replies)
    await assert_consistent(api, item_id, 60, users, orders, replies)
    await until(lambda: running(stack, "order-0", killed), within=30)


async def test_broker_restarted_empty_mid_checkout(api: Api, stack: Stack) -> None:
    item_id = await api.item(price=1, stock=50)
    users = [await api.user(credit=1) for _ in range(70)]
    orders = [await api.order(user, [(item_id, 1)]) for user in users]
    checkouts = [asyncio.ensure_future(api.post(f"/orders/checkout/{o}")) for o in orders]
    await asyncio.sleep(0.05)
    killed = stack.kill("broker")
    replies = await asyncio.gather(*checkouts)
    assert {r.status for r in replies} <= {200, 400}, Counter(r.status for r in replies)
    await assert_consistent(api, item_id, 50, users, orders, replies)
    await until(lambda: running(stack, "broker", killed), within=30)
    # And the system takes new checkouts after the restart.
    fresh_user = await api.user(credit=5)
    fresh = await api.order(fresh_user, [(item_id, 0 + 1)])
    expected = 200 if await api.stock(item_id) > 0 else 400
    assert (await api.post(f"/orders/checkout/{fresh}")).status == expected


async def assert_consistent(
    api: Api, item_id: str, stock: int, users: list[str], orders: list[str], replies: list
) -> None:  # type: ignore[type-arg]
    """Every 2xx is a paid order charged once, every 4xx holds nothing, and totals add up."""
    paid = [await api.paid(o) for o in orders]
    assert paid == [r.status == 200 for r in replies]
    credits = [await api.credit(u) for u in users]
    assert credits == [0 if p else 1 for p in paid]
    assert await api.stock(item_id) == stock - sum(paid)


async def test_whole_stack_restarted_takes_checkouts(api: Api, stack: Stack) -> None:
    """Every process restarted at once (as after a power cut): the services come up while
    their Redis clusters are still forming, and must still start consuming once they have."""
    item_id = await api.item(price=1, stock=30)
    users = [await api.user(credit=1) for _ in range(40)]
    orders = [await api.order(user, [(item_id, 1)]) for user in users]
    checkouts = [asyncio.ensure_future(api.post(f"/orders/checkout/{o}")) for o in orders]
    await asyncio.sleep(0.05)
    stack.run("ctl", "restart", "all")
    await asyncio.gather(*checkouts, return_exceptions=True)  # the gateway went down too

    async def settled() -> bool:
        """Every saga of the run ended: paid orders are charged once, others hold nothing."""
        try:
            paid = [await api.paid(o) for o in orders]
            credits = [await api.credit(u) for u in users]
            stock = await api.stock(item_id)
        except Exception:  # still starting
            return False
        return credits == [0 if p else 1 for p in paid] and stock == 30 - sum(paid)

    await until(settled, within=60)

    fresh_item = await api.item(price=1, stock=10)

    async def checkout_pays() -> bool:
        user = await api.user(credit=1)
        order = await api.order(user, [(fresh_item, 1)])
        return (await api.post(f"/orders/checkout/{order}")).status == 200

    await until(checkout_pays, within=60)
