"""The HTTP standby of each service (run_local.sh, STANDBY=1): ready without a consumer, it
answers every route (a checkout it takes is driven by the active order worker's consumers), it
handles no saga message, and the gateway sends it requests only while no active worker of its
service answers."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from test.client import Api, until
from test.conftest import Stack
from test.system.ops import SERVICES, delta, scrape, warm_up


def standby(stack: Stack, service: str) -> str:
    address = stack.env().get(f"{service.upper()}_STANDBY", "")
    if not address:
        pytest.skip("the stack runs without standbys (STANDBY=0)")
    return address


async def get(address: str, path: str, method: str = "GET") -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.request(method, f"http://{address}{path}") as reply,
    ):
        return reply.status, await reply.json(content_type=None)


async def metrics(address: str) -> str:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"http://{address}/metrics") as reply,
    ):
        assert reply.status == 200
        return await reply.text()


@pytest.mark.parametrize("service", SERVICES)
async def test_a_standby_is_ready_with_nothing_to_wait_for(stack: Stack, service: str) -> None:
    assert await get(standby(stack, service), "/ready") == (200, {"ready": True, "waiting": []})


async def test_a_checkout_on_the_standby_is_driven_by_the_active_workers(
    api: Api, stack: Stack
) -> None:
    address = standby(stack, "order")
    await warm_up(api)
    item = await api.item(price=3, stock=5)
    user = await api.user(credit=10)
    order = await api.order(user, [(item, 2)])
    before = await scrape(stack, "order")
    status, body = await get(address, f"/checkout/{order}", "POST")
    assert (status, body) == (200, {"order_id": order, "paid": True})
    assert (await api.stock(item), await api.credit(user), await api.paid(order)) == (3, 4, True)
    # The saga's replies were handled by the active workers, none by the standby.
    after = await scrape(stack, "order")
    assert delta(before, after, "bus_messages_handled_total", consumer="orchestrator") >= 2
    assert "bus_messages_handled_total{" not in await metrics(address)


async def test_the_gateway_falls_back_to_the_standby_only_without_an_active_worker(
    api: Api, stack: Stack
) -> None:
    address = standby(stack, "stock")
    item = await api.item(price=1, stock=7)
    actives = [name for name in stack.status() if name.startswith("stock-") and name[6:].isdigit()]

    async def served_by_standby() -> float:
        total = 0.0
        for line in (await metrics(address)).splitlines():
            if line.startswith("http_requests_total{") and 'route="/find/<item_id>"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    before = await served_by_standby()
    for _ in range(20):
        assert await api.stock(item) == 7
    assert await served_by_standby() == before  # the active workers answered all of them
    for name in actives:
        stack.run("ctl", "stop", name)
    try:
        for _ in range(5):
            assert await api.stock(item) == 7
        assert (await api.post(f"/stock/add/{item}/2")).status == 200
        assert await api.stock(item) == 9
        assert await served_by_standby() >= before + 6
    finally:
        for name in actives:
            stack.run("ctl", "start", name)

    async def ready() -> bool:
        addresses = stack.env()["STOCK_WORKERS"].split(",")
        try:
            replies = await asyncio.gather(*(get(a, "/ready") for a in addresses))
        except aiohttp.ClientConnectorError:  # started, not listening yet
            return False
        return all(status == 200 for status, _ in replies)

    await until(ready, within=60)
