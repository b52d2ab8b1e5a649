"""The HTTP edge every service shares: app factory, number parsing, JSON replies, error mapping."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from quart import Quart, Response, request

from common import one_write
from common.errors import AppError, BadRequest

# Amounts, prices and quantities stay below 2**53 so that Lua (whose numbers are doubles) compares
# them exactly; balances are kept below the same bound by the scripts.
MAX_NUMBER = 10**15

_json = msgspec.json.Encoder()
log = logging.getLogger(__name__)

# The usual forms of a request id, used as they are: UUIDs with or without dashes, nginx's
# $request_id (32 hex digits), ULIDs, "client-42.7". The first character is a letter or digit,
# so "." and ".." are not ids.
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def parse_number(raw: str, name: str, *, minimum: int = 0) -> int:
    """Parse a path number: a plain decimal integer in ``[minimum, MAX_NUMBER]``, else 400."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16:
        raise BadRequest(f"{name} must be a non-negative integer, got {raw!r}")
    value = int(raw)
    if value < minimum or value > MAX_NUMBER:
        raise BadRequest(f"{name} must be between {minimum} and {MAX_NUMBER}, got {raw}")
    return value


def request_id() -> str:
    """This request's idempotency key, from its ``X-Request-Id`` (see ``idempotency_key``)."""
    return idempotency_key(request.headers.get("X-Request-Id", ""))


GATEWAY_READ_TIMEOUT_S = 60
"""The gateway's ``proxy_read_timeout`` (env/gateway/routes.conf, k8s/ingress.yaml): it gives up on
a worker this long after sending it a request, and retries the request on another."""
GATEWAY_CLOCK_MARGIN_S = 5
"""How far the gateway's clock may be ahead of a worker's (or behind it)."""
GATEWAY_WAITS_PAST_START_BY_S = 2 * GATEWAY_CLOCK_MARGIN_S
"""How long past ``gateway_start_by`` (on a worker's clock) the gateway may still wait for the
request: its margin, and the margin again for a worker's clock running ahead of the gateway's.
A checkout whose saga cannot be read reads on until then rather than answer 503 while the
gateway still waits (``Verdicts``); an answer that comes after the gateway gave up is dropped."""


def gateway_start_by(sent: str | None) -> int | None:
    """Until when (ms since the epoch) a request may still start what its retry would start
    again: before the gateway gives up on its first attempt, less a margin for the clocks.
    ``sent`` is its ``X-Request-Start``, when the gateway first sent it (nginx's ``$msec``,
    the same on every retry). A worker frozen past the gateway's timeout reads such a request
    only when it resumes, after its retry on another worker may have been answered; without the
    header (a request that did not come through the gateway), None: no bound."""
    try:
        seconds = float(sent) if sent else None
    except ValueError:
        return None
    if seconds is None or not math.isfinite(seconds):
        return None
    return int((seconds + GATEWAY_READ_TIMEOUT_S - GATEWAY_CLOCK_MARGIN_S) * 1000)


def idempotency_key(given: str) -> str:
    """The key that makes a mutation happen at most once per client request.

    ``given`` is the request's ``X-Request-Id``: the client's own when it sent one (the gateway
    and ingress-nginx pass it on), else the gateway's, the same on the gateway's retries of one
    request. 1-64 letters, digits, ``-``, ``_`` and ``.`` (starting with a letter or digit) are
    the key as given; any other non-empty value is hashed, so it is still the same key on a
    retry, and the hash begins with ``~``, so that no id a client sends as it is names it; no
    header at all (a direct call) gets a new key.
    """
    if _REQUEST_ID.fullmatch(given):
        return given
    if given:
        digest = hashlib.blake2b(given.encode("utf-8", "surrogatepass"), digest_size=16)
        return "~" + digest.hexdigest()
    return uuid.uuid4().hex


def new_entity_id(key: str) -> str:
    """The id of the entity that the request with idempotency ``key`` creates: the same for a
    retried create (which then finds the entity and keeps it), and 32 hex digits whatever the
    key, so that a client's request id ("0", "42") never names an entity created otherwise
    (``batch_init`` creates "0" ... "n-1")."""
    return hashlib.blake2b(key.encode(), digest_size=16, person=b"entity-id").hexdigest()


def json_body(payload: Any) -> bytes:
    """``payload`` as JSON, encoded with msgspec."""
    return _json.encode(payload)


def json_response(payload: Any, status: int = 200) -> Response:
    """Encode ``payload`` with msgspec as an ``application/json`` reply."""
    return Response(json_body(payload), status=status, content_type="application/json")


def error_answer(exc: AppError) -> tuple[int, bytes]:
    """What the HTTP edge answers for an error of the taxonomy: its status and a JSON body
    (a 5xx is logged). Quart's error handler and ``FastRoute`` both answer with it."""
    if exc.http_status >= 500:
        log.warning("request failed: %s", exc.message)
    return exc.http_status, json_body({"error": exc.message})


Hook = Callable[[Quart], Awaitable[None]]
Waiting = Callable[[], list[str]]
"""What the service still waits for before it can do its work (empty: nothing)."""


def create_app(name: str, *, startup: Hook, shutdown: Hook, waiting: Waiting = lambda: []) -> Quart:
    """A Quart app whose clients are made in ``startup`` and closed in ``shutdown``.

    Errors of the service's taxonomy become their HTTP status with a JSON body. ``/health``
    (liveness) answers 200 once startup finished; ``/ready`` (readiness) only once, moreover,
    ``waiting`` names nothing: every consumer has joined its group and holds its partitions.
    Each answer leaves the worker in one write (``common.one_write``).
    """
    one_write.install()
    app = Quart(name)
    # `/find//0` matches no route (404); merged, it was redirected to `/find/0`, another entity.
    app.url_map.merge_slashes = False
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
        status, body = error_answer(exc)
        return Response(body, status=status, content_type="application/json")

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
