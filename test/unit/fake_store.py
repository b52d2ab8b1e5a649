"""An in-memory Redis Cluster that can lose unreplicated writes, and a stand-in for
``common.store.Store`` over it.

``FakeRedis`` keeps, per simulated master, the pre-image of every key written since that master
was last replicated (a WAIT). ``failover(master)`` puts those pre-images back and gives the
master a new node name: what a replica promoted after its master died holds. ``FakeStore`` runs
the scripts of ``fake_lua`` and the few direct cluster calls the services make; every call first
awaits ``gate(label)``, so a scheduler can interleave, stall or crash callers between calls.
"""

from __future__ import annotations

import contextlib
import itertools
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from common.errors import Unavailable
from common.store import Store, hash_tag
from test.unit.fake_lua import SCRIPTS

try:
    from common.store import WriteMayBeLost
except ImportError:  # a store without failover detection

    class WriteMayBeLost(Unavailable):  # type: ignore[no-redef]
        """Stand-in: the store in use never raises it."""


MASTERS = 3
Gate = Callable[[str], Awaitable[None]]
Value = bytes | dict[bytes, bytes] | dict[bytes, float]
Written = dict[str, str] | set[str]


async def no_gate(label: str) -> None:
    """A gate that never waits (plain unit tests)."""


def master_of(key: str) -> int:
    """The simulated master owning ``key``'s slot (keys sharing a hash tag share a master)."""
    return zlib.crc32(hash_tag(key).encode()) % MASTERS


def encode_arg(value: Any) -> bytes:
    """An argument as redis-py puts it on the wire."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        raise TypeError("redis-py refuses bools")
    if isinstance(value, int | float):
        return repr(value).encode()
    raise TypeError(f"cannot encode {value!r}")


class FakeRedis:
    """Keys -> bytes (string), dict (hash) or ``ZSet``; lazy expiry on ``now_ms``."""

    def __init__(self, now_ms: Callable[[], int] = lambda: 0) -> None:
        self.now_ms = now_ms
        self.data: dict[str, Any] = {}
        self.expiry: dict[str, int] = {}
        self.generation = [0] * MASTERS
        self.writes = 0
        self._unreplicated: list[dict[str, tuple[Any, int | None]]] = [{} for _ in range(MASTERS)]

    # --- replication ------------------------------------------------------------------------
    def node_of(self, key: str) -> str:
        """The node now serving ``key``'s master (changes on every failover of it)."""
        m = master_of(key)
        return f"10.0.{m}.{self.generation[m]}:7000"

    def replicate(self, masters: Iterable[int]) -> None:
        """A replica of each of ``masters`` now holds every write made to it so far."""
        for m in masters:
            self._unreplicated[m].clear()

    def failover(self, master: int, spare: Callable[[str], bool] = lambda key: False) -> list[str]:
        """``master`` dies and its replica takes over: unreplicated writes vanish (but those to
        keys ``spare`` picks, which lets a simulation step around a known bug)."""
        lost = {k: v for k, v in self._unreplicated[master].items() if not spare(k)}
        for key, (value, expiry) in lost.items():
            self.data.pop(key, None)
            self.expiry.pop(key, None)
            if value is not None:
                self.data[key] = value
                if expiry is not None:
                    self.expiry[key] = expiry
        self._unreplicated[master] = {}
        self.generation[master] += 1
        return sorted(lost)

    def unreplicated(self, master: int) -> int:
        return len(self._unreplicated[master])

    # --- the keyspace -----------------------------------------------------------------------
    def _live(self, key: str) -> Any:
        expiry = self.expiry.get(key)
        if expiry is not None and expiry <= self.now_ms():
            return None
        return self.data.get(key)

    def _write(self, key: str) -> None:
        """Call before changing ``key``: keeps its replicated pre-image, drops it if expired."""
        pending = self._unreplicated[master_of(key)]
        current = self._live(key)
        if key not in pending:
            copy = type(current)(current) if isinstance(current, dict) else current
            pending[key] = (copy, self.expiry.get(key) if current is not None else None)
        if current is None:
            self.data.pop(key, None)
            self.expiry.pop(key, None)
        self.writes += 1

    def _kind(self, key: str, kind: type) -> Any:
        value = self._live(key)
        if value is not None and (type(value) is not kind):
            raise TypeError(f"WRONGTYPE {key}: {type(value).__name__}, not {kind.__name__}")
        return value

    def exists(self, key: str) -> bool:
        return self._live(key) is not None

    def get(self, key: str) -> bytes | None:
        return self._kind(key, bytes)  # type: ignore[no-any-return]

    def set(
        self, key: str, value: bytes, *, ex_s: int | None = None, px: int | None = None
    ) -> None:
        self._write(key)
        self.data[key] = value
        self.expiry.pop(key, None)
        ttl = px if px is not None else None if ex_s is None else ex_s * 1000
        if ttl is not None:
            self.expiry[key] = self.now_ms() + ttl

    def incr(self, key: str) -> int:
        value = int(self.get(key) or b"0") + 1
        self._write(key)
        self.data[key] = b"%d" % value
        return value

    def pexpire(self, key: str, ms: int) -> int:
        if not self.exists(key):
            return 0
        self._write(key)
        self.expiry[key] = self.now_ms() + ms
        return 1

    def hget(self, key: str, field: bytes) -> bytes | None:
        return (self._kind(key, dict) or {}).get(field)  # type: ignore[no-any-return]

    def hmget(self, key: str, fields: Sequence[bytes]) -> list[bytes | None]:
        h = self._kind(key, dict) or {}
        return [h.get(f) for f in fields]

    def hset(self, key: str, mapping: Mapping[bytes, bytes]) -> int:
        self._kind(key, dict)
        self._write(key)
        h = self.data.setdefault(key, {})
        added = len(set(mapping) - set(h))
        h.update(mapping)
        return added

    def hincrby(self, key: str, field: bytes, delta: int) -> int:
        self._kind(key, dict)
        self._write(key)
        h = self.data.setdefault(key, {})
        value = int(h.get(field, b"0")) + delta
        h[field] = b"%d" % value
        return value

    def zscore(self, key: str, member: bytes) -> float | None:
        return (self._kind(key, ZSet) or {}).get(member)  # type: ignore[no-any-return]

    def zrem(self, key: str, member: bytes) -> int:
        z = self._kind(key, ZSet)
        if z is None or member not in z:
            return 0
        self._write(key)
        del self.data[key][member]
        if not self.data[key]:
            del self.data[key]
        return 1

    def zadd(self, key: str, mapping: Mapping[bytes, float], *, xx: bool = False) -> int:
        z = self._kind(key, ZSet) or {}
        changes = {m: s for m, s in mapping.items() if not xx or m in z}
        if not changes:
            return 0
        self._write(key)
        target = self.data.setdefault(key, ZSet())
        added = len(set(changes) - set(target))
        target.update(changes)
        return added

    def zrangebyscore(
        self, key: str, low: float, high: float, start: int = 0, num: int | None = None
    ) -> list[tuple[bytes, float]]:
        z = self._kind(key, ZSet) or {}
        rows = sorted(
            ((m, s) for m, s in z.items() if low <= s <= high), key=lambda r: (r[1], r[0])
        )
        return rows[start:] if num is None else rows[start : start + num]


class ZSet(dict[bytes, float]):
    """A sorted set: member -> score."""


class FakeCluster:
    """The ``RedisCluster`` methods the services call directly (through ``Store.retrying``)."""

    def __init__(self, redis: FakeRedis, gate: Gate) -> None:
        self._redis = redis
        self._gate = gate

    async def ping(self) -> bool:
        return True

    async def get(self, key: str) -> bytes | None:
        await self._gate(f"get {key}")
        return self._redis.get(key)

    async def hmget(self, key: str, fields: Sequence[str | bytes]) -> list[bytes | None]:
        await self._gate(f"hmget {key}")
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


_written: ContextVar[Written | None] = ContextVar("fake_written", default=None)


class FakeStore:
    """Stands in for ``common.store.Store``; ``calls`` counts what was done, by name.

    ``node_aware`` follows the real store: when it records which master took each tracked
    write (and offers ``durable``), ``replicate`` raises ``WriteMayBeLost`` for a write whose
    master failed over since, as the real barrier does. Otherwise ``replicate`` is a WAIT on
    whichever node serves the key now, which also succeeds after a failover.
    """

    def __init__(
        self,
        redis: FakeRedis,
        gate: Gate = no_gate,
        *,
        node_aware: bool | None = None,
        first_node_wins: bool = False,
        observe: Callable[[str, Any], None] = lambda call, result: None,
    ) -> None:
        self.redis = redis
        self._observe = observe
        self.first_node_wins = first_node_wins
        self.cluster = FakeCluster(redis, gate)
        self.node_aware = hasattr(Store, "durable") if node_aware is None else node_aware
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

    @contextlib.contextmanager
    def tracking(self) -> Iterator[Written]:
        written: Written = {} if self.node_aware else set()
        token = _written.set(written)
        try:
            yield written
        finally:
            _written.reset(token)

    async def script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if name not in self.loaded:
            raise KeyError(f"script {name!r} not loaded")
        if name not in SCRIPTS:
            raise NotImplementedError(f"no Python reproduction of {name}.lua in fake_lua")
        await self._gate(f"{name} {keys[0] if keys else ''}")
        self.calls[name] += 1
        result = SCRIPTS[name](self.redis, list(keys), [encode_arg(a) for a in args])
        self._observe(f"{name} {keys[-1] if keys else ''}", result)
        written = _written.get()
        if written is not None and keys:
            if isinstance(written, dict):
                node = self.redis.node_of(keys[0])
                if self.first_node_wins:  # not what Store.script does (see test_store_barrier)
                    written.setdefault(keys[0], node)
                else:
                    written[keys[0]] = node
            else:
                written.add(keys[0])
        return result

    async def replicate(self, written: Iterable[str] | Mapping[str, str]) -> None:
        keys = list(written)
        if not keys:
            return
        await self._gate("replicate")
        self.calls["replicate"] += 1
        moved = []
        if isinstance(written, Mapping):
            moved = [k for k, node in written.items() if node != self.redis.node_of(k)]
        self.redis.replicate({master_of(k) for k in keys if k not in moved})
        if moved:
            self.calls["write_may_be_lost"] += 1
            raise WriteMayBeLost(f"masters of {sorted(moved)} failed over")

    async def replicate_all(self) -> None:
        await self._gate("replicate_all")
        self.redis.replicate(range(MASTERS))

    async def durable(self, action: Callable[[], Awaitable[Any]]) -> Any:
        """As ``Store.durable``: run ``action`` again while its writes may have been lost."""
        for attempt in itertools.count():
            with self.tracking() as written:
                result = await action()
            try:
                await self.replicate(written)
                return result
            except WriteMayBeLost:
                if attempt >= 5:
                    raise
