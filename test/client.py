"""A small client of the public API, for tests and test scripts."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import aiohttp


class Reply:
    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:200]!r})"


class Api:
    """``await api.post("/stock/item/create/5")`` → Reply; plus creation shortcuts."""

    def __init__(self, base_url: str, connections: int = 200) -> None:
        self.base_url = base_url.rstrip("/")
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections),
            timeout=aiohttp.ClientTimeout(total=90),
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str) -> Reply:
        assert self._session is not None
        async with self._session.request(method, self.base_url + path) as reply:
            return Reply(reply.status, reply.content_type, await reply.read())

    async def get(self, path: str) -> Reply:
        return await self.request("GET", path)

    async def post(self, path: str) -> Reply:
        return await self.request("POST", path)

    async def ok(self, method: str, path: str) -> Any:
        reply = await self.request(method, path)
        assert reply.status == 200, (path, reply)
        return reply.json() if reply.content_type == "application/json" else None

    async def item(self, price: int = 1, stock: int = 0) -> str:
        item_id: str = (await self.ok("POST", f"/stock/item/create/{price}"))["item_id"]
        if stock:
            await self.ok("POST", f"/stock/add/{item_id}/{stock}")
        return item_id

    async def user(self, credit: int = 0) -> str:
        user_id: str = (await self.ok("POST", "/payment/create_user"))["user_id"]
        if credit:
            await self.ok("POST", f"/payment/add_funds/{user_id}/{credit}")
        return user_id

    async def order(self, user_id: str, lines: list[tuple[str, int]] = ()) -> str:  # type: ignore[assignment]
        order_id: str = (await self.ok("POST", f"/orders/create/{user_id}"))["order_id"]
        for item_id, quantity in lines:
            await self.ok("POST", f"/orders/addItem/{order_id}/{item_id}/{quantity}")
        return order_id

    async def stock(self, item_id: str) -> int:
        return int((await self.ok("GET", f"/stock/find/{item_id}"))["stock"])

    async def credit(self, user_id: str) -> int:
        return int((await self.ok("GET", f"/payment/find_user/{user_id}"))["credit"])

    async def paid(self, order_id: str) -> bool:
        return bool((await self.ok("GET", f"/orders/find/{order_id}"))["paid"])


async def until(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    """Wait for a real condition, polling; fail if it does not hold in time."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not await check():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


def free_port() -> int:
    """A TCP port free on every interface right now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])
