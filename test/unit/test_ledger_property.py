"""Property: whatever sequence of takes and restores (redelivered, reordered, for repeated
sagas) hits one entity, its balance is the initial one minus what the sagas recorded as taken."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from test.unit.fake_lua import SCRIPTS
from test.unit.fake_redis import FakeRedis, encode_arg

KEY = "{item:p}"
Op = tuple[str, int, int]  # (take|restore, saga number, amount)

ops = st.lists(
    st.tuples(st.sampled_from(["take", "restore"]), st.integers(0, 3), st.integers(0, 6)),
    max_size=40,
)


def apply(redis: FakeRedis, op: Op) -> bytes | None:
    kind, saga, amount = op
    keys = [KEY, f"{KEY}:op:s{saga}"]
    args = ["stock", amount, 60] if kind == "take" else ["stock", 60]
    return SCRIPTS[kind](redis, keys, [encode_arg(a) for a in args])  # type: ignore[no-any-return]


@settings(max_examples=300, deadline=None)
@given(initial=st.integers(0, 12), ops=ops)
def test_balance_is_initial_minus_recorded_takes(initial: int, ops: list[Op]) -> None:
    redis = FakeRedis()
    redis.hset(KEY, {b"stock": b"%d" % initial})
    barred: set[int] = set()
    for op in ops:
        before = redis.get(f"{KEY}:op:s{op[1]}")
        result = apply(redis, op)
        if op[1] in barred:  # restored or refused for good: nothing changes any more
            assert redis.get(f"{KEY}:op:s{op[1]}") == b"X"
        if op[0] == "take" and before is not None:
            assert result == before  # a redelivered take answers what the first one did
        if redis.get(f"{KEY}:op:s{op[1]}") == b"X":
            barred.add(op[1])
        balance = int(redis.hget(KEY, b"stock") or b"0")
        assert balance >= 0
        taken = 0
        for saga in range(4):
            record = redis.get(f"{KEY}:op:s{saga}")
            if record is not None and record.startswith(b"T:"):
                taken += int(record[2:])
        assert balance == initial - taken
