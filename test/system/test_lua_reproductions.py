"""Every Lua script the services run gives, on the stack's real Redis Cluster, what its Python
reproduction (test/unit/fake_lua.py) gives over ``FakeRedis``: the same replies and the same
keys after every call, over seeded sequences of calls that take each of the script's branches.
The seeded simulation runs the services on those reproductions; its verdicts rest on this.
(saga_reply has its own cases: test_saga_reply_lua.py.)"""

from __future__ import annotations

from collections import Counter
from random import Random

import pytest
from redis.asyncio.cluster import RedisCluster

from test.conftest import Stack
from test.system import lua_plays_ledger as ledger
from test.system import lua_plays_saga as saga
from test.system.ops import nodes_of
from test.system.twin_redis import Twin
from test.unit.fake_lua import SCRIPTS

SEQUENCES = 16
"""Seeded sequences per script (each of ``lua_plays_ledger.STEPS`` calls and writes)."""

PLAYS: dict[str, tuple[ledger.Play, tuple[str, ...]]] = {
    # script: (its sequences, the branches they must have taken between them)
    "claim": (
        ledger.play_claim,
        (
            "no record: takes the next rank",
            "no record: marked done",
            "a copy goes on with its rank",
            "a record with no rank takes one",
            "marked done",
            "done: a copy changes nothing",
            "done: a copy changes nothing (a record with no rank)",
            "another request's id",
            "another request's id (a record with no rank)",
        ),
    ),
    "reset": (
        ledger.play_reset,
        (
            "a new entity",
            "its own copy",
            "its own copy, unstamped",
            "a later batch_init reset it",
            "a later batch_init reset it, unstamped",
            "over an earlier batch_init",
            "over its rank, another request",
            "over an entity no ranked batch_init reset",
            "no rank: resets",
        ),
    ),
    "take": (
        ledger.play_take,
        (
            "a redelivery: its stored reply",
            "fenced: began before it",
            "fenced: began at the reset",
            "began just after the reset",
            "stamped 0: no reset",
            "unknown",
            "short",
            "taken",
            "took nothing",
        ),
    ),
    "restore": (
        ledger.play_restore,
        (
            "fenced, with a record",
            "fenced, no record",
            "nothing taken: a tombstone",
            "gives back what it took",
            "took nothing: a tombstone",
            *(f"kept: {record}" for record in ("S", "U", "X", "F")),
        ),
    ),
    "adjust": (
        ledger.play_adjust,
        (
            "a retry: its first answer",
            "another request's id: reused",
            "an old record answers as it is",
            "an old record answers as it is (kept '')",
            "unknown",
            "an entity older than its ceiling",
            "negative",
            "over the limit",
            "raised",
            "lowered",
        ),
    ),
    "create": (ledger.play_create, ("created", "created over a record", "there: kept")),
    "add_item": (
        ledger.play_add_item,
        (
            "a retry: its first answer",
            "another request's id: reused",
            "an old record answers as it is",
            "an old record answers as it is (kept '')",
            "unknown",
            "paid",
            "checking out (running)",
            "checking out (compensating)",
            "no lines yet",
            "an id cjson escapes",
            "over the limit",
            "too many lines",
            "too many bytes",
            "at the limit",
            "at the bytes' bound",
            "added",
        ),
    ),
    "saga_begin": (
        saga.play_saga_begin,
        (
            "unknown",
            "done",
            "done, no saga id",
            "joined",
            "joined: its entry kept",
            "joined: its entry put back",
            "joined: a shard elsewhere refused",
            "ready",
            "late: past its start-by time",
            "too big",
            "at the snapshot's bound",
            "a snapshot cjson escapes",
            "started, not indexed",
            "started and indexed",
            "started: a shard elsewhere refused",
        ),
    ),
    "saga_move": (
        saga.play_saga_move,
        (
            "stale: another saga",
            "stale: another status",
            "stale: another step",
            *(f"to {status}" for status in ("running", "compensating", "succeeded", "failed")),
            "a reason",
            "the reason kept",
            "a shard elsewhere, not at an end",
            "an end with a shard elsewhere: refused",
            "an end, not indexed at its start",
            "an end, its entry gone",
            "an end drops its entry",
            "an end leaves a re-registered entry",
        ),
    ),
    "saga_reset": (
        saga.play_saga_reset,
        (
            "its own copy: the saga it turned back",
            "its own copy: nothing",
            "a later batch_init reset it",
            "a later batch_init reset it: a live saga",
            "over an earlier batch_init",
            "over its rank, another request",
            "no rank",
            "a new entity",
            "turns back at its step",
            "turns back from the last step",
            "already turning back",
            "no live saga",
        ),
    ),
    "saga_touch": (
        saga.play_saga_touch,
        (
            *(f"moved since: another {what}" for what in ("saga", "status", "step", "update")),
            "the first re-send",
            "another re-send",
        ),
    ),
    "index_drop": (
        saga.play_index_drop,
        ("its entry: dropped", "its entry: dropped (other digits)", "a renewed entry: kept")
        + ("no entry",),
    ),
    "sweep_lease": (
        saga.play_sweep_lease,
        (
            "takes a free lease",
            "renews its own lease",
            "another worker holds it",
            "nothing due",
            "reads every due entry",
            "reads up to its limit",
        ),
    ),
}


def test_every_script_but_saga_reply_is_played() -> None:
    assert set(PLAYS) == set(SCRIPTS) - {"saga_reply"}


@pytest.mark.parametrize("script", sorted(PLAYS))
async def test_the_real_script_and_its_reproduction_agree(stack: Stack, script: str) -> None:
    play, branches = PLAYS[script]
    host, port = nodes_of(stack, "order").split(",")[0].rsplit(":", 1)
    seen: Counter[str] = Counter()
    async with RedisCluster(host=host, port=int(port)) as redis:
        for n in range(SEQUENCES):
            twin = Twin(redis, f"{script}, sequence {n}")
            try:
                await play(twin, Random(f"{script}:{n}"))
            finally:
                await twin.forget()
            seen += twin.seen
    assert set(seen) <= set(branches), f"branches not listed: {set(seen) - set(branches)}"
    missed = sorted(set(branches) - set(seen))
    assert not missed, f"{script}'s sequences never took {missed}; they took {dict(seen)}"
