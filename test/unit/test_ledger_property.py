"""Property: whatever sequence of takes and restores (redelivered, reordered, for repeated
sagas) and of adds and subtracts hits one entity, its balance is the initial one plus what was
added less what the sagas recorded as taken, and it never leaves [0, limit]: the balance plus
every amount still recorded as taken (which a restore may give back) is the entity's ceiling,
which stays within the limit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from test.unit.fake_lua import SCRIPTS
from test.unit.fake_redis import FakeRedis, encode_arg

KEY = "{item:p}"
LIMIT = 20
Op = tuple[str, int, int]  # (take|restore|adjust, saga number or request number, amount)

ops = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["take", "restore"]), st.integers(0, 3), st.integers(0, 6)),
        st.tuples(st.just("adjust"), st.integers(0, 5), st.integers(-8, 12)),
    ),
    max_size=40,
)


def apply(redis: FakeRedis, op: Op) -> object:
    kind, n, amount = op
    if kind == "adjust":
        keys, args = [KEY, f"{KEY}:rq:r{n}"], ["stock", amount, LIMIT, 60]
    else:
        keys = [KEY, f"{KEY}:op:s{n}"]
        args = ["stock", amount, 60, 1] if kind == "take" else ["stock", 60, 1]
    return SCRIPTS[kind](redis, keys, [encode_arg(a) for a in args])


@settings(max_examples=300, deadline=None)
@given(initial=st.integers(0, 12), ops=ops)
def test_balance_is_initial_plus_added_minus_recorded_takes(initial: int, ops: list[Op]) -> None:
    redis = FakeRedis()
    redis.hset(KEY, {b"stock": b"%d" % initial, b"ceiling": b"%d" % initial})
    barred: set[int] = set()
    added: dict[int, int] = {}
    for op in ops:
        kind, n, amount = op
        before = redis.get(f"{KEY}:op:s{n}") if kind != "adjust" else None
        result = apply(redis, op)
        if kind == "adjust" and result[0] == b"OK" and n not in added:  # type: ignore[index]
            added[n] = amount
        if kind != "adjust" and n in barred:  # restored or refused for good: nothing changes
            assert redis.get(f"{KEY}:op:s{n}") == b"X"
        if kind == "take" and before is not None:
            assert result == before  # a redelivered take answers what the first one did
        if kind != "adjust" and redis.get(f"{KEY}:op:s{n}") == b"X":
            barred.add(n)
        balance = int(redis.hget(KEY, b"stock") or b"0")
        assert 0 <= balance <= LIMIT
        taken = 0
        for saga in range(4):
            record = redis.get(f"{KEY}:op:s{saga}")
            if record is not None and record.startswith(b"T:"):
                taken += int(record[2:])
        assert balance == initial + sum(added.values()) - taken
        ceiling = int(redis.hget(KEY, b"ceiling") or b"0")
        assert balance + taken == ceiling <= max(LIMIT, initial)
