"""Seeded sequences of calls to the entity scripts (common/lua, order/lua) on a ``Twin``: each
call names the branch of its script that the state before it leads to, so that a test can ask
that every branch was compared. Between the calls, other scripts and plain writes put the
entities and records in the states the scripts read: older formats included."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from random import Random

from common.types import Arg
from test.system.twin_redis import Twin
from test.unit.fake_lua import cjson_encode
from test.unit.fake_redis import FakeRedis

Play = Callable[[Twin, Random], Awaitable[None]]

STEPS = 30
"""Calls and writes in one sequence."""

BYS = ["1#a:x", "2#b:x", "3#c:x", "2#z:x", "3#y:x", "0#q:x", "f00dcafe"]
"""What a reset is done by: ranked batch_init requests (two of rank 2 and of rank 3), and ids
with no rank."""

STARTS = [1000, 4999, 5000, 5001, 9000]
"""When a saga began (ms), around the stamp 5000 of the entities written below."""


def rank(by: bytes | None) -> int:
    """A reset's rank, read as reset.lua and saga_reset.lua read it (``^(%d+)#``)."""
    found = re.match(rb"(\d+)#", by or b"")
    return int(found.group(1)) if found else 0


def entities(t: Twin, kind: str, count: int = 2) -> list[str]:
    return [f"{{{kind}:{t.ns}-{n}}}" for n in range(count)]


def record_kept(done: bytes) -> bytes | None:
    """What a request record ``status:value[:asked]`` kept of its request (None: nothing)."""
    parts = done.split(b":", 2)
    return parts[2] if len(parts) == 3 and parts[2] else None


# --- claim ----------------------------------------------------------------------------------
ASKED = ["3 price=1 stock=5", "4 price=7 stock=100"]


async def play_claim(t: Twin, rng: Random) -> None:
    tag = f"{{batch_init:{t.ns}}}"
    records, count = [f"{tag}:rq:r{n}" for n in range(3)], f"{tag}:count"
    for _ in range(STEPS):
        record, asked, roll = rng.choice(records), rng.choice(ASKED), rng.random()
        if roll < 0.6:
            mark = rng.choice(["", "", "", "1", "7"])
            args: list[Arg] = [asked, rng.choice([600, 3600]), mark]
            await t.call("claim", [record, count], args, claim_branch(t.fake.get(record), args))
        elif roll < 0.85:  # as claims wrote it, or before claims had ranks
            kept = [f"5#{asked}", f"5#{asked}|done", asked, f"{asked}|done", f"x#{asked}"]
            await t.put(record, rng.choice(kept), ex=3600)
        elif roll < 0.93:
            await t.put(count, rng.choice(["0", "41"]))
        else:
            await t.delete(record)


def claim_branch(record: bytes | None, args: list[Arg]) -> list[str]:
    asked, _, mark = (str(a).encode() for a in args)
    if record is None:
        return ["no record: marked done" if mark else "no record: takes the next rank"]
    body = record.removesuffix(b"|done")
    ranked = re.fullmatch(rb"(\d+)#(.*)", body, re.S)
    if (ranked.group(2) if ranked else body) != asked:
        return ["another request's id" + ("" if ranked else " (a record with no rank)")]
    if mark:
        return ["marked done"]
    if body != record:
        return ["done: a copy changes nothing" + ("" if ranked else " (a record with no rank)")]
    return ["a copy goes on with its rank" if ranked else "a record with no rank takes one"]


# --- reset ----------------------------------------------------------------------------------
async def play_reset(t: Twin, rng: Random) -> None:
    for _ in range(STEPS):
        key, roll = rng.choice(entities(t, "item")), rng.random()
        if roll < 0.45:
            by, stock = rng.choice(BYS), rng.choice([5, 10])
            stored = t.fake.hget(key, b"reset_by")
            if stored and rng.random() < 0.3:  # a copy of the request that reset it
                by = stored.decode()
            args: list[Arg] = [by, "stock", stock, "price", rng.choice([1, 7]), "ceiling", stock]
            await t.call("reset", [key], args, reset_branch(t.fake, key, by))
        elif roll < 0.7:  # a sale since: what a reset left alone shows
            op = f"{key}:op:s{rng.randrange(4)}"
            args = ["stock", rng.choice([1, 2]), 600, rng.choice([1, 10**13])]
            await t.call("take", [key, op], args)
        elif roll < 0.8:  # stamped by nobody: saga_reset.lua's writes, not reset.lua's
            by = rng.choice(["3#c:x", "2#b:x", "f00dcafe"])
            await t.put_hash(key, {"reset_by": by, "stock": 7})
        elif roll < 0.9:  # reset before resets were once per request
            await t.put_hash(key, {"epoch": 5000, "stock": 4, "ceiling": 4})
        else:
            await t.delete(key)


def reset_branch(fake: FakeRedis, key: str, by: str) -> list[str]:
    if not fake.exists(key):
        return ["a new entity"]
    reset_by, epoch = fake.hmget(key, [b"reset_by", b"epoch"])
    mine, theirs = rank(by.encode()), rank(reset_by)
    stamp = "" if epoch is not None else ", unstamped"
    if reset_by == by.encode():
        return ["its own copy" + stamp]
    if 0 < mine < theirs:
        return ["a later batch_init reset it" + stamp]
    if mine == 0:
        return ["no rank: resets"]
    if theirs == 0:
        return ["over an entity no ranked batch_init reset"]
    return ["over an earlier batch_init" if theirs < mine else "over its rank, another request"]


# --- take and restore -----------------------------------------------------------------------
RECORDS = ["T:3", "T:3", "T:0", "S", "U", "X", "F"]


async def play_take(t: Twin, rng: Random) -> None:
    await _play_take_and_restore(t, rng, "take")


async def play_restore(t: Twin, rng: Random) -> None:
    await _play_take_and_restore(t, rng, "restore")


async def _play_take_and_restore(t: Twin, rng: Random, script: str) -> None:
    for key in entities(t, "item"):
        await t.put_hash(key, {"stock": 10})
    for _ in range(STEPS):
        key = rng.choice(entities(t, "item"))
        op, roll = f"{key}:op:s{rng.randrange(8)}", rng.random()
        if roll < 0.6:
            called = script if roll < 0.5 else ("restore" if script == "take" else "take")
            ttl, started = rng.choice([600, 604800]), rng.choice(STARTS)
            if called == "take":
                args: list[Arg] = ["stock", rng.choice([0, 1, 3, 7, 12]), ttl, started]
                branch = take_branch(t.fake, key, op, args)
            else:
                args = ["stock", ttl, started]
                branch = restore_branch(t.fake, key, op, started)
            await t.call(called, [key, op], args, branch if called == script else ())
        elif roll < 0.75:
            stock = rng.choice([0, 5, 10])
            stamps: list[dict[str, Arg]] = [{}, {"epoch": 5000}, {"epoch": 0}]
            fields = {"stock": stock, **rng.choice(stamps)}
            await t.put_hash(key, rng.choice([fields, {"epoch": 5000}]))
        elif roll < 0.88:
            await t.put(op, rng.choice(RECORDS), ex=600)
        else:  # a record gone (expired), or the entity
            await t.delete(op if roll < 0.97 else key)


def take_branch(fake: FakeRedis, key: str, op: str, args: list[Arg]) -> list[str]:
    amount, started = int(str(args[1])), int(str(args[3]))
    if fake.get(op) is not None:
        return ["a redelivery: its stored reply"]
    value, epoch = fake.hmget(key, [b"stock", b"epoch"])
    stamp = int(epoch or 0)
    if stamp > 0 and started <= stamp:
        return ["fenced: began at the reset" if started == stamp else "fenced: began before it"]
    out = ["began just after the reset"] if stamp and started == stamp + 1 else []
    out += ["stamped 0: no reset"] if epoch == b"0" else []
    if value is None:
        return [*out, "unknown"]
    if int(value) < amount:
        return [*out, "short"]
    return [*out, "taken" if amount > 0 else "took nothing"]


def restore_branch(fake: FakeRedis, key: str, op: str, started: int) -> list[str]:
    done, stamp = fake.get(op), int(fake.hget(key, b"epoch") or 0)
    if stamp > 0 and started <= stamp:
        return ["fenced, with a record" if done else "fenced, no record"]
    if done is None:
        return ["nothing taken: a tombstone"]
    if done.startswith(b"T:"):
        return ["gives back what it took" if int(done[2:]) > 0 else "took nothing: a tombstone"]
    return [f"kept: {done.decode()}"]


# --- adjust and create ----------------------------------------------------------------------
async def play_adjust(t: Twin, rng: Random) -> None:
    for _ in range(STEPS):
        key = rng.choice(entities(t, "user"))
        request, roll = f"{key}:rq:q{rng.randrange(8)}", rng.random()
        if roll < 0.55:
            delta, limit = rng.choice([-20, -5, -1, 1, 5, 90, 91]), rng.choice([100, 2**53 - 1])
            args: list[Arg] = ["credit", delta, limit, rng.choice([60, 600])]
            await t.call("adjust", [key, request], args, adjust_branch(t.fake, key, request, args))
        elif roll < 0.65:
            credit = rng.choice([10, 50])
            await t.call("create", [key, request], [3600, "credit", credit, "ceiling", credit])
        elif roll < 0.75:  # a saga's take or its give-back: the balance under its ceiling
            op = f"{key}:op:s{rng.randrange(2)}"
            take = rng.random() < 0.5
            args = ["credit", 10, 600, 10**13] if take else ["credit", 600, 10**13]
            await t.call("take" if take else "restore", [key, op], args)
        elif roll < 0.87:  # an entity made before it kept a ceiling, or with one
            await t.put_hash(key, rng.choice([{"credit": 10}, {"credit": 10, "ceiling": 95}]))
        else:  # records kept before they kept the request, and one that kept an empty one
            await t.put(request, rng.choice(["OK:7", "NEGATIVE:3:-5", "OK:7:"]), ex=600)


def adjust_branch(fake: FakeRedis, key: str, request: str, args: list[Arg]) -> list[str]:
    delta, limit = int(str(args[1])), int(str(args[2]))
    done = fake.get(request)
    if done is not None:
        return _replay_branch(done, str(delta).encode())
    current, ceiling = fake.hmget(key, [b"credit", b"ceiling"])
    if current is None:
        return ["unknown"]
    out = [] if ceiling is not None else ["an entity older than its ceiling"]
    if int(current) + delta < 0:
        return [*out, "negative"]
    if delta > 0 and int(ceiling or current) + delta > limit:
        return [*out, "over the limit"]
    return [*out, "raised" if delta > 0 else "lowered"]


def _replay_branch(done: bytes, asked: bytes) -> list[str]:
    kept = record_kept(done)
    if kept is None:
        return ["an old record answers as it is" + (" (kept '')" if done.endswith(b":") else "")]
    return ["a retry: its first answer" if kept == asked else "another request's id: reused"]


async def play_create(t: Twin, rng: Random) -> None:
    order: list[Arg] = ["user_id", "u", "paid", 0, "items", "[]", "total_cost", 0]
    for _ in range(STEPS):
        key = rng.choice(entities(t, "user"))
        request, roll = f"{key}:rq:c{rng.randrange(2)}", rng.random()
        if roll < 0.6:
            fields: list[Arg] = rng.choice([["credit", 10, "ceiling", 10], order])
            over = " over a record" if t.fake.exists(request) else ""
            branch = ["there: kept"] if t.fake.exists(key) else ["created" + over]
            await t.call("create", [key, request], [rng.choice([60, 3600]), *fields], branch)
        elif roll < 0.8:
            await t.call("adjust", [key, request], ["credit", 5, 100, 600])
        else:
            await t.delete(key)


# --- add_item -------------------------------------------------------------------------------
ITEM_IDS = ["a", "b:c", "é/x", "q\x7f"]
"""Item ids as a client may send them: '/' and DEL are escaped by cjson."""

ORDERS: list[dict[str, Arg]] = [
    {"user_id": "u", "paid": 0, "items": "[]", "total_cost": 0},
    {"user_id": "u", "paid": 0, "items": '[["a",1]]', "total_cost": 3},
    {"user_id": "u", "paid": 1, "items": '[["a",1]]', "total_cost": 3},
    {"user_id": "u", "paid": 0, "saga_status": "running"},
    {"user_id": "u", "paid": 0, "saga_status": "compensating"},
    {"user_id": "u", "paid": 0, "saga_status": "failed", "items": '[["é\\/x",2]]'},
    {"user_id": "u"},
]


async def play_add_item(t: Twin, rng: Random) -> None:
    for _ in range(STEPS):
        key = rng.choice(entities(t, "order"))
        request, roll = f"{key}:rq:a{rng.randrange(8)}", rng.random()
        if roll < 0.55:
            args = add_item_args(t.fake, key, rng)
            branch = add_item_branch(t.fake, key, request, args)
            await t.call("add_item", [key, request], args, branch)
        elif roll < 0.7:
            await t.put_hash(key, rng.choice(ORDERS))
        elif roll < 0.8:
            fields: list[Arg] = ["user_id", "u", "paid", 0, "items", "[]", "total_cost", 0]
            await t.call("create", [key, request], [3600, *fields])
        elif roll < 0.9:
            await t.put(request, rng.choice(["OK:6", "OK:6:"]), ex=600)
        else:
            await t.delete(key)


def add_item_args(fake: FakeRedis, key: str, rng: Random) -> list[Arg]:
    """A line, with bounds at, just under, or far from where the order would be with it."""
    item, quantity, price = rng.choice(ITEM_IDS), rng.choice([1, 2, 10**9]), rng.choice([1, 3])
    lines, total, size = _with_line(fake, key, item, quantity, price)
    return [
        item,
        quantity,
        price,
        rng.choice([total, total - 1, 2**53 - 1]),
        rng.choice([60, 3600]),
        rng.choice([len(lines), len(lines) - 1, 1000]),
        rng.choice([size, size - 1, 100_000]),
    ]


def _with_line(
    fake: FakeRedis, key: str, item: str, quantity: int, price: int
) -> tuple[list[Arg], int, int]:
    items, total = fake.hmget(key, [b"items", b"total_cost"])
    lines = [*json.loads(items or b"[]"), [item, quantity]]
    return lines, int(total or 0) + quantity * price, len(cjson_encode(lines))


def add_item_branch(fake: FakeRedis, key: str, request: str, args: list[Arg]) -> list[str]:
    item, quantity, price, limit, _, most_lines, most_bytes = (str(a) for a in args)
    done = fake.get(request)
    if done is not None:
        return _replay_branch(done, f"{quantity}:{item}".encode())
    user, paid, status, items = fake.hmget(key, [b"user_id", b"paid", b"saga_status", b"items"])
    if user is None:
        return ["unknown"]
    if paid == b"1":
        return ["paid"]
    if status in (b"running", b"compensating"):
        return [f"checking out ({status.decode()})"]
    lines, total, size = _with_line(fake, key, item, int(quantity), int(price))
    out = [] if items else ["no lines yet"]
    out += ["an id cjson escapes"] if set(item) & {"/", "\x7f"} else []
    if total > int(limit):
        return [*out, "over the limit"]
    if len(lines) > int(most_lines):
        return [*out, "too many lines"]
    if size > int(most_bytes):
        return [*out, "too many bytes"]
    at = {"at the limit": total == int(limit), "at the bytes' bound": size == int(most_bytes)}
    return [*out, *(name for name, there in at.items() if there), "added"]
