"""The saga's durable log: its state in ``saga_*`` fields of the entity's own hash, changed only
by compare-and-set scripts, plus the in-flight index the sweeper walks."""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from redis.exceptions import ResponseError

from common.ledger import reset_done, reset_once_by
from common.saga.definition import SagaDefinition
from common.saga.state import Replied, SagaState, TurnedBack
from common.terms import ENDED, ReplyKind
from common.types import Arg, ScriptCall, Storage

INDEX_SHARDS = 16
_FIELDS = (
    "saga_id",
    "saga_status",
    "saga_step",
    "saga_updated",
    "saga_deadline",
    "saga_resends",
    "saga_data",
    "saga_reason",
    "saga_started",
    "saga_done_by",
    "saga_concurrent",
)


class SagaLog:
    """Reads and compare-and-sets the saga state of ``definition``'s entities in ``store``."""

    def __init__(
        self,
        store: Storage,
        definition: SagaDefinition,
        *,
        rng: random.Random | None = None,
        index_shards: int = INDEX_SHARDS,
    ) -> None:
        store.load_scripts(Path(__file__).parent / "lua")
        self._store = store
        self._def = definition
        self._rng = random.Random() if rng is None else rng
        """New saga ids' random part, and the index scores' tie-breaking fractions."""
        self.index_shards = index_shards
        self._near: dict[str, list[int]] = {}
        """Master name -> the index shards it keeps (forgotten when a call finds it moved)."""

    # --- the saga state (one atomic script per change) -----------------------------------------
    async def begin(
        self,
        entity_id: str,
        *,
        start: bool,
        now: int,
        deadline: int,
        concurrent: bool = False,
        start_by: int | None = None,
    ) -> list[str]:
        """``['UNKNOWN'] | ['DONE', id] | ['JOINED', id] | ['READY'] | ['TOO_BIG', bytes]
        | ['LATE'] | ['STARTED', id, data]``.
        The caller registers a saga it may start in the index first (``index_add``). Past
        ``start_by`` (ms, the master's clock, where the saga would begin) nothing is started.

        A check changes nothing, but what it finds is acted on (a DONE becomes a 200): it is
        tracked like a write, so whoever replicates the caller's writes puts a barrier on that
        master too, and a DONE resting on a move no replica holds yet is not answered."""
        reply = await self._store.script(
            "saga_begin",
            [self._def.entity_key(entity_id)],
            self._begin_args(
                entity_id,
                start=start,
                now=now,
                deadline=deadline,
                concurrent=concurrent,
                start_by=start_by,
            ),
        )
        return [part.decode() for part in reply]

    async def begin_indexed(
        self,
        entity_id: str,
        *,
        now: int,
        deadline: int,
        due: int,
        concurrent: bool = False,
        start_by: int | None = None,
    ) -> list[str] | None:
        """``begin(start=True)`` that registers the saga it starts in an index shard of the same
        master in the same step (and re-registers a live saga it joins, should a failover have
        erased its entry), made durable, in one round trip; None when that cannot be done (no
        index shard on that master, the slot map moved): then ``index_add`` and ``begin`` one
        by one."""
        key = self._def.entity_key(entity_id)
        shard = self.shard_near(entity_id)
        if shard is None:
            return None
        args = self._begin_args(
            entity_id,
            start=True,
            now=now,
            deadline=deadline,
            index=(shard, due),
            concurrent=concurrent,
            start_by=start_by,
        )
        replies = await self._store.on_master_of(key, [ScriptCall("saga_begin", [key], args)])
        if replies is None:
            self._near.clear()  # the slot map may have moved
            return None
        return [part.decode() for part in replies[0]]

    def _begin_args(
        self,
        entity_id: str,
        *,
        start: bool,
        now: int,
        deadline: int,
        index: tuple[int, int] | None = None,
        concurrent: bool = False,
        start_by: int | None = None,
    ) -> list[Any]:
        # The index shard and the entry's score, or nothing (the caller registers it itself).
        indexed = ["", ""]
        if index is not None:
            shard, due = index
            indexed = [self.shard_key(shard), repr(due + self._rng.random())]
        mode = "check" if not start else "start" if start_by is None else f"start:{start_by}"
        return [
            mode,
            entity_id,
            f"{self._rng.getrandbits(32):08x}",
            now,
            deadline,
            self._def.done_field,
            *indexed,
            self._def.max_snapshot_bytes,
            "1" if concurrent else "0",
            *self._def.snapshot,
        ]

    async def move(
        self,
        entity_id: str,
        saga_id: str,
        frm: tuple[str, int],
        to: tuple[str, int],
        *,
        now: int,
        reason: str = "",
    ) -> tuple[dict[str, str], str] | None:
        """Move the saga from ``frm`` to ``to`` (status, step); its snapshot and the reason it
        turned back (if it did), or None if it was not at ``frm``. A move to an end also drops
        the index entry the saga's start made, when the start could make it beside the saga."""
        args: list[Arg] = [saga_id, frm[0], frm[1], to[0], to[1], now, reason, self._def.done_field]
        reply = await self._move_script("saga_move", entity_id, args, may_end=to[0] in ENDED)
        if not reply[0]:
            return None
        snapshot: dict[str, str] = json.loads(reply[1])
        return snapshot, reply[2].decode()

    async def reply(
        self, entity_id: str, saga_id: str, kind: ReplyKind, step: int, *, now: int, reason: str
    ) -> Replied | None:
        """Move the saga for a participant's reply on ``step`` (``saga_reply.lua``): where it
        stands after, or None for a stale or repeated reply. A reply that came before its turn
        (a concurrent saga's) is kept in the marks and moves nothing yet. A move to an end also
        drops the index entry the saga's start made, as ``move`` does."""
        steps = len(self._def.steps)
        args: list[Arg] = [
            saga_id,
            kind,
            step,
            steps,
            now,
            reason,
            self._def.done_field,
        ]
        # Whether it ends is known only inside the script: name the shard whenever it may.
        reply = await self._move_script("saga_reply", entity_id, args, may_end=True)
        if not reply[0]:
            return None
        return Replied(
            status=reply[1].decode(),
            step=int(reply[2]),
            marks=reply[3].decode(),
            snapshot=json.loads(reply[4]),
            reason=reply[5].decode(),
            concurrent=reply[6] == b"1",
        )

    async def _move_script(
        self, script: str, entity_id: str, args: list[Arg], *, may_end: bool
    ) -> Any:
        """Run a move script (saga_move, saga_reply) on the entity with ``args``, then the entity
        id and, when the move ``may_end`` the saga, an index shard beside it (whose entry an end
        drops). A shard that moved to another master fails the call with nothing changed: then
        once more without one, and the sweeper drops the entry."""
        key = self._def.entity_key(entity_id)
        shard = self.shard_near(entity_id) if may_end else None
        index = "" if shard is None else self.shard_key(shard)
        try:
            return await self._store.script(script, [key], [*args, entity_id, index])
        except ResponseError as exc:
            if not index or "non local key" not in str(exc):
                raise
            self._near.clear()
            return await self._store.script(script, [key], [*args, entity_id, ""])

    async def touch(self, entity_id: str, state: SagaState, now: int) -> int:
        """Claim a re-send of the current step; 0 if the saga moved since ``state`` was read."""
        return int(
            await self._store.script(
                "saga_touch",
                [self._def.entity_key(entity_id)],
                [state.saga_id, state.status, state.step, state.updated, now],
            )
        )

    async def read_durably(self, entity_id: str) -> SagaState | None:
        """``read``, returned only once a replica of the entity's master holds what was read
        (so nothing is answered or dropped on the strength of a write a failover could erase)."""

        async def read() -> SagaState | None:
            state = await self.read(entity_id)
            self._store.wrote(self._def.entity_key(entity_id))  # a barrier on that master
            return state

        return await self._store.durable(read)

    async def read(self, entity_id: str) -> SagaState | None:
        key = self._def.entity_key(entity_id)
        values = await self._store.hmget(key, [*_FIELDS, self._def.done_field])
        if values[0] is None:
            return None
        v = [x.decode() if x is not None else "" for x in values]
        return SagaState(
            saga_id=v[0],
            status=v[1],
            step=int(v[2] or 0),
            updated=int(v[3] or 0),
            deadline=int(v[4] or 0),
            resends=int(v[5] or 0),
            snapshot=json.loads(v[6] or "{}"),
            reason=v[7],
            started=int(v[8] or 0),
            done_by=v[9],
            concurrent=v[10] == "1",
            done=v[11] == "1",
        )

    async def reset(
        self,
        entities: Iterable[tuple[str, Mapping[str, Any]]],
        *,
        now: int,
        reason: str,
        request_id: str | None,
        asked: str,
    ) -> list[TurnedBack]:
        """Replace each entity's own fields (its batch_init), turning back in the same step a
        saga of it still running; pipelined per node, replicated when this returns. Returns
        every live saga found, whose current compensation the caller sends. Once per
        ``request_id`` and what it ``asked`` (common/ledger.py, ``reset_once_by``): an entity
        reset by that request already is left as it is, another request under the id is
        refused before anything changes."""
        by = await reset_once_by(self._store, request_id, asked)
        if by is None:  # done already: a copy changes nothing (the sweeper ends the sagas)
            return []
        entity_ids: list[str] = []
        last = len(self._def.steps) - 1  # where a concurrent saga turns back from

        def calls() -> Iterator[tuple[list[str], list[Any]]]:
            for entity_id, fields in entities:
                entity_ids.append(entity_id)
                pairs = [x for kv in fields.items() for x in kv]
                key = self._def.entity_key(entity_id)
                yield [key], [now, reason, self._def.done_field, last, by, *pairs]

        replies = await self._store.bulk_script("saga_reset", calls())
        await reset_done(self._store, by, asked)
        return [
            TurnedBack(
                entity_id=entity_id,
                saga_id=reply[0].decode(),
                step=int(reply[1]),
                snapshot=json.loads(reply[2] or b"{}"),
                started=int(reply[3] or 0),
                concurrent=reply[4] == b"1",
            )
            for entity_id, reply in zip(entity_ids, replies, strict=True)
            if reply
        ]

    # --- the in-flight index: sharded sorted sets of entity ids, scored by when to look -------
    def shard_key(self, shard: int) -> str:
        return f"saga:inflight:{{{self._def.name}:{shard}}}"

    def shard_of(self, entity_id: str) -> int:
        return zlib.crc32(entity_id.encode()) % self.index_shards

    def shard_near(self, entity_id: str) -> int | None:
        """An index shard kept by the master of the entity's key (so both can be written in one
        step), chosen by the entity's hash among that master's shards."""
        master = self._store.master_name(self._def.entity_key(entity_id))
        near = self._near.get(master)
        if near is None:
            near = self._near[master] = [
                shard
                for shard in range(self.index_shards)
                if self._store.master_name(self.shard_key(shard)) == master
            ]
        return near[zlib.crc32(entity_id.encode()) % len(near)] if near else None

    async def index_add(
        self, entity_id: str, due: int, shard: int | None = None, *, durable: bool = False
    ) -> None:
        """Register the entity before its saga starts, so no live saga is ever unindexed.
        The random fraction makes each registration's score unique (see ``index_drop``).
        The write is tracked, so whoever replicates the saga's start replicates it too; with
        ``durable`` it is on a replica when this returns."""
        key = self.shard_key(self.shard_of(entity_id) if shard is None else shard)
        score = due + self._rng.random()

        async def add() -> None:
            await self._store.zadd(key, {entity_id: score})
            self._store.wrote(key)

        await (self._store.durable(add) if durable else add())

    async def index_reschedule(self, entity_id: str, due: int, shard: int) -> None:
        key = self.shard_key(shard)
        await self._store.zadd(key, {entity_id: due}, xx=True)

    async def index_drop(self, entity_id: str, score: float, shard: int) -> None:
        """Remove the entry unless a new saga re-registered the entity after it was read."""
        key = self.shard_key(shard)
        await self._store.script("index_drop", [key], [entity_id, repr(score)])

    async def lease_due(
        self, shard: int, worker: str, *, lease_ms: int, now: int, limit: int
    ) -> list[tuple[str, float]]:
        """Take or renew ``worker``'s lease on ``shard`` and read up to ``limit`` of its entries
        due by ``now`` (none while another worker holds the shard)."""
        lease_key = f"saga:lease:{{{self._def.name}:{shard}}}"
        rows = await self._store.script(
            "sweep_lease", [lease_key, self.shard_key(shard)], [worker, lease_ms, now, limit]
        )
        rows = rows or []
        return [(rows[i].decode(), float(rows[i + 1])) for i in range(0, len(rows), 2)]
