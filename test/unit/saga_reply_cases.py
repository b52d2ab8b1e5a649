"""Sequences of participant replies and where ``saga_reply.lua`` must leave the saga after each:
played on the Python reproduction (test/unit/test_fake_lua.py) and on a real Redis
(test/system/test_saga_reply_lua.py), so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Run = Callable[[str, list[str], list[object]], Awaitable[object]]
"""Runs a script by name: (name, keys, args) -> its reply, as redis-py gives it."""

Reply = tuple[str, int]  # (kind, step)
After = tuple[str, int, str] | None  # (status, step, marks), None for a stale reply

S, F, C = "succeeded", "failed", "compensated"
CASES: dict[str, tuple[bool, int, list[Reply], list[After]]] = {
    # name: (concurrent, steps, replies, where each leaves the saga)
    "in order": (True, 2, [(S, 0), (S, 1)], [("running", 1, "s-"), ("succeeded", 1, "ss")]),
    "the charge answers first": (
        True,
        2,
        [(S, 1), (S, 1), (S, 0), (S, 0)],
        [("running", 0, "-s"), None, ("succeeded", 1, "ss"), None],
    ),
    "no stock after the charge": (
        True,
        2,
        [(S, 1), (F, 0), (S, 1), (C, 0), (C, 1), (C, 1)],
        [("running", 0, "-s"), ("compensating", 1, "cs"), None, None, ("failed", -1, "cc"), None],
    ),
    "no credit, the stock still out": (
        True,
        2,
        [(F, 1), (S, 0), (F, 0), (C, 0)],
        [("compensating", 0, "-c"), None, None, ("failed", -1, "cc")],
    ),
    "no stock, the charge still out": (
        True,
        2,
        [(F, 0), (F, 1), (S, 1), (C, 1)],
        [("compensating", 1, "c-"), None, None, ("failed", -1, "cc")],
    ),
    "no credit after the stock": (
        True,
        2,
        [(S, 0), (F, 1), (C, 1), (C, 0)],
        [("running", 1, "s-"), ("compensating", 0, "sc"), None, ("failed", -1, "cc")],
    ),
    "compensations answer out of order": (
        True,
        3,
        [(S, 0), (F, 2), (C, 0), (C, 0), (C, 1)],
        [
            ("running", 1, "s--"),
            ("compensating", 1, "s-c"),
            ("compensating", 1, "c-c"),
            None,
            ("failed", -1, "ccc"),
        ],
    ),
    "one at a time: the charge fails": (
        False,
        2,
        [(S, 0), (F, 1), (C, 1), (C, 0)],
        [("running", 1, "s-"), ("compensating", 0, "sc"), None, ("failed", -1, "cc")],
    ),
    "one at a time: the stock fails": (False, 2, [(F, 0), (S, 0)], [("failed", -1, "c-"), None]),
    "one at a time, in order": (
        False,
        2,
        [(S, 0), (S, 0), (S, 1)],
        [("running", 1, "s-"), None, ("succeeded", 1, "ss")],
    ),
}


async def play(
    run: Run, key: str, entity_id: str, concurrent: bool, steps: int, replies: list[Reply]
) -> tuple[list[After], bytes | None]:
    """Start a saga on ``key`` (saga_begin), apply ``replies`` (saga_reply); where each left it,
    and the entity's ``paid`` field at the end. A reply for another saga is always stale."""
    await run("hset", [key], ["paid", "0", "user_id", "u"])
    flag = "1" if concurrent else "0"
    begin = ["start", entity_id, "n1", 1000, 9000, "paid", "", "", 10**6, flag, "user_id"]
    started = await run("saga_begin", [key], list(begin))
    assert isinstance(started, list) and started[0] == b"STARTED", started
    saga_id = started[1].decode()
    other = [f"{saga_id}x", S, 0, steps, 1500, "", "paid", entity_id, ""]
    assert await run("saga_reply", [key], other) == [0]
    after: list[After] = []
    for n, (kind, step) in enumerate(replies):
        reason = "why" if kind == F else ""
        args = [saga_id, kind, step, steps, 2000 + n, reason, "paid", entity_id, ""]
        reply = await run("saga_reply", [key], args)
        assert isinstance(reply, list)
        if reply == [0]:
            after.append(None)
            continue
        status, at, marks = (part.decode() for part in reply[1:4])
        assert (reply[4], reply[6]) == (started[2], flag.encode())  # the snapshot, the mode
        after.append((status, int(at), marks))
    paid = await run("hget", [key], ["paid"])
    assert paid is None or isinstance(paid, bytes)
    return after, paid
