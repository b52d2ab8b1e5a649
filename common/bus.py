"""The message bus: the producer's lifecycle, and the consumer loop that dispatches by message
type and commits offsets only after effects are durable. Client settings: common/kafka_options.py;
topics: common/topics.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
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
from aiokafka.client import ConnectionGroup
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    NoError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
    for_code,
)
from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest

from common.effects import Effects
from common.errors import Unavailable
from common.kafka_options import consumer_options, producer_options
from common.messages import Message, decode, encode
from common.observability import telemetry
from common.settings import Settings
from common.tasks import cancel
from common.topics import Topics
from common.types import Handler, MessageBus, Outgoing, Storage

log = logging.getLogger(__name__)

Batch = dict[TopicPartition, list[ConsumerRecord]]

COMMIT_INTERVAL_S = 0.2
"""Offsets are committed at most this often: each commit is a broker round trip, and one
missed only means a redelivery of what the handlers have already done (which they ignore)."""
TOPIC_CHECK_S = 2.0
BATCH_RETRY_MAX_S = 1.0
"""How often the topics are looked for: a broker that came back empty has none."""
STOP_TIMEOUT_S = 5.0
"""How long a group member's graceful stop (the batch in hand, its commit, leaving the group)
may take before the loop is cancelled; a redelivery to the next owner covers what that cuts."""
LEAVE_TIMEOUT_S = 3.0
"""How long leaving the group may take; past it the partitions move when the session expires."""

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

RETRIABLE = (Unavailable, KafkaError, OSError)
"""Failures a later attempt can cure (a dependency down or failing over)."""


class Bus:
    """The producer (idempotent, acknowledged by all replicas), and a keeper task that creates
    the topics when they are missing: at start, and after a broker came back empty."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topics = Topics(settings)
        self._producer: AIOKafkaProducer | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._unacknowledged: dict[asyncio.Future[Any], float] = {}
        self._replacing = asyncio.Lock()

    @property
    def settings(self) -> Settings:
        return self._settings

    async def start(self) -> None:
        if self._producer is not None:
            return
        await _retry_forever(self._topics.start, "admin connect")
        await _retry_forever(self._topics.ensure, "topic creation")
        producer = AIOKafkaProducer(**producer_options(self._settings))
        await _retry_forever(producer.start, "producer start")
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
            futures = [
                await producer.send(
                    topic, encode(msg), key=msg.entity_id.encode(), headers=telemetry.headers(msg)
                )
                for topic, msg in messages
            ]
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
            await _retry_forever(producer.start, "producer start")
            self._producer = producer

    def unacknowledged_for(self) -> float:
        """Seconds the oldest send still waiting for the broker's acknowledgement has waited
        (0 when none waits): long while the broker is down or restarting."""
        if not self._unacknowledged:
            return 0.0
        return time.monotonic() - min(self._unacknowledged.values())

    async def _keep_topics(self) -> None:
        while True:
            await asyncio.sleep(TOPIC_CHECK_S)
            try:
                await self._topics.ensure()
            except (KafkaError, OSError) as exc:
                log.warning("topic keeper: %r", exc)


class ConsumerLoop:
    """Reads ``topics`` in consumer group ``group_id`` and hands each message to the handler of
    its type. Per batch: messages of one key run in order, keys run concurrently; then the Redis
    writes are replicated, the replies published, and only then the offsets committed. A failed
    batch is retried whole (handlers are idempotent), so nothing is skipped; a record that is no
    message of its topic is logged, counted and skipped.

    With ``group_id=None`` the loop only listens: it reads every partition from the end and
    commits nothing; that is how every order worker follows ORDER_STATUS_UPDATE.
    """

    def __init__(
        self,
        *,
        name: str,
        bus: MessageBus,
        store: Storage | None,
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
        self._assignment = _Assignment(name)
        self._leaving = False  # stop() asked a group member to commit and leave
        self._consuming = False  # inside _consume: a stop commits and leaves
        self._fetching = False  # parked in a fetch: a stop may wake it

    @property
    def name(self) -> str:
        return self._name

    @property
    def topics(self) -> tuple[str, ...]:
        return self._topics

    @property
    def consumer(self) -> AIOKafkaConsumer | None:
        """The running consumer (None while it is being made anew)."""
        return self._consumer

    @property
    def ready(self) -> bool:
        """Whether the consumer has joined its group and been given its partitions (a
        listener: been given every partition of its topics)."""
        consumer = self._consumer
        if consumer is None:
            return False
        if self._group_id is None:
            return bool(consumer.assignment())
        return self._assignment.joined

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"consumer:{self._name}")

    async def stop(self) -> None:
        """Stop consuming; safe to call twice. A group member stops gracefully, as a worker told
        to stop does (scaled down, SIGTERM): it finishes the batch in hand, commits the offsets
        of what it handled and leaves its group at once, so that the other members take its
        partitions at their next heartbeat instead of after its session timeout. Past
        STOP_TIMEOUT_S, and for a listener, the loop is cancelled."""
        task, self._task = self._task, None
        if task is None:
            return
        if self._group_id is not None and self._consuming and not task.done():
            self._leaving = True
            if self._fetching:
                task.cancel()  # wakes the fetch, which _fetch turns into an empty batch
            _, pending = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
            if pending:
                log.warning("%s: no graceful stop in %.0fs; cancelling", self._name, STOP_TIMEOUT_S)
        await cancel(task)

    async def _run(self) -> None:
        """Consume for as long as the service runs: whatever fails is logged and the consumer
        made anew."""
        delay = 0.5
        while not self._leaving:
            try:
                await self._run_consumer()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: consumer failed; starting it again in %.1fs", self._name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _run_consumer(self) -> None:
        consumer = AIOKafkaConsumer(
            **consumer_options(self._bus.settings, self._name, self._group_id)
        )
        if self._group_id is None:
            consumer.subscribe(list(self._topics))
        else:
            self._assignment = _Assignment(self._name)
            consumer.subscribe(list(self._topics), listener=self._assignment)
        self._consumer = consumer
        try:
            await _retry_forever(consumer.start, f"{self._name} consumer start")
            self._consuming = True
            await self._consume(consumer)
        finally:
            self._consuming = False
            self._consumer = None
            if self._leaving and self._group_id is not None:
                await self._leave_group(consumer, self._group_id)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 5)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        loop = asyncio.get_running_loop()
        committing: asyncio.Task[None] | None = None
        uncommitted: dict[TopicPartition, int] = {}
        uncommitted_in = self._assignment.epoch
        committed_at = 0.0
        while not self._leaving:
            try:
                batch = await self._fetch(consumer)
            except KafkaError as exc:
                log.warning("%s: fetch failed: %r", self._name, exc)
                await asyncio.sleep(0.5)
                continue
            fetched_in = self._assignment.epoch
            if batch:
                await self._process_until_done(batch)
                if self._group_id is None:
                    continue
                # The batch's effects are durable and its replies acknowledged: its offsets may
                # be committed. Commits run beside the next batches (one at a time, in order),
                # at most every COMMIT_INTERVAL_S, and at once when the partitions go quiet; a
                # commit that does not happen only means a redelivery, which changes nothing.
                if fetched_in != uncommitted_in:
                    uncommitted, uncommitted_in = {}, fetched_in
                uncommitted.update((tp, records[-1].offset + 1) for tp, records in batch.items())
                if loop.time() - committed_at < COMMIT_INTERVAL_S:
                    continue
            if uncommitted_in != self._assignment.epoch:
                # A rebalance came since these were read: the partitions may be another
                # member's now, and offsets read from a log that is gone (a broker that came
                # back empty) would skip that much of the new one.
                uncommitted = {}
            if not uncommitted or (committing is not None and not committing.done()):
                continue
            committing = asyncio.create_task(self._commit(consumer, uncommitted))
            uncommitted, committed_at = {}, loop.time()
        # Leaving: what was handled is committed before the group hears of it.
        if committing is not None:
            await committing
        if uncommitted and uncommitted_in == self._assignment.epoch:
            await self._commit(consumer, uncommitted)

    async def _fetch(self, consumer: AIOKafkaConsumer) -> Batch:
        """The next batch, or an empty one when ``stop`` cut the wait short."""
        self._fetching = True
        try:
            batch: Batch = await consumer.getmany(timeout_ms=1000)
            return batch
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._leaving or task is None:
                raise
            task.uncancel()  # stop()'s wake-up, not a cancellation: the loop leaves in order
            return {}
        finally:
            self._fetching = False

    async def _leave_group(self, consumer: AIOKafkaConsumer, group_id: str) -> None:
        """Leave the group now (a graceful stop), though the member is static.

        aiokafka sends no LeaveGroup for a member with a ``group_instance_id`` (it expects it
        back under the same id), so the group would keep this member's partitions unassigned
        until its session expires. A worker told to stop is not coming back: it closes its
        coordinator (no more heartbeats, no rejoin), then sends LeaveGroup v0/v1 naming its
        member id, which Apache Kafka's classic group coordinator honours for a static member
        as well. A worker that dies sends nothing and keeps its static membership: restarted
        under the same WORKER_ID, it gets its partitions back without a rebalance. aiokafka has
        no public call for this; test/unit/test_bus_leave.py pins the internals used here.
        """
        coordinator = consumer._coordinator
        if coordinator is None:
            return
        member_id, node_id = coordinator.member_id, coordinator.coordinator_id
        try:
            await asyncio.wait_for(coordinator.close(), LEAVE_TIMEOUT_S)
            if member_id == JoinGroupRequest.UNKNOWN_MEMBER_ID or node_id is None:
                return  # never joined, or the group already dropped it
            request = LeaveGroupRequest(group_id, member_id)
            response = await asyncio.wait_for(
                consumer._client.send(node_id, request, group=ConnectionGroup.COORDINATION),
                LEAVE_TIMEOUT_S,
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("%s: could not leave group %s (%r)", self._name, group_id, exc)
            return
        error = for_code(response.error_code)
        if error is NoError:
            log.info("%s: left group %s", self._name, group_id)
        else:
            log.warning("%s: leaving group %s: %s", self._name, group_id, error.__name__)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
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
                # At most a second apart: a retry is cheap (the scripts find their effects
                # done), and after an outage the batch goes on within a second of the end.
                delay = min(delay * 2, BATCH_RETRY_MAX_S)

    def _decode(self, batch: Mapping[TopicPartition, list[ConsumerRecord]]) -> list[list[Message]]:
        """The batch's messages grouped by key, in partition order; poison records left out."""
        by_key: dict[bytes, list[Message]] = defaultdict(list)
        for tp, records in batch.items():
            for record in records:
                try:
                    message = decode(tp.topic, record.value)
                except (msgspec.DecodeError, TypeError) as exc:  # TypeError: a record of no value
                    telemetry.poison(self._name, tp.topic, tp.partition, record.offset, exc)
                    continue
                telemetry.received(message, record.headers)
                by_key[record.key or b""].append(message)
        return list(by_key.values())

    async def _process(self, batch: Mapping[TopicPartition, list[ConsumerRecord]]) -> None:
        async def run_key(messages: list[Message]) -> list[Outgoing]:
            out: list[Outgoing] = []
            for message in messages:
                handler = self._handlers.get(type(message))
                if handler is None:
                    continue
                try:
                    with telemetry.handling(self._name, message):
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

        keys = self._decode(batch)
        async with Effects(self._store, self._bus) as fx:
            results = await asyncio.gather(*(run_key(m) for m in keys))
            fx.send(out for result in results for out in result)
        if self._after_publish is not None:
            self._after_publish(fx.sent)


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Logs rebalances, counts them, and tells whether the member has joined its group."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.joined = False
        self.epoch = 0
        """Counts rebalances: offsets read before the latest one are not committed."""

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.epoch += 1
        log.info("%s: %d partitions revoked", self._name, len(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.epoch += 1
        self.joined = True
        log.info("%s: %d partitions assigned", self._name, len(assigned))


async def _retry_forever(start: Callable[[], Awaitable[Any]], what: str) -> None:
    delay = 0.1
    while True:
        try:
            await start()
            return
        except (KafkaError, OSError) as exc:
            log.warning("%s failed (%r), retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
