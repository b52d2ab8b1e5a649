"""An in-memory Redis Cluster keyspace that can lose unreplicated writes.

``FakeRedis`` keeps, per simulated master, the pre-image of every key written since that master
was last replicated (a WAIT). ``failover(master)`` puts those pre-images back and gives the
master a new node name: what a replica promoted after its master died holds. Each master's
replica is in sync (it acknowledges a WAIT), down (not connected: a WAIT gets no
acknowledgement) or resyncing (connected, but acknowledging nothing until its full sync ends);
a replica killed and restarted goes down, then resyncing, then in sync, and a failover while it
resyncs promotes it without what it missed (``cluster-replica-validity-factor 0``). Values are
what redis-py hands back with ``decode_responses=False``: bytes, dicts of bytes, sorted sets.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from common.store import hash_tag

MASTERS = 3
IN_SYNC, DOWN, RESYNCING = "in sync", "down", "resyncing"


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


class ZSet(dict[bytes, float]):
    """A sorted set: member -> score."""


class FakeRedis:
    """Keys -> bytes (string), dict (hash) or ``ZSet``; lazy expiry on ``now_ms``."""

    def __init__(self, now_ms: Callable[[], int] = lambda: 0) -> None:
        self.now_ms = now_ms
        self.data: dict[str, Any] = {}
        self.expiry: dict[str, int] = {}
        self.generation = [0] * MASTERS
        self.replica = [IN_SYNC] * MASTERS
        self.writes = 0
        self._unreplicated: list[dict[str, tuple[Any, int | None]]] = [{} for _ in range(MASTERS)]

    # --- replication ------------------------------------------------------------------------
    def node_of(self, key: str) -> str:
        """The node now serving ``key``'s master (changes on every failover of it)."""
        m = master_of(key)
        return f"10.0.{m}.{self.generation[m]}:7000"

    def replicate(self, masters: Iterable[int]) -> None:
        """A replica of each of ``masters`` now holds every write made to it so far (a WAIT
        that got its acknowledgement; a replica not in sync receives nothing)."""
        for m in masters:
            if self.replica[m] == IN_SYNC:
                self._unreplicated[m].clear()

    def replica_down(self, master: int) -> None:
        """``master``'s replica is killed: WAITs on the master get no acknowledgement."""
        self.replica[master] = DOWN

    def replica_back(self, master: int) -> None:
        """The replica restarted and connected: it resyncs, acknowledging nothing yet."""
        self.replica[master] = RESYNCING

    def resynced(self, master: int) -> None:
        """The full sync ended: the replica holds everything the master has."""
        self.replica[master] = IN_SYNC
        self._unreplicated[master].clear()

    def failover(self, master: int, spare: Callable[[str], bool] = lambda key: False) -> list[str]:
        """``master`` dies and its replica takes over: unreplicated writes vanish (but those to
        keys ``spare`` picks, which lets a simulation step around a known bug). The new master
        is given a replica in sync at once (the old master's return is not modelled)."""
        lost = {k: v for k, v in self._unreplicated[master].items() if not spare(k)}
        for key, (value, expiry) in lost.items():
            self.data.pop(key, None)
            self.expiry.pop(key, None)
            if value is not None:
                self.data[key] = value
                if expiry is not None:
                    self.expiry[key] = expiry
        self._unreplicated[master] = {}
        self.replica[master] = IN_SYNC
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

    def delete(self, key: str) -> int:
        if self._live(key) is None:
            return 0
        self._write(key)
        self.data.pop(key, None)
        self.expiry.pop(key, None)
        return 1

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
        return (self._kind(key, dict) or {}).get(field)

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
        return (self._kind(key, ZSet) or {}).get(member)

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
