"""The gateway's holder: where nginx sends a request that every worker of its service failed.

nginx retries a request on the next worker at once, and gives up when each has failed it once.
When a worker dies together with its standby (or every replica of a service at once), the
requests they held fail on each: nginx has no worker left to try, while supervision (or
Kubernetes, or compose) is starting them again within a second or two. A POST that a dead
worker had received may have started something (a checkout's saga), so nginx could only answer
502, which the course's clients count as a success, paid or not.

The gateway (env/gateway/routes.conf) sends such a request here instead, with
``X-Gateway-Connect-Times`` (nginx's ``$upstream_connect_time`` over its tries). The holder
tries the service's workers until one takes the request and answers, for up to ``hold_s``, and
passes that answer on. Every request may be sent again: each mutation is keyed by the
``X-Request-Id`` the gateway set, and a checkout joins its running saga. When no worker answers
within the hold:

- a POST that no try ever reached (every connect time is ``-``) did nothing: 400;
- anything else: 502 (a worker may have acted on it), as nginx would have answered.

The holder itself is part of the gateway: a SIGKILLed holder drops what it holds, as a
SIGKILLed nginx does. It reads HTTP/1.1 with a ``Content-Length`` body (what nginx sends
upstream) and answers one request per connection (``Connection: close``).

Usage: python -m common.holder --listen unix:PATH|HOST:PORT [--hold-s S] [--answer-s S]
           --route /orders/=HOST:PORT[,HOST:PORT...] [--route ...]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.http import GATEWAY_READ_TIMEOUT_S

log = logging.getLogger("holder")

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
MAX_REPLY = 16 * 1024 * 1024
POLL_S = 0.05
"""How often a hold looks for a worker listening again (connect() answers at once either way)."""
CONNECT_TIMEOUT_S = 1.0
"""As the gateway's ``proxy_connect_timeout``: a worker whose accept queue is full is skipped."""

_NOTHING_DONE = b'{"error": "no worker of this service could be reached; nothing was done"}'
_BAD_GATEWAY = b'{"error": "bad gateway"}'
_GATEWAY_TIMEOUT = b'{"error": "gateway timeout"}'
_BAD_REQUEST = b'{"error": "bad request"}'
_NO_ROUTE = b'{"error": "no such route"}'
_REASONS = {400: "Bad Request", 404: "Not Found", 502: "Bad Gateway", 504: "Gateway Timeout"}
_HOP_BY_HOP = {b"connection", b"keep-alive", b"x-gateway-connect-times"}
_CONNECT_TIME = re.compile(rb"[\d.]+")


@dataclass(frozen=True)
class Route:
    """Requests whose path starts with ``prefix`` go to ``targets`` without the prefix's
    leading part (``/orders/checkout/1`` reaches order as ``/checkout/1``, as through nginx)."""

    prefix: str
    targets: tuple[tuple[str, int], ...]


@dataclass
class Request:
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def reached_before(self) -> bool:
        """Whether one of the gateway's tries connected to a worker (which may have acted)."""
        return bool(_CONNECT_TIME.search(self.header(b"x-gateway-connect-times") or b""))

    def encode(self, path: bytes) -> bytes:
        lines = [b"%s %s %s" % (self.method, path, self.version)]
        lines += [b"%s: %s" % kv for kv in self.headers if kv[0].lower() not in _HOP_BY_HOP]
        lines += [b"Connection: close", b"", self.body]
        return b"\r\n".join(lines)


class BadRequest(Exception):
    pass


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One request from the gateway; None when the connection closed before one began."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise BadRequest("incomplete request head") from exc
    except asyncio.LimitOverrunError as exc:
        raise BadRequest("request head too large") from exc
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[1].startswith(b"/"):
        raise BadRequest("bad request line")
    request = Request(parts[0], parts[1], parts[2])
    for line in lines[1:]:
        key, sep, value = line.partition(b":")
        if not sep:
            raise BadRequest("bad header line")
        request.headers.append((key.strip(), value.strip()))
    if request.header(b"transfer-encoding") is not None:
        raise BadRequest("chunked request bodies are not taken")
    raw_length = request.header(b"content-length") or b"0"
    if not raw_length.isdigit() or int(raw_length) > MAX_BODY:
        raise BadRequest("bad Content-Length")
    request.body = await reader.readexactly(int(raw_length))
    return request


def complete(method: bytes, reply: bytes) -> bool:
    """Whether ``reply`` (read until the worker closed) is a whole HTTP response: a worker
    killed while answering leaves a part, or nothing."""
    end = reply.find(b"\r\n\r\n")
    if end < 0:
        return False
    lines = reply[:end].split(b"\r\n")
    status = lines[0].split(b" ")
    if len(status) < 2 or not status[1].isdigit():
        return False
    code = int(status[1])
    body = reply[end + 4 :]
    if method == b"HEAD" or code in (204, 304) or code < 200:
        return True
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        headers[key.strip().lower()] = value.strip()
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return body.endswith(b"0\r\n\r\n")
    length = headers.get(b"content-length")
    if length is not None:
        return length.isdigit() and len(body) == int(length)
    return True  # delimited by the close itself


def closing(reply: bytes) -> bytes:
    """``reply`` with ``Connection: close``: the holder answers one request per connection."""
    end = reply.find(b"\r\n\r\n")
    lines = reply[:end].split(b"\r\n")
    kept = [lines[0]] + [
        line for line in lines[1:] if line.partition(b":")[0].strip().lower() not in _HOP_BY_HOP
    ]
    return b"\r\n".join([*kept, b"Connection: close"]) + reply[end:]


def own_reply(status: int, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Holder:
    """Holds each request it is given until a worker of its route answers it."""

    def __init__(self, routes: Sequence[Route], *, hold_s: float, answer_s: float) -> None:
        self._routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)
        self._hold_s = hold_s
        self._answer_s = answer_s
        self._handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            try:
                request = await read_request(reader)
            except (BadRequest, asyncio.IncompleteReadError) as exc:
                log.warning("refused a request: %s", exc)
                reply = own_reply(400, _BAD_REQUEST)
            else:
                reply = await self.answer(request) if request else b""
            if reply:
                writer.write(reply)
                await writer.drain()
        except OSError:
            pass  # the gateway gave up on this request
        finally:
            writer.close()
            self._handlers.discard(task)

    async def answer(self, request: Request) -> bytes:
        """The first whole answer a worker of the request's route gives within the hold."""
        route = next(
            (r for r in self._routes if request.target.startswith(r.prefix.encode())), None
        )
        if route is None:
            return own_reply(404, _NO_ROUTE)
        path = request.target[len(route.prefix) - 1 :]
        sent = request.encode(path)
        loop = asyncio.get_running_loop()
        hold_by = loop.time() + self._hold_s
        answer_by = hold_by + self._answer_s
        reached = request.reached_before()
        while True:
            for host, port in route.targets:
                reply, connected = await self._try(host, port, sent, request.method, answer_by)
                reached = reached or connected
                if reply is not None:
                    log.info(
                        "held %s %s: a worker at %s:%d answered",
                        request.method.decode(),
                        request.target.decode(errors="replace"),
                        host,
                        port,
                    )
                    return closing(reply)
            if loop.time() >= hold_by:
                break
            await asyncio.sleep(POLL_S)
        if loop.time() >= answer_by:
            log.warning("held %s: no answer in time", request.target.decode(errors="replace"))
            return own_reply(504, _GATEWAY_TIMEOUT)
        log.warning(
            "held %s: no worker took it within %.1f s",
            request.target.decode(errors="replace"),
            self._hold_s,
        )
        if request.method == b"POST" and not reached:
            return own_reply(400, _NOTHING_DONE)
        return own_reply(502, _BAD_GATEWAY)

    async def _try(
        self, host: str, port: int, sent: bytes, method: bytes, answer_by: float
    ) -> tuple[bytes | None, bool]:
        """(the worker's whole answer or None, whether it took the connection)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=MAX_REPLY), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            return None, False
        try:
            writer.write(sent)
            await writer.drain()
            reply = b""
            while len(reply) < MAX_REPLY:
                remaining = answer_by - asyncio.get_running_loop().time()
                more = await asyncio.wait_for(
                    reader.read(MAX_REPLY - len(reply)), max(remaining, 0)
                )
                if not more:
                    break
                reply += more
                if complete(method, reply):
                    return reply, True
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
        return None, True

    async def drain(self) -> None:
        """Waits for every request held to be answered."""
        while self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)


def parse_route(raw: str) -> Route:
    prefix, sep, targets = raw.partition("=")
    if not sep or not prefix.startswith("/") or not prefix.endswith("/"):
        raise argparse.ArgumentTypeError(
            f"a route is /prefix/=host:port[,host:port...], got {raw!r}"
        )
    parsed = []
    for target in targets.split(","):
        host, _, port = target.strip().rpartition(":")
        if not host or not port.isdigit():
            raise argparse.ArgumentTypeError(f"bad target {target!r} in {raw!r}")
        parsed.append((host, int(port)))
    return Route(prefix, tuple(parsed))


async def listen(address: str, holder: Holder) -> asyncio.Server:
    """Serves ``holder`` on ``address``: ``unix:PATH`` or ``HOST:PORT``."""
    if address.startswith("unix:"):
        return await asyncio.start_unix_server(holder.handle, address[5:], limit=MAX_HEAD)
    host, _, port = address.rpartition(":")
    return await asyncio.start_server(
        holder.handle, host or None, int(port), limit=MAX_HEAD, family=socket.AF_UNSPEC
    )


async def serve(address: str, holder: Holder) -> None:
    """Serves until SIGTERM or SIGINT, then answers what it holds and stops."""
    server = await listen(address, holder)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("holding on %s", address)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
    await holder.drain()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m common.holder", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--listen", required=True, help="unix:PATH or HOST:PORT")
    parser.add_argument("--route", type=parse_route, action="append", required=True)
    parser.add_argument(
        "--hold-s",
        type=float,
        default=10.0,
        help="how long to wait for a worker to take a request [10]",
    )
    parser.add_argument(
        "--answer-s",
        type=float,
        default=float(GATEWAY_READ_TIMEOUT_S),
        help="how long a worker that took it may take to answer [the gateway's read timeout]",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    holder = Holder(args.route, hold_s=args.hold_s, answer_s=args.answer_s)
    asyncio.run(serve(args.listen, holder))


if __name__ == "__main__":
    main()
