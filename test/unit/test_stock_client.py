"""Order's price lookup answers only true things: a price, an unknown item (400), or stock
unavailable (503), also when stock answers too late (order/stock_client.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from common.errors import NotFound, Unavailable
from order.stock_client import StockClient

ITEM = "42"


@pytest.fixture
async def stock() -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback stand-in for stock's /find route: item 42 costs 7, "slow" answers after
    a second, anything else is unknown (400). Yields its base URL and the ids it was asked."""
    asked: list[str] = []

    async def find(request: web.Request) -> web.Response:
        item_id = request.match_info["item_id"]
        asked.append(item_id)
        if item_id == "slow":
            await asyncio.sleep(1)
        if item_id == ITEM:
            return web.json_response({"stock": 1, "price": 7})
        return web.json_response({"error": "not found"}, status=400)

    app = web.Application()
    app.router.add_get("/stock/find/{item_id}", find)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/stock", asked
    await runner.cleanup()


async def test_a_price_an_unknown_item_and_a_late_answer(stock: tuple[str, list[str]]) -> None:
    base_url, asked = stock
    client = StockClient(base_url, timeout_s=0.3)
    await client.start()
    try:
        assert await client.price(ITEM) == 7
        with pytest.raises(NotFound):
            await client.price("nope")
        # Too late is "stock unavailable" (a 503 at the edge), not an unhandled timeout (a 500).
        with pytest.raises(Unavailable):
            await client.price("slow")
        # The id reaches stock as it is, whatever a URL would make of it.
        for odd in (f"{ITEM}?x", f"{ITEM}#y", "a b", "%3F", "é\n"):
            with pytest.raises(NotFound):
                await client.price(odd)
        assert asked[-5:] == [f"{ITEM}?x", f"{ITEM}#y", "a b", "%3F", "é\n"]
        for no_segment in ("", ".", "..", f"{ITEM}/x"):
            with pytest.raises(NotFound):
                await client.price(no_segment)
        assert len(asked) == 8  # those never reached stock
    finally:
        await client.stop()
