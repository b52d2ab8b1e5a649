"""A group member's commits (common/commits.py), on a clock the test turns: at most one commit
in flight and one per COMMIT_INTERVAL_S; a failed commit's offsets go with the next; nothing
read before a rebalance is committed; offsets owed for STUCK_AFTER_S with no commit through make
the consumer anew, not counting time the loop was held up; leaving commits what is owed."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from common.commits import BLOCKED_S, COMMIT_INTERVAL_S, STUCK_AFTER_S, Commits, ConsumerStuck
from common.messages import STOCK

Offsets = dict[TopicPartition, int]
A, B = TopicPartition(STOCK, 0), TopicPartition(STOCK, 1)


class Member:
    """A member's broker and rebalances, as the commits see them: each commit asked for waits
    until the test answers it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.epoch = 0
        self.asked: list[Offsets] = []
        self.replies: list[asyncio.Future[bool]] = []
        self.asking = asyncio.Event()  # set at each commit asked for
        self.commits = Commits("stock", self.commit, lambda: self.epoch, lambda: self.now)

    async def commit(self, offsets: Offsets) -> bool:
        self.asked.append(dict(offsets))
        self.asking.set()
        self.replies.append(asyncio.get_running_loop().create_future())
        return await self.replies[-1]

    async def answer(self, committed: bool) -> None:
        self.replies[-1].set_result(committed)
        await asyncio.sleep(0)  # the commit's task takes the answer
        await asyncio.sleep(0)

    async def point(self) -> None:
        """A commit point, then a turn of the loop for a commit it began."""
        self.commits.commit_point()
        await asyncio.sleep(0)

    async def owe_a_commit_that_hangs(self) -> None:
        """A batch handled and its commit begun, which is never answered (as when the group
        coordination is stuck, or the broker frozen)."""
        self.commits.handled([(A, 1)], 0)
        await self.point()

    async def seconds(self, n: float, *, records: bool = True) -> None:
        """``n`` seconds, one at a time (the last one what is left): each a batch of records
        handled (with ``records``; else an empty fetch), then a commit point."""
        while n > 0:
            self.now += min(n, 1.0)
            n -= 1.0
            if records:
                self.commits.handled([(A, int(self.now))], 0)
            await self.point()


async def test_one_commit_per_interval_and_the_first_at_once() -> None:
    m = Member()
    m.commits.handled([(A, 5)], 0)
    assert m.commits.due()
    await m.point()
    assert m.asked == [{A: 5}]
    await m.answer(True)
    m.commits.handled([(A, 9)], 0)
    m.now += COMMIT_INTERVAL_S / 2
    assert not m.commits.due()
    m.now += COMMIT_INTERVAL_S / 2
    assert m.commits.due()
    await m.point()
    assert m.asked == [{A: 5}, {A: 9}]


async def test_one_commit_in_flight_and_a_failed_one_goes_with_the_next() -> None:
    m = Member()
    m.commits.handled([(A, 5)], 0)
    await m.point()
    m.commits.handled([(B, 3)], 0)
    m.now += COMMIT_INTERVAL_S
    await m.point()
    assert m.asked == [{A: 5}]  # the first is still in flight
    await m.answer(False)
    m.commits.handled([(B, 4)], 0)
    await m.point()
    assert m.asked == [{A: 5}, {A: 5, B: 4}]


async def test_nothing_read_before_a_rebalance_is_committed() -> None:
    m = Member()
    m.commits.handled([(A, 5)], 0)
    m.epoch = 1
    await m.point()
    assert m.asked == []
    # A commit of the old assignment fails after the rebalance: not owed again.
    m.commits.handled([(A, 6)], 1)
    await m.point()
    m.epoch = 2
    m.commits.handled([(B, 3)], 2)
    await m.answer(False)
    m.now += COMMIT_INTERVAL_S
    await m.point()
    assert m.asked == [{A: 6}, {B: 3}]


async def test_offsets_owed_with_no_commit_through_make_the_consumer_anew() -> None:
    m = Member()
    await m.owe_a_commit_that_hangs()
    await m.seconds(STUCK_AFTER_S)
    assert len(m.asked) == 1
    with pytest.raises(ConsumerStuck):
        await m.seconds(0.5)
    await asyncio.sleep(0)
    assert m.replies[0].cancelled()  # the commit in flight is given up


async def test_a_commit_through_starts_the_clock_again() -> None:
    m = Member()
    m.commits.handled([(A, 0)], 0)
    for offset in range(1, 4 * int(STUCK_AFTER_S)):  # a steady load, offsets owed throughout
        m.now += 1.0
        m.commits.handled([(A, offset)], 0)
        if offset % 10 == 0:
            await m.answer(True)  # every tenth second a commit goes through
        await m.point()
    assert len(m.asked) == 1 + (4 * int(STUCK_AFTER_S) - 1) // 10


async def test_time_held_up_by_an_outage_does_not_count() -> None:
    m = Member()
    await m.owe_a_commit_that_hangs()
    await m.seconds(18)
    m.now += BLOCKED_S + STUCK_AFTER_S  # one batch waited out an outage
    m.commits.handled([(A, 2)], 0)
    await m.point()
    await m.seconds(STUCK_AFTER_S - 18)  # STUCK_AFTER_S counted in all: not over it
    assert not m.replies[0].done()
    with pytest.raises(ConsumerStuck):
        await m.seconds(1)


async def test_time_in_which_no_fetch_brought_a_record_does_not_count() -> None:
    m = Member()
    await m.owe_a_commit_that_hangs()
    await m.seconds(2 * STUCK_AFTER_S, records=False)  # the broker brings nothing either
    await m.seconds(STUCK_AFTER_S)  # records again, and still no commit
    assert not m.replies[0].done()
    with pytest.raises(ConsumerStuck):
        await m.seconds(0.5)


async def test_leaving_commits_what_is_owed_after_the_commit_in_flight() -> None:
    m = Member()
    m.commits.handled([(A, 5)], 0)
    await m.point()
    m.commits.handled([(B, 3)], 0)
    m.replies[0].set_result(False)
    m.asking.clear()
    closing = asyncio.create_task(m.commits.close())
    await asyncio.wait_for(m.asking.wait(), 5)
    assert m.asked[1] == {A: 5, B: 3}
    await m.answer(True)
    await closing


async def test_leaving_after_a_rebalance_commits_nothing() -> None:
    m = Member()
    m.commits.handled([(A, 5)], 0)
    m.epoch = 1
    await m.commits.close()
    assert m.asked == []
