"""Where HTTP handlers wait for a saga's outcome: woken by the outcome message (any worker may
drive the saga), with the saga log itself as the fallback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Verdict = tuple[bool, str]
"""(succeeded, reason)"""


class Waiters:
    """Futures keyed by saga id, resolved by ``resolve`` or found by polling."""

    def __init__(self, poll_interval_s: float = 0.5) -> None:
        self._futures: dict[str, list[asyncio.Future[Verdict]]] = {}
        self.poll_interval_s = poll_interval_s
        """How often a waiting call reads the saga log, outcome or not."""

    def resolve(self, saga_id: str, succeeded: bool, reason: str = "") -> None:
        for future in self._futures.pop(saga_id, []):
            if not future.done():
                future.set_result((succeeded, reason))

    async def wait(
        self, saga_id: str, poll: Callable[[], Awaitable[Verdict | None]], timeout_s: float
    ) -> Verdict | None:
        """The saga's verdict, or None if it has none after ``timeout_s``."""
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._futures.setdefault(saga_id, []).append(future)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        try:
            while True:
                left = end - loop.time()
                if left <= 0:
                    return await poll()
                try:
                    return await asyncio.wait_for(
                        asyncio.shield(future), min(self.poll_interval_s, left)
                    )
                except TimeoutError:
                    verdict = await poll()
                    if verdict is not None:
                        return verdict
        finally:
            waiting = self._futures.get(saga_id)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self._futures[saga_id]
