"""The gateway's holder (common/holder.py) against workers on loopback that are down, die with
a request, or answer: it passes on the first whole answer, and answers itself only what is
true when none comes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from common.holder import Holder, Route, closing, complete, parse_route, serve
from test.client import free_port

Answer = Callable[[bytes], Awaitable[bytes | None]]


class Worker:
    """A worker on loopback: records each request it reads; ``answer`` gives its reply, or
    None to die with the request (close without a word)."""

    def __init__(self, answer: Answer) -> None:
        self.port = free_port()
        self.requests: list[bytes] = []
        self._answer = answer
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(request)
        reply = await self._answer(request)
        if reply is not None:
            writer.write(reply)
            await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def ok(_: bytes) -> bytes:
    body = b'{"paid": true}'
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


@contextlib.asynccontextmanager
async def holding(*workers: Worker, hold_s: float = 5.0) -> AsyncIterator[int]:
    """A holder on a free port routing /orders/ to ``workers``; yields its port."""
    port = free_port()
    routes = [Route("/orders/", tuple(("127.0.0.1", w.port) for w in workers))]
    task = asyncio.ensure_future(
        serve(f"127.0.0.1:{port}", Holder(routes, hold_s=hold_s, answer_s=5))
    )
    for _ in range(200):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def send(port: int, method: str, path: str, tried: str = "-") -> tuple[int, bytes, bytes]:
    """(status, head, body) of one request through the holder, as nginx sends it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: order_upstream\r\nX-Request-Id: r-42\r\n"
        f"X-Gateway-Connect-Times: {tried}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    reply = await reader.read()
    writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head, body


async def test_a_request_waits_for_a_worker_that_comes_back() -> None:
    worker = Worker(ok)
    async with holding(worker) as port:
        sent = asyncio.ensure_future(send(port, "POST", "/orders/checkout/7", "0.001, -"))
        await asyncio.sleep(0.3)  # the worker restarts 0.3 s after the request came
        assert not sent.done()
        await worker.start()
        status, head, body = await sent
    await worker.stop()
    assert (status, body) == (200, b'{"paid": true}')
    assert head.lower().endswith(b"connection: close")
    [request] = worker.requests
    assert request.startswith(b"POST /checkout/7 HTTP/1.1\r\n")
    assert b"X-Request-Id: r-42\r\n" in request and b"Connection: close\r\n" in request
    assert b"x-gateway-connect-times" not in request.lower()


def worker_answering(*first: bytes | None) -> Worker:
    """A worker whose first answers are ``first`` (None: it dies with the request), then ``ok``."""
    answers = list(reversed(first))

    async def answer(request: bytes) -> bytes | None:
        return answers.pop() if answers else await ok(request)

    return Worker(answer)


async def through_holder(worker: Worker, method: str, path: str) -> tuple[int, bytes, bytes]:
    await worker.start()
    async with holding(worker) as port:
        reply = await send(port, method, path)
    await worker.stop()
    return reply


async def test_a_worker_that_dies_with_the_request_is_asked_again() -> None:
    worker = worker_answering(None, None)
    status, _, _ = await through_holder(worker, "POST", "/orders/checkout/7")
    assert status == 200
    assert len(worker.requests) == 3 and len(set(worker.requests)) == 1


async def test_a_part_of_an_answer_is_not_passed_on() -> None:
    worker = worker_answering(b'HTTP/1.1 200 OK\r\ncontent-length: 14\r\n\r\n{"pa')
    status, _, body = await through_holder(worker, "GET", "/orders/find/7")
    assert (status, body) == (200, b'{"paid": true}')
    assert len(worker.requests) == 2


@pytest.mark.parametrize(
    ("method", "tried", "status"),
    [
        ("POST", "-", 400),  # no try reached a worker: nothing was done
        ("POST", "-, - : -", 400),
        ("POST", "0.001, -", 502),  # a worker took it and may have acted
        ("GET", "-", 502),  # a 400 would call the id unknown
    ],
)
async def test_no_worker_within_the_hold(method: str, tried: str, status: int) -> None:
    down = Worker(ok)  # never started
    async with holding(down, hold_s=0.2) as port:
        got, head, body = await send(port, method, "/orders/checkout/7", tried)
    assert got == status
    assert b"application/json" in head and body.startswith(b'{"error": ')


async def test_a_worker_reached_by_the_holder_alone_makes_it_502() -> None:
    worker = Worker(lambda _: asyncio.sleep(0, None))  # takes every request and dies with it
    await worker.start()
    async with holding(worker, hold_s=0.2) as port:
        status, _, _ = await send(port, "POST", "/orders/checkout/7", "-")
    await worker.stop()
    assert status == 502 and worker.requests


async def test_what_the_holder_cannot_route_or_read() -> None:
    worker = Worker(ok)
    await worker.start()
    async with holding(worker) as port:
        assert (await send(port, "GET", "/stock/find/1"))[0] == 404
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /orders/checkout/7 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        reply = await reader.read()
        writer.close()
    await worker.stop()
    assert reply.startswith(b"HTTP/1.1 400 ") and not worker.requests


def test_whole_answers() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    assert complete(b"GET", head + b"{}") and not complete(b"GET", head + b"{")
    assert not complete(b"GET", b"") and not complete(b"GET", b"HTTP/1.1 200 OK\r\n")
    assert complete(b"HEAD", head)
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n"
    assert not complete(b"GET", chunked) and complete(b"GET", chunked + b"0\r\n\r\n")
    assert (
        closing(head + b"{}")
        == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: close\r\n\r\n{}"
    )
    keep = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
    assert closing(keep) == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nConnection: close\r\n\r\n"


def test_routes_are_checked() -> None:
    route = parse_route("/orders/=127.0.0.1:8100,order:8000")
    assert route == Route("/orders/", (("127.0.0.1", 8100), ("order", 8000)))
    for bad in ("/orders=x:1", "/orders/=x", "orders/=x:1", "/orders/"):
        with pytest.raises(Exception, match="route|target"):
            parse_route(bad)
