"""The HTTP edge every service shares: app factory, number parsing, JSON replies, error mapping."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from quart import Quart, Response, request

from common.errors import AppError, BadRequest

# Amounts, prices and quantities stay below 2**53 so that Lua (whose numbers are doubles) compares
# them exactly; balances are kept below the same bound by the scripts.
MAX_NUMBER = 10**15

_json = msgspec.json.Encoder()
log = logging.getLogger(__name__)


def parse_number(raw: str, name: str, *, minimum: int = 0) -> int:
    """Parse a path number: a plain decimal integer in ``[minimum, MAX_NUMBER]``, else 400."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16:
        raise BadRequest(f"{name} must be a non-negative integer, got {raw!r}")
    value = int(raw)
    if value < minimum or value > MAX_NUMBER:
        raise BadRequest(f"{name} must be between {minimum} and {MAX_NUMBER}, got {raw}")
    return value


def request_id() -> str:
    """This request's id: the gateway's ``X-Request-Id`` (the same on the gateway's retries of
    one client request, so routes that key their effect by it are safe to retry), else new."""
    given = request.headers.get("X-Request-Id", "")
    if 8 <= len(given) <= 64 and given.isascii() and given.isalnum():
        return given.lower()
    return uuid.uuid4().hex


def json_response(payload: Any, status: int = 200) -> Response:
    """Encode ``payload`` with msgspec as an ``application/json`` reply."""
    return Response(_json.encode(payload), status=status, content_type="application/json")


def _error_response(exc: AppError) -> Response:
    return json_response({"error": exc.message}, status=exc.http_status)


Hook = Callable[[Quart], Awaitable[None]]
Waiting = Callable[[], list[str]]
"""What the service still waits for before it can do its work (empty: nothing)."""


def create_app(
    name: str, *, startup: Hook, shutdown: Hook, waiting: Waiting = lambda: []
) -> Quart:
    """A Quart app whose clients are made in ``startup`` and closed in ``shutdown``.

    Errors of the service's taxonomy become their HTTP status with a JSON body. ``/health``
    (liveness) answers 200 once startup finished; ``/ready`` (readiness) only once, moreover,
    ``waiting`` names nothing: every consumer has joined its group and holds its partitions.
    """
    app = Quart(name)
    app.config["ready"] = False

    @app.before_serving
    async def _start() -> None:
        await startup(app)
        app.config["ready"] = True

    @app.after_serving
    async def _stop() -> None:
        app.config["ready"] = False
        await shutdown(app)

    @app.errorhandler(AppError)
    async def _app_error(exc: AppError) -> Response:
        if exc.http_status >= 500:
            log.warning("request failed: %s", exc.message)
        return _error_response(exc)

    @app.get("/openapi.json")
    async def _openapi() -> Response:
        from common.openapi import describe

        return json_response(describe(app, name))

    @app.get("/health")
    async def _health() -> Response:
        ready = bool(app.config["ready"])
        return json_response({"ready": ready}, status=200 if ready else 503)

    @app.get("/ready")
    async def _ready() -> Response:
        pending = waiting() if app.config["ready"] else ["startup"]
        return json_response({"ready": not pending, "waiting": pending}, 503 if pending else 200)

    return app
