"""The bus's producer side: the producer's lifecycle (idempotent, acknowledged by all replicas,
replaced when it breaks) and the keeper of the topics. The consumer loop that dispatches by message
type: common/consumer.py. Client settings: common/kafka_options.py; topics: common/topics.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)

from common.errors import Unavailable
from common.kafka_options import producer_options
from common.messages import encode
from common.observability import telemetry
from common.settings import Settings
from common.tasks import cancel
from common.topics import Topics
from common.types import Outgoing

log = logging.getLogger(__name__)

TOPIC_CHECK_S = 5.0
"""How often the topics are looked for while the broker acknowledges what is sent: a broker that
came back empty has none."""
TOPIC_RECHECK_S = 0.5
"""How often they are looked for while a send has waited longer than this for the broker's
acknowledgement (the broker is away, or back without the topics, where sends wait for them): an
empty broker gets its topics again within about this of its return, not up to TOPIC_CHECK_S."""

PRODUCER_BROKEN = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
    ProducerClosed,
)
"""Errors after which aiokafka's idempotent producer sends nothing more (its sender stops; it
never takes a new producer id by itself): seen after a broker was killed mid-write. The bus then
replaces its producer, and the send is retried by its caller."""


class Bus:
    """The producer (idempotent, acknowledged by all replicas), and a keeper task that creates
    the topics when they are missing: at start, and after a broker came back empty."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topics = Topics(settings)
        self._producer: AIOKafkaProducer | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._unacknowledged: dict[asyncio.Future[Any], float] = {}
        # Publishes still inside the producer's send (waiting for a topic's metadata, which a
        # broker that came back empty has none of until the keeper makes the topics): when each
        # began.
        self._sending: dict[object, float] = {}
        self._replacing = asyncio.Lock()

    @property
    def settings(self) -> Settings:
        return self._settings

    async def start(self) -> None:
        if self._producer is not None:
            return
        await retry_forever(self._topics.start, "admin connect")
        await retry_forever(self._topics.ensure, "topic creation")
        producer = AIOKafkaProducer(**producer_options(self._settings))
        await retry_forever(producer.start, "producer start")
        self._producer = producer
        self._keeper = asyncio.create_task(self._keep_topics())

    async def stop(self) -> None:
        keeper, self._keeper = self._keeper, None
        await cancel(keeper)
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()  # flushes pending sends
        await self._topics.stop()

    async def publish(self, messages: Sequence[Outgoing], *, acknowledged: bool = True) -> None:
        """Send ``messages``; return once the broker acknowledged all of them, or, with
        ``acknowledged=False``, once they are queued (for senders that a lost message cannot
        hurt: the saga sweeper re-sends whatever a saga waits for)."""
        if not messages:
            return
        producer = self._producer
        if producer is None:
            raise KafkaError("producer not started")
        try:
            futures = await self._hand_over(producer, messages)
            sent_at = time.monotonic()
            for future in futures:
                self._unacknowledged[future] = sent_at
                future.add_done_callback(self._unacknowledged.pop)
            if acknowledged:
                await asyncio.gather(*futures)
        except PRODUCER_BROKEN as exc:
            await self._replace(producer, exc)
            raise Unavailable(f"the producer failed ({exc!r}) and was replaced") from exc
        if not acknowledged:
            for future in futures:
                future.add_done_callback(self._unacknowledged_done)

    async def _hand_over(
        self, producer: AIOKafkaProducer, messages: Sequence[Outgoing]
    ) -> list[asyncio.Future[Any]]:
        """Give ``messages`` to the producer; the time it holds them before they are queued
        counts in ``unacknowledged_for``."""
        began = object()
        self._sending[began] = time.monotonic()
        try:
            return [
                await producer.send(
                    topic, encode(msg), key=msg.entity_id.encode(), headers=telemetry.headers(msg)
                )
                for topic, msg in messages
            ]
        finally:
            del self._sending[began]

    def _unacknowledged_done(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is None:
            return
        error = future.exception()
        log.warning("unacknowledged send failed (the sweeper re-sends): %r", error)
        if isinstance(error, PRODUCER_BROKEN) and self._producer is not None:
            broken = self._producer
            task = asyncio.ensure_future(self._replace(broken, error))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _replace(self, broken: AIOKafkaProducer, error: BaseException) -> None:
        """Swap ``broken`` for a new producer (with a new producer id), once."""
        async with self._replacing:
            current = self._producer
            if current is not broken or current is None:
                return  # replaced already
            log.warning("producer failed (%r): replacing it", error)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(current.stop(), 5)
            producer = AIOKafkaProducer(**producer_options(self._settings))
            await retry_forever(producer.start, "producer start")
            self._producer = producer

    def unacknowledged_for(self) -> float:
        """Seconds the oldest send still waiting for the broker's acknowledgement (or still
        inside the producer's send) has waited, 0 when none waits: long while the broker is
        down or restarting, or back without the topics."""
        oldest = min([*self._unacknowledged.values(), *self._sending.values()], default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    async def _keep_topics(self) -> None:
        looked, warned = time.monotonic(), float("-inf")
        while True:
            await asyncio.sleep(TOPIC_RECHECK_S)
            now = time.monotonic()
            if not topics_due(now - looked, self.unacknowledged_for()):
                continue
            looked = now
            try:
                await self._topics.ensure()
            except (KafkaError, OSError) as exc:
                if now - warned >= TOPIC_CHECK_S:  # while the broker is away: not every look
                    warned = now
                    log.warning("topic keeper: %r", exc)


def topics_due(since_look_s: float, waiting_s: float) -> bool:
    """Whether the topic keeper looks now, ``since_look_s`` after its last look, while the oldest
    unacknowledged send has waited ``waiting_s``."""
    return since_look_s >= TOPIC_CHECK_S or waiting_s >= TOPIC_RECHECK_S


async def retry_forever(start: Callable[[], Awaitable[Any]], what: str) -> None:
    """Await ``start()`` until the broker lets it succeed (a client's start, topic creation)."""
    delay = 0.1
    while True:
        try:
            await start()
            return
        except (KafkaError, OSError) as exc:
            log.warning("%s failed (%r), retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
