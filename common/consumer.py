"""The consumer loop: reads its topics in a consumer group, dispatches each message to the
handler of its type, and commits offsets only after the batch's effects are durable and its
replies published (``common/effects.py``). Leaving a group at a graceful stop:
common/group_leave.py."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from common import commits
from common.bus import retry_forever
from common.effects import Effects
from common.errors import Unavailable
from common.group_leave import leave_group, stop_consumer
from common.kafka_options import consumer_options
from common.messages import Message, decode
from common.observability import telemetry
from common.tasks import cancel
from common.types import Handler, MessageBus, Outgoing, Storage

log = logging.getLogger(__name__)

Batch = dict[TopicPartition, list[ConsumerRecord]]

BATCH_RETRY_MAX_S = 1.0
"""The longest wait between two attempts of a failed batch."""
STOP_TIMEOUT_S = 5.0
"""How long a group member's graceful stop (the batch in hand, its commit, leaving the group)
may take before the loop is cancelled; a redelivery to the next owner covers what that cuts."""

RETRIABLE = (Unavailable, KafkaError, OSError)
"""Failures a later attempt can cure (a dependency down or failing over)."""


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
        on_durable: Callable[[Sequence[Outgoing]], None] | None = None,
    ) -> None:
        self._name = name
        self._on_durable = on_durable
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
        loop = asyncio.get_running_loop()
        while not self._leaving:
            began = loop.time()
            try:
                await self._run_consumer()
            except asyncio.CancelledError:
                raise
            except Exception:
                if loop.time() - began > 60:  # it ran a while: a new failure, not a series
                    delay = 0.5
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
            await retry_forever(consumer.start, f"{self._name} consumer start")
            self._consuming = True
            await self._consume(consumer)
        finally:
            self._consuming = False
            self._consumer = None
            if self._leaving and self._group_id is not None:
                await leave_group(consumer, self._group_id, self._name)
            await stop_consumer(consumer, self._name)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        loop = asyncio.get_running_loop()
        owed = commits.Commits(
            self._name,
            lambda offsets: self._commit(consumer, offsets),
            lambda: self._assignment.epoch,
        )
        fetched_ok_at = loop.time()
        while not self._leaving:
            try:
                batch = await self._fetch(consumer)
            except KafkaError as exc:
                log.warning("%s: fetch failed: %r", self._name, exc)
                if loop.time() - fetched_ok_at > commits.STUCK_AFTER_S:
                    raise commits.ConsumerStuck(
                        f"{self._name}: every fetch failed for {commits.STUCK_AFTER_S:.0f}s;"
                        " making the consumer anew"
                    ) from exc
                await asyncio.sleep(0.5)
                continue
            fetched_ok_at = loop.time()
            fetched_in = self._assignment.epoch
            if batch:
                await self._process_until_done(batch)
                if self._group_id is None:
                    continue
                # The batch's effects are durable and its replies acknowledged: its offsets are
                # owed. Commits run beside the next batches, at most every COMMIT_INTERVAL_S,
                # and at once when the partitions go quiet (an empty fetch).
                owed.handled(
                    ((tp, records[-1].offset + 1) for tp, records in batch.items()), fetched_in
                )
                if not owed.due():
                    continue
            owed.commit_point()
        await owed.close()

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

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> bool:
        """Whether the offsets were committed. If not (rebalanced away, or the broker away),
        the loop commits them with its next commit while the partitions are still its own;
        a commit that never happens only means a redelivery, which changes nothing."""
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("%s: commit failed: %r", self._name, exc)
            return False
        return True

    async def _process_until_done(self, batch: Batch) -> None:
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

    def _decode(self, batch: Batch) -> list[list[Message]]:
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

    async def _process(self, batch: Batch) -> None:
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
        async with Effects(self._store, self._bus, on_durable=self._on_durable) as fx:
            results = await asyncio.gather(*(run_key(m) for m in keys))
            fx.send(out for result in results for out in result)


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
