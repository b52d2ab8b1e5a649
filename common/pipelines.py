"""Per-master pipelining: the commands issued in one turn of the event loop go to each master
in one pipeline, over one connection per node (``NodeClients``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.settings import Settings
from common.types import Arg


class Node(NamedTuple):
    """A master as the slot map names it (``host:port``), and where to reach it."""

    name: str
    host: str
    port: int


class NodeClients:
    """One plain client per cluster node, made on first use; ``close`` closes them all."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._clients: dict[tuple[str, int], Redis] = {}

    def client(self, host: str, port: int) -> Redis:
        client = self._clients.get((host, port))
        if client is None:
            client = Redis(
                host=host,
                port=port,
                password=self._settings.redis_password,
                socket_timeout=2.0,
                socket_connect_timeout=1.0,
            )
            self._clients[(host, port)] = client
        return client

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()


class Pipelines:
    """Commands issued in one turn of the event loop go to each master in one pipeline: a
    consumer batch's scripts, or the checkouts that arrived together, cost one round trip per
    master instead of one each. Replies are handed back in order; an error reply fails only
    its own command, a dropped connection every command of that pipeline (whose callers then
    take the ordinary, retrying path: every batched command is idempotent)."""

    def __init__(self, client_of: Callable[[str, int], Any]) -> None:
        self._client_of = client_of
        self._pending: dict[str, list[tuple[tuple[Arg, ...], asyncio.Future[Any]]]] = {}
        self._nodes: dict[str, Node] = {}

    def run(
        self, node: Node, command: tuple[Arg, ...], *, raw: bool = False
    ) -> asyncio.Future[Any]:
        """The reply to ``command`` on ``node``; with ``raw`` an error reply (or a dropped
        connection) is returned rather than raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.setdefault(node.name, []).append((command, future))
        self._nodes[node.name] = node
        if not raw:
            return future
        wrapped: asyncio.Future[Any] = loop.create_future()

        def unwrap(done: asyncio.Future[Any]) -> None:
            if wrapped.done():
                return
            if done.cancelled():
                wrapped.cancel()
            else:
                wrapped.set_result(done.exception() or done.result())

        future.add_done_callback(unwrap)
        return wrapped

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        nodes, self._nodes = self._nodes, {}
        for name, calls in pending.items():
            task = asyncio.get_running_loop().create_task(self._send(nodes[name], calls))
            _sending.add(task)
            task.add_done_callback(_sending.discard)

    async def _send(
        self, node: Node, calls: list[tuple[tuple[Arg, ...], asyncio.Future[Any]]]
    ) -> None:
        client = self._client_of(node.host, node.port)
        try:
            async with client.pipeline(transaction=False) as pipe:
                for command, _ in calls:
                    pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, future in calls:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RedisError(exc))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(calls, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


_sending: set[asyncio.Task[None]] = set()
