"""Rule 6's barrier: the writes a block makes are tracked with the master that took each, and
``replicate`` returns only once a replica of each of those masters holds them (a small write
and a WAIT on the same connection, after everything else that turn sent it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError, SlotNotCoveredError

from common.errors import Unavailable
from common.pipelines import Node, Pipelines
from common.retrying import client_failure, retrying
from common.settings import Settings
from common.types import Arg, Written

log = logging.getLogger(__name__)
T = TypeVar("T")

# A key written on two masters in one tracked block (see ``Replication.wrote``).
_FAILED_OVER = "<failed over>"

# The keys written by scripts in the current context (see ``track_writes``).
_written: ContextVar[Written | None] = ContextVar("written", default=None)


def hash_tag(key: str) -> str:
    """The ``{...}`` part of ``key`` that decides its slot (the whole key if it has none)."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start : end + 1] if start >= 0 and end > start + 1 else key


def master_name(cluster: RedisCluster, key: str) -> str:
    """The name (host:port) of the master serving ``key`` in ``cluster``'s slot map."""
    node = cluster.get_node_from_key(key)
    if node is None:
        raise SlotNotCoveredError(f"no master serves {hash_tag(key)}")
    return str(node.name)


class WriteMayBeLost(Unavailable):
    """A write's master failed over, stayed unreachable, or no replica confirmed the write in
    time: it may be gone (or go in a failover). Whoever made it must make it again (the scripts
    are idempotent)."""


class _Lagging(RedisError):
    """WAIT timed out without an acknowledgement; retried."""


@contextlib.contextmanager
def track_writes() -> Iterator[Written]:
    """Collect the keys that scripts write inside the block (and in tasks it spawns), with the
    master that took each write, so the caller can ``replicate`` them before acting. The fake
    store tracks its writes here too."""
    written: Written = {}
    token = _written.set(written)
    try:
        yield written
    finally:
        _written.reset(token)


def tracked_writes() -> Written | None:
    """What the current ``track_writes`` block has recorded so far (None outside one)."""
    return _written.get()


async def durably(
    action: Callable[[], Awaitable[T]],
    tracking: Callable[[], AbstractContextManager[Written]],
    replicate: Callable[[Written], Awaitable[None]],
    again: Callable[[], bool],
) -> T:
    """``durable``'s loop (the fake store runs it too): ``action`` inside ``tracking``, then
    ``replicate`` of what it wrote. While that raises WriteMayBeLost and ``again()`` allows, run
    it again: it re-applies what was lost and finds what survived."""
    while True:
        with tracking() as written:
            result = await action()
        try:
            await replicate(written)
            return result
        except WriteMayBeLost:
            if not again():
                raise
            log.warning("a write may have been lost in a failover; applying it again")


class Replication:
    """Write tracking and the replication barrier of one store, over its ``pipelines`` and the
    slot map of ``cluster()``."""

    def __init__(
        self, settings: Settings, pipelines: Pipelines, cluster: Callable[[], RedisCluster]
    ) -> None:
        self._settings = settings
        self._pipelines = pipelines
        self._cluster = cluster
        self._op_timeout = settings.redis_op_timeout_ms / 1000

    def tracking(self) -> AbstractContextManager[Written]:
        """``track_writes``: the writes of the block, to ``replicate`` before acting."""
        return track_writes()

    def wrote(self, key: str, node: str | None = None) -> None:
        """Record a write to ``key`` for the current ``tracking``; ``node`` is the master that
        took it (default: the one serving ``key`` now)."""
        written = _written.get()
        if written is not None:
            # The client follows MOVED before returning, so this is the master that ran it. Two
            # writes to one key that land on different masters mean a failover came between
            # them: the first may be gone, so replicate() must refuse (WriteMayBeLost).
            if node is None:
                node = master_name(self._cluster(), key)
            first = written.setdefault(key, node)
            if first != node:
                written[key] = _FAILED_OVER

    async def durable(self, action: Callable[[], Awaitable[T]]) -> T:
        """Run ``action`` (idempotent script calls) and return once a replica holds its
        writes. If a failover may have erased them, run it again (``durably``) until
        ``REDIS_OP_TIMEOUT_MS`` has passed."""
        deadline = time.monotonic() + self._op_timeout
        return await durably(
            action, self.tracking, self.replicate, lambda: time.monotonic() <= deadline
        )

    async def replicate(self, written: Mapping[str, str]) -> None:
        """Return once a replica holds every write recorded in ``written`` (key -> the master
        that took it; see ``tracking``). Raises WriteMayBeLost when that master no longer owns
        the key (a failover happened: the write may be gone) or stays unreachable.

        WAIT counts the replication offset of its own connection, so each master gets a small
        write and a WAIT on one connection. A write no replica acknowledged is never vouched
        for, not even on a master with no replica connected: with
        ``cluster-replica-validity-factor 0`` a replica that comes back and is still resyncing
        can be promoted without it. The WAIT is retried for up to ``REDIS_OP_TIMEOUT_MS`` (a
        replica briefly away only delays the write), then WriteMayBeLost (Unavailable): the
        caller does the work again later (``durable``, the consumer's batch retry).
        """
        if self._settings.redis_wait_replicas <= 0 or not written:
            return
        per_node: dict[str, str] = {}
        for key, node in written.items():
            if node == _FAILED_OVER:
                raise WriteMayBeLost(f"{hash_tag(key)} changed master between two writes")
            per_node.setdefault(node, key)
        await asyncio.gather(*(self._barrier(node, key) for node, key in per_node.items()))

    def masters(self) -> dict[int, str]:
        """The master serving each slot, as this client knows it now (for ``replicate_bulk``)."""
        slots = self._cluster().nodes_manager.slots_cache
        return {slot: nodes[0].name for slot, nodes in slots.items() if nodes}

    async def replicate_bulk(self, masters: Mapping[int, str]) -> None:
        """Return once a replica holds every write of a bulk made while ``masters`` (from
        ``masters()``) served the slots: a barrier on each of those masters, the ones that took
        the writes. Raises WriteMayBeLost if one of them no longer serves its slots or any slot
        has changed master since: a failover came between a write and its barrier, and the new
        master may lack what the old one took. (A barrier on the masters of the moment would
        vouch for exactly those lost writes.)"""
        keys: dict[str, str] = {}
        wanted = set(masters.values())
        i = 0
        while len(keys) < len(wanted) and i < 1_000_000:
            key = f"{{barrier:{i}}}"
            node = masters.get(key_slot(key.encode()))
            if node is not None:
                keys.setdefault(node, key)
            i += 1
        await self.replicate({key: node for node, key in keys.items()})
        if self.masters() != masters:
            raise WriteMayBeLost("a master failed over while a bulk write was made")

    async def _barrier(self, node: str, key: str) -> None:
        host, _, port = node.rpartition(":")
        target = Node(node, host, int(port))
        want = self._settings.redis_wait_replicas

        async def barrier() -> Any:
            # Both go out on one connection, after whatever else this turn sends that master.
            set_reply, acked = await asyncio.gather(
                *(self._pipelines.run(target, command, raw=True) for command in self.commands(key))
            )
            if isinstance(set_reply, ResponseError):  # MOVED: another master owns the slot now
                return set_reply
            if isinstance(set_reply, Exception):  # a dropped connection: try again
                raise set_reply
            if isinstance(acked, Exception):
                raise acked
            if int(acked) < want:
                # No replica holds it yet (lagging, resyncing, or none connected): not yet
                # safe to act on the write; WAIT again.
                raise _Lagging(f"no replica of {node} acknowledged (WAIT {acked}/{want})")
            return int(acked)

        try:
            outcome = await retrying(barrier, self._op_timeout)
        except Unavailable as exc:
            raise WriteMayBeLost(f"master {node} unreachable or unreplicated: {exc}") from exc
        if isinstance(outcome, Exception):
            try:
                await self._cluster().initialize()  # else the next call initializes it
            except Exception as exc:
                if not client_failure(exc):
                    raise
            raise WriteMayBeLost(f"master {node} lost {hash_tag(key)}: {outcome}")

    def commands(self, key: str) -> tuple[tuple[Arg, ...], tuple[Arg, ...]]:
        """A small write in ``key``'s slot and a WAIT for it: sent after other writes on one
        connection, the WAIT returns once a replica holds them all."""
        return (
            ("SET", f"{hash_tag(key)}:barrier", b"1", "PX", 60_000),
            ("WAIT", self._settings.redis_wait_replicas, self._settings.redis_wait_timeout_ms),
        )
