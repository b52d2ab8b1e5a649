"""A stand-in for ``common.store.Store`` over a ``FakeRedis``.

``FakeStore`` runs the scripts of ``fake_lua`` and the few direct cluster calls the services
make; every call first awaits ``gate(label)``, so a scheduler can interleave, stall or crash
callers between calls. Its write tracking and replication barrier follow ``Store``'s
(``test_store`` checks that they agree).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from common.replication import durably, track_writes, tracked_writes
from common.store import WriteMayBeLost
from common.types import Command, ScriptCall, Written
from test.unit.fake_lua import SCRIPTS
from test.unit.fake_redis import IN_SYNC, MASTERS, FakeRedis, encode_arg, master_of

Gate = Callable[[str], Awaitable[None]]
T = TypeVar("T")


async def no_gate(label: str) -> None:
    """A gate that never waits (plain unit tests)."""


class FakeCluster:
    """The ``RedisCluster`` methods the services call directly (through ``Store.retrying``).

    ``durable_reads``: an ``hmget`` first makes a replica hold what it reads (as if the reader
    waited for that before acting on it); not what the services do (see test_saga_scenarios).
    """

    def __init__(self, redis: FakeRedis, gate: Gate) -> None:
        self._redis = redis
        self._gate = gate
        self.durable_reads = False

    async def ping(self) -> bool:
        return True

    def get_node_from_key(self, key: str) -> FakeNode:
        """The node serving ``key``'s master now (its name changes with each failover)."""
        return FakeNode(self._redis.node_of(key))

    async def get(self, key: str) -> bytes | None:
        await self._gate(f"get {key}")
        return self._redis.get(key)

    async def hmget(self, key: str, fields: Sequence[str | bytes]) -> list[bytes | None]:
        await self._gate(f"hmget {key}")
        if self.durable_reads:
            self._redis.replicate([master_of(key)])
        return self._redis.hmget(key, [encode_arg(f) for f in fields])

    async def zadd(self, key: str, mapping: Mapping[str, float], xx: bool = False) -> int:
        await self._gate(f"zadd {key}")
        return self._redis.zadd(key, {encode_arg(m): float(s) for m, s in mapping.items()}, xx=xx)

    async def zrangebyscore(
        self,
        key: str,
        low: str | float,
        high: str | float,
        start: int | None = None,
        num: int | None = None,
        withscores: bool = False,
    ) -> list[Any]:
        await self._gate(f"zrangebyscore {key}")
        rows = self._redis.zrangebyscore(key, float(low), float(high), start or 0, num)
        return rows if withscores else [member for member, _ in rows]

    async def zrange(self, key: str) -> list[tuple[bytes, float]]:
        """Every member with its score (``ZRANGE key 0 -1 WITHSCORES``)."""
        await self._gate(f"zrange {key}")
        return self._redis.zrangebyscore(key, float("-inf"), float("inf"), 0, None)


class FakeNode:
    """What ``RedisCluster.get_node_from_key`` returns: a name and its host and port."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.host, _, port = name.rpartition(":")
        self.port = int(port)


class FakeStore:
    """Stands in for ``common.store.Store`` (both satisfy ``common.types.Storage``); ``calls``
    counts what was done, by name. As the real store, it records which master took each
    tracked write, and ``replicate`` raises ``WriteMayBeLost`` for a write whose master failed
    over since."""

    def __init__(
        self,
        redis: FakeRedis,
        gate: Gate = no_gate,
        *,
        first_node_wins: bool = True,
        observe: Callable[[str, Any], None] = lambda call, result: None,
    ) -> None:
        self.redis = redis
        self._observe = observe
        self.first_node_wins = first_node_wins
        self.one_round_trip = True
        """False: ``on_master_of`` answers None, as when the slot map moved."""
        self.dropped_pipeline_is_none = True
        """True: a failover during ``on_master_of``'s barrier answers None rather than the
        ConnectionError redis-py raises (see test_saga_scenarios)."""
        self.cluster = FakeCluster(redis, gate)
        self.loaded: set[str] = set()
        self.calls: Counter[str] = Counter()
        self._gate = gate

    def load_scripts(self, lua_dir: Path) -> None:
        """Register the scripts of ``lua_dir`` (running one without a reproduction in
        ``fake_lua`` fails; ``test_fake_lua`` checks that every script has one)."""
        self.loaded.update(path.stem for path in lua_dir.glob("*.lua"))

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def retrying(self, call: Callable[[], Awaitable[Any]]) -> Any:
        return await call()

    async def hmget(self, key: str, fields: Sequence[str]) -> list[bytes | None]:
        return await self.cluster.hmget(key, list(fields))

    async def zadd(self, key: str, mapping: Mapping[str, float], *, xx: bool = False) -> int:
        return await self.cluster.zadd(key, mapping, xx=xx)

    async def zrange_scored(self, key: str) -> list[tuple[bytes, float]]:
        return await self.cluster.zrange(key)

    def tracking(self) -> AbstractContextManager[Written]:
        """As ``Store.tracking`` (the same ``track_writes``)."""
        return track_writes()

    async def script(
        self, name: str, keys: Sequence[str], args: Sequence[Any], *, writes: bool = True
    ) -> Any:
        if name not in self.loaded:
            raise KeyError(f"script {name!r} not loaded")
        if name not in SCRIPTS:
            raise NotImplementedError(f"no Python reproduction of {name}.lua in fake_lua")
        await self._gate(f"{name} {keys[0] if keys else ''}")
        self.calls[name] += 1
        node = self.redis.node_of(keys[0]) if keys else ""
        result = SCRIPTS[name](self.redis, list(keys), [encode_arg(a) for a in args])
        self._observe(f"{name} {keys[-1] if keys else ''}", result)
        if writes and keys and not await self._covered(keys[0], node):
            self._record(keys[0], node)
        return result

    async def _covered(self, key: str, node: str) -> bool:
        """As ``Store.script`` inside a ``tracking`` block: the barrier sent behind the script
        in its pipeline (a gate apart, where a failover may come first) replicates everything
        the master has when its replica is in sync; then the write needs no barrier of its
        own. A master that failed over meanwhile, or a replica not in sync, leaves it
        recorded for ``replicate``."""
        if tracked_writes() is None:
            return False
        await self._gate("replicate")
        if self.redis.node_of(key) != node:
            return False
        master = master_of(key)
        self.redis.replicate([master])
        return self.redis.replica[master] == IN_SYNC

    def wrote(self, key: str) -> None:
        """As ``Store.wrote``: record, for the current ``tracking``, the master that took a
        write to ``key``."""
        self._record(key, self.redis.node_of(key))

    def _record(self, key: str, node: str) -> None:
        written = tracked_writes()
        if written is None:
            return
        if self.first_node_wins:  # as Store does: a second master makes replicate refuse
            written.setdefault(key, node)
        else:
            written[key] = node

    def master_name(self, key: str) -> str:
        """As ``Store.master_name``: the node serving ``key``'s master now."""
        return self.cluster.get_node_from_key(key).name

    async def on_master_of(self, key: str, commands: Sequence[Command]) -> list[Any] | None:
        """As ``Store.on_master_of``: the commands run back to back on ``key``'s master, then a
        barrier on that connection. A failover before the barrier answers drops the connection
        (redis-py raises ConnectionError); None when a command's slot is on another master."""
        await self._gate(f"on_master_of {key}")
        self.calls["on_master_of"] += 1
        if not self.one_round_trip:
            return None  # as when the slot map moved: the caller takes the ordinary path
        master, node = master_of(key), self.redis.node_of(key)
        replies: list[Any] = []
        for command in commands:
            if isinstance(command, ScriptCall):
                name, keys, args = command
                if any(master_of(k) != master for k in keys):
                    return None
                try:
                    result = SCRIPTS[str(name)](
                        self.redis, list(keys), [encode_arg(a) for a in args]
                    )
                except ResponseError:  # Store.on_master_of answers None for an error reply
                    return None
                self._observe(f"{name} {keys[-1] if keys else ''}", result)
                replies.append(result)
            elif str(command[0]).upper() == "ZADD":
                _, zkey, score, member = command
                if master_of(str(zkey)) != master:
                    return None
                replies.append(self.redis.zadd(str(zkey), {encode_arg(member): float(score)}))
            else:
                raise NotImplementedError(f"on_master_of: {command[0]!r}")
        await self._gate(f"wait {key}")
        if self.redis.node_of(key) != node:
            if self.dropped_pipeline_is_none:
                return None
            raise RedisConnectionError("Connection closed by server.")
        if self.redis.replica[master] != IN_SYNC:
            return None  # as Store: no replica acknowledged; the ordinary path waits for one
        self.redis.replicate([master])
        return replies

    async def bulk_script(
        self,
        name: str,
        calls: Iterable[tuple[Sequence[str], Sequence[Any]]],
        chunk: int = 5000,
    ) -> list[Any]:
        """As ``Store.bulk_script``: the script once per call, then a barrier on every master.
        (All in one step here: the real one goes in pipelined chunks.)"""
        if name not in self.loaded:
            raise KeyError(f"script {name!r} not loaded")
        await self._gate(f"bulk {name}")
        self.calls[f"bulk {name}"] += 1
        replies = []
        for keys, args in calls:
            result = SCRIPTS[name](self.redis, list(keys), [encode_arg(a) for a in args])
            self._observe(f"{name} {keys[0]}", result)
            replies.append(result)
        await self.replicate_all()
        return replies

    async def replicate(self, written: Mapping[str, str]) -> None:
        keys = list(written)
        if not keys:
            return
        await self._gate("replicate")
        self.calls["replicate"] += 1
        moved = [k for k, node in written.items() if node != self.redis.node_of(k)]
        masters = {master_of(k) for k in keys if k not in moved}
        self._barrier(masters)
        if moved:
            self.calls["write_may_be_lost"] += 1
            raise WriteMayBeLost(f"masters of {sorted(moved)} failed over")

    async def replicate_all(self) -> None:
        await self._gate("replicate_all")
        self._barrier(set(range(MASTERS)))

    def _barrier(self, masters: set[int]) -> None:
        """As ``Store._barrier`` on each master: a replica in sync takes the writes; a master
        whose replica is down or resyncing fails the barrier once its retries ran out (here at
        once: a caller that retries finds the replica back when the simulation says so)."""
        self.redis.replicate(masters)
        unacknowledged = sorted(m for m in masters if self.redis.replica[m] != IN_SYNC)
        if unacknowledged:
            self.calls["write_may_be_lost"] += 1
            raise WriteMayBeLost(f"no replica of masters {unacknowledged} acknowledged")

    async def durable(self, action: Callable[[], Awaitable[T]]) -> T:
        """As ``Store.durable`` (its loop): run ``action`` again while its writes may have been
        lost, five times at most."""
        retries = itertools.count(1)
        return await durably(action, self.tracking, self.replicate, lambda: next(retries) <= 5)
