"""A consumer loop told to stop (a worker scaled down, a pod's SIGTERM) finishes the batch in
hand, commits it, and leaves its group at once with a LeaveGroup naming its member id: aiokafka
sends none for a static member, whose partitions would otherwise wait for its session to
expire. Also pins the aiokafka internals that the leave reaches into."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient, ConnectionGroup
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.group import LeaveGroupRequest

from common import consumer as consumer_module
from common.consumer import ConsumerLoop
from common.group_leave import tasks_of
from common.messages import STOCK, StockUpdateRequested, encode
from common.settings import Settings, load_settings
from common.types import Outgoing

TP = TopicPartition(STOCK, 3)


class Record:
    def __init__(self, offset: int) -> None:
        message = StockUpdateRequested(saga_id=f"o{offset}:1:x", order_id=f"o{offset}", items=())
        self.offset = offset
        self.key = message.order_id.encode()
        self.value = encode(message)
        self.headers: tuple[Any, ...] = ()


class FakeCoordinator:
    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.member_id = "member-7"
        self.coordinator_id = 1

    async def close(self) -> None:
        self.events.append("coordinator closed")


class FakeClient:
    def __init__(self, events: list[Any]) -> None:
        self.events = events

    async def send(self, node_id: int, request: Any, *, group: ConnectionGroup) -> Any:
        self.events.append(("send", node_id, type(request).__name__, group))
        struct = request.prepare({LeaveGroupRequest.API_KEY: (0, 1)})
        self.events.append(("leave", struct.group, struct.member_id))
        return struct.RESPONSE_TYPE(0, 0) if struct.API_VERSION else struct.RESPONSE_TYPE(0)


class FakeConsumer:
    """Hands out ``batches`` one per fetch, then waits (as a fetch of an idle topic does)."""

    events: list[Any] = []
    batches: list[dict[TopicPartition, list[Record]]] = []

    def __init__(self, **options: Any) -> None:
        self.options = options
        self._coordinator = FakeCoordinator(self.events)
        self._client = FakeClient(self.events)
        self._listener: Any = None

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self._listener = listener

    async def start(self) -> None:
        if self._listener is not None:
            await self._listener.on_partitions_assigned([TP])

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Record]]:
        if self.batches:
            return self.batches.pop(0)
        self.events.append("fetching")
        await asyncio.sleep(3600)
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.events.append(("commit", dict(offsets)))

    async def stop(self) -> None:
        self.events.append("consumer stopped")


class FakeBus:
    """The bus a consumer loop reads its settings from (``common.types.MessageBus``)."""

    def __init__(self) -> None:
        self._settings = load_settings({"WORKER_ID": "stock-1"})

    @property
    def settings(self) -> Settings:
        return self._settings

    async def publish(self, messages: Sequence[Outgoing], *, acknowledged: bool = True) -> None:
        pass

    def unacknowledged_for(self) -> float:
        return 0.0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def make_loop(monkeypatch: pytest.MonkeyPatch, group_id: str | None, handled: list[str]) -> Any:
    FakeConsumer.events = []
    monkeypatch.setattr(consumer_module, "AIOKafkaConsumer", FakeConsumer)

    async def handle(message: StockUpdateRequested) -> list[Outgoing]:
        FakeConsumer.events.append(("handling", message.order_id))
        await asyncio.sleep(0.05)  # the batch is still in hand when the stop comes
        handled.append(message.order_id)
        FakeConsumer.events.append(("handled", message.order_id))
        return []

    return stock_loop(group_id, handle)


def stock_loop(group_id: str | None, handle: Any) -> ConsumerLoop:
    """A consumer loop of STOCK over the fake bus, ``handle`` for StockUpdateRequested."""
    return ConsumerLoop(
        name="stock",
        bus=FakeBus(),
        store=None,
        topics=[STOCK],
        group_id=group_id,
        handlers={StockUpdateRequested: handle},
    )


async def wait_for(condition: Any) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_a_stop_in_mid_batch_finishes_it_commits_and_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handled: list[str] = []
    loop = make_loop(monkeypatch, "stock", handled)
    FakeConsumer.batches = [{TP: [Record(41), Record(42)]}]
    await loop.start()
    await wait_for(lambda: ("handling", "o42") in FakeConsumer.events)
    await loop.stop()
    events = FakeConsumer.events
    assert handled == ["o41", "o42"]
    assert events.index(("commit", {TP: 43})) > events.index(("handled", "o42"))
    assert events[events.index(("commit", {TP: 43})) + 1 :] == [
        "coordinator closed",
        ("send", 1, "LeaveGroupRequest", ConnectionGroup.COORDINATION),
        ("leave", "stock", "member-7"),
        "consumer stopped",
    ]
    await loop.stop()  # twice is fine


async def test_a_stop_while_fetching_leaves_without_waiting_for_the_fetch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handled: list[str] = []
    loop = make_loop(monkeypatch, "stock", handled)
    FakeConsumer.batches = [{TP: [Record(7)]}]
    await loop.start()
    await wait_for(lambda: "fetching" in FakeConsumer.events)
    began = asyncio.get_running_loop().time()
    await loop.stop()
    assert asyncio.get_running_loop().time() - began < 1.0  # the fetch waits an hour
    events = FakeConsumer.events
    assert ("commit", {TP: 8}) in events
    assert events[-3:] == [
        ("send", 1, "LeaveGroupRequest", ConnectionGroup.COORDINATION),
        ("leave", "stock", "member-7"),
        "consumer stopped",
    ]


async def test_a_listener_just_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = make_loop(monkeypatch, None, [])
    FakeConsumer.batches = []
    await loop.start()
    await wait_for(lambda: "fetching" in FakeConsumer.events)
    await loop.stop()
    assert FakeConsumer.events == ["fetching", "consumer stopped"]


async def test_the_aiokafka_internals_the_leave_uses_are_there() -> None:
    """aiokafka 0.14: the consumer keeps its coordinator in ``_coordinator`` and its client in
    ``_client``; the coordinator knows ``member_id`` and ``coordinator_id``, and does not leave
    by itself when it has a ``group_instance_id`` (else the explicit leave would be redundant)."""
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", group_id="g")
    assert hasattr(consumer, "_coordinator") and isinstance(consumer._client, AIOKafkaClient)
    await consumer.stop()
    send = inspect.signature(AIOKafkaClient.send)
    assert "group" in send.parameters
    source = "".join(inspect.getsource(c) for c in GroupCoordinator.__mro__[:-1])
    assert "self.member_id =" in source and "self.coordinator_id =" in source
    leave = inspect.getsource(GroupCoordinator._maybe_leave_group)
    assert "self._group_instance_id is None" in leave


def test_the_aiokafka_internals_the_bounded_stop_uses_are_there() -> None:
    """aiokafka 0.14: the coordinator's background work runs as tasks of its own methods (so
    ``tasks_of`` finds it), each commit in a task behind ``asyncio.shield``; a second close
    returns at once once a first began; and the consumer's stop closes the coordinator before
    the fetcher and the client (so a stop after a close that was cut short goes on to them)."""
    source = inspect.getsource(GroupCoordinator)
    for call in (
        "create_task(self._coordination_routine())",
        "create_task(self._heartbeat_routine())",
        "asyncio.shield(self._do_commit_offsets(",
    ):
        assert call in source
    close = inspect.getsource(GroupCoordinator.close)
    assert close.index("if self._closing.done():") < close.index("await self._coordination_task")
    stop = inspect.getsource(AIOKafkaConsumer.stop)
    order = ["self._coordinator.close()", "self._fetcher.close()", "self._client.close()"]
    assert [stop.index(call) for call in order] == sorted(stop.index(call) for call in order)


async def test_tasks_of_finds_the_tasks_running_a_method_of_their_owner() -> None:
    class Owner:
        async def wait(self) -> None:
            await asyncio.Event().wait()

    owner, other = Owner(), Owner()
    mine = asyncio.create_task(owner.wait())
    theirs = asyncio.create_task(other.wait())
    await asyncio.sleep(0)
    try:
        assert tasks_of(owner) == [mine]
    finally:
        mine.cancel()
        theirs.cancel()
