"""Order's one synchronous dependency: item prices, read from the stock service over HTTP."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp

from common.errors import NotFound, Unavailable

# Ids that no path segment carries to stock unchanged (a gateway decodes %2F into a slash and
# resolves dot segments): no item has one, since stock makes its ids of letters and digits.
_NO_SEGMENT = {"", ".", ".."}


class StockClient:
    """Reads item prices from the stock service over HTTP, waiting up to ``timeout_s`` for an
    answer: stock itself retries its Redis reads for REDIS_OP_TIMEOUT_MS (a failover), so
    order waits a little longer than that. No answer in time is Unavailable (503)."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self._base_url = base_url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def price(self, item_id: str) -> int:
        """The price of ``item_id``; NotFound if stock has no such item.

        The id goes to stock percent-encoded as one path segment, so stock is asked about
        exactly this id: joined as it is, a ``?`` or ``#`` would cut it short ("<item>?x" read
        as <item>) and control characters and dot segments would be dropped or resolved."""
        assert self._session is not None
        if item_id in _NO_SEGMENT or "/" in item_id:
            raise NotFound(f"item {item_id!r} not found")
        segment = quote(item_id, safe="", errors="surrogatepass")
        try:
            async with self._session.get(f"{self._base_url}/find/{segment}") as reply:
                if reply.status == 400:
                    raise NotFound(f"item {item_id!r} not found")
                if reply.status != 200:
                    raise Unavailable(f"stock service answered {reply.status}")
                return int((await reply.json())["price"])
        except (aiohttp.ClientError, TimeoutError) as exc:
            # aiohttp's timeout is a TimeoutError, not a ClientError: it was a 500 until
            # 2026-11-30, while a stock master failed over for longer than the old 5 s.
            raise Unavailable(f"stock service unreachable: {exc!r}") from exc
