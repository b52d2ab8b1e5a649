"""Order's one synchronous dependency: item prices, read from the stock service over HTTP."""

from __future__ import annotations

import aiohttp

from common.errors import NotFound, Unavailable


class StockClient:
    """Reads item prices from the stock service over HTTP."""

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def price(self, item_id: str) -> int:
        assert self._session is not None
        try:
            async with self._session.get(f"{self._base_url}/find/{item_id}") as reply:
                if reply.status == 400:
                    raise NotFound(f"item {item_id!r} not found")
                if reply.status != 200:
                    raise Unavailable(f"stock service answered {reply.status}")
                return int((await reply.json())["price"])
        except aiohttp.ClientError as exc:
            raise Unavailable(f"stock service unreachable: {exc}") from exc
