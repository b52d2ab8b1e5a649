"""The message bus: aiokafka producer and consumer lifecycles, topic creation, and the consumer
loop that dispatches by message type and commits offsets only after effects are durable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
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
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import KafkaError

from common import telemetry
from common.errors import Unavailable
from common.messages import ALL_TOPICS, Message, decode, encode
from common.settings import Settings
from common.store import Store
from common.tasks import cancel

log = logging.getLogger(__name__)

Outgoing = tuple[str, Message]
"""A message to publish and its topic; the key is always the message's order id."""

Handler = Callable[[Any], Awaitable[Sequence[Outgoing]]]
"""``async def handle(message) -> replies``; dependencies are bound with functools.partial."""

_METADATA_MAX_AGE_MS = 3000
COMMIT_INTERVAL_S = 0.2
"""Offsets are committed at most this often: each commit is a broker round trip, and one
missed only means a redelivery of what the handlers have already done (which they ignore)."""
_GROUP_CHECK_S = 2.0
_WEDGED_AFTER_S = 15.0

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
    def settings(self) -> Settings:
        return self._settings

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
            linger_ms=self._settings.kafka_linger_ms,
            request_timeout_ms=5000,
            metadata_max_age_ms=_METADATA_MAX_AGE_MS,
        )
        await _retry_forever(producer.start, "producer start")
        self._producer = producer
        self._keeper = asyncio.create_task(self._keep_topics())

    async def stop(self) -> None:
        keeper, self._keeper = self._keeper, None
        await cancel(keeper)
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()  # flushes pending sends

    async def publish(self, messages: Sequence[Outgoing], *, acknowledged: bool = True) -> None:
        """Send ``messages``; return once the broker acknowledged all of them, or, with
        ``acknowledged=False``, once they are queued (for senders that a lost message cannot
        hurt: the saga sweeper re-sends whatever a saga waits for)."""
        if not messages:
            return
        if self._producer is None:
            raise KafkaError("producer not started")
        futures = [
            await self._producer.send(
                topic, encode(msg), key=msg.order_id.encode(), headers=telemetry.headers(msg)
            )
            for topic, msg in messages
        ]
        if acknowledged:
            await asyncio.gather(*futures)
        else:
            for future in futures:
                future.add_done_callback(_log_send_failure)

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

    With ``group_id=None`` the loop only listens: it reads every partition from the end in a
    group of its own and commits nothing; that is how every order worker follows
    ORDER_STATUS_UPDATE. (A group, even of one, because the local broker answers a fetch past
    the end of a log that came back empty with nothing rather than an out-of-range error: only
    the rejoin after a broker restart brings a listener back to the new log's end.)
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
        self._assignment = _Assignment(name)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"consumer:{self._name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    def _make_consumer(self, generation: int) -> AIOKafkaConsumer:
        grouped = self._group_id is not None
        if grouped:
            group_id = f"{self._group_id}.{generation}" if generation else self._group_id
        else:
            group_id = f"{self._name}.listener.{uuid.uuid4().hex}"
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bus.bootstrap,
            group_id=group_id,
            # Members are ordered by id, which starts with the client id: with the range
            # assignor the first worker takes partition 0 of every topic, so with one partition
            # per topic (the local stack) worker 0 consumes all of a group's topics, and the
            # order worker that serves the checkouts also gets their replies.
            client_id=f"{self._bus.settings.worker_id}-{self._name}",
            partition_assignment_strategy=(RangePartitionAssignor, RoundRobinPartitionAssignor),
            enable_auto_commit=False,
            # After a broker restarted empty, old positions point past the new log: start over.
            # A new generation of a wedged group starts at the end instead: what was in flight
            # is re-sent by the saga sweeper, as for any lost message.
            auto_offset_reset="earliest" if grouped and not generation else "latest",
            # Tansu adds ~3 s to every rebalance; a short session finds a dead member fast.
            session_timeout_ms=3000,
            heartbeat_interval_ms=500,
            fetch_max_wait_ms=self._bus.settings.kafka_fetch_max_wait_ms,
            max_poll_records=500,
            metadata_max_age_ms=_METADATA_MAX_AGE_MS,
        )
        self._assignment = _Assignment(self._name)
        consumer.subscribe(list(self._topics), listener=self._assignment)
        return consumer

    async def _run(self) -> None:
        """Consume for as long as the service runs: whatever fails (the Redis holding the group
        generation still starting, say) is logged and the consumer made anew."""
        delay = 0.5
        while True:
            try:
                await self._run_consumer()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: consumer failed; starting it again in %.1fs", self._name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _run_consumer(self) -> None:
        while True:
            generation = await self._generation()
            consumer = self._make_consumer(generation)
            self._consumer = consumer
            # start() and getmany wait for an assignment that a wedged group never gives, so
            # the group is watched from a task of its own.
            consuming = asyncio.create_task(self._consume(consumer))
            watching = asyncio.create_task(self._watch_group(generation))
            try:
                await asyncio.wait({consuming, watching}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (consuming, watching):
                    await cancel(task)
                self._consumer = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), 5)
            if consuming.done() and not consuming.cancelled() and consuming.exception():
                raise consuming.exception()  # type: ignore[misc]

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        await _retry_forever(consumer.start, f"{self._name} consumer start")
        loop = asyncio.get_running_loop()
        committing: asyncio.Task[None] | None = None
        uncommitted: dict[TopicPartition, int] = {}
        uncommitted_in = self._assignment.epoch
        committed_at = 0.0
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500)
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
                # A rebalance came since these were read (after a broker restart, from a log
                # that is gone): committed now, they would skip that much of the new log.
                uncommitted = {}
            if not uncommitted or (committing is not None and not committing.done()):
                continue
            committing = asyncio.create_task(self._commit(consumer, uncommitted))
            uncommitted, committed_at = {}, loop.time()

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:  # rebalanced away: the new owner re-reads, idempotently
            log.warning("%s: commit failed: %r", self._name, exc)

    async def _watch_group(self, generation: int) -> None:
        """Return when this member must rejoin under another group generation."""
        if self._group_id is None or self._store is None:
            await asyncio.Event().wait()  # nothing to watch: wait for cancellation
        while True:
            await asyncio.sleep(_GROUP_CHECK_S)
            if await self._must_regroup(generation):
                return

    async def _generation(self) -> int:
        if self._group_id is None or self._store is None:
            return 0
        key = _generation_key(self._group_id)
        raw = await self._store.retrying(lambda: self._store.cluster.get(key))  # type: ignore[union-attr]
        return int(raw or 0)

    async def _must_regroup(self, generation: int) -> bool:
        """Whether this member should rejoin under a new group id.

        The local broker (Tansu) can leave a group stuck after members restart: its members
        then wait for an assignment forever. A member that waited WEDGED_AFTER_S moves the
        group to its next generation (one counter in Redis, compare-and-set), and every member
        follows when it sees the counter move.
        """
        if self._store is None or self._group_id is None:
            return False
        try:
            current = await self._generation()
            if current != generation:
                log.warning("%s: group moved to generation %d; rejoining", self._name, current)
                return True
            if self._assignment.unassigned_for() < _WEDGED_AFTER_S:
                return False
            key = _generation_key(self._group_id)
            moved = await self._store.script("bump_generation", [key], [generation])
            log.error(
                "%s: no partitions for %.0fs: group wedged, moving to generation %s",
                self._name,
                self._assignment.unassigned_for(),
                moved,
            )
            return True
        except Unavailable as exc:
            log.warning("%s: group check failed: %r", self._name, exc)
            return False

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
                telemetry.received(message, record.headers)
                by_key[record.key or b""].append(message)

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


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Logs rebalances and tells how long the member has been waiting for partitions."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._waiting_since: float | None = time.monotonic()
        self.epoch = 0
        """Counts rebalances: offsets read before the latest one are not committed."""

    def unassigned_for(self) -> float:
        since = self._waiting_since
        return 0.0 if since is None else time.monotonic() - since

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.epoch += 1
        self._waiting_since = time.monotonic()
        log.info("%s: %d partitions revoked", self._name, len(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.epoch += 1
        self._waiting_since = None
        log.info("%s: %d partitions assigned", self._name, len(assigned))


def _generation_key(group_id: str) -> str:
    return f"bus:group-generation:{{{group_id}}}"


def _log_send_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("unacknowledged send failed (the sweeper re-sends): %r", future.exception())


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
