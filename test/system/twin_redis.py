"""Two keyspaces driven alike: the stack's real Redis Cluster, which runs the Lua scripts, and a
``FakeRedis``, which runs their Python reproductions (test/unit/fake_lua.py). Every call and
every write goes to both; then the replies, and every watched key's type, contents and TTL,
must be the same. What may differ is normalised, and only that: the clock (the fake's is read
from the real master's), a TTL's last milliseconds, the key order of a JSON object, the text
of a sorted set's score."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from common.ledger import LUA_DIR
from common.types import Arg
from test.unit.fake_lua import SCRIPTS
from test.unit.fake_redis import FakeRedis, ZSet, encode_arg, master_of

LUA_DIRS = (LUA_DIR, LUA_DIR.parent / "saga" / "lua", LUA_DIR.parents[1] / "order" / "lua")
TEXTS = {path.stem: path.read_text() for folder in LUA_DIRS for path in folder.glob("*.lua")}

TTL_SLACK_MS = 5000
"""How far a key's TTL on the fake may be from the real one: the time between the real
master's clock read and its write, and between the write and the read of its TTL."""


@dataclass(frozen=True)
class Raised:
    """A call that failed; ``non_local``: refused for a key another master serves."""

    non_local: bool


@dataclass(frozen=True)
class Json:
    """A JSON object's text, known by its value and its length: cjson writes a Lua table's keys
    in the table's hash order, the reproduction in the order it read them."""

    value: Any
    size: int


def normal(value: Any) -> Any:
    """A reply or a stored value with the JSON objects in it read (see ``Json``)."""
    if isinstance(value, list):
        return [normal(part) for part in value]
    if isinstance(value, bytes) and value.startswith(b"{"):
        try:
            return Json(json.loads(value), len(value))
        except ValueError:
            return value
    return value


def scores_as_numbers(reply: Any) -> Any:
    """sweep_lease's ``[member, score, ...]`` with each score as the number the sweeper reads:
    Redis 7.0 writes a score with ``%.17g`` (``20``, ``3000.1234567890001``), 7.2 and later its
    shortest text, the reproduction Python's ``repr``."""
    if not isinstance(reply, list):
        return reply
    return [float(part) if n % 2 else part for n, part in enumerate(reply)]


REPLY_SHAPES = {"sweep_lease": scores_as_numbers}


class Mismatch(AssertionError):
    """The real script and its reproduction parted: the step, both sides, the steps before."""


class Twin:
    """The real cluster and a fake keyspace, under one fresh namespace (``ns``) per twin."""

    def __init__(self, real: RedisCluster, label: str) -> None:
        self.real = real
        self.label = label
        self.ns = uuid.uuid4().hex[:12]
        self.clock = 0
        self.fake = FakeRedis(lambda: self.clock)
        self.watched: set[str] = set()
        self.seen: Counter[str] = Counter()
        self._steps: list[str] = []

    # --- keys -------------------------------------------------------------------------------
    def watch(self, *keys: str) -> None:
        """Compare ``keys`` after every step (every key a call or a write touches)."""
        self.watched.update(keys)

    def shards_beside(self, key: str, count: int = 1000) -> tuple[str, str]:
        """Two index shard keys: one on the master serving ``key`` (for the real cluster and for
        the fake's masters alike: one name in 9 is), one on another master (for both, too)."""
        home = self._node(key)
        near = far = ""
        for n in range(count):
            shard = f"saga:inflight:{{{self.ns}:{n}}}"
            here = self._node(shard) == home
            if here and master_of(shard) == master_of(key):
                near = near or shard
            if not here and master_of(shard) != master_of(key):
                far = far or shard
        assert near and far, f"no shard beside and away from {key} among {count}"
        self.watch(near, far)
        return near, far

    def _node(self, key: str) -> str:
        node = self.real.get_node_from_key(key)
        assert node is not None, f"no node serves {key}"
        return node.name

    async def forget(self) -> None:
        """Delete the watched keys from the real cluster."""
        for key in self.watched:
            await self.real.delete(key)

    # --- steps ------------------------------------------------------------------------------
    async def call(
        self, script: str, keys: list[str], args: list[Arg], branches: Iterable[str] = ()
    ) -> Any:
        """Run ``script`` on both and compare; the (normalised) reply. ``branches`` names what
        the script meets on this call (the state before it decides), counted in ``seen``."""
        self.watch(*keys)
        self._steps.append(f"{script} {keys} {args}")
        await self._tick(keys[0])
        started = self.clock
        try:
            real = await self.real.eval(TEXTS[script], len(keys), *keys, *args)
        except ResponseError as exc:
            real = Raised("non local key" in str(exc))
        if script == "reset" and isinstance(real, int) and real >= started:
            # the stamp the real master took (TIME, in ms): the fake's clock reads it too
            self.clock = real
        try:
            fake = SCRIPTS[script](self.fake, keys, [encode_arg(a) for a in args])
        except ResponseError as exc:
            fake = Raised("non local key" in str(exc))
        shape = REPLY_SHAPES.get(script, normal)
        if shape(real) != shape(fake):
            self._fail(f"replies differ\n  real: {real!r}\n  fake: {fake!r}")
        await self.compare()
        self.seen.update(branches)
        return shape(real)

    async def put(self, key: str, value: str, ex: int | None = None) -> None:
        """SET ``key`` on both (a record as a script, or an older version of it, wrote it)."""
        await self._write(f"set {key} {value!r} ex={ex}", key)
        await self.real.set(key, value, ex=ex)
        self.fake.set(key, value.encode(), ex_s=ex)
        await self.compare()

    async def put_hash(self, key: str, fields: Mapping[str, Arg]) -> None:
        """Replace the hash ``key`` by ``fields`` on both."""
        await self._write(f"hash {key} {dict(fields)}", key)
        await self.real.delete(key)
        self.fake.delete(key)
        await self.real.hset(key, mapping=fields)  # type: ignore[arg-type]
        self.fake.hset(key, {encode_arg(f): encode_arg(v) for f, v in fields.items()})
        await self.compare()

    async def hset(self, key: str, fields: Mapping[str, Arg]) -> None:
        """HSET ``fields`` into the hash ``key`` on both, keeping its other fields."""
        await self._write(f"hset {key} {dict(fields)}", key)
        await self.real.hset(key, mapping=fields)  # type: ignore[arg-type]
        self.fake.hset(key, {encode_arg(f): encode_arg(v) for f, v in fields.items()})
        await self.compare()

    async def zadd(self, key: str, entries: Mapping[str, float]) -> None:
        await self._write(f"zadd {key} {dict(entries)}", key)
        await self.real.zadd(key, dict(entries))
        self.fake.zadd(key, {m.encode(): s for m, s in entries.items()})
        await self.compare()

    async def delete(self, key: str) -> None:
        await self._write(f"del {key}", key)
        await self.real.delete(key)
        self.fake.delete(key)
        await self.compare()

    async def _write(self, step: str, key: str) -> None:
        self.watch(key)
        self._steps.append(step)
        await self._tick(key)

    async def _tick(self, key: str) -> None:
        """The fake's clock reads the clock (ms) of the master serving ``key``, as a step on the
        key begins."""
        seconds, micros = await self.real.time(target_nodes=self.real.get_node_from_key(key))
        self.clock = max(self.clock, seconds * 1000 + micros // 1000)

    # --- comparing the keyspaces ------------------------------------------------------------
    async def compare(self) -> None:
        keys = sorted(self.watched)
        fake = self._fake_keys(keys)
        real = await self._real_keys(keys, {key: fake[key][0] for key in keys})
        for key in keys:
            (real_kind, real_value, real_ttl), (kind, value, ttl) = real[key], fake[key]
            if (real_kind, real_value) != (kind, value) or not _same_ttl(real_ttl, ttl):
                self._fail(
                    f"{key} differs\n  real: {real_kind} {real_value!r} ttl {real_ttl}"
                    f"\n  fake: {kind} {value!r} ttl {ttl}"
                )
        stray = {k for k in self.fake.data if self.fake.exists(k)} - self.watched
        if stray:
            self._fail(f"the reproduction wrote keys no call named: {sorted(stray)}")

    async def _real_keys(
        self, keys: list[str], kinds: Mapping[str, str]
    ) -> dict[str, tuple[str, Any, int | None]]:
        """Each key's type, contents and TTL in one round trip, its contents read as the fake
        keeps the key (when the real one is of another type, its type tells)."""
        pipe = self.real.pipeline()
        for key in keys:
            pipe.type(key)
            pipe.pttl(key)
            if kinds[key] == "string":
                pipe.get(key)
            elif kinds[key] == "hash":
                pipe.hgetall(key)
            elif kinds[key] == "zset":
                pipe.zrange(key, 0, -1, withscores=True)
            else:
                pipe.exists(key)
        found = await pipe.execute(raise_on_error=False)
        out: dict[str, tuple[str, Any, int | None]] = {}
        for n, key in enumerate(keys):
            kind, ttl, value = found[3 * n].decode(), found[3 * n + 1], found[3 * n + 2]
            if kind != kinds[key] or kind == "none":
                value = None
            elif kind == "hash":
                value = {field: normal(v) for field, v in value.items()}
            elif kind == "zset":
                value = dict(value)
            out[key] = (kind, value, ttl if ttl >= 0 else None)
        return out

    def _fake_keys(self, keys: list[str]) -> dict[str, tuple[str, Any, int | None]]:
        out: dict[str, tuple[str, Any, int | None]] = {}
        for key in keys:
            if not self.fake.exists(key):
                out[key] = ("none", None, None)
                continue
            value = self.fake.data[key]
            expiry = self.fake.expiry.get(key)
            ttl = None if expiry is None else expiry - self.clock
            if isinstance(value, ZSet):
                out[key] = ("zset", dict(value), ttl)
            elif isinstance(value, dict):
                out[key] = ("hash", {field: normal(v) for field, v in value.items()}, ttl)
            else:
                out[key] = ("string", value, ttl)
        return out

    def _fail(self, what: str) -> None:
        steps = "\n    ".join(self._steps[-12:])
        raise Mismatch(
            f"{self.label}: the real script and its reproduction part at step "
            f"{len(self._steps)}: {what}\n  the steps (last 12):\n    {steps}"
        )


def _same_ttl(real: int | None, fake: int | None) -> bool:
    if real is None or fake is None:
        return real is fake
    return abs(real - fake) <= TTL_SLACK_MS
