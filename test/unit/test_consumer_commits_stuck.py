"""A group member that goes on handling batches while none of its commits goes through (its
aiokafka consumer's group coordination stopped, as a review under combined faults once saw: no
heartbeat and no commit for 13 minutes), or whose every fetch fails, makes its consumer anew,
which commits again; the old one's coordination is not left running beside it."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import CommitFailedError, KafkaError

from common import commits, group_leave
from common import consumer as consumer_module
from common.messages import STOCK, StockUpdateRequested
from common.types import Outgoing
from test.unit.test_bus_leave import FakeClient, FakeCoordinator, Record, stock_loop

TP = TopicPartition(STOCK, 5)


class StuckConsumer:
    """Hands out one record per fetch, forever. The first consumer's commits never return (its
    coordination is stuck); the consumers made after it commit."""

    made: list[StuckConsumer] = []
    offsets = itertools.count()

    def __init__(self, **options: Any) -> None:
        self.stuck = not self.made
        self.commits: list[dict[TopicPartition, int]] = []
        self.handed: list[int] = []
        self.stopped = False
        self.made.append(self)
        self._listener: Any = None
        self._coordinator = FakeCoordinator([])  # what leaving the group at the stop reads
        self._client = FakeClient([])

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self._listener = listener

    async def start(self) -> None:
        await self._listener.on_partitions_assigned([TP])

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Record]]:
        await asyncio.sleep(0.005)
        self.handed.append(next(self.offsets))
        return {TP: [Record(self.handed[-1])]}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.stuck:
            await asyncio.Event().wait()
        self.commits.append(dict(offsets))

    async def stop(self) -> None:
        self.stopped = True


async def run_until_made_anew(
    monkeypatch: pytest.MonkeyPatch, kind: type[StuckConsumer], commit_interval_s: float
) -> list[StuckConsumer]:
    """Runs a consumer loop over ``kind`` until a consumer made after the first has committed
    (at most 10 s; about 1 s here: 0.3 s stuck, 0.5 s to restart); the consumers made."""
    kind.made, kind.offsets = [], itertools.count()
    monkeypatch.setattr(consumer_module, "AIOKafkaConsumer", kind)
    monkeypatch.setattr(commits, "COMMIT_INTERVAL_S", commit_interval_s)
    monkeypatch.setattr(commits, "STUCK_AFTER_S", 0.3)

    async def handle(message: StockUpdateRequested) -> list[Outgoing]:
        return []

    loop = stock_loop("stock", handle)
    await loop.start()
    try:
        for _ in range(1000):
            if len(kind.made) > 1 and kind.made[1].commits:
                break
            await asyncio.sleep(0.01)
    finally:
        await loop.stop()
    assert len(kind.made) > 1, f"{kind.__name__}: the stuck consumer was never made anew"
    return kind.made


async def test_a_member_whose_commits_never_go_through_makes_its_consumer_anew(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = (await run_until_made_anew(monkeypatch, StuckConsumer, 0.02))[:2]
    assert first.commits == [] and first.stopped
    assert len(first.handed) > 10  # it went on handling batches while nothing was committed
    assert second.commits and second.commits[0][TP] > second.handed[0]


class FailingConsumer(StuckConsumer):
    """The first consumer's commits fail at once, and every other fetch of it comes back empty
    (a light load): the offsets stay owed across the quiet fetches."""

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Record]]:
        if self.stuck and len(self.handed) % 2:
            self.handed.append(-1)
            await asyncio.sleep(0.005)
            return {}
        return await super().getmany(timeout_ms)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.stuck:
            raise CommitFailedError("the coordinator is gone")
        self.commits.append(dict(offsets))


class DeadFetchConsumer(StuckConsumer):
    """The first consumer's every fetch fails (its group coordination died: aiokafka raises
    that error from each fetch)."""

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Record]]:
        if self.stuck:
            raise KafkaError("Unexpected error during coordination")
        return await super().getmany(timeout_ms)


@pytest.mark.parametrize("kind", [FailingConsumer, DeadFetchConsumer])
async def test_a_stuck_member_is_made_anew(
    monkeypatch: pytest.MonkeyPatch, kind: type[StuckConsumer]
) -> None:
    # A commit after every batch: each failed commit is followed by a quiet fetch with nothing
    # new to commit, which must not count as the offsets committed.
    made = await run_until_made_anew(monkeypatch, kind, 0.0)
    assert made[0].commits == [] and made[1].commits


class HungCoordinator(GroupCoordinator):  # type: ignore[misc]
    """A group coordinator whose coordination is stuck: closing it waits for that forever (or,
    with ``dies``, fails with the error the coordination died of), its heartbeat goes on
    meanwhile, and each commit runs in a task of its own behind ``asyncio.shield`` (as
    aiokafka's do), which fails once the connections close."""

    def __init__(self, dies: bool) -> None:  # none of GroupCoordinator's own state
        self.member_id, self.coordinator_id = "member-7", 1
        self.dies = dies
        self.connections_closed = asyncio.Event()
        self.commit_tasks: list[asyncio.Task[None]] = []
        self._coordination_task = asyncio.create_task(self._routine())
        self._heartbeat_task: asyncio.Task[None] | None = asyncio.create_task(self._routine())

    async def _routine(self) -> None:
        await asyncio.Event().wait()

    async def _do_commit(self) -> None:
        await self.connections_closed.wait()
        raise ConnectionError("connection closed")

    async def commit(self) -> None:
        self.commit_tasks.append(asyncio.create_task(self._do_commit()))
        await asyncio.shield(self.commit_tasks[-1])

    async def close(self) -> None:
        if self.dies:
            raise RuntimeError("the coordination died")
        await self._coordination_task


class HungConsumer(StuckConsumer):
    """The first consumer's coordination is stuck, its commits with it."""

    dies = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.stuck:
            self._coordinator = HungCoordinator(self.dies)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if isinstance(self._coordinator, HungCoordinator):
            await self._coordinator.commit()
        await super().commit(offsets)

    async def stop(self) -> None:
        if isinstance(self._coordinator, HungCoordinator):
            self._coordinator.connections_closed.set()
        await super().stop()


class DeadConsumer(HungConsumer):
    """The same, with a coordination that died with an error."""

    dies = True


@pytest.mark.parametrize("kind", [HungConsumer, DeadConsumer])
async def test_a_consumer_made_anew_leaves_no_coordination_running(
    monkeypatch: pytest.MonkeyPatch, kind: type[HungConsumer]
) -> None:
    monkeypatch.setattr(group_leave, "CLOSE_TIMEOUT_S", 0.1)
    first = (await run_until_made_anew(monkeypatch, kind, 0.02))[0]
    coordinator = first._coordinator
    assert isinstance(coordinator, HungCoordinator) and coordinator._heartbeat_task is not None
    await asyncio.sleep(0)
    assert coordinator._heartbeat_task.cancelled()
    assert coordinator._coordination_task.cancelled()
    # The commit the stuck member gave up on was cancelled before the connections closed, so
    # it did not fail unread ("Task exception was never retrieved").
    assert coordinator.commit_tasks and all(t.cancelled() for t in coordinator.commit_tasks)
    assert first.stopped  # and then the rest of the stop (the fetcher, the connections)
