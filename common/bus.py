"""The message bus: aiokafka producer and consumer lifecycles, topic creation, and the consumer
loop that dispatches by message type and commits offsets only after effects are durable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from common.errors import Unavailable
from common.messages import ALL_TOPICS, Message, decode, encode
from common.settings import Settings
from common.store import Store

log = logging.getLogger(__name__)

Outgoing = tuple[str, Message]
"""A message to publish and its topic; the key is always the message's order id."""

Handler = Callable[[Any], Awaitable[Sequence[Outgoing]]]
"""``async def handle(message) -> replies``; dependencies are bound with functools.partial."""

_METADATA_MAX_AGE_MS = 3000

RETRIABLE = (Unavailable, KafkaError, OSError)
"""Failures a later attempt can cure (a dependency down or failing over)."""


class Bus:
    """The producer, plus a keeper task that (re)creates missing topics: the local broker keeps
    topics in memory and comes back empty after a restart."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._keeper: asyncio.Task[None] | None = None

    @property
    def bootstrap(self) -> str:
        return self._settings.kafka_bootstrap_servers

    async def start(self) -> None:
        if self._producer is not None:
            return
        await self.ensure_topics()
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            enable_idempotence=self._settings.kafka_idempotence,
            acks="all",
            linger_ms=1,
            request_timeout_ms=5000,
            metadata_max_age_ms=_METADATA_MAX_AGE_MS,
        )
        await _retry_forever(producer.start, "producer start")
        self._producer = producer
        self._keeper = asyncio.create_task(self._keep_topics())

    async def stop(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()  # flushes pending sends

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Send ``messages`` and return once the broker acknowledged all of them."""
        if not messages:
            return
        if self._producer is None:
            raise KafkaError("producer not started")
        futures = [
            await self._producer.send(topic, encode(msg), key=msg.order_id.encode())
            for topic, msg in messages
        ]
        await asyncio.gather(*futures)

    async def ensure_topics(self) -> None:
        """Create the topics that are missing (partition count from the settings)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        await _retry_forever(admin.start, "admin connect")
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in ALL_TOPICS if t not in existing]
            if missing:
                partitions = self._settings.topic_partitions
                await admin.create_topics([NewTopic(t, partitions, 1) for t in missing])
                log.info("created topics %s", missing)
        except KafkaError as exc:  # a concurrent creator won, or the broker is restarting
            log.info("topic creation: %r", exc)
        finally:
            await admin.close()

    async def _keep_topics(self) -> None:
        while True:
            await asyncio.sleep(2)
            try:
                await self.ensure_topics()
            except (KafkaError, OSError) as exc:
                log.warning("topic keeper: %r", exc)


class ConsumerLoop:
    """Reads ``topics`` in consumer group ``group_id`` and hands each message to the handler of
    its type. Per batch: messages of one key run in order, keys run concurrently; then the Redis
    writes are replicated, the replies published, and only then the offsets committed. A failed
    batch is retried whole (handlers are idempotent), so nothing is skipped.

    With ``group_id=None`` the loop only listens (every worker reads every partition from the
    end, commits nothing): that is how order workers follow ORDER_STATUS_UPDATE.
    """

    def __init__(
        self,
        *,
        name: str,
        bus: Bus,
        store: Store | None,
        topics: Sequence[str],
        group_id: str | None,
        handlers: Mapping[type, Handler],
        after_publish: Callable[[Sequence[Outgoing]], None] | None = None,
    ) -> None:
        self._name = name
        self._after_publish = after_publish
        self._bus = bus
        self._store = store
        self._topics = tuple(topics)
        self._group_id = group_id
        self._handlers = dict(handlers)
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"consumer:{self._name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    def _make_consumer(self) -> AIOKafkaConsumer:
        grouped = self._group_id is not None
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bus.bootstrap,
            group_id=self._group_id,
            enable_auto_commit=False,
            # After a broker restarted empty, old positions point past the new log: start over.
            auto_offset_reset="earliest" if grouped else "latest",
            # Tansu adds ~3 s to every rebalance; a short session finds a dead member fast.
            session_timeout_ms=3000,
            heartbeat_interval_ms=500,
            fetch_max_wait_ms=50,
            max_poll_records=500,
            metadata_max_age_ms=_METADATA_MAX_AGE_MS,
        )
        consumer.subscribe(list(self._topics), listener=_LogAssignments(self._name))
        return consumer

    async def _run(self) -> None:
        consumer = self._make_consumer()
        self._consumer = consumer
        await _retry_forever(consumer.start, f"{self._name} consumer start")
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                log.warning("%s: fetch failed: %r", self._name, exc)
                await asyncio.sleep(0.5)
                continue
            if not batch:
                continue
            await self._process_until_done(batch)
            if self._group_id is not None:
                offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                try:
                    await consumer.commit(offsets)
                except KafkaError as exc:  # rebalanced away: the new owner re-reads, idempotently
                    log.warning("%s: commit failed: %r", self._name, exc)

    async def _process_until_done(
        self, batch: Mapping[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        delay = 0.05
        while True:
            try:
                await self._process(batch)
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # every failure is retried: the batch is idempotent
                log.exception("%s: batch failed, retrying in %.2fs", self._name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _process(self, batch: Mapping[TopicPartition, list[ConsumerRecord]]) -> None:
        by_key: dict[bytes, list[Message]] = defaultdict(list)
        for tp, records in batch.items():
            for record in records:
                try:
                    message = decode(tp.topic, record.value)
                except msgspec.DecodeError:
                    log.error("%s: undecodable message on %s skipped", self._name, tp.topic)
                    continue
                by_key[record.key or b""].append(message)

        async def run_key(messages: list[Message]) -> list[Outgoing]:
            out: list[Outgoing] = []
            for message in messages:
                handler = self._handlers.get(type(message))
                if handler is None:
                    continue
                try:
                    out.extend(await handler(message))
                except RETRIABLE:
                    raise  # the whole batch is retried
                except Exception:
                    # A message that fails for a reason a retry cannot cure must not block its
                    # partition: it is dropped, and its saga's deadline turns it back.
                    log.exception(
                        "%s: %s of saga %s dropped",
                        self._name,
                        type(message).__name__,
                        message.saga_id,
                    )
            return out

        if self._store is None:
            results = await asyncio.gather(*(run_key(m) for m in by_key.values()))
        else:
            with self._store.tracking() as written:
                results = await asyncio.gather(*(run_key(m) for m in by_key.values()))
            await self._store.replicate(written)
        outgoing = [out for result in results for out in result]
        await self._bus.publish(outgoing)
        if self._after_publish is not None:
            self._after_publish(outgoing)


class _LogAssignments(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, name: str) -> None:
        self._name = name

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        log.info("%s: %d partitions revoked", self._name, len(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("%s: %d partitions assigned", self._name, len(assigned))


async def _retry_forever(start: Callable[[], Awaitable[None]], what: str) -> None:
    delay = 0.1
    while True:
        try:
            await start()
            return
        except (KafkaError, OSError) as exc:
            log.warning("%s failed (%r), retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
