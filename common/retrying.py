"""Bounded retries of Redis Cluster calls: which failures a failover or a restart gives for a
while (retried until the operation timeout, then Unavailable), and which are misuse (raised)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from common.errors import Unavailable

log = logging.getLogger(__name__)


async def retrying(call: Callable[[], Awaitable[Any]], timeout_s: float) -> Any:
    """Await ``call()`` until it succeeds or ``timeout_s`` passes (then Unavailable).

    Only idempotent calls go through here: a timed-out call may have been applied.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            return await call()
        except Exception as exc:
            if not client_failure(exc):
                raise
            if not isinstance(exc, RedisError | RedisClusterException | OSError):
                log.warning("redis client failed inside (retrying): %r", exc, exc_info=exc)
            if isinstance(exc, ResponseError) and not _is_transient(exc):
                raise
            if isinstance(exc, RedisClusterException) and not _cluster_unreachable(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise Unavailable(f"redis unavailable: {exc}") from exc
            log.debug("redis call failed, retrying: %r", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


def client_failure(exc: BaseException) -> bool:
    """A failure of the Redis client or its connection rather than of the call made with it:
    redis-py's own errors, OSError, a write on a closed transport, or anything else raised
    inside redis-py."""
    return (
        isinstance(exc, RedisError | RedisClusterException | OSError)
        or dropped_connection(exc)
        or _inside_redis_py(exc)
    )


def dropped_connection(exc: BaseException) -> bool:
    """A write on a connection whose transport was closed under it: redis-py reconnecting
    while a failed-over node drops it lets the event loop's RuntimeError ("... the handler is
    closed", uvloop's and asyncio's words) through instead of a ConnectionError. Seen as a 500
    on a read after a payment master's failover (2026-11-29)."""
    return isinstance(exc, RuntimeError) and "the handler is closed" in str(exc)


def _inside_redis_py(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside redis-py itself (not by the call's arguments, which
    would fail at once in our frame): its cluster client, reconnecting or rebuilding its slot
    map while a failover ends, has let other errors than its own through (a 500 on a read
    after a payment master's failover, 2026-11-29). Retried, and logged with its traceback."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}redis{os.sep}" in tb.tb_frame.f_code.co_filename


def _cluster_unreachable(exc: RedisClusterException) -> bool:
    """redis-py's cluster client raises these (not RedisErrors) while it cannot find the
    cluster or its slot map is incomplete: every startup node refused, nodes disagree during a
    failover, slots not covered yet. Anything else of the class is a misuse (cross-slot
    commands), not retried."""
    if isinstance(exc, SlotNotCoveredError):
        return True
    return str(exc).startswith(
        (
            "Redis Cluster cannot be connected",
            "All slots are not covered",
            "startup_nodes could not agree",
        )
    )


def _is_transient(exc: ResponseError) -> bool:
    """A reply a failover or a restart gives for a while (redis-py turns some of them into
    classes of their own and drops the code from the message)."""
    if isinstance(exc, ClusterDownError | TryAgainError | MasterDownError | ReadOnlyError):
        return True
    text = str(exc)
    return text.startswith(("CLUSTERDOWN", "TRYAGAIN", "LOADING", "MASTERDOWN", "READONLY"))
