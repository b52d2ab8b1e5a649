"""The fakes the simulation stands on: each Lua script's reproduction is pinned to the script's
text, answers in redis-py's shapes, and ``FakeRedis`` loses exactly the unreplicated writes."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest
from redis.exceptions import ResponseError

from common.ledger import LUA_DIR
from common.store import WriteMayBeLost
from test.unit.fake_lua import SCRIPTS, SOURCES, cjson_encode
from test.unit.fake_redis import MASTERS, FakeRedis, encode_arg, master_of
from test.unit.fake_store import FakeStore
from test.unit.saga_reply_cases import CASES, play

SAGA_LUA = Path(LUA_DIR).parent / "saga" / "lua"
ORDER_LUA = Path(LUA_DIR).parents[1] / "order" / "lua"
ALL_LUA = [*LUA_DIR.glob("*.lua"), *SAGA_LUA.glob("*.lua"), *ORDER_LUA.glob("*.lua")]


@pytest.mark.parametrize("path", sorted(ALL_LUA))
def test_every_script_has_a_reproduction_of_its_current_text(path: Path) -> None:
    assert path.stem in SCRIPTS, f"fake_lua has no reproduction of {path}"
    sha = hashlib.sha1(path.read_bytes()).hexdigest()
    assert SOURCES[path.stem] == sha, (
        f"{path} changed since fake_lua.{path.stem} was written: update the reproduction, "
        f"then its SOURCES entry to {sha}"
    )


def run(redis: FakeRedis, name: str, keys: list[str], *args: object) -> object:
    return SCRIPTS[name](redis, keys, [encode_arg(a) for a in args])


def test_take_and_restore_answers() -> None:
    r, saga = FakeRedis(), uuid.uuid4().hex
    key, op = "{item:a}", f"{{item:a}}:op:{saga}"
    assert run(r, "take", [key, "{item:a}:op:u"], "stock", 1, 60, 1) == b"U"
    r.hset(key, {b"stock": b"3"})
    assert run(r, "take", [key, "{item:a}:op:u"], "stock", 1, 60, 1) == b"U"  # the stored reply
    assert run(r, "take", ["{item:a}", "{item:a}:op:x"], "stock", 5, 60, 1) == b"S"
    assert run(r, "take", [key, op], "stock", 2, 60, 1) == b"T:2"
    assert run(r, "take", [key, op], "stock", 2, 60, 1) == b"T:2"
    assert r.hget(key, b"stock") == b"1"
    assert run(r, "restore", [key, op], "stock", 60, 1) == b"T:2"
    assert run(r, "restore", [key, op], "stock", 60, 1) == b"X"
    assert r.hget(key, b"stock") == b"3"
    assert run(r, "restore", [key, "{item:a}:op:never"], "stock", 60, 1) is None
    assert run(r, "take", [key, "{item:a}:op:never"], "stock", 1, 60, 1) == b"X"


def test_adjust_and_create_answers() -> None:
    r = FakeRedis()
    made = ["{user:u}", "{user:u}:rq:c"]
    assert run(r, "create", made, 60, "credit", 5) == 1
    assert run(r, "create", made, 60, "credit", 9) == 0
    # The create's request id is spent on the entity it made: another request under it is not
    # a retry.
    assert run(r, "adjust", ["{user:u}", "{user:u}:rq:c"], "credit", 1, 100, 60) == [b"REUSED", 0]
    assert run(r, "adjust", ["{user:u}", "{user:u}:rq:1"], "credit", 7, 100, 60) == [b"OK", 12]
    assert run(r, "adjust", ["{user:u}", "{user:u}:rq:1"], "credit", 7, 100, 60) == [b"OK", 12]
    assert run(r, "adjust", ["{user:u}", "{user:u}:rq:2"], "credit", -13, 100, 60) == [
        b"NEGATIVE",
        12,
    ]
    assert run(r, "adjust", ["{user:u}", "{user:u}:rq:3"], "credit", 99, 100, 60) == [
        b"OVERFLOW",
        12,
    ]
    assert run(r, "adjust", ["{user:x}", "{user:x}:rq:1"], "credit", 1, 100, 60) == [b"UNKNOWN", 0]
    # The ceiling: an increase may not lift the balance plus what sagas may give back past the
    # limit; a decrease is always allowed.
    r.hset("{user:c}", {b"credit": b"10", b"ceiling": b"10"})
    assert run(r, "take", ["{user:c}", "{user:c}:op:s"], "credit", 10, 60, 1) == b"T:10"
    assert run(r, "adjust", ["{user:c}", "{user:c}:rq:1"], "credit", 91, 100, 60) == [
        b"OVERFLOW",
        0,
    ]
    assert run(r, "adjust", ["{user:c}", "{user:c}:rq:2"], "credit", 90, 100, 60) == [b"OK", 90]
    assert run(r, "restore", ["{user:c}", "{user:c}:op:s"], "credit", 60, 1) == b"T:10"
    assert r.hget("{user:c}", b"credit") == b"100"
    assert run(r, "adjust", ["{user:c}", "{user:c}:rq:3"], "credit", -1, 100, 60) == [b"OK", 99]
    assert r.hget("{user:c}", b"ceiling") == b"99"


def test_a_request_id_answers_only_the_request_it_first_made() -> None:
    """A request record keeps what its request asked: a retry gets the first outcome, another
    request under the same id gets REUSED and changes nothing; a record from before records
    kept it (``status:value``) answers as it is."""
    r, user, order = FakeRedis(), "{user:u}", "{order:o}"
    r.hset(user, {b"credit": b"10", b"ceiling": b"10"})
    assert run(r, "adjust", [user, f"{user}:rq:1"], "credit", 5, 100, 60) == [b"OK", 15]
    assert run(r, "adjust", [user, f"{user}:rq:1"], "credit", 5, 100, 60) == [b"OK", 15]
    assert run(r, "adjust", [user, f"{user}:rq:1"], "credit", -5, 100, 60) == [b"REUSED", 0]
    assert run(r, "adjust", [user, f"{user}:rq:2"], "credit", -20, 100, 60) == [b"NEGATIVE", 15]
    assert run(r, "adjust", [user, f"{user}:rq:2"], "credit", -1, 100, 60) == [b"REUSED", 0]
    assert r.hget(user, b"credit") == b"15"
    r.set(f"{user}:rq:old", b"OK:7", ex_s=60)
    assert run(r, "adjust", [user, f"{user}:rq:old"], "credit", 3, 100, 60) == [b"OK", 7]

    r.hset(order, {b"user_id": b"u", b"paid": b"0", b"items": b"[]", b"total_cost": b"0"})
    line = [order, f"{order}:rq:1"]
    assert run(r, "add_item", line, "a:b", 2, 3, 100, 60, 10, 1000) == [b"OK", 6]
    assert run(r, "add_item", line, "a:b", 2, 3, 100, 60, 10, 1000) == [b"OK", 6]
    assert run(r, "add_item", line, "a:b", 1, 3, 100, 60, 10, 1000) == [b"REUSED", 0]
    assert run(r, "add_item", line, "a", 2, 3, 100, 60, 10, 1000) == [b"REUSED", 0]
    assert json.loads(r.hget(order, b"items") or b"") == [["a:b", 2]]


def test_saga_scripts_answers() -> None:
    r, key = FakeRedis(), "{order:o}"
    fields = ["user_id", "items", "total_cost"]
    begin = ["check", "o", "n1", 1000, 5000, "paid", "", "0", 1000, "0", *fields]
    assert run(r, "saga_begin", [key], *begin) == [b"UNKNOWN"]
    r.hset(key, {b"user_id": b"u", b"items": b"[]", b"total_cost": b"0", b"paid": b"0"})
    assert run(r, "saga_begin", [key], *begin) == [b"READY"]
    started = run(r, "saga_begin", [key], "start", *begin[1:])
    assert started == [b"STARTED", b"o:1:n1", started[2]]  # type: ignore[index]
    assert json.loads(started[2]) == {"user_id": "u", "items": "[]", "total_cost": "0"}
    assert run(r, "saga_begin", [key], *begin) == [b"JOINED", b"o:1:n1"]
    big = {b"user_id": b"v", b"items": b'[["\xc3\xa9/x",1]]', b"total_cost": b"0", b"paid": b"0"}
    r.hset("{order:p}", big)
    size = len('{"user_id":"v","items":"[[\\"\u00e9\\/x\\",1]]","total_cost":"0"}'.encode())
    too_big = ["start", "p", "n1", 1000, 5000, "paid", "", "0", size - 1, "0", *fields]
    assert run(r, "saga_begin", ["{order:p}"], *too_big) == [b"TOO_BIG", b"%d" % size]
    assert r.hget("{order:p}", b"saga_status") is None  # nothing started
    move = ["o:1:n1", "running", 0, "running", 1, 1500, "", "paid", "o", ""]
    assert run(r, "saga_move", [key], *move) == [1, started[2], b""]
    assert run(r, "saga_move", [key], *move) == [0]
    updated = r.hget(key, b"saga_updated")
    assert run(r, "saga_touch", [key], "o:1:n1", "running", 1, 1, 2000) == 0
    assert run(r, "saga_touch", [key], "o:1:n1", "running", 1, int(updated or 0), 2000) == 1
    done = ["o:1:n1", "running", 1, "succeeded", 1, 2500, "", "paid", "o", ""]
    assert run(r, "saga_move", [key], *done) == [1, started[2], b""]
    assert r.hget(key, b"paid") == b"1"
    assert run(r, "saga_begin", [key], *begin) == [b"DONE", b"o:1:n1"]


def test_a_saga_indexed_by_its_start_leaves_the_index_at_its_end() -> None:
    r, key = FakeRedis(), "{order:o}"
    near = next(f"idx{{{i}}}" for i in range(100) if master_of(f"idx{{{i}}}") == master_of(key))
    far = next(f"idx{{{i}}}" for i in range(100) if master_of(f"idx{{{i}}}") != master_of(key))
    r.hset(key, {b"user_id": b"u", b"paid": b"0"})
    begin = ["start", "o", "n1", 1000, 5000, "paid", near, repr(3000.5), 1000, "0", "user_id"]
    with pytest.raises(ResponseError):  # a shard on another master: refused, nothing written
        run(r, "saga_begin", [key], *[*begin[:6], far, *begin[7:]])
    assert r.hget(key, b"saga_attempt") is None
    assert run(r, "saga_begin", [key], *begin)[0] == b"STARTED"  # type: ignore[index]
    assert r.zscore(near, b"o") == 3000.5
    assert run(r, "saga_begin", [key], *begin)[0] == b"JOINED"  # type: ignore[index]
    assert r.zscore(near, b"o") == 3000.5  # kept as it was
    done = ["o:1:n1", "running", 0, "succeeded", 0, 2000, "", "paid", "o"]
    with pytest.raises(ResponseError):
        run(r, "saga_move", [key], *done, far)
    assert r.hget(key, b"saga_status") == b"running"  # refused before any write
    assert run(r, "saga_move", [key], *done, near)[0] == 1  # type: ignore[index]
    assert r.zscore(near, b"o") is None
    # A start whose entry was re-registered since (another score) leaves it to the sweeper.
    r.hset(key, {b"paid": b"0"})
    assert run(r, "saga_begin", [key], *begin)[0] == b"STARTED"  # type: ignore[index]
    r.zadd(near, {b"o": 4000.25})
    done = ["o:2:n1", "running", 0, "failed", -1, 2000, "x", "paid", "o", near]
    assert run(r, "saga_move", [key], *done)[0] == 1  # type: ignore[index]
    assert r.zscore(near, b"o") == 4000.25


def test_index_and_lease_answers() -> None:
    now = [0]
    r = FakeRedis(lambda: now[0])
    r.zadd("idx", {b"o": 12.25})
    assert run(r, "index_drop", ["idx"], "o", repr(12.5)) == 0
    assert run(r, "index_drop", ["idx"], "o", repr(12.25)) == 1
    assert r.zscore("idx", b"o") is None
    r.zadd("idx", {b"a": 10.5, b"b": 30.0, b"c": 20.0})
    keys = ["lease", "idx"]
    assert run(r, "sweep_lease", keys, "w1", 100, 25, 10) == [b"a", b"10.5", b"c", b"20.0"]
    assert run(r, "sweep_lease", keys, "w2", 100, 25, 10) is None
    now[0] = 99
    assert run(r, "sweep_lease", keys, "w1", 100, 30, 1) == [b"a", b"10.5"]  # renewed to 199
    now[0] = 150
    assert run(r, "sweep_lease", keys, "w2", 100, 30, 10) is None
    now[0] = 199
    rows = run(r, "sweep_lease", keys, "w2", 100, 30, 10)
    assert isinstance(rows, list) and len(rows) == 6


def test_a_failover_loses_exactly_the_unreplicated_writes() -> None:
    r = FakeRedis()
    keys = [f"{{item:{i}}}" for i in range(30)]
    by_master = {m: [k for k in keys if master_of(k) == m] for m in range(MASTERS)}
    assert all(by_master.values())
    for k in keys:
        r.hset(k, {b"stock": b"1"})
    r.replicate(range(MASTERS))
    for k in keys:
        r.hincrby(k, b"stock", 1)
    r.replicate([1])
    lost = r.failover(0)
    assert lost == sorted(by_master[0])
    assert {k: r.hget(k, b"stock") for k in keys} == {
        k: b"1" if master_of(k) == 0 else b"2" for k in keys
    }
    assert r.failover(1) == []


async def test_store_refuses_to_vouch_for_a_write_whose_master_failed_over() -> None:
    r = FakeRedis()
    store = FakeStore(r)
    store.load_scripts(LUA_DIR)
    r.hset("{user:u}", {b"credit": b"5"})
    r.replicate(range(MASTERS))
    r.replica_down(master_of("{user:u}"))  # the barrier behind the write gets no acknowledgement
    with store.tracking() as written:
        await store.script("take", ["{user:u}", "{user:u}:op:s"], ["credit", 2, 60, 1])
    r.failover(master_of("{user:u}"))
    with pytest.raises(WriteMayBeLost):
        await store.replicate(written)
    assert r.hget("{user:u}", b"credit") == b"5"
    assert (
        await store.durable(
            lambda: store.script("take", ["{user:u}", "{user:u}:op:s"], ["credit", 2, 60, 1])
        )
        == b"T:2"
    )


def test_a_reset_fences_off_the_sagas_begun_before_it() -> None:
    r, key = FakeRedis(lambda: 5000), "{item:r}"
    r.hset(key, {b"stock": b"10"})
    assert run(r, "take", [key, f"{key}:op:a"], "stock", 3, 60, 1000) == b"T:3"
    assert run(r, "reset", [key], "req-1", "stock", 10, "price", 1) == 5000
    assert r.hget(key, b"epoch") == b"5000" and r.hget(key, b"stock") == b"10"
    assert run(r, "restore", [key, f"{key}:op:a"], "stock", 60, 1000) == b"T:3"
    assert r.hget(key, b"stock") == b"10"  # nothing given back onto the new balance
    assert run(r, "take", [key, f"{key}:op:a"], "stock", 3, 60, 1000) == b"F"
    assert run(r, "take", [key, f"{key}:op:b"], "stock", 2, 60, 5000) == b"F"  # same ms: fenced
    assert run(r, "take", [key, f"{key}:op:c"], "stock", 2, 60, 5001) == b"T:2"
    assert run(r, "restore", [key, f"{key}:op:c"], "stock", 60, 5001) == b"T:2"
    assert r.hget(key, b"stock") == b"10"


def test_a_take_delivered_again_after_a_reset_returns_its_stored_reply() -> None:
    """The record is the stored reply, across a reset too: a redelivery neither takes from the
    new balance nor turns what the saga took into "fenced"."""
    r, key = FakeRedis(lambda: 5000), "{item:r}"
    r.hset(key, {b"stock": b"10"})
    for saga, reply in (("a", b"T:3"), ("s", b"S"), ("x", b"X")):
        if saga == "x":
            assert run(r, "restore", [key, f"{key}:op:x"], "stock", 60, 1000) is None
        amount = 30 if saga == "s" else 3
        assert run(r, "take", [key, f"{key}:op:{saga}"], "stock", amount, 60, 1000) == reply
    assert run(r, "reset", [key], "req-1", "stock", 10, "price", 1) == 5000
    for saga, reply in (("a", b"T:3"), ("s", b"S"), ("x", b"X")):
        assert run(r, "take", [key, f"{key}:op:{saga}"], "stock", 3, 60, 1000) == reply
        assert r.get(f"{key}:op:{saga}") == reply
    assert r.hget(key, b"stock") == b"10"
    assert run(r, "restore", [key, f"{key}:op:a"], "stock", 60, 1000) == b"T:3"
    assert r.hget(key, b"stock") == b"10"  # still fenced: nothing given back onto the new balance
    assert run(r, "take", [key, f"{key}:op:a"], "stock", 3, 60, 1000) == b"F"


def test_a_saga_reset_turns_a_running_saga_back_and_keeps_an_ended_one() -> None:
    r, key = FakeRedis(), "{order:r}"
    r.hset(key, {b"user_id": b"u", b"items": b"[]", b"total_cost": b"0", b"paid": b"0"})
    begin = ["start", "r", "n1", 1000, 5000, "paid", "", "0", 10**6, "0", "user_id", "items"]
    started = run(r, "saga_begin", [key], *begin)
    fields = ["user_id", "v", "items", '[["i",1]]', "total_cost", "3"]
    turned = run(r, "saga_reset", [key], 2000, "order reset", "paid", 1, "q1", *fields)
    assert turned == [b"r:1:n1", b"0", started[2], b"1000", b"0"]  # type: ignore[index]
    assert r.hmget(key, [b"saga_status", b"saga_reason", b"reset_at", b"user_id"]) == [
        b"compensating",
        b"order reset",
        b"2000",
        b"v",
    ]
    again = run(r, "saga_reset", [key], 2500, "order reset", "paid", 1, "q2", *fields)
    assert again == turned  # still turning back: its compensation is sent again
    back = ["r:1:n1", "compensating", 0, "failed", -1, 3000, "", "paid", "r", ""]
    assert run(r, "saga_move", [key], *back)[0] == 1  # type: ignore[index]
    assert run(r, "saga_reset", [key], 3500, "order reset", "paid", 1, "q3", *fields) == []
    assert r.hget(key, b"saga_id") == b"r:1:n1"  # an ended saga's fields stay too
    # A saga that asked for every step at once turns back from the last one (here 1).
    at_once = [*begin[:9], "1", *begin[10:]]
    assert run(r, "saga_begin", [key], *at_once)[0] == b"STARTED"  # type: ignore[index]
    turned = run(r, "saga_reset", [key], 4000, "order reset", "paid", 1, "q4", *fields)
    assert (turned[0], turned[1], turned[4]) == (b"r:2:n1", b"1", b"1")  # type: ignore[index]
    assert r.hmget(key, [b"saga_status", b"saga_step"]) == [b"compensating", b"1"]


def test_a_reset_comes_once_per_request() -> None:
    """A copy of a batch_init's request that comes again (a worker frozen with it resumes after
    the gateway's retry did it) finds each entity reset by it and leaves what happened since."""
    clock = [5000]
    r, key = FakeRedis(lambda: clock[0]), "{item:r}"
    assert run(r, "reset", [key], "req-1", "stock", 10, "price", 1) == 5000
    assert run(r, "take", [key, f"{key}:op:a"], "stock", 3, 60, 5001) == b"T:3"
    clock[0] = 9000
    assert run(r, "reset", [key], "req-1", "stock", 10, "price", 1) == 5000
    assert r.hmget(key, [b"stock", b"epoch"]) == [b"7", b"5000"]
    assert run(r, "reset", [key], "req-2", "stock", 10, "price", 1) == 9000
    assert r.hmget(key, [b"stock", b"epoch"]) == [b"10", b"9000"]


def test_a_saga_reset_comes_once_per_request() -> None:
    r, key = FakeRedis(), "{order:r}"
    r.hset(key, {b"user_id": b"u", b"items": b"[]", b"total_cost": b"0", b"paid": b"0"})
    fields = ["user_id", "v", "items", '[["i",1]]', "total_cost", "3"]
    begin = ["start", "r", "n1", 1000, 5000, "paid", "", "0", 10**6, "0", "user_id", "items"]
    run(r, "saga_begin", [key], *begin)
    turned = run(r, "saga_reset", [key], 2000, "order reset", "paid", 1, "q1", *fields)
    assert turned[0] == b"r:1:n1"  # type: ignore[index]
    # Its copy: the saga it turned back is returned again (its compensation sent again) ...
    again = run(r, "saga_reset", [key], 2100, "order reset", "paid", 1, "q1", *fields)
    assert again == turned
    back = ["r:1:n1", "compensating", 0, "failed", -1, 3000, "", "paid", "r", ""]
    assert run(r, "saga_move", [key], *back)[0] == 1  # type: ignore[index]
    # ... and, once that one ended, a saga begun since and what it changed stay as they are.
    later = ["start", "r", "n2", 4000, 9000, "paid", "", "0", 10**6, "0", "user_id", "items"]
    assert run(r, "saga_begin", [key], *later)[0] == b"STARTED"  # type: ignore[index]
    r.hset(key, {b"paid": b"1"})
    assert run(r, "saga_reset", [key], 4500, "order reset", "paid", 1, "q1", *fields) == []
    assert r.hmget(key, [b"saga_status", b"paid", b"reset_at"]) == [b"running", b"1", b"2000"]
    turned = run(r, "saga_reset", [key], 5000, "order reset", "paid", 1, "q2", *fields)
    assert turned[0] == b"r:2:n2"  # type: ignore[index]
    assert r.hmget(key, [b"saga_status", b"paid"]) == [b"compensating", b"0"]


@pytest.mark.parametrize("name", sorted(CASES))
async def test_saga_reply_moves_and_marks(name: str) -> None:
    r = FakeRedis()

    async def run_fake(script: str, keys: list[str], args: list[object]) -> object:
        encoded = [encode_arg(a) for a in args]
        if script == "hset":
            r.hset(keys[0], dict(zip(encoded[::2], encoded[1::2], strict=True)))
            return None
        if script == "hget":
            return r.hget(keys[0], encoded[0])
        return SCRIPTS[script](r, keys, encoded)

    concurrent, steps, replies, expected = CASES[name]
    after, paid = await play(run_fake, "{order:o}", "o", concurrent, steps, replies)
    assert after == expected
    assert paid == (b"1" if ("succeeded", steps - 1, "s" * steps) in expected else b"0")


def test_claim_lets_the_same_request_go_on_and_refuses_another() -> None:
    r = FakeRedis()
    record, count = "{batch_init}:rq:req-1", "{batch_init}:count"
    assert run(r, "claim", [record, count], "3 price=1 stock=5", 3600, "") == [1, 1]
    assert run(r, "claim", [record, count], "3 price=1 stock=5", 3600, "") == [1, 1]  # a copy
    assert run(r, "claim", [record, count], "4 price=7 stock=100", 3600, "") == [0, 0]
    assert r.get(record) == b"1#3 price=1 stock=5"
    other = "{batch_init}:rq:req-2"
    assert run(r, "claim", [other, count], "4 price=7 stock=100", 3600, "") == [1, 2]
    # Once done, a copy has nothing to do; another request is still refused.
    assert run(r, "claim", [record, count], "3 price=1 stock=5", 3600, 1) == [2, 1]
    assert run(r, "claim", [record, count], "3 price=1 stock=5", 3600, "") == [2, 1]
    assert run(r, "claim", [record, count], "4 price=7 stock=100", 3600, "") == [0, 0]
    assert run(r, "claim", [record, count], "4 price=7 stock=100", 3600, 1) == [0, 0]
    # Records kept before claims had ranks: the same request goes on with a new rank, or is done.
    old, old_done = "{batch_init}:rq:old", "{batch_init}:rq:old-done"
    r.set(old, b"3 price=1 stock=5")
    r.set(old_done, b"3 price=1 stock=5|done")
    assert run(r, "claim", [old, count], "3 price=1 stock=5", 3600, "") == [1, 3]
    assert run(r, "claim", [old_done, count], "3 price=1 stock=5", 3600, "") == [2, 0]


def test_a_reset_leaves_alone_an_entity_a_later_batch_init_reset() -> None:
    """A batch_init's reset that comes after one of a higher rank (a frozen worker resuming its
    writes after the client's next batch_init) leaves the entity, and a saga on it, alone."""
    r, key, order = FakeRedis(lambda: 5000), "{item:r}", "{order:o}"
    assert run(r, "reset", [key], "2#b:d", "stock", 10) == 5000
    r.hset(key, {b"stock": b"7"})  # sold since
    assert run(r, "reset", [key], "1#a:d", "stock", 10) == 5000
    assert r.hget(key, b"stock") == b"7"
    assert run(r, "reset", [key], "3#c:d", "stock", 10) == 5000
    assert r.hget(key, b"stock") == b"10"
    r.hset(order, {b"saga_id": b"s", b"saga_status": b"running", b"saga_step": b"0"})
    r.hset(order, {b"reset_by": b"2#b:d", b"paid": b"0"})
    assert run(r, "saga_reset", [order], 5000, "reset", "paid", 1, "1#a:d", "user_id", "u") == []
    assert r.hmget(order, [b"saga_status", b"user_id"]) == [b"running", None]
    turned = run(r, "saga_reset", [order], 5000, "reset", "paid", 1, "3#c:d", "user_id", "u")
    assert turned == [b"s", b"0", b"{}", b"0", b"0"]
    assert r.hmget(order, [b"saga_status", b"user_id"]) == [b"compensating", b"u"]
    # A reset called in-process without a request id (no rank) resets.
    assert run(r, "reset", [key], "u", "stock", 9) == 5000
    assert r.hget(key, b"stock") == b"9"
    assert run(r, "saga_reset", [order], 5000, "reset", "paid", 1, "u", "user_id", "v") == [
        b"s",
        b"0",
        b"{}",
        b"0",
        b"0",
    ]
    assert r.hget(order, b"user_id") == b"v"


def test_where_the_real_scripts_were_found_to_answer_otherwise() -> None:
    """Held to the real scripts by test/system/test_lua_reproductions.py, which found these:
    cjson escapes DEL; a request record that kept '' answers as it is; a reset leaves alone
    an entity with no stamp that it or a higher rank reset (its reply then is nil)."""
    assert cjson_encode(["q\x7f/"]) == b'["q\\u007f\\/"]'
    r, user = FakeRedis(lambda: 5000), "{user:u}"
    r.hset(user, {b"credit": b"10", b"ceiling": b"10"})
    r.set(f"{user}:rq:1", b"OK:7:", ex_s=60)
    assert run(r, "adjust", [user, f"{user}:rq:1"], "credit", 3, 100, 60) == [b"OK", 7]
    r.hset("{item:r}", {b"reset_by": b"2#b:x", b"stock": b"7"})
    assert run(r, "reset", ["{item:r}"], "1#a:x", "stock", 10) is None
    assert run(r, "reset", ["{item:r}"], "2#b:x", "stock", 10) is None
    assert r.hmget("{item:r}", [b"stock", b"epoch"]) == [b"7", None]
    assert run(r, "reset", ["{item:r}"], "3#c:x", "stock", 10) == 5000
