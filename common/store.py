"""The Redis Cluster store: client lifecycle, a Lua script registry, bounded retries and the
replication barrier that keeps acknowledged effects alive across a failover."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from common.errors import Unavailable
from common.settings import Settings
from common.types import Arg, Command, ScriptCall, Written

log = logging.getLogger(__name__)

# A key written on two masters in one tracked block (see ``Store.wrote``).
_FAILED_OVER = "<failed over>"

# The keys written by scripts in the current context (see ``Store.tracking``).
_written: ContextVar[Written | None] = ContextVar("written", default=None)
T = TypeVar("T")


def hash_tag(key: str) -> str:
    """The ``{...}`` part of ``key`` that decides its slot (the whole key if it has none)."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start : end + 1] if start >= 0 and end > start + 1 else key


class Store:
    """One service's Redis Cluster. ``start`` connects, ``stop`` closes (safe to call twice)."""

    def __init__(self, settings: Settings, *lua_dirs: Path) -> None:
        self._settings = settings
        self._scripts: dict[str, tuple[str, str]] = {}
        for lua_dir in lua_dirs:
            self.load_scripts(lua_dir)
        self._cluster: RedisCluster | None = None
        self._node_clients: dict[tuple[str, int], Redis] = {}
        self._op_timeout = settings.redis_op_timeout_ms / 1000
        self._batch = _Batch(self)

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
        clients, self._node_clients = self._node_clients, {}
        for client in clients.values():
            await client.aclose()
        if cluster is not None:
            await cluster.aclose()

    async def retrying(self, call: Any) -> Any:
        """Await ``call()`` until it succeeds or the operation timeout passes (then Unavailable).

        Only idempotent calls go through here: a timed-out call may have been applied.
        """
        deadline = time.monotonic() + self._op_timeout
        delay = 0.05
        while True:
            try:
                return await call()
            except (RedisError, RedisClusterException, OSError) as exc:
                if isinstance(exc, ResponseError) and not _is_transient(exc):
                    raise
                if isinstance(exc, RedisClusterException) and not _cluster_unreachable(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise Unavailable(f"redis unavailable: {exc}") from exc
                log.debug("redis call failed, retrying: %r", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    @contextlib.contextmanager
    def tracking(self) -> Iterator[Written]:
        """Collect the keys that scripts write inside the block (and in tasks it spawns), with
        the master that took each write, so the caller can ``replicate`` them before acting."""
        written: Written = {}
        token = _written.set(written)
        try:
            yield written
        finally:
            _written.reset(token)

    async def durable(self, action: Callable[[], Awaitable[T]]) -> T:
        """Run ``action`` (idempotent script calls) and return once a replica holds its
        writes. If a failover may have erased them, run it again: it re-applies what was lost
        and finds what survived."""
        deadline = time.monotonic() + self._op_timeout
        while True:
            with self.tracking() as written:
                result = await action()
            try:
                await self.replicate(written)
                return result
            except WriteMayBeLost:
                if time.monotonic() > deadline:
                    raise
                log.warning("a write may have been lost in a failover; applying it again")

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
            try:
                result = await self._batch.run(node, ("EVALSHA", sha, len(keys), *keys, *args))
            except NoScriptError:
                await self._node_client(node.host, node.port).script_load(body)
            except (RedisError, OSError):
                pass  # MOVED, a dropped connection, a failover: the ordinary path below follows
                # the cluster and retries (the scripts are idempotent)
            else:
                if writes:
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

    def _master_of(self, key: str) -> _Node | None:
        """The master serving ``key`` in the client's slot map (None while it has none)."""
        try:
            node = self.cluster.get_node_from_key(key)
        except RedisClusterException:
            return None
        return None if node is None else _Node(node.name, node.host, int(node.port))

    def master_name(self, key: str) -> str:
        """The name (host:port) of the master serving ``key`` in the client's slot map."""
        node = self.cluster.get_node_from_key(key)
        if node is None:
            raise SlotNotCoveredError(f"no master serves {hash_tag(key)}")
        return str(node.name)

    def wrote(self, key: str, node: str | None = None) -> None:
        """Record a write to ``key`` made outside ``script`` for the current ``tracking``;
        ``node`` is the master that took it (default: the one serving ``key`` now)."""
        written = _written.get()
        if written is not None:
            # The client follows MOVED before returning, so this is the master that ran it. Two
            # writes to one key that land on different masters mean a failover came between
            # them: the first may be gone, so replicate() must refuse (WriteMayBeLost).
            if node is None:
                node = self.master_name(key)
            first = written.setdefault(key, node)
            if first != node:
                written[key] = _FAILED_OVER

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
            sent += [self._batch.run(node, command, raw=True) for command in self._barrier_of(key)]
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
        until a replica of every master holds it all. Returns the replies, in order."""
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
                    await self.retrying(
                        lambda n=node: self._node_client(n.host, n.port).script_load(body)
                    )
                replies.extend(await self.retrying(run))
            batch.clear()

        for call in calls:
            batch.append(call)
            if len(batch) >= chunk:
                await flush()
        if batch:
            await flush()
        await self.replicate_all()
        return replies

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

    async def replicate_all(self) -> None:
        """``replicate`` for every master of the cluster (after a bulk write)."""
        masters = {node.name for node in self.cluster.get_primaries()}
        keys: dict[str, str] = {}
        i = 0
        while len(keys) < len(masters) and i < 100_000:
            key = f"{{barrier:{i}}}"
            keys.setdefault(self.master_name(key), key)
            i += 1
        await self.replicate({key: node for node, key in keys.items()})

    async def _barrier(self, node: str, key: str) -> None:
        host, _, port = node.rpartition(":")
        target = _Node(node, host, int(port))
        want = self._settings.redis_wait_replicas

        async def barrier() -> Any:
            # Both go out on one connection, after whatever else this turn sends that master.
            set_reply, acked = await asyncio.gather(
                *(self._batch.run(target, command, raw=True) for command in self._barrier_of(key))
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
            outcome = await self.retrying(barrier)
        except Unavailable as exc:
            raise WriteMayBeLost(f"master {node} unreachable or unreplicated: {exc}") from exc
        if isinstance(outcome, Exception):
            with contextlib.suppress(RedisError, RedisClusterException, OSError):
                await self.cluster.initialize()  # else the next call initializes it
            raise WriteMayBeLost(f"master {node} lost {hash_tag(key)}: {outcome}")

    def _barrier_of(self, key: str) -> tuple[tuple[Arg, ...], tuple[Arg, ...]]:
        """A small write in ``key``'s slot and a WAIT for it: sent after other writes on one
        connection, the WAIT returns once a replica holds them all."""
        return (
            ("SET", f"{hash_tag(key)}:barrier", b"1", "PX", 60_000),
            ("WAIT", self._settings.redis_wait_replicas, self._settings.redis_wait_timeout_ms),
        )

    def _node_client(self, host: str, port: int) -> Redis:
        client = self._node_clients.get((host, port))
        if client is None:
            client = Redis(
                host=host,
                port=port,
                password=self._settings.redis_password,
                socket_timeout=2.0,
                socket_connect_timeout=1.0,
            )
            self._node_clients[(host, port)] = client
        return client


class _Node(NamedTuple):
    name: str
    host: str
    port: int


class _Batch:
    """Commands issued in one turn of the event loop go to each master in one pipeline: a
    consumer batch's scripts, or the checkouts that arrived together, cost one round trip per
    master instead of one each. Replies are handed back in order; an error reply fails only
    its own command, a dropped connection every command of that pipeline (whose callers then
    take the ordinary, retrying path: every batched command is idempotent)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[str, list[tuple[tuple[Arg, ...], asyncio.Future[Any]]]] = {}
        self._nodes: dict[str, _Node] = {}

    def run(
        self, node: _Node, command: tuple[Arg, ...], *, raw: bool = False
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
        self, node: _Node, calls: list[tuple[tuple[Arg, ...], asyncio.Future[Any]]]
    ) -> None:
        client = self._store._node_client(node.host, node.port)
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


class _Lagging(RedisError):
    """WAIT timed out without an acknowledgement; retried."""


class WriteMayBeLost(Unavailable):
    """A write's master failed over, stayed unreachable, or no replica confirmed the write in
    time: it may be gone (or go in a failover). Whoever made it must make it again (the scripts
    are idempotent)."""


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
