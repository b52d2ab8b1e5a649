"""Fixtures of the system tests: a producer that publishes straight to the stack's broker, as a
redelivery or a sweeper re-send would."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from test.conftest import Stack


@pytest.fixture(scope="module")
async def producer(stack: Stack) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=stack.env()["KAFKA_BOOTSTRAP_SERVERS"])
    await producer.start()
    yield producer
    await producer.stop()
