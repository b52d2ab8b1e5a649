"""The bus replaces an idempotent producer that aiokafka gave up on (its sender stops after an
OutOfOrderSequenceNumber and it never takes a new producer id by itself)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber

from common import bus as bus_module
from common.bus import Bus
from common.errors import Unavailable
from common.messages import STOCK, StockUpdateRequested
from common.settings import load_settings


class FakeProducer:
    made: list[FakeProducer] = []

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.sent: list[tuple[str, bytes]] = []
        self.broken = len(FakeProducer.made) == 0  # the first one fails its sends
        self.stopped = False
        FakeProducer.made.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broken:
            future.set_exception(OutOfOrderSequenceNumber())
        else:
            self.sent.append((topic, value))
            future.set_result(None)
        return future


class FakeTopics:
    def __init__(self, _: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def ensure(self) -> list[str]:
        return []


async def test_a_producer_out_of_sequence_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeProducer.made.clear()
    monkeypatch.setattr(bus_module, "AIOKafkaProducer", FakeProducer)
    monkeypatch.setattr(bus_module, "Topics", FakeTopics)
    bus = Bus(load_settings({"WORKER_ID": "stock-0"}))
    await bus.start()
    message = StockUpdateRequested(saga_id="o:1:x", order_id="o", items=(("i", 1),))
    with pytest.raises(Unavailable):
        await bus.publish([(STOCK, message)])
    first, second = FakeProducer.made
    assert first.stopped and not second.stopped
    assert second.options["enable_idempotence"] is True
    await bus.publish([(STOCK, message)])  # the caller's retry goes through the new producer
    assert [topic for topic, _ in second.sent] == [STOCK]
    await bus.stop()
