"""The Lua scripts of ``common/lua``, ``common/saga/lua`` and ``order/lua``, reproduced in
Python over a ``FakeRedis`` keyspace.

Each function takes ``(redis, keys, argv)`` with ``argv`` already encoded as redis-py sends it
(bytes) and returns what redis-py hands back with ``decode_responses=False``: bytes for Lua
strings, int for Lua numbers (truncated), lists for Lua tables, None for ``false``/``nil``.
``SOURCES`` pins the sha1 of the Lua text each function reproduces; a test fails when a script
changes, so the fake is updated with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

if TYPE_CHECKING:
    from test.unit.fake_redis import FakeRedis

Script = Callable[["FakeRedis", list[str], list[bytes]], Any]


def _num(raw: bytes) -> float:
    """Lua's ``tonumber`` on a decimal string."""
    return float(raw)


def _fenced(r: FakeRedis, key: str, started: bytes) -> bool:
    """take.lua's and restore.lua's fence: the entity was reset at or after the saga began."""
    epoch = _num(r.hget(key, b"epoch") or b"0")
    return epoch > 0 and _num(started) <= epoch


def take(r: FakeRedis, keys: list[str], argv: list[bytes]) -> Any:
    done = r.get(keys[1])
    if done is not None:
        return done
    if _fenced(r, keys[0], argv[3]):
        r.set(keys[1], b"F", ex_s=int(argv[2]))
        return b"F"
    current = r.hget(keys[0], argv[0])
    if current is None:
        result = b"U"
    elif _num(current) < _num(argv[1]):
        result = b"S"
    else:
        if _num(argv[1]) > 0:
            r.hincrby(keys[0], argv[0], -int(argv[1]))
        result = b"T:" + argv[1]
    r.set(keys[1], result, ex_s=int(argv[2]))
    return result


def restore(r: FakeRedis, keys: list[str], argv: list[bytes]) -> Any:
    done = r.get(keys[1])
    if _fenced(r, keys[0], argv[2]):
        r.set(keys[1], b"F", ex_s=int(argv[1]))
        return done
    if done is not None and done[:2] == b"T:" and _num(done[2:]) > 0:
        r.hincrby(keys[0], argv[0], int(done[2:]))
    if done is None or done[:2] == b"T:":
        r.set(keys[1], b"X", ex_s=int(argv[1]))
    return done


def _rank(by: bytes | None) -> int:
    """A batch_init's rank in what it stamps on an entity (``rank#id``; 0 before ranks)."""
    head, sep, _ = (by or b"").partition(b"#")
    return int(head) if sep and head.isdigit() else 0


def reset(r: FakeRedis, keys: list[str], argv: list[bytes]) -> Any:
    reset_by, epoch_was = r.hmget(keys[0], [b"reset_by", b"epoch"])
    mine = _rank(argv[0])
    if reset_by == argv[0] or 0 < mine < _rank(reset_by):
        # left alone; with no stamp (a hash saga_reset.lua wrote) the reply is nil
        return None if epoch_was is None else int(_num(epoch_was))
    epoch = r.now_ms()  # TIME on the entity's master: the simulation's one clock
    r.delete(keys[0])
    fields = dict(zip(argv[1::2], argv[2::2], strict=True))
    r.hset(keys[0], {b"epoch": b"%d" % epoch, b"reset_by": argv[0]} | fields)
    return epoch


def claim(r: FakeRedis, keys: list[str], argv: list[bytes]) -> Any:
    record = r.get(keys[0])
    rank: bytes | None = None
    done = record is not None and record.endswith(b"|done")
    if record is not None:
        record = record.removesuffix(b"|done")
        head, sep, asked = record.partition(b"#")
        if sep and head.isdigit():
            rank = head
        else:
            asked = record  # kept before requests had ranks
        if asked != argv[0]:
            return [0, 0]
    if argv[2]:
        r.set(keys[0], argv[2] + b"#" + argv[0] + b"|done", ex_s=int(argv[1]))
        return [2, int(argv[2])]
    if done:
        return [2, int(rank or 0)]
    if rank is None:
        rank = b"%d" % r.incr(keys[1])
        r.set(keys[0], rank + b"#" + argv[0], ex_s=int(argv[1]))
    return [1, int(rank)]


def _replayed(done: bytes, asked: bytes) -> list[Any]:
    """What a request record ``status:value[:what was asked]`` answers for a request that asks
    ``asked``: the first outcome, or REUSED when its id asked for something else (a record
    written before records kept what was asked, or one that kept '', answers as it is)."""
    status, value, *first = done.split(b":", 2)
    if first and first[0] and first[0] != asked:
        return [b"REUSED", 0]
    return [status, int(_num(value))]


def adjust(r: FakeRedis, keys: list[str], argv: list[bytes]) -> Any:
    done = r.get(keys[1])
    if done is not None:
        return _replayed(done, argv[1])
    current, ceiling = r.hmget(keys[0], [argv[0], b"ceiling"])
    value: float
    if current is None:
        status, value = b"UNKNOWN", 0
    else:
        delta = _num(argv[1])
        ceiling = ceiling if ceiling is not None else current
        value = _num(current) + delta
        if value < 0:
            status, value = b"NEGATIVE", _num(current)
        elif delta > 0 and _num(ceiling) + delta > _num(argv[2]):
            status, value = b"OVERFLOW", _num(current)
        else:
            status = b"OK"
            value = r.hincrby(keys[0], argv[0], int(argv[1]))
            r.hset(keys[0], {b"ceiling": b"%d" % int(_num(ceiling) + delta)})
    r.set(keys[1], status + b":" + b"%d" % int(value) + b":" + argv[1], ex_s=int(argv[3]))
    return [status, int(value)]


def add_item(r: FakeRedis, keys: list[str], argv: list[bytes]) -> Any:
    line = argv[1] + b":" + argv[0]
    done = r.get(keys[1])
    if done is not None:
        return _replayed(done, line)
    user_id, paid, status, items, total_raw = r.hmget(
        keys[0], [b"user_id", b"paid", b"saga_status", b"items", b"total_cost"]
    )
    result, total = b"OK", _num(total_raw or b"0")
    if user_id is None:
        result, total = b"UNKNOWN", 0
    elif paid == b"1":
        result = b"PAID"
    elif status in (b"running", b"compensating"):
        result = b"BUSY"
    else:
        added = _num(argv[1]) * _num(argv[2])
        lines = json.loads(items or b"[]")
        lines.append([argv[0].decode(), int(argv[1])])
        encoded = cjson_encode(lines)
        if total + added > _num(argv[3]):
            result = b"OVERFLOW"
        elif len(lines) > _num(argv[5]) or len(encoded) > _num(argv[6]):
            result = b"TOO_BIG"
        else:
            total += added
            r.hset(keys[0], {b"items": encoded, b"total_cost": b"%d" % int(total)})
    r.set(keys[1], result + b":" + b"%d" % int(total) + b":" + line, ex_s=int(argv[4]))
    return [result, int(total)]


def create(r: FakeRedis, keys: list[str], argv: list[bytes]) -> Any:
    if r.exists(keys[0]):
        return 0
    r.hset(keys[0], dict(zip(argv[1::2], argv[2::2], strict=True)))
    r.set(keys[1], b"OK:0:create", ex_s=int(argv[0]))
    return 1


def _index_here(keys: list[str], index: bytes) -> str:
    """ARGV's index shard key, refused (before any write) when another master keeps it, as a
    real master refuses a script's access to a key it does not serve."""
    from test.unit.fake_redis import master_of

    shard = index.decode()
    if master_of(shard) != master_of(keys[0]):
        raise ResponseError("ERR Script attempted to access a non local key in a cluster node")
    return shard


def cjson_encode(value: Any) -> bytes:
    """``cjson.encode``'s text (its length matters): UTF-8 kept as is, "/" and DEL escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("/", "\\/").replace("\x7f", "\\u007f").encode()


def saga_begin(r: FakeRedis, keys: list[str], argv: list[bytes]) -> Any:
    mode, _, start_by = argv[0].partition(b":")
    if not r.exists(keys[0]):
        return [b"UNKNOWN"]
    done, saga_id, status = r.hmget(keys[0], [argv[5], b"saga_id", b"saga_status"])
    if done == b"1":
        return [b"DONE", saga_id or b""]
    if status in (b"running", b"compensating"):
        if mode == b"start" and argv[6] != b"":
            shard = _index_here(keys, argv[6])
            if r.zscore(shard, argv[1]) is None:
                r.zadd(shard, {argv[1]: float(argv[7])})
                r.hset(keys[0], {b"saga_indexed": argv[7]})
        return [b"JOINED", saga_id]
    if mode == b"check":
        return [b"READY"]
    if start_by and r.now_ms() >= int(start_by):  # TIME on the entity's master
        return [b"LATE"]
    snapshot = {field.decode(): (r.hget(keys[0], field) or b"").decode() for field in argv[10:]}
    data = cjson_encode(snapshot)
    if len(data) > _num(argv[8]):
        return [b"TOO_BIG", b"%d" % len(data)]
    indexed = b""
    if argv[6] != b"":
        r.zadd(_index_here(keys, argv[6]), {argv[1]: float(argv[7])})
        indexed = argv[7]
    attempt = r.hincrby(keys[0], b"saga_attempt", 1)
    new_id = b"%s:%d:%s" % (argv[1], attempt, argv[2])
    r.hset(
        keys[0],
        {
            b"saga_id": new_id,
            b"saga_status": b"running",
            b"saga_step": b"0",
            b"saga_started": argv[3],
            b"saga_updated": argv[3],
            b"saga_deadline": argv[4],
            b"saga_resends": b"0",
            b"saga_reason": b"",
            b"saga_data": data,
            b"saga_indexed": indexed,
            b"saga_marks": b"",
            b"saga_concurrent": argv[9],
        },
    )
    return [b"STARTED", new_id, data]


def saga_move(r: FakeRedis, keys: list[str], argv: list[bytes]) -> Any:
    saga_id, status, step, data = r.hmget(
        keys[0], [b"saga_id", b"saga_status", b"saga_step", b"saga_data"]
    )
    if saga_id != argv[0] or status != argv[1] or step != argv[2]:
        return [0]
    drop = ""
    if argv[9] != b"" and argv[3] in (b"succeeded", b"failed"):
        shard = _index_here(keys, argv[9])
        indexed = r.hget(keys[0], b"saga_indexed")
        score = r.zscore(shard, argv[8])
        if indexed and score is not None and score == float(indexed):
            drop = shard
    r.hset(
        keys[0],
        {b"saga_status": argv[3], b"saga_step": argv[4], b"saga_updated": argv[5]}
        | {b"saga_resends": b"0"},
    )
    if argv[6] != b"":
        r.hset(keys[0], {b"saga_reason": argv[6]})
    if argv[3] == b"succeeded":
        r.hset(keys[0], {argv[7]: b"1", b"saga_done_by": argv[0]})
    if drop:
        r.zrem(drop, argv[8])
    return [1, data, r.hget(keys[0], b"saga_reason") or b""]


def saga_reply(r: FakeRedis, keys: list[str], argv: list[bytes]) -> Any:
    saga_id, status, raw_step, data, raw_marks, concurrent = r.hmget(
        keys[0],
        [b"saga_id", b"saga_status", b"saga_step", b"saga_data", b"saga_marks"]
        + [b"saga_concurrent"],
    )
    if saga_id != argv[0]:
        return [0]
    kind, j, n = argv[1], int(argv[2]), int(argv[3])
    step = int(raw_step or b"0")
    marks = list((raw_marks or b"").decode())
    if len(marks) != n:
        marks = ["-"] * n

    def back(frm: int) -> tuple[bytes, int]:
        while frm >= 0 and marks[frm] == "c":
            frm -= 1
        return (b"failed", -1) if frm < 0 else (b"compensating", frm)

    if kind == b"succeeded":
        if status != b"running" or j < step or marks[j] == "s":
            return [0]
        marks[j] = "s"
        to_status, to_step = b"running", step
        while to_step < n and marks[to_step] == "s":
            to_step += 1
        if to_step == n:
            to_status, to_step = b"succeeded", n - 1
    elif kind == b"failed":
        if status != b"running" or j < step:
            return [0]
        marks[j] = "c"
        to_status, to_step = back(n - 1 if concurrent == b"1" else j)
    else:
        if status != b"compensating" or j > step or marks[j] == "c":
            return [0]
        marks[j] = "c"
        to_status, to_step = back(step)
    drop = ""
    if argv[8] != b"" and to_status in (b"succeeded", b"failed"):
        shard = _index_here(keys, argv[8])
        indexed = r.hget(keys[0], b"saga_indexed")
        score = r.zscore(shard, argv[7])
        if indexed and score is not None and score == float(indexed):
            drop = shard
    joined = "".join(marks).encode()
    r.hset(keys[0], {b"saga_marks": joined})
    if to_status != status or to_step != step:
        r.hset(
            keys[0],
            {b"saga_status": to_status, b"saga_step": b"%d" % to_step}
            | {b"saga_updated": argv[4], b"saga_resends": b"0"},
        )
    if argv[5] != b"":
        r.hset(keys[0], {b"saga_reason": argv[5]})
    if to_status == b"succeeded":
        r.hset(keys[0], {argv[6]: b"1", b"saga_done_by": argv[0]})
    if drop:
        r.zrem(drop, argv[7])
    reason = r.hget(keys[0], b"saga_reason") or b""
    return [1, to_status, b"%d" % to_step, joined, data, reason, concurrent or b"0"]


def saga_reset(r: FakeRedis, keys: list[str], argv: list[bytes]) -> Any:
    saga_id, status, step, data, started, concurrent, reset_by, reason = r.hmget(
        keys[0],
        [b"saga_id", b"saga_status", b"saga_step", b"saga_data", b"saga_started"]
        + [b"saga_concurrent", b"reset_by", b"saga_reason"],
    )
    if reset_by == argv[4]:  # a copy: only the saga this reset turned back is its business
        live = status == b"compensating" and reason == argv[1]
    elif 0 < _rank(argv[4]) < _rank(reset_by):  # a later batch_init reset it
        live = False
    else:
        if status == b"running":
            step = argv[3] if concurrent == b"1" else step
            r.hset(
                keys[0],
                {b"saga_status": b"compensating", b"saga_step": step or b"0"}
                | {b"saga_updated": argv[0], b"saga_resends": b"0", b"saga_reason": argv[1]},
            )
        fields = dict(zip(argv[5::2], argv[6::2], strict=True))
        r.hset(keys[0], {argv[2]: b"0", b"reset_at": argv[0], b"reset_by": argv[4]} | fields)
        live = status in (b"running", b"compensating")
    if not live:
        return []
    return [saga_id, step or b"0", data or b"{}", started or b"0", concurrent or b"0"]


def saga_touch(r: FakeRedis, keys: list[str], argv: list[bytes]) -> Any:
    found = r.hmget(keys[0], [b"saga_id", b"saga_status", b"saga_step", b"saga_updated"])
    if found != argv[:4]:
        return 0
    r.hset(keys[0], {b"saga_updated": argv[4]})
    return r.hincrby(keys[0], b"saga_resends", 1)


def index_drop(r: FakeRedis, keys: list[str], argv: list[bytes]) -> Any:
    score = r.zscore(keys[0], argv[0])
    if score is not None and score == _num(argv[1]):
        return r.zrem(keys[0], argv[0])
    return 0


def sweep_lease(r: FakeRedis, keys: list[str], argv: list[bytes]) -> Any:
    holder = r.get(keys[0])
    if holder == argv[0]:
        r.pexpire(keys[0], int(argv[1]))
    elif holder is None:
        r.set(keys[0], argv[0], px=int(argv[1]))
    else:
        return None
    rows = r.zrangebyscore(keys[1], float("-inf"), _num(argv[2]), 0, int(argv[3]))
    return [part for member, score in rows for part in (member, repr(score).encode())]


SCRIPTS: dict[str, Script] = {
    "add_item": add_item,
    "take": take,
    "restore": restore,
    "reset": reset,
    "claim": claim,
    "adjust": adjust,
    "create": create,
    "saga_begin": saga_begin,
    "saga_move": saga_move,
    "saga_reply": saga_reply,
    "saga_reset": saga_reset,
    "saga_touch": saga_touch,
    "index_drop": index_drop,
    "sweep_lease": sweep_lease,
}
"""Script name (the .lua file's stem) -> its reproduction."""

SOURCES: dict[str, str] = {
    "reset": "079086415853b3ee6019018fb81973dccea5760b",
    "claim": "60d5b45dc5c3e996888bd0ede12ed52708d18334",
    "saga_reset": "1f9273be57fb7bec91268c2f19e3633d2fb37f8b",
    "add_item": "4fe304b3390c0197ec0257a18db30ff6f19c6d94",
    "adjust": "7c44f66ada9b9b78b7f9172582741a6279e79150",
    "create": "4c9b5b564f8b95e1be632a687f109733187188c5",
    "restore": "6fc2de001a4e5227fabb13ccab2ca89d27c84777",
    "take": "69674bf2dabb59184a060f689a9102eec076bf9f",
    "index_drop": "6e64304da97f031abf4fa785239b0b4589199c32",
    "sweep_lease": "78d06d95d2407aca2ab2fb09748ba916b93b653f",
    "saga_begin": "b681239d97e8fc5a17a4def2d27a9fdd83d2275b",
    "saga_move": "921b0c1d463683d944c8f4561b003ea913ae7798",
    "saga_reply": "7a181f96352a0cf21e877cd32559f1c9ffef1710",
    "saga_touch": "212991b223f5be3a722ff175f436799dc05e9108",
}
"""Script name -> sha1 of the Lua text the function above reproduces."""
