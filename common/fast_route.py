"""One hot route answered in front of Quart, as ASGI middleware (``app.asgi_app``).

A checkout is the one request the benchmarks send by the hundred per second, and Quart's
per-request machinery (request and app contexts, werkzeug routing, the Response object, the
before/after hooks) took about a quarter of the order worker's CPU under wrk (py-spy,
2026-11-29). ``FastRoute`` answers ``METHOD /prefix/<param>`` itself and hands every other
request (and the lifespan) to Quart. It keeps what the Quart route gives: the same JSON bodies
and statuses (``AppError`` as its status, anything else a logged 500), the request metrics, the
``X-Trace-Id`` header. The Quart route stays registered, so a path this one does not match (an
extra segment, another method) is answered by Quart exactly as before, and /openapi.json still
lists it.

One difference: Quart cancels a handler whose client hung up; here the handler runs to its end
(a checkout's wait ends at its verdict or its answer budget), and the answer is dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from common.errors import AppError
from common.http import error_answer, json_body
from common.observability import logs, telemetry

log = logging.getLogger(__name__)

Asgi = Callable[[Any, Any, Any], Awaitable[None]]
Headers = Sequence[tuple[bytes, bytes]]
"""A request's headers as ASGI gives them: (lower-case name, value) pairs."""
Handler = Callable[[str, Headers], Awaitable[Any]]
"""The route's parameter (one path segment, percent-decoded) and the request's headers -> the
JSON payload of a 200."""


def header(headers: Headers, name: bytes) -> str | None:
    """The value of the header ``name`` (lower case), None if the request has none."""
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


_JSON = (b"content-type", b"application/json")


class FastRoute:
    """ASGI app: ``method`` on ``rule`` (``/prefix/<param>``) goes to ``handler``, everything
    else to ``inner`` (the Quart app's own ``asgi_app``)."""

    def __init__(
        self, inner: Asgi, *, service: str, method: str, rule: str, handler: Handler
    ) -> None:
        prefix, _, param = rule.rpartition("/")
        if not (param.startswith("<") and param.endswith(">")) or "<" in prefix:
            raise ValueError(f"rule {rule!r}: one parameter, as the last segment")
        self._inner = inner
        self._service = service
        self._method = method
        self._rule = rule
        self._prefix = prefix + "/"
        self._handler = handler

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == self._method:
            path: str = scope["path"]
            if path.startswith(self._prefix):
                param = path[len(self._prefix) :]
                if param and "/" not in param:
                    await self._answer(param, scope["headers"], send)
                    return
        await self._inner(scope, receive, send)

    async def _answer(self, param: str, headers: Headers, send: Any) -> None:
        arrived = time.perf_counter()
        try:
            try:
                status, body = 200, json_body(await self._handler(param, headers))
            except AppError as exc:
                status, body = error_answer(exc)
            except Exception:
                # The words Quart logs a failed request with (run_tests.sh looks for them).
                log.exception("Exception on request %s %s%s", self._method, self._prefix, param)
                status, body = 500, json_body({"error": "internal server error"})
            headers = [_JSON, (b"content-length", str(len(body)).encode())]
            ids = logs.current()
            if ids is not None:
                headers.append((b"x-trace-id", ids[1].encode()))
            elapsed = time.perf_counter() - arrived
            telemetry.http_answered(self._service, self._rule, self._method, status, elapsed)
        finally:
            telemetry.request_done()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
