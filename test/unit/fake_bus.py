"""A Kafka stand-in for ``common.bus.Bus``: per-partition logs keyed by order id, consumer-group
offsets, and the faults a non-idempotent producer and an in-memory broker show.

Messages are encoded on publish and decoded by the consumer (``records`` hands out aiokafka
``ConsumerRecord``s), so the wire format is exercised too. With ``faults`` set, ``publish`` may
drop a message, send it twice, or hold it back until ``release_held`` (which lands it behind
later messages of its partition, as a producer retry can); ``restart`` empties the broker.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord

from common.messages import ALL_TOPICS, Message, encode
from common.settings import Settings, load_settings
from common.types import Outgoing
from test.unit.fake_store import Gate, no_gate


@dataclass(frozen=True)
class BusFaults:
    """Per-message probabilities of each fault on publish."""

    drop: float = 0.0
    duplicate: float = 0.0
    hold: float = 0.0


MAX_REQUEST_SIZE = 1_048_576
"""aiokafka's default ``max_request_size`` (Kafka's ``max.request.size``), which ``Bus`` keeps."""


def record_size(key: bytes, payload: bytes) -> int:
    """What AIOKafkaProducer.send compares with ``max_request_size`` (headers left out)."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, payload, []))


def describe(message: Message) -> str:
    return f"{type(message).__name__}({message.saga_id})"


class FakeBus:
    """Topics of ``partitions`` partitions; ``published`` records every message sent."""

    def __init__(
        self,
        gate: Gate = no_gate,
        *,
        partitions: int = 4,
        rng: random.Random | None = None,
        note: Callable[[str], None] = lambda event: None,
        groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.partitions = partitions
        self._readers: dict[str, list[str]] = {}
        for group, topics in (groups or {}).items():
            for topic in topics:
                self._readers.setdefault(topic, []).append(group)
        self.unconsumed: dict[str, set[tuple[str, int]]] = {g: set() for g in groups or {}}
        self.sizes: dict[str, int] = {}
        self.faults = BusFaults()
        self.logs: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
        self.committed: dict[tuple[str, str, int], int] = {}
        self.held: list[tuple[str, bytes, bytes, str]] = []
        self.epoch = 0
        self.published: list[tuple[str, Message]] = []
        self.refused: list[tuple[str, Message]] = []  # too large to send
        self._gate = gate
        self._rng = rng or random.Random(0)
        self._note = note
        self._settings = load_settings({})
        self.restart(initial=True)

    @property
    def settings(self) -> Settings:
        """As ``Bus.settings``: the consumer options' source (no consumer is made here)."""
        return self._settings

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def partition(self, key: bytes) -> int:
        return zlib.crc32(key) % self.partitions

    # --- producing ----------------------------------------------------------------------------
    def unacknowledged_for(self) -> float:
        """As ``Bus.unacknowledged_for``: a publish here returns acknowledged or failed."""
        return 0.0

    async def publish(self, messages: Sequence[Outgoing], *, acknowledged: bool = True) -> None:
        """As ``Bus.publish``: returns once the broker has every message (unless a fault hit;
        an unacknowledged send is one more chance of that, which the drop fault stands for)."""
        if not messages:
            return
        await self._gate("publish " + ", ".join(describe(m) for _, m in messages))
        for topic, message in messages:
            key, payload = message.entity_id.encode(), encode(message)
            # As AIOKafkaProducer.send: a record larger than max_request_size is refused there
            # and then (the messages before it in this call were sent).
            size = record_size(key, payload)
            if size > MAX_REQUEST_SIZE:
                self.refused.append((topic, message))
                raise MessageSizeTooLargeError(f"the message is {size} bytes when serialized")
            self.published.append((topic, message))
            self.send(topic, key, payload, describe(message))

    def send(self, topic: str, key: bytes, payload: bytes, what: str) -> None:
        roll = self._rng.random()
        f = self.faults
        if roll < f.drop:
            self._note(f"bus drops {what}")
        elif roll < f.drop + f.hold:
            self._note(f"bus holds back {what}")
            self.held.append((topic, key, payload, what))
        elif roll < f.drop + f.hold + f.duplicate:
            self._note(f"bus duplicates {what}")
            self.append(topic, key, payload)
            self.append(topic, key, payload)
        else:
            self.append(topic, key, payload)

    def append(self, topic: str, key: bytes, payload: bytes) -> None:
        partition = self.partition(key)
        self.logs[(topic, partition)].append((key, payload))
        self.sizes[topic] = self.sizes.get(topic, 0) + 1
        for group in self._readers.get(topic, ()):
            self.unconsumed[group].add((topic, partition))

    def release_held(self, index: int) -> None:
        topic, key, payload, what = self.held.pop(index)
        self._note(f"bus delivers held-back {what}")
        self.append(topic, key, payload)

    def restart(self, *, initial: bool = False) -> None:
        """The broker comes back empty: topics, messages and committed offsets are gone."""
        self.logs = {(t, p): [] for t in ALL_TOPICS for p in range(self.partitions)}
        self.committed = {}
        self.sizes = {}
        for pending in self.unconsumed.values():
            pending.clear()
        if not initial:
            self.epoch += 1
            self._note("broker restarts empty")

    # --- consuming ----------------------------------------------------------------------------
    def backlog(self, group: str, topics: Sequence[str]) -> list[tuple[str, int]]:
        """The partitions of ``topics`` with messages ``group`` has not committed."""
        if group in self.unconsumed:  # kept up to date by append and commit
            return sorted(self.unconsumed[group])
        return [
            (t, p)
            for t in topics
            for p in range(self.partitions)
            if self.committed.get((group, t, p), 0) < len(self.logs[(t, p)])
        ]

    def position(self, group: str, topic: str, partition: int) -> int:
        return self.committed.get((group, topic, partition), 0)

    def records(self, topic: str, partition: int, start: int, end: int) -> list[ConsumerRecord]:
        log = self.logs[(topic, partition)][start:end]
        return [
            ConsumerRecord(
                topic=topic,
                partition=partition,
                offset=start + i,
                timestamp=0,
                timestamp_type=0,
                key=key,
                value=payload,
                checksum=None,
                serialized_key_size=len(key),
                serialized_value_size=len(payload),
                headers=(),
            )
            for i, (key, payload) in enumerate(log)
        ]

    def commit(self, group: str, topic: str, partition: int, offset: int, epoch: int) -> bool:
        """Commit ``offset``; refused when the broker restarted since the batch was read."""
        if epoch != self.epoch:
            return False
        self.committed[(group, topic, partition)] = offset
        if group in self.unconsumed and offset >= len(self.logs[(topic, partition)]):
            self.unconsumed[group].discard((topic, partition))
        return True

    def drained(self, groups: dict[str, Sequence[str]]) -> bool:
        """Nothing held back and every group has committed all of its topics."""
        return not self.held and not any(self.backlog(g, ts) for g, ts in groups.items())
