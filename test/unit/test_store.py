"""``common.store``: hash tags, and the real ``Store``'s replication barrier over a fake cluster
whose masters can fail over (the barrier is what keeps acknowledged effects alive)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from common.errors import Unavailable
from common.ledger import LUA_DIR
from common.settings import load_settings
from common.store import Store, WriteMayBeLost, hash_tag
from test.unit.fake_lua import SCRIPTS
from test.unit.fake_redis import IN_SYNC, MASTERS, FakeRedis, encode_arg, master_of
from test.unit.fake_store import FakeNode, FakeStore


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("{item:42}", "{item:42}"),
        ("{item:42}:op:o1:1:ab", "{item:42}"),
        ("saga:inflight:{checkout:3}", "{checkout:3}"),
        ("a{b}c{d}", "{b}"),
        ("plain", "plain"),
        ("{}empty", "{}empty"),  # an empty tag hashes the whole key
        ("{open", "{open"),
        ("}{a}", "{a}"),
    ],
)
def test_hash_tag(key: str, tag: str) -> None:
    assert hash_tag(key) == tag


def test_keys_of_one_entity_share_a_slot() -> None:
    entity = f"{{user:{uuid.uuid4().hex}}}"
    assert hash_tag(f"{entity}:op:s") == hash_tag(f"{entity}:rq:r") == hash_tag(entity)


# --- the real Store over a FakeRedis -----------------------------------------------------------
class _Cluster:
    """The ``RedisCluster`` calls ``Store`` makes, answered from a ``FakeRedis``."""

    def __init__(self, redis: FakeRedis) -> None:
        self._redis = redis
        self._by_sha: dict[str, str] = {}
        for path in LUA_DIR.glob("*.lua"):
            self._by_sha[hashlib.sha1(path.read_text().encode()).hexdigest()] = path.stem

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        keys, args = keys_and_args[:numkeys], keys_and_args[numkeys:]
        script = SCRIPTS[self._by_sha[sha]]
        return script(self._redis, list(keys), [encode_arg(a) for a in args])

    async def hmget(self, key: str, fields: list[str]) -> list[bytes | None]:
        return self._redis.hmget(key, [encode_arg(f) for f in fields])

    def get_node_from_key(self, key: str) -> FakeNode:
        return FakeNode(self._redis.node_of(key))

    def keyslot(self, key: str) -> str:
        return hash_tag(key)

    def get_primaries(self) -> list[FakeNode]:
        return [FakeNode(self._redis.node_of(f"{{m{m}}}")) for m in range(MASTERS)]

    async def initialize(self) -> None:
        return None


@dataclass
class _NodeClient:
    """One node's connections: pipelines of EVALSHA, HMGET and the barrier's SET and WAIT. A
    command for a key this node no longer serves answers MOVED, as a real master does."""

    redis: FakeRedis
    name: str
    scripts: dict[str, str]
    sent: list[int]
    on_wait: Callable[[int], None]

    def pipeline(self, transaction: bool = True) -> _Pipeline:
        return _Pipeline(self)

    def answer(self, command: tuple[Any, ...], barrier: list[str]) -> Any:
        name = str(command[0]).upper()
        if name == "WAIT":
            if not barrier:
                return ResponseError("WAIT without a write")
            master = master_of(barrier[-1])
            self.on_wait(master)
            self.redis.replicate([master])
            return int(self.redis.replica[master] == IN_SYNC)
        key = str(command[3] if name == "EVALSHA" else command[1])
        if self.redis.node_of(key) != self.name:
            return ResponseError(f"MOVED 1 {self.redis.node_of(key)}")
        if name == "EVALSHA":
            numkeys = int(command[2])
            keys, args = command[3 : 3 + numkeys], command[3 + numkeys :]
            script = SCRIPTS[self.scripts[str(command[1])]]
            return script(self.redis, [str(k) for k in keys], [encode_arg(a) for a in args])
        if name == "HMGET":
            return self.redis.hmget(key, [encode_arg(f) for f in command[2:]])
        if name == "SET":
            barrier.append(key)
            return True
        raise NotImplementedError(name)

    async def script_load(self, body: str) -> None:
        return None


class _Pipeline:
    def __init__(self, node: _NodeClient) -> None:
        self._node = node
        self._commands: list[tuple[Any, ...]] = []

    async def __aenter__(self) -> _Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def execute_command(self, *args: Any) -> None:
        self._commands.append(args)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        self._node.sent.append(len(self._commands))
        barrier: list[str] = []
        return [self._node.answer(command, barrier) for command in self._commands]


class StoreOverFake(Store):
    """The real ``Store`` (tracking, script, replicate, durable) with its cluster and node
    connections answered by a ``FakeRedis``."""

    def __init__(self, redis: FakeRedis, op_timeout_ms: int = 8000) -> None:
        super().__init__(load_settings({"REDIS_OP_TIMEOUT_MS": str(op_timeout_ms)}), LUA_DIR)
        self._fake_cluster = _Cluster(redis)
        self._cluster = cast(RedisCluster, self._fake_cluster)  # a stand-in for the client
        self.redis = redis
        self.sent: list[int] = []
        """The size of each pipeline sent to a node."""
        self.on_wait: Callable[[int], None] = lambda master: None
        """Called with the master before each WAIT is answered."""

    def _node_client(self, host: str, port: int) -> Any:
        scripts = self._fake_cluster._by_sha
        return _NodeClient(
            self.redis, f"{host}:{port}", scripts, self.sent, lambda m: self.on_wait(m)
        )


def user(redis: FakeRedis, credit: int) -> str:
    key = f"{{user:{uuid.uuid4().hex[:8]}}}"
    redis.hset(key, {b"credit": b"%d" % credit})
    redis.replicate(range(MASTERS))
    return key


def take(store: Store | FakeStore, key: str, saga: str) -> Awaitable[Any]:
    return store.script("take", [key, f"{key}:op:{saga}"], ["credit", 1, 60, 1])


async def test_calls_made_together_go_to_each_master_in_one_pipeline() -> None:
    redis = FakeRedis()
    store = StoreOverFake(redis)
    keys = [user(redis, 5) for _ in range(30)]
    masters = {redis.node_of(key) for key in keys}
    with store.tracking() as written:
        results = await asyncio.gather(*(take(store, key, "s1") for key in keys))
    assert results == [b"T:1"] * 30
    # Each master's scripts, then one SET and WAIT behind them in the same pipeline: the
    # replica took them all, so none is left for replicate to vouch for.
    assert sorted(store.sent) == sorted(
        sum(redis.node_of(key) == node for key in keys) + 2 for node in masters
    )
    assert written == {}
    store.sent.clear()
    await store.replicate(written)
    assert store.sent == []
    for node in masters:
        redis.failover(master_of(next(key for key in keys if redis.node_of(key) == node)))
    assert [redis.hget(key, b"credit") for key in keys] == [b"4"] * 30


async def test_a_replicated_write_survives_a_failover() -> None:
    redis = FakeRedis()
    store, key = StoreOverFake(redis), user(redis, 5)
    with store.tracking() as written:
        assert await take(store, key, "s1") == b"T:1"
    await store.replicate(written)
    redis.failover(master_of(key))
    assert redis.hget(key, b"credit") == b"4"


async def test_an_unacknowledged_write_lost_in_a_failover_is_reported_and_durable_reapplies() -> (
    None
):
    """The barrier behind a write got no acknowledgement (the replica was away), so the write
    is left for ``replicate``; its master fails over first and the write is gone: replicate
    says so, and ``durable`` applies it again."""
    redis = FakeRedis()
    store, key = StoreOverFake(redis), user(redis, 5)
    redis.replica_down(master_of(key))
    with store.tracking() as written:
        await take(store, key, "s1")
    assert list(written) == [key]
    redis.failover(master_of(key))
    with pytest.raises(WriteMayBeLost):
        await store.replicate(written)
    assert redis.hget(key, b"credit") == b"5"

    failovers = [master_of(key)]

    async def take_then_fail_over() -> Any:
        if failovers:
            redis.replica_down(master_of(key))
        result = await take(store, key, "s2")
        if failovers:
            redis.failover(failovers.pop())
        return result

    assert await store.durable(take_then_fail_over) == b"T:1"
    assert failovers == []
    redis.failover(master_of(key))
    assert redis.hget(key, b"credit") == b"4"


async def _two_writes_to_one_key_around_a_failover(
    store: Store | FakeStore, redis: FakeRedis, *, replica_away: bool = True
) -> str:
    """Two sagas charge one user inside one tracked block (two orders of one user in one
    consumer batch); the user's master fails over between the two charges (with its replica
    away at the first, the barrier behind it unacknowledged). Returns the first saga's record
    after ``replicate`` vouched for the block (or 'refused')."""
    key = user(redis, 5)
    if replica_away:
        redis.replica_down(master_of(key))
    with store.tracking() as written:
        await take(store, key, "first")
        redis.failover(master_of(key))  # the first charge was not replicated yet: gone
        await take(store, key, "second")
    try:
        await store.replicate(written)
    except WriteMayBeLost:
        return "refused"
    record = redis.get(f"{key}:op:first")
    return record.decode() if record else "lost"


async def test_replicate_sees_a_failover_between_two_writes_to_one_key() -> None:
    redis = FakeRedis()
    assert await _two_writes_to_one_key_around_a_failover(StoreOverFake(redis), redis) == "refused"


async def test_a_write_its_barrier_covered_survives_a_failover_before_the_next() -> None:
    redis = FakeRedis()
    store = StoreOverFake(redis)
    outcome = await _two_writes_to_one_key_around_a_failover(store, redis, replica_away=False)
    assert outcome == "T:1"


@pytest.mark.parametrize(
    "scenario",
    ["one write", "two writes", "two covered writes", "replica down", "replica resyncing"],
)
async def test_fake_store_tracks_like_the_real_store(scenario: str) -> None:
    """The simulation's ``FakeStore`` must follow ``Store``'s bookkeeping and its barrier's
    verdicts; if this fails, ``Store`` changed how it tracks writes or when it vouches for
    them: change ``FakeStore.script``/``replicate``/``on_master_of`` too."""
    outcomes = []
    for make in (_store_over_fake, _fake_store):
        redis = FakeRedis()
        store = make(redis)
        if scenario in ("two writes", "two covered writes"):
            away = scenario == "two writes"
            outcome = await _two_writes_to_one_key_around_a_failover(
                store, redis, replica_away=away
            )
            outcomes.append(outcome)
            continue
        key = user(redis, 5)
        if scenario == "replica down":
            redis.replica_down(master_of(key))
        elif scenario == "replica resyncing":
            redis.replica_back(master_of(key))
        with store.tracking() as written:
            await take(store, key, "s")
        if scenario == "one write":
            redis.failover(master_of(key))
        try:
            await store.replicate(written)
            outcomes.append("vouched")
        except WriteMayBeLost:
            outcomes.append("refused")
    assert outcomes[0] == outcomes[1]


def _store_over_fake(redis: FakeRedis) -> StoreOverFake:
    return StoreOverFake(redis, op_timeout_ms=200)


def _fake_store(redis: FakeRedis) -> FakeStore:
    store = FakeStore(redis)
    store.load_scripts(LUA_DIR)
    return store


def replaying(replies: list[Any]) -> Callable[[], Awaitable[Any]]:
    """A Redis call that raises or returns ``replies`` one after the other."""

    async def call() -> Any:
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    return call


async def test_a_cluster_down_reply_is_retried() -> None:
    """redis-py raises CLUSTERDOWN as ClusterDownError("The cluster is down"): a failover in
    progress, to wait out like a dropped connection (a consumer died on it once)."""
    store = StoreOverFake(FakeRedis())
    replies: list[Any] = [ClusterDownError("The cluster is down"), TryAgainError("x"), "ok"]

    assert await store.retrying(replaying(replies)) == "ok"

    async def refused() -> Any:
        raise ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")

    with pytest.raises(ResponseError):
        await store.retrying(refused)


CLOSED = "unable to perform operation on <TCPTransport closed=True>; the handler is closed"


async def test_a_write_on_a_closed_transport_is_a_dropped_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """redis-py reconnecting to a node that a failover just dropped let uvloop's RuntimeError
    through (seen as a 500 on a read): it is retried like a dropped connection, in the cluster
    client's calls and in the per-master pipelines; any other RuntimeError is a bug, raised."""
    store = StoreOverFake(FakeRedis())
    assert await store.retrying(replaying([RuntimeError(CLOSED), "ok"])) == "ok"
    with pytest.raises(RuntimeError):
        await store.retrying(replaying([RuntimeError("something else"), "ok"]))

    redis = store.redis
    key = user(redis, 5)
    failing = [True]
    execute = _Pipeline.execute

    async def closed_once(pipe: _Pipeline, raise_on_error: bool = True) -> list[Any]:
        if failing.pop() if failing else False:
            raise RuntimeError(CLOSED)
        return await execute(pipe, raise_on_error)

    monkeypatch.setattr(_Pipeline, "execute", closed_once)
    assert await store.hmget(key, ["credit"]) == [b"5"]  # the ordinary path answered
    assert failing == []


async def test_an_error_from_inside_redis_py_is_retried_and_ours_is_raised() -> None:
    """redis-py's cluster client let errors other than its own through while a failover
    ended (a 500 on a read); one raised inside redis-py is retried, one of our code's not."""
    store = StoreOverFake(FakeRedis())
    steps: list[Callable[[], Any]] = [lambda: key_slot(None), lambda: "ok"]  # type: ignore[arg-type]

    async def call() -> Any:
        return steps.pop(0)()

    assert await store.retrying(call) == "ok"

    async def ours() -> Any:
        raise KeyError("a bug of ours")

    with pytest.raises(KeyError):
        await store.retrying(ours)


async def test_a_cluster_that_cannot_be_found_is_retried() -> None:
    """While every node the client knows is gone (all pods of a Kubernetes cluster replaced,
    the new ones not ready yet), redis-py's cluster client raises RedisClusterException, not a
    RedisError: retried like a dropped connection, until the cluster is found again."""
    store = StoreOverFake(FakeRedis())
    replies: list[Any] = [
        RedisClusterException(
            "Redis Cluster cannot be connected. Please provide at least one reachable node: "
            "Error 111 connecting to 10.244.0.7:6379. Connection refused."
        ),
        RedisClusterException("All slots are not covered after query all startup_nodes. 0 of"),
        SlotNotCoveredError('Slot "42" not covered by the cluster.'),
        "ok",
    ]

    assert await store.retrying(replaying(replies)) == "ok"

    async def misuse() -> Any:
        raise RedisClusterException("No targets were found to execute ('X',) command on")

    with pytest.raises(RedisClusterException):
        await store.retrying(misuse)


async def test_the_cluster_client_keeps_asking_the_configured_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """REDIS_NODES (in Kubernetes one Service name) stay the startup nodes: redis-py's default
    (dynamic_startup_nodes) replaces them with the pod IPs it found, and after every pod of the
    cluster has been replaced it could never find the cluster again."""
    monkeypatch.setattr(Store, "retrying", lambda self, call: asyncio.sleep(0))
    store = Store(load_settings({"REDIS_NODES": "order-redis-cluster:6379"}), LUA_DIR)
    await store.start()
    try:
        manager = store.cluster.nodes_manager
        assert manager._dynamic_startup_nodes is False
        assert list(manager.startup_nodes) == ["order-redis-cluster:6379"]
    finally:
        await store.stop()


async def test_hole6_no_write_is_vouched_for_without_a_replica() -> None:
    """Issue 16, hole 6: a master with no replica connected was taken at its word (its AOF).
    With ``cluster-replica-validity-factor 0`` it can still be failed over: its replica, killed
    and restarted, is promoted while it resyncs, without what it missed."""
    redis = FakeRedis()
    store, key = StoreOverFake(redis, op_timeout_ms=200), user(redis, 5)
    master = master_of(key)
    redis.replica_down(master)
    with store.tracking() as written:
        assert await take(store, key, "s1") == b"T:1"
    try:
        await store.replicate(written)
        vouched = True
    except Unavailable:
        vouched = False
    redis.replica_back(master)
    redis.failover(master)
    assert not vouched or redis.get(f"{key}:op:s1") == b"T:1", "a vouched-for write was lost"


async def test_a_replica_briefly_away_delays_a_write_and_then_vouches_for_it() -> None:
    redis = FakeRedis()
    store, key = StoreOverFake(redis, op_timeout_ms=5000), user(redis, 5)
    master = master_of(key)
    redis.replica_down(master)
    with store.tracking() as written:
        await take(store, key, "s1")
    waits: list[int] = []

    def back_after_two_waits(m: int) -> None:
        waits.append(m)
        if len(waits) == 2:
            redis.replica_back(m)
        elif len(waits) == 3:
            redis.resynced(m)

    store.on_wait = back_after_two_waits
    await store.replicate(written)
    assert len(waits) >= 3, "vouched for before the replica was back"
    redis.failover(master)
    assert redis.get(f"{key}:op:s1") == b"T:1"
