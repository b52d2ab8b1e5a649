"""Seeded sequences of calls to the saga scripts (common/saga/lua) on a ``Twin``, as in
lua_plays_ledger.py: each call names the branch its script takes from the state before it.
Sagas are begun, moved and ended by the scripts themselves; the index shard a script is given
is one its entity's master keeps, or one another master keeps (refused, nothing changed)."""

from __future__ import annotations

from random import Random

from common.types import Arg
from test.system.lua_plays_ledger import BYS, STEPS, entities, rank
from test.system.twin_redis import Twin
from test.unit.fake_lua import cjson_encode
from test.unit.fake_redis import FakeRedis

LIVE = (b"running", b"compensating")
SNAPSHOT = ["user_id", "items", "total_cost", "missing"]
MOVES = [("running", 1), ("compensating", 0), ("succeeded", 1), ("failed", -1)]
REASONS = ["", "order reset", "other"]
ORDERS: list[dict[str, Arg]] = [
    {"user_id": "u", "items": '[["a",1]]', "total_cost": 3, "paid": 0},
    {"user_id": "é/\x7f", "items": '[["b:c",2]]', "total_cost": 6, "paid": 0},
    {"user_id": "u", "paid": 1},
]


class Orders:
    """Two order entities of a twin, each with its id and its index shards near and far."""

    def __init__(self, t: Twin) -> None:
        self.keys = entities(t, "order")
        self.shards = {key: t.shards_beside(key) for key in self.keys}

    @classmethod
    async def made(cls, t: Twin) -> Orders:
        """The orders, each made unpaid with two lines."""
        orders = cls(t)
        for key in orders.keys:
            await t.put_hash(key, ORDERS[0])
        return orders

    def pick(self, rng: Random) -> tuple[str, str, str, str]:
        """key, entity id, the shard beside it, a shard elsewhere"""
        key = rng.choice(self.keys)
        return key, key[len("{order:") : -1], *self.shards[key]


def saga_of(fake: FakeRedis, key: str) -> list[str]:
    found = fake.hmget(key, [b"saga_id", b"saga_status", b"saga_step", b"saga_updated"])
    return [(value or b"").decode() for value in found]


FAR_OFF_MS = 10**14
"""A start-by time no clock reaches (ms)."""


async def begin(t: Twin, rng: Random, key: str, entity: str, index: str) -> None:
    """A checkout's start (a step before the call under test)."""
    score = rng.choice(["3000.5", "4000.25"]) if index else ""
    nonce, now, concurrent = rng.choice(["n1", "n2"]), rng.choice([1000, 2000]), rng.choice("01")
    args: list[Arg] = ["start", entity, nonce, now, 9000, "paid", index, score, 10**6, concurrent]
    await t.call("saga_begin", [key], [*args, "user_id", "items"])


async def move(t: Twin, rng: Random, key: str, entity: str, index: str) -> None:
    """A saga's move from where it is (a step before the call under test)."""
    saga_id, status, step, _ = saga_of(t.fake, key)
    to, reason = rng.choice(MOVES), rng.choice(REASONS)
    args: list[Arg] = [saga_id, status, step, *to, 2500, reason, "paid", entity, index]
    await t.call("saga_move", [key], args)


# --- saga_begin -----------------------------------------------------------------------------
async def play_saga_begin(t: Twin, rng: Random) -> None:
    orders = await Orders.made(t)
    for _ in range(STEPS):
        (key, entity, near, far), roll = orders.pick(rng), rng.random()
        if roll < 0.5:
            fields = rng.sample(SNAPSHOT, rng.randint(0, 3))
            size = len(_snapshot(t.fake, key, fields))
            index = rng.choice(["", near, near, far])
            args: list[Arg] = [
                # a start bound long past (LATE) or far off (it starts)
                rng.choice(["check", "start", "start", "start:1", f"start:{FAR_OFF_MS}"]),
                entity,
                rng.choice(["n1", "n2"]),
                rng.choice([1000, 2000]),
                9000,
                "paid",
                index,
                rng.choice(["3000.5", "4000.25"]) if index else "",
                rng.choice([size, size - 1, 10**6]),
                rng.choice("01"),
                *fields,
            ]
            await t.call("saga_begin", [key], args, begin_branch(t.fake, key, args, far))
        elif roll < 0.65:
            await move(t, rng, key, entity, rng.choice(["", near]))
        elif roll < 0.75:
            await t.put_hash(key, rng.choice(ORDERS))
        elif roll < 0.87:  # a failover erased the entry, or a sweeper rescheduled it
            await (t.delete(near) if rng.random() < 0.5 else t.zadd(near, {entity: 4000.25}))
        elif roll < 0.97:
            await t.hset(key, {"paid": 0})  # another checkout may begin
        else:
            await t.delete(key)


def _snapshot(fake: FakeRedis, key: str, fields: list[str]) -> bytes:
    return cjson_encode({f: (fake.hget(key, f.encode()) or b"").decode() for f in fields})


def begin_branch(fake: FakeRedis, key: str, args: list[Arg], far: str) -> list[str]:
    mode, _, start_by = str(args[0]).partition(":")
    entity, index, most = str(args[1]), str(args[6]), int(str(args[8]))
    if not fake.exists(key):
        return ["unknown"]
    done, saga_id, status = fake.hmget(key, [b"paid", b"saga_id", b"saga_status"])
    if done == b"1":
        return ["done" if saga_id else "done, no saga id"]
    if status in LIVE:
        if mode != "start" or not index:
            return ["joined"]
        if index == far:
            return ["joined: a shard elsewhere refused"]
        there = fake.zscore(index, entity.encode()) is not None
        return ["joined: its entry kept" if there else "joined: its entry put back"]
    if mode == "check":
        return ["ready"]
    if start_by and int(start_by) <= fake.now_ms():
        return ["late: past its start-by time"]
    data = _snapshot(fake, key, [str(f) for f in args[10:]])
    if len(data) > most:
        return ["too big"]
    out = ["at the snapshot's bound"] if len(data) == most else []
    out += ["a snapshot cjson escapes"] if b"\\" in data else []
    if index == far:
        return [*out, "started: a shard elsewhere refused"]
    return [*out, "started and indexed" if index else "started, not indexed"]


# --- saga_move ------------------------------------------------------------------------------
async def play_saga_move(t: Twin, rng: Random) -> None:
    orders = await Orders.made(t)
    for _ in range(STEPS):
        (key, entity, near, far), roll = orders.pick(rng), rng.random()
        if roll < 0.45:
            found = saga_of(t.fake, key)[:3]
            spoilt = rng.choice([None] * 6 + [0, 1, 2])
            if spoilt is not None:
                found[spoilt] = ["other:1:n1", "other", "7"][spoilt]
            to, reason = rng.choice(MOVES), rng.choice(REASONS)
            index = rng.choice(["", near, near, far])
            args: list[Arg] = [*found, *to, 3500, reason, "paid", entity, index]
            await t.call("saga_move", [key], args, move_branch(t.fake, key, args, far))
        elif roll < 0.65:
            await begin(t, rng, key, entity, rng.choice(["", near, near]))
        elif roll < 0.8:  # a failover erased the entry, or a sweeper rescheduled it
            await (t.delete(near) if rng.random() < 0.4 else t.zadd(near, {entity: 5000.75}))
        elif roll < 0.93:
            await t.hset(key, {"paid": 0})  # another checkout may begin
        else:
            await t.put_hash(key, rng.choice(ORDERS))


def move_branch(fake: FakeRedis, key: str, args: list[Arg], far: str) -> list[str]:
    saga = saga_of(fake, key)[:3]
    asked = [str(a) for a in args[:3]]
    if saga != asked:
        which = ["another saga", "another status", "another step"]
        return [f"stale: {which[n]}" for n in range(3) if saga[n] != asked[n]][:1]
    to, reason, entity, index = str(args[3]), str(args[6]), str(args[8]), str(args[9])
    out = [f"to {to}", "a reason" if reason else "the reason kept"]
    if not index or to not in ("succeeded", "failed"):
        return out + (["a shard elsewhere, not at an end"] if index == far else [])
    if index == far:
        return ["an end with a shard elsewhere: refused"]
    indexed, score = fake.hget(key, b"saga_indexed"), fake.zscore(index, entity.encode())
    if not indexed:
        return [*out, "an end, not indexed at its start"]
    if score is None:
        return [*out, "an end, its entry gone"]
    same = score == float(indexed)
    return [*out, "an end drops its entry" if same else "an end leaves a re-registered entry"]


# --- saga_reset -----------------------------------------------------------------------------
async def play_saga_reset(t: Twin, rng: Random) -> None:
    orders = await Orders.made(t)
    for _ in range(STEPS):
        (key, entity, _, _), roll = orders.pick(rng), rng.random()
        if roll < 0.45:
            pairs: list[Arg] = ["user_id", rng.choice(["v", "w"]), "items", "[]", "total_cost", 0]
            now, reason = rng.choice([5000, 6000]), rng.choice(REASONS[1:])
            args: list[Arg] = [now, reason, "paid", rng.choice([1, 2]), rng.choice(BYS), *pairs]
            await t.call("saga_reset", [key], args, saga_reset_branch(t.fake, key, args))
        elif roll < 0.65:
            await begin(t, rng, key, entity, "")
        elif roll < 0.8:
            await move(t, rng, key, entity, "")
        elif roll < 0.88:  # a reset of another request was here
            await t.hset(key, {"reset_by": rng.choice(BYS)})
        elif roll < 0.96:
            await t.hset(key, {"paid": 0})
        else:
            await (t.delete(key) if rng.random() < 0.5 else t.put_hash(key, ORDERS[0]))


def saga_reset_branch(fake: FakeRedis, key: str, args: list[Arg]) -> list[str]:
    reason, by = str(args[1]).encode(), str(args[4]).encode()
    found = fake.hmget(key, [b"saga_status", b"saga_concurrent", b"reset_by", b"saga_reason"])
    status, concurrent, reset_by, saga_reason = found
    if reset_by == by:
        turned = status == b"compensating" and saga_reason == reason
        return ["its own copy: " + ("the saga it turned back" if turned else "nothing")]
    if 0 < rank(by) < rank(reset_by):
        return ["a later batch_init reset it" + (": a live saga" if status in LIVE else "")]
    mine, theirs = rank(by), rank(reset_by)
    out = ["no rank"] if mine == 0 else []
    if mine and theirs:
        out += ["over an earlier batch_init" if theirs < mine else "over its rank, another request"]
    out += [] if fake.exists(key) else ["a new entity"]
    if status == b"running":
        at_once = concurrent == b"1"
        return [*out, "turns back " + ("from the last step" if at_once else "at its step")]
    return [*out, "already turning back" if status == b"compensating" else "no live saga"]


# --- saga_touch -----------------------------------------------------------------------------
async def play_saga_touch(t: Twin, rng: Random) -> None:
    orders = await Orders.made(t)
    for _ in range(STEPS):
        (key, entity, _, _), roll = orders.pick(rng), rng.random()
        if roll < 0.5:
            read = saga_of(t.fake, key)
            spoilt = rng.choice([None, None, None, 0, 1, 2, 3])
            if spoilt is not None:
                read[spoilt] = ["other:1:n1", "other", "7", "1"][spoilt]
            args: list[Arg] = [*read, rng.choice([2600, 2700])]
            await t.call("saga_touch", [key], args, touch_branch(t.fake, key, read))
        elif roll < 0.7:
            await begin(t, rng, key, entity, "")
        elif roll < 0.85:
            await move(t, rng, key, entity, "")
        elif roll < 0.95:
            await t.hset(key, {"paid": 0})
        else:  # a saga no re-send was counted for yet
            fields: dict[str, Arg] = {"saga_id": "h:1:n", "saga_status": "running", "saga_step": 0}
            await t.put_hash(key, {**fields, "saga_updated": 1000, "paid": 0})


def touch_branch(fake: FakeRedis, key: str, read: list[str]) -> list[str]:
    found = saga_of(fake, key)
    names = ["another saga", "another status", "another step", "another update"]
    moved = [f"moved since: {names[n]}" for n in range(4) if found[n] != read[n]]
    if moved:
        return moved[:1]
    resends = fake.hget(key, b"saga_resends")
    return ["the first re-send" if resends in (None, b"0") else "another re-send"]


# --- index_drop and sweep_lease -------------------------------------------------------------
SCORES = [3000.5, 4000.25, 1764540000123.4567, 20.0]


async def play_index_drop(t: Twin, rng: Random) -> None:
    shard = f"saga:inflight:{{{t.ns}:0}}"
    for _ in range(STEPS):
        member, score = rng.choice("ab"), rng.choice(SCORES)
        if rng.random() < 0.55:
            text = rng.choice([repr(score), repr(score), f"{score:.7f}"])
            found = t.fake.zscore(shard, member.encode())
            branch = "no entry" if found is None else "a renewed entry: kept"
            if found == score:
                branch = "its entry: dropped" + ("" if text == repr(score) else " (other digits)")
            await t.call("index_drop", [shard], [member, text], [branch])
        else:
            await t.zadd(shard, {member: score})


async def play_sweep_lease(t: Twin, rng: Random) -> None:
    lease, shard = f"saga:lease:{{{t.ns}:0}}", f"saga:inflight:{{{t.ns}:0}}"
    for _ in range(STEPS):
        roll = rng.random()
        if roll < 0.55:
            worker, now = rng.choice(["w1", "w2"]), rng.choice([2500, 3500, 5000])
            args: list[Arg] = [worker, rng.choice([60000, 120000]), now, rng.randrange(4)]
            branch = lease_branch(t.fake, lease, shard, args)
            await t.call("sweep_lease", [lease, shard], args, branch)
        elif roll < 0.8:
            await t.zadd(shard, {rng.choice("abc"): rng.choice([1000.25, 3000.5, 4000.75, 20.0])})
        elif roll < 0.92:
            await t.delete(lease)  # it expired
        else:
            await t.delete(shard)


def lease_branch(fake: FakeRedis, lease: str, shard: str, args: list[Arg]) -> list[str]:
    worker, _, now, limit = (str(a) for a in args)
    holder = fake.get(lease)
    if holder not in (None, worker.encode()):
        return ["another worker holds it"]
    out = ["takes a free lease" if holder is None else "renews its own lease"]
    due = len(fake.zrangebyscore(shard, float("-inf"), float(now)))
    if not due:
        return [*out, "nothing due"]
    return [*out, "reads every due entry" if int(limit) >= due else "reads up to its limit"]
