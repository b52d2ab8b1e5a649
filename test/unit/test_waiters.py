"""``common.saga.waiters.Waiters``: woken by ``resolve``, else by polling, else the last poll."""

from __future__ import annotations

import asyncio
import uuid

from common.saga.waiters import Verdict, Waiters


class Poll:
    """A poll that records its calls and answers from a script (then repeats the last)."""

    def __init__(self, *answers: Verdict | None) -> None:
        self.answers = list(answers) or [None]
        self.calls = 0

    async def __call__(self) -> Verdict | None:
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]


def saga() -> str:
    return f"o{uuid.uuid4().hex[:8]}:1:{uuid.uuid4().hex[:8]}"


async def test_resolve_wakes_every_waiter_of_the_saga() -> None:
    waiters, saga_id, poll = Waiters(poll_interval_s=10), saga(), Poll()
    tasks = [asyncio.create_task(waiters.wait(saga_id, poll, timeout_s=10)) for _ in range(3)]
    await asyncio.sleep(0)
    waiters.resolve(saga(), False, "another saga")  # wakes nobody here
    waiters.resolve(saga_id, True)
    assert await asyncio.wait_for(asyncio.gather(*tasks), 1) == [(True, "")] * 3
    assert poll.calls == 0


async def test_a_resolve_before_anyone_waits_is_not_kept() -> None:
    waiters, saga_id = Waiters(poll_interval_s=0.01), saga()
    waiters.resolve(saga_id, True)
    assert await waiters.wait(saga_id, Poll(None, (False, "failed")), timeout_s=1) == (
        False,
        "failed",
    )


async def test_polling_finds_the_verdict_without_a_resolve() -> None:
    waiters, poll = Waiters(poll_interval_s=0.01), Poll(None, None, (False, "no stock"))
    assert await waiters.wait(saga(), poll, timeout_s=5) == (False, "no stock")
    assert poll.calls == 3


async def test_at_the_timeout_the_last_poll_answers() -> None:
    waiters = Waiters(poll_interval_s=0.01)
    assert await waiters.wait(saga(), Poll(None), timeout_s=0.03) is None
    final = Poll((True, ""))
    assert await waiters.wait(saga(), final, timeout_s=0) == (True, "")
    assert final.calls == 1


async def test_a_cancelled_waiter_does_not_disturb_the_others() -> None:
    waiters, saga_id = Waiters(poll_interval_s=10), saga()
    gone = asyncio.create_task(waiters.wait(saga_id, Poll(), timeout_s=10))
    kept = asyncio.create_task(waiters.wait(saga_id, Poll(), timeout_s=10))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    waiters.resolve(saga_id, False, "late")
    assert await asyncio.wait_for(kept, 1) == (False, "late")
    assert gone.cancelled()
