"""The Redis Cluster store: the client's lifecycle, the Lua script registry, and the calls the
services make (idempotent scripts, plain reads), each retried within bounds. What it stands on,
one module each: ``retrying`` (which failures to retry), ``pipelines`` (one pipeline per master
per turn of the loop) and ``replication`` (write tracking and the barrier of rule 6)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from common.pipelines import Node, NodeClients, Pipelines
from common.replication import (
    Replication,
    WriteMayBeLost,
    hash_tag,
    master_name,
    tracked_writes,
)
from common.retrying import retrying
from common.settings import Settings
from common.types import Arg, Command, ScriptCall, Written

__all__ = ["Store", "WriteMayBeLost", "hash_tag"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Store:
    """One service's Redis Cluster. ``start`` connects, ``stop`` closes (safe to call twice)."""

    def __init__(self, settings: Settings, *lua_dirs: Path) -> None:
        self._settings = settings
        self._scripts: dict[str, tuple[str, str]] = {}
        for lua_dir in lua_dirs:
            self.load_scripts(lua_dir)
        self._cluster: RedisCluster | None = None
        self._nodes = NodeClients(settings)
        self._op_timeout = settings.redis_op_timeout_ms / 1000
        self._batch = Pipelines(self._node_client)
        self._replication = Replication(settings, self._batch, lambda: self.cluster)

    @property
    def cluster(self) -> RedisCluster:
        if self._cluster is None:
            raise RuntimeError("store not started")
        return self._cluster

    def load_scripts(self, lua_dir: Path) -> None:
        """Register every ``*.lua`` file of ``lua_dir`` under its stem."""
        from hashlib import sha1

        for path in sorted(lua_dir.glob("*.lua")):
            body = path.read_text()
            self._scripts[path.stem] = (body, sha1(body.encode()).hexdigest())

    async def start(self) -> None:
        if self._cluster is not None:
            return
        s = self._settings
        self._cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in s.redis_nodes],
            # Find the cluster again through REDIS_NODES (a Kubernetes Service, the compose
            # names), not through the nodes found at the last refresh: redis-py's default
            # replaces the startup nodes with those (pod IPs), and once every pod of the
            # cluster has been replaced it can never reach it again.
            dynamic_startup_nodes=False,
            password=s.redis_password,
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            max_connections=256,
            decode_responses=False,
        )
        await self.retrying(lambda: self.cluster.ping())

    async def stop(self) -> None:
        cluster, self._cluster = self._cluster, None
        await self._nodes.close()
        if cluster is not None:
            await cluster.aclose()

    async def retrying(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``call()`` until it succeeds or the operation timeout passes (then Unavailable).

        Only idempotent calls go through here: a timed-out call may have been applied.
        """
        return await retrying(call, self._op_timeout)

    def tracking(self) -> contextlib.AbstractContextManager[Written]:
        """Collect the keys that scripts write inside the block (and in tasks it spawns), with
        the master that took each write, so the caller can ``replicate`` them before acting."""
        return self._replication.tracking()

    async def durable(self, action: Callable[[], Awaitable[T]]) -> T:
        """Run ``action`` (idempotent script calls) and return once a replica holds its
        writes. If a failover may have erased them, run it again: it re-applies what was lost
        and finds what survived."""
        return await self._replication.durable(action)

    async def replicate(self, written: Mapping[str, str]) -> None:
        """Return once a replica holds every write recorded in ``written`` (see
        ``Replication.replicate``); raises WriteMayBeLost when it may be gone."""
        await self._replication.replicate(written)

    async def script(
        self, name: str, keys: Sequence[str], args: Sequence[Arg], *, writes: bool = True
    ) -> Any:
        """Run the registered Lua script ``name`` (all ``keys`` in one slot), retrying.

        Scripts are written so that running one twice has the effect of running it once.
        ``writes=False`` for a call known to change nothing (it is then not replicated).
        """
        body, sha = self._scripts[name]
        node = self._master_of(keys[0]) if keys else None
        if node is not None:
            packed: tuple[Arg, ...] = ("EVALSHA", sha, len(keys), *keys, *args)
            barrier = self._covering_barrier(keys[0]) if writes else None
            try:
                if barrier is None:
                    result = await self._batch.run(node, packed)
                    covered = False
                else:
                    reply, barrier_replies = self._batch.run_then_barrier(node, packed, barrier)
                    result = await reply
                    covered = self._acknowledged(barrier_replies)
            except NoScriptError:
                await self._node_client(node.host, node.port).script_load(body)
            except (RedisError, OSError):
                pass  # MOVED, a dropped connection, a failover: the ordinary path below follows
                # the cluster and retries (the scripts are idempotent)
            else:
                if writes and not covered:
                    self.wrote(keys[0], node.name)
                return result

        async def call() -> Any:
            try:
                return await self.cluster.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                return await self.cluster.eval(body, len(keys), *keys, *args)

        result = await self.retrying(call)
        if writes and keys:
            self.wrote(keys[0])
        return result

    def _covering_barrier(self, key: str) -> tuple[tuple[Arg, ...], ...] | None:
        """The barrier to send behind a write to ``key`` inside a ``tracking`` block (whose
        writes are replicated before anything acts on them), or None outside one."""
        if self._settings.redis_wait_replicas <= 0 or tracked_writes() is None:
            return None
        return self._replication.commands(key)

    def _acknowledged(self, barrier_replies: asyncio.Future[list[Any]]) -> bool:
        """Whether a barrier sent behind a write saw a replica take it: then the write needs no
        barrier of its own (``replicate``); else it is recorded and gets one."""
        if not barrier_replies.done() or barrier_replies.cancelled():
            return False
        if barrier_replies.exception() is not None:
            return False
        set_reply, acked = barrier_replies.result()
        if isinstance(set_reply, Exception) or isinstance(acked, Exception):
            return False
        return int(acked) >= self._settings.redis_wait_replicas

    async def hmget(self, key: str, fields: Sequence[str]) -> list[bytes | None]:
        """HMGET, batched with the other calls to ``key``'s master in this turn of the loop."""
        node = self._master_of(key)
        if node is not None:
            with contextlib.suppress(RedisError, OSError):
                return list(await self._batch.run(node, ("HMGET", key, *fields)))
        return list(await self.retrying(lambda: self.cluster.hmget(key, list(fields))))

    async def zadd(self, key: str, mapping: Mapping[str, float], *, xx: bool = False) -> int:
        """ZADD (``xx``: only members already there), retrying; not tracked as a write."""
        return int(await self.retrying(lambda: self.cluster.zadd(key, dict(mapping), xx=xx)))

    async def zrange_scored(self, key: str) -> list[tuple[bytes, float]]:
        """Every member of the sorted set ``key`` with its score, lowest first, retrying."""
        rows = await self.retrying(lambda: self.cluster.zrange(key, 0, -1, withscores=True))
        return [(member, float(score)) for member, score in rows]

    def _master_of(self, key: str) -> Node | None:
        """The master serving ``key`` in the client's slot map (None while it has none)."""
        try:
            node = self.cluster.get_node_from_key(key)
        except RedisClusterException:
            return None
        return None if node is None else Node(node.name, node.host, int(node.port))

    def master_name(self, key: str) -> str:
        """The name (host:port) of the master serving ``key`` in the client's slot map."""
        return master_name(self.cluster, key)

    def wrote(self, key: str, node: str | None = None) -> None:
        """Record a write to ``key`` made outside ``script`` for the current ``tracking``;
        ``node`` is the master that took it (default: the one serving ``key`` now)."""
        self._replication.wrote(key, node)

    async def on_master_of(self, key: str, commands: Sequence[Command]) -> list[Any] | None:
        r"""Run ``commands`` (each all in slots of ``key``'s master) in order on one connection to
        that master, then a replication barrier on the same connection: one round trip for
        writes that are durable when it returns. Script calls are given as
        ``ScriptCall``\ s. Returns the replies, or None when the slot map moved
        or a script was missing (the caller then takes the ordinary path)."""
        try:
            return await self._on_master_of(key, commands)
        except (RedisError, OSError) as exc:
            # Unknown whether the writes happened: the ordinary path runs them again, and they
            # are idempotent.
            log.info("one-round-trip path failed (%r); taking the ordinary path", exc)
            return None

    async def _on_master_of(self, key: str, commands: Sequence[Command]) -> list[Any] | None:
        want = self._settings.redis_wait_replicas
        node = self._master_of(key)
        if node is None:
            return None
        # Submitted together, so they go out in this order in one pipeline (with whatever else
        # this turn sends that master): the barrier's WAIT follows every write before it.
        sent: list[asyncio.Future[Any]] = []
        for command in commands:
            if isinstance(command, ScriptCall):
                sha = self._scripts[command.name][1]
                keys, args = command.keys, command.args
                packed: tuple[Arg, ...] = ("EVALSHA", sha, len(keys), *keys, *args)
            else:
                packed = tuple(command)
            sent.append(self._batch.run(node, packed, raw=True))
        if want > 0:
            barrier = self._replication.commands(key)
            sent += [self._batch.run(node, command, raw=True) for command in barrier]
        replies = await asyncio.gather(*sent)
        if any(isinstance(reply, Exception) for reply in replies):
            if any(isinstance(reply, NoScriptError) for reply in replies):
                client = self._node_client(node.host, node.port)
                for body, _ in self._scripts.values():
                    await client.script_load(body)
            return None
        if want > 0 and int(replies[-1]) < want:
            return None  # no replica has them yet: the ordinary path waits for one
        return list(replies[: len(commands)])

    async def bulk_script(
        self,
        name: str,
        calls: Iterable[tuple[Sequence[str], Sequence[Arg]]],
        chunk: int = 5000,
    ) -> list[Any]:
        """Run the registered script ``name`` once per ``(keys, args)``, pipelined per node in
        chunks, each chunk retried whole (the script must be safe to run twice); then wait
        until a replica of every master that took them holds it all. Returns the replies, in
        order. A master that failed over meanwhile may have lost some (``replicate_bulk``):
        then WriteMayBeLost (a 503), and whoever asked runs it all again."""
        masters = self._replication.masters()
        if not masters:  # the client is finding the cluster anew: know its masters first
            await self.retrying(self.cluster.initialize)
            masters = self._replication.masters()
        body, sha = self._scripts[name]
        replies: list[Any] = []
        batch: list[tuple[Sequence[str], Sequence[Arg]]] = []

        async def run() -> list[Any]:
            async with self.cluster.pipeline() as pipe:
                for keys, args in batch:
                    pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
                return list(await pipe.execute())

        async def flush() -> None:
            try:
                replies.extend(await self.retrying(run))
            except NoScriptError:  # a master that never ran it (new, or restarted empty)
                for node in self.cluster.get_primaries():
                    client = self._node_client(node.host, int(node.port))
                    await self.retrying(partial(client.script_load, body))
                replies.extend(await self.retrying(run))
            batch.clear()

        for call in calls:
            batch.append(call)
            if len(batch) >= chunk:
                await flush()
        if batch:
            await flush()
        await self._replication.replicate_bulk(masters)
        return replies

    def _node_client(self, host: str, port: int) -> Redis:
        return self._nodes.client(host, port)
