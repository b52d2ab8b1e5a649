"""A ledger of entities that each hold one counted field (an item's stock, a user's credit).

Stock and payment are the same participant underneath: HTTP adjusts a balance, a saga takes an
amount at most once and gives it back at most once. Every mutation is one single-slot Lua script
on the entity's hash tag, so it is atomic and safe to retry.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from common.errors import NotFound, Refused, RequestIdReused
from common.observability import telemetry
from common.terms import LedgerKind, Taken
from common.types import Arg, Storage

__all__ = [
    "BALANCE_LIMIT",
    "LUA_DIR",
    "Ledger",
    "Taken",
    "create_entity",
    "request_record",
    "reset_done",
    "reset_once_by",
]

LUA_DIR = Path(__file__).parent / "lua"
# Balances stay below 2**53 so Lua, whose numbers are doubles, compares them exactly. Each
# entity keeps a ``ceiling``: what was added to it less what was subtracted, which bounds its
# balance plus every amount a saga took and may still give back; increases keep the ceiling
# within the limit (adjust.lua), so no refund can push a balance past it.
BALANCE_LIMIT = 2**53 - 1
OP_RECORD_TTL_S = 7 * 24 * 3600
REQUEST_RECORD_TTL_S = 3600


# The batch_init claims of a service (claim.lua): one slot, so that a claim takes its rank from
# the count in the same step.
CLAIMS = "{batch_init}"
CLAIMS_COUNT = "{batch_init}:count"


def request_record(key: str, request_id: str) -> str:
    """The key of the record that makes the client request ``request_id`` on the entity
    ``key`` happen once, and keeps what it asked (same slot as the entity)."""
    return f"{key}:rq:{request_id}"


async def reset_once_by(store: Storage, request_id: str | None, asked: str) -> str | None:
    """What a reset (batch_init) is done once for (``rank#id:digest``): its rank among the
    service's batch_inits, its request's id and what it ``asked`` (its route's numbers); called
    in-process without an id (every HTTP request has one), a fresh id and no rank. None when the
    request is done already (``reset_done``): a copy of it then changes nothing, even after
    other requests reset the entities since (it reset them all again: a worker frozen with it
    resumed after the gateway's retry did it and the client's next batch_init ran, and brought
    back what that one's sagas had taken). Each entity keeps it: a copy of the request that
    comes again before the first is done finds the entity reset by it, or by a batch_init of a
    higher rank (one that claimed its id later), and leaves it as it is. Another request under
    the id is refused (RequestIdReused) before anything changes, while the id's record lives
    (``REQUEST_RECORD_TTL_S``, as on every route); past that it is a new request, and since it
    asks for something else, it resets."""
    if request_id is None:  # called in-process: no copy of it comes, and it has no rank
        return uuid.uuid4().hex
    args: list[Arg] = [asked, REQUEST_RECORD_TTL_S, ""]
    keys = [request_record(CLAIMS, request_id), CLAIMS_COUNT]
    claimed, rank = await store.durable(lambda: store.script("claim", keys, args))
    if not claimed:
        raise RequestIdReused("the entities of its batch_init")
    if claimed == 2:
        return None
    digest = hashlib.blake2b(asked.encode(), digest_size=8).hexdigest()
    return f"{rank}#{request_id}:{digest}"


async def reset_done(store: Storage, by: str, asked: str) -> None:
    """Mark the reset ``by`` (``reset_once_by``) done, once every entity's reset is replicated:
    a copy of it that comes later changes nothing."""
    rank, ranked, request_id = by.partition("#")
    if not ranked:
        return
    keys = [request_record(CLAIMS, request_id.rpartition(":")[0]), CLAIMS_COUNT]
    args: list[Arg] = [asked, REQUEST_RECORD_TTL_S, rank]
    await store.durable(lambda: store.script("claim", keys, args))


async def create_entity(
    store: Storage,
    key: str,
    fields: Mapping[str, Arg],
    request_id: str,
    *,
    same: tuple[str, ...] = (),
    what: str,
) -> None:
    """Create the entity ``key`` with ``fields`` unless it exists (a retried create), once a
    replica holds it. The create's ``request_id`` is kept on the entity, so another request
    under it there is refused (adjust.lua, add_item.lua); an existing entity whose ``same``
    fields differ from ``fields``' was made by another request under this id: RequestIdReused
    (``what`` names it), nothing changed."""
    keys = [key, request_record(key, request_id)]
    args = [REQUEST_RECORD_TTL_S, *(x for kv in fields.items() for x in kv)]
    created = await store.durable(lambda: store.script("create", keys, args))
    if not created and same:
        if await store.hmget(key, same) != [str(fields[name]).encode() for name in same]:
            raise RequestIdReused(what)


class Ledger:
    """Entities ``{prefix:id}`` of one ledger ``kind`` (its counted field) in ``store``."""

    def __init__(self, store: Storage, kind: LedgerKind) -> None:
        self._store = store
        self._kind = kind.prefix
        self.field = kind.field

    @property
    def store(self) -> Storage:
        return self._store

    def key(self, entity_id: str) -> str:
        return f"{{{self._kind}:{entity_id}}}"

    async def create(
        self,
        entity_id: str,
        fields: Mapping[str, int],
        request_id: str,
        *,
        same: tuple[str, ...] = (),
    ) -> str:
        """A new entity (kept if it exists: a retried create); its id once a replica holds it.
        See ``create_entity`` for ``request_id`` and ``same``."""
        await create_entity(
            self._store,
            self.key(entity_id),
            self._with_ceiling(fields),
            request_id,
            same=same,
            what=f"{self._kind} {entity_id!r}",
        )
        return entity_id

    async def find(self, entity_id: str, fields: tuple[str, ...]) -> dict[str, int]:
        key = self.key(entity_id)
        values = await self._store.hmget(key, fields)
        if values[0] is None:
            raise NotFound(f"{self._kind} {entity_id!r} not found")
        return {name: int(value or 0) for name, value in zip(fields, values, strict=True)}

    async def adjust(self, entity_id: str, delta: int, request_id: str) -> int:
        """Add ``delta`` (may be negative) to the field; the new balance, once replicated.
        Done at most once per ``request_id``: a retry returns the first outcome."""
        key = self.key(entity_id)
        request = request_record(key, request_id)
        args: list[Arg] = [self.field, delta, BALANCE_LIMIT, REQUEST_RECORD_TTL_S]
        status, value = await self._store.durable(
            lambda: self._store.script("adjust", [key, request], args)
        )
        status = status.decode()
        if status == "UNKNOWN":
            raise NotFound(f"{self._kind} {entity_id!r} not found")
        if status == "NEGATIVE":
            raise Refused(f"{self._kind} {entity_id!r} has {value} {self.field}, not {-delta}")
        if status == "OVERFLOW":
            raise Refused(f"{self._kind} {entity_id!r} would exceed {BALANCE_LIMIT} {self.field}")
        if status == "REUSED":
            raise RequestIdReused(f"{self._kind} {entity_id!r}")
        return int(value)

    async def take(self, entity_id: str, saga_id: str, amount: int, started: int) -> Taken:
        """Take ``amount`` for ``saga_id`` (begun at ``started``, ms) unless already done,
        refused, or fenced off by a reset of the entity since; idempotent."""
        key = self.key(entity_id)
        args: list[Arg] = [self.field, amount, OP_RECORD_TTL_S, started]
        result = await self._store.script("take", [key, f"{key}:op:{saga_id}"], args)
        taken = Taken(result.decode()[0])
        telemetry.took(self._kind, taken)
        return taken

    async def restore(self, entity_id: str, saga_id: str, started: int) -> None:
        """Give back what ``saga_id`` took (nothing if a reset fenced it off), or make sure it
        never takes; idempotent."""
        key = self.key(entity_id)
        args: list[Arg] = [self.field, OP_RECORD_TTL_S, started]
        before = await self._store.script("restore", [key, f"{key}:op:{saga_id}"], args)
        telemetry.restored(self._kind, before)

    async def batch_init(
        self, count: int, fields: Mapping[str, int], request_id: str | None = None
    ) -> None:
        """Entities ``"0"`` … ``str(count-1)`` with ``fields``, overwriting (see ``reset``)."""
        asked = " ".join([str(count), *(f"{k}={v}" for k, v in sorted(fields.items()))])
        await self.reset(((str(i), fields) for i in range(count)), request_id, asked)

    async def reset(
        self,
        entities: Iterable[tuple[str, Mapping[str, int]]],
        request_id: str | None = None,
        asked: str = "",
    ) -> None:
        """Replace each entity with fresh fields, stamped with the moment of its reset: every
        saga that began before is fenced off it (takes refused, nothing given back), so once
        those sagas are over the entity holds exactly these fields. Pipelined per node.
        Once per ``request_id`` and what it ``asked`` (``reset_once_by``): a copy of the
        request changes nothing, another request under its id is refused."""
        by = await reset_once_by(self._store, request_id, asked)
        if by is None:  # done already: a copy changes nothing
            return
        calls = (
            ([self.key(entity_id)], [by, *(x for kv in self._with_ceiling(f).items() for x in kv)])
            for entity_id, f in entities
        )
        await self._store.bulk_script("reset", calls)
        await reset_done(self._store, by, asked)

    def _with_ceiling(self, fields: Mapping[str, int]) -> dict[str, int]:
        """A new entity's fields: its ceiling starts at its balance (nothing taken yet)."""
        return {**fields, "ceiling": fields[self.field]}
