"""saga_reply.lua on the stack's real order Redis Cluster gives, reply for reply, what its Python
reproduction gives in the unit tests (the cases of test/unit/saga_reply_cases.py): the
simulation's verdicts on the concurrent checkout rest on that reproduction."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from common.saga import log as saga_log
from test.conftest import Stack
from test.system.ops import nodes_of
from test.unit.saga_reply_cases import CASES, play

LUA = Path(saga_log.__file__).parent / "lua"


@pytest.mark.parametrize("name", sorted(CASES))
async def test_the_real_script_moves_as_its_reproduction(stack: Stack, name: str) -> None:
    host, port = nodes_of(stack, "order").split(",")[0].rsplit(":", 1)
    texts = {s: (LUA / f"{s}.lua").read_text() for s in ("saga_begin", "saga_reply")}
    entity = uuid.uuid4().hex
    async with RedisCluster(host=host, port=int(port)) as redis:

        async def run_real(script: str, keys: list[str], args: list[object]) -> object:
            if script == "hset":
                fields = dict(zip(args[::2], args[1::2], strict=True))
                return await redis.hset(keys[0], mapping=fields)  # type: ignore[arg-type]
            if script == "hget":
                return await redis.hget(keys[0], str(args[0]))
            return await redis.eval(texts[script], len(keys), *keys, *args)  # type: ignore[arg-type]

        concurrent, steps, replies, expected = CASES[name]
        key = f"{{order:{entity}}}"
        after, paid = await play(run_real, key, entity, concurrent, steps, replies)
    assert after == expected
    assert paid == (b"1" if ("succeeded", steps - 1, "s" * steps) in expected else b"0")
