"""The gateway's own routing and retry rules (env/gateway/routes.conf) in a real nginx, in front
of workers the tests play. A worker killed in the middle of an answer: with each answer in one
write (common/one_write.py) it had sent nothing, and the client gets the standby's answer; with
hypercorn as it is it had sent the head, and the client gets no answer at all. A service none of
whose workers can be reached: a POST is refused (400, nothing was done), not answered 502, which
the course's clients count as a success. Independent of the running stack: the tests start
their own nginx and workers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import aiohttp
import pytest

from test import dying_worker
from test.client import free_port
from test.deploy.loopback import local_gateway_conf, running_nginx

STANDBY_ANSWER = b'{"order_id":"1","paid":true}'


async def _standby(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one request and closes."""
    await reader.readuntil(b"\r\n\r\n")
    head = (
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        f"content-length: {len(STANDBY_ANSWER)}\r\nconnection: close\r\n\r\n"
    )
    writer.write(head.encode() + STANDBY_ANSWER)
    await writer.drain()
    writer.close()


@pytest.fixture
async def standby_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_standby, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@asynccontextmanager
async def _gateway(tmp_path: Path, worker: int, standby: int) -> AsyncIterator[str]:
    """The local stack's gateway (local/nginx.conf.in, with the gateway's rules) in a real nginx;
    order's upstream is ``worker`` with ``standby`` as its backup, as the local stack runs them,
    payment's and stock's ``standby``. Yields its base URL. nginx starts and stops in a thread:
    the workers the tests play run on this event loop."""
    upstreams = f"""
upstream order_upstream {{
    server 127.0.0.1:{worker} max_fails=0;
    server 127.0.0.1:{standby} backup;
    keepalive 8;
}}
upstream payment_upstream {{ server 127.0.0.1:{standby}; }}
upstream stock_upstream {{ server 127.0.0.1:{standby}; }}
"""
    port = free_port()
    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)
    conf = await asyncio.to_thread(local_gateway_conf, tmp_path, upstreams, port)
    nginx = running_nginx(tmp_path, conf, port)
    base = await asyncio.to_thread(nginx.__enter__)
    try:
        yield base
    finally:
        await asyncio.to_thread(nginx.__exit__, None, None, None)


@pytest.mark.parametrize("mode", ["one-write", "hypercorn as it is"])
async def test_a_worker_killed_mid_answer_behind_the_gateway(
    mode: str, standby_port: int, tmp_path: Path
) -> None:
    worker, worker_port = dying_worker.start(mode)
    try:
        async with (
            _gateway(tmp_path, worker_port, standby_port) as base,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        ):
            url = f"{base}/orders/checkout/1"
            if mode == "one-write":
                async with session.post(url) as reply:
                    assert (reply.status, await reply.read()) == (200, STANDBY_ANSWER)
            else:
                with pytest.raises(aiohttp.ClientError):
                    async with session.post(url) as reply:
                        await reply.read()
        assert await asyncio.to_thread(worker.wait, 30) == -9, "the worker did not die mid-answer"
    finally:
        if worker.poll() is None:
            worker.kill()


async def _drops(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A worker that reads a request and dies before it answers: it may have acted on it."""
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def _answers(session: aiohttp.ClientSession, method: str, url: str) -> tuple[int, str]:
    async with session.request(method, url) as reply:
        return reply.status, await reply.text()


UNREACHED = '{"error": "no worker of this service could be reached; nothing was done"}'


async def test_a_post_no_worker_received_is_refused(tmp_path: Path) -> None:
    """Every try failed to connect, so no worker saw the request: a POST answers 400 (a checkout
    that started nothing must not pass for paid, as nginx's 502 would with the course's
    clients), a read keeps the 502. Once a try reached a worker that then died, the 502
    stands: that worker may have acted. A worker that cannot be connected to within
    ``proxy_connect_timeout`` (its accept queue full) counts as not reached."""
    nothing, also_nothing = free_port(), free_port()
    dropping = await asyncio.start_server(_drops, "127.0.0.1", 0)
    dropping_port = dropping.sockets[0].getsockname()[1]
    # A listener that never accepts, with its queue already full: connections to it time out.
    with closing(socket.create_server(("127.0.0.1", 0), backlog=0)) as full:
        queued = [socket.socket() for _ in range(4)]
        for client in queued:
            client.setblocking(False)
            client.connect_ex(full.getsockname())
        full_port = full.getsockname()[1]
        async with (
            dropping,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        ):
            async with _gateway(tmp_path / "down", nothing, also_nothing) as base:
                for route in ("/orders/checkout/1", "/orders/addItem/1/2/1"):
                    assert await _answers(session, "POST", base + route) == (400, UNREACHED)
                status, _ = await _answers(session, "GET", base + "/orders/find/1")
                assert status == 502
            async with _gateway(tmp_path / "dropped", dropping_port, nothing) as base:
                status, body = await _answers(session, "POST", base + "/orders/checkout/1")
                assert status == 502, body
            async with _gateway(tmp_path / "full", full_port, nothing) as base:
                status, body = await _answers(session, "POST", base + "/orders/checkout/1")
                assert (status, body) == (400, UNREACHED)
        for client in queued:
            client.close()
