"""The saga's topics: created by the services themselves at start (and again if a broker comes
back without them), with the partitions and replicas of the settings. Nothing else creates
topics (the broker's auto-creation is off). ``python -m common.topics`` creates them once, for a
deployment that wants them before any service starts.

A topic that a service's workers share as a consumer group gets ``TOPIC_PARTITIONS`` partitions
(the most workers that can share its work). ORDER_STATUS_UPDATE is read whole by every order
worker, without a group: partitions would share no work there, while each one costs every
fetch its listeners make and every broker start (each partition is a log to load), so it has
one."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from common.messages import ALL_TOPICS, ORDER_STATUS_UPDATE
from common.settings import Settings, load_settings

log = logging.getLogger(__name__)

BROADCAST_TOPICS = frozenset({ORDER_STATUS_UPDATE})
"""Topics every reader reads whole: one partition each."""


def partitions_of(topic: str, settings: Settings) -> int:
    """How many partitions ``topic`` is made with."""
    return 1 if topic in BROADCAST_TOPICS else settings.topic_partitions


class Topics:
    """An admin client that makes the missing topics; ``start``/``stop`` bracket its life."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._admin: AIOKafkaAdminClient | None = None
        self._counted = False  # the existing topics' partitions were compared with the settings

    async def start(self) -> None:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self._settings.kafka_bootstrap_servers,
                client_id=f"{self._settings.worker_id}-admin",
                request_timeout_ms=5000,
            )
            try:
                await admin.start()
            except BaseException:
                await admin.close()
                raise
            self._admin = admin

    async def stop(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()

    async def ensure(self) -> list[str]:
        """Create the topics that are missing; returns their names."""
        if self._admin is None:
            raise KafkaError("admin client not started")
        existing = set(await self._admin.list_topics())
        missing = [t for t in ALL_TOPICS if t not in existing]
        if not self._counted:
            await self._compare_partitions([t for t in ALL_TOPICS if t in existing])
        if missing:
            replicas = self._settings.topic_replication
            partitions = {t: partitions_of(t, self._settings) for t in missing}
            response = await self._admin.create_topics(
                [NewTopic(t, count, replicas) for t, count in partitions.items()]
            )
            for topic, code, *detail in response.topic_errors:
                if code == 0:
                    log.info("created topic %s (%d partitions)", topic, partitions[topic])
                elif code != TopicAlreadyExistsError.errno:  # another worker made it first
                    raise for_code(code)(f"creating topic {topic}: {detail}")
        return missing

    async def _compare_partitions(self, topics: list[str]) -> None:
        """Once per process: warn about a topic whose partition count is not the one it would be
        made with (``partitions_of``). A topic keeps the count it was made with (the broker's log
        outlives a change of the setting, and nothing here re-partitions), so at most that many
        workers of a service share its work; that should not pass unseen. A failed look is
        logged, not raised: the check only informs."""
        assert self._admin is not None
        try:
            described = await self._admin.describe_topics(topics) if topics else []
        except KafkaError as exc:
            log.warning("could not count the topics' partitions: %r", exc)
            return
        self._counted = True
        for topic in described:
            have = len(topic["partitions"])
            wanted = partitions_of(topic["topic"], self._settings)
            if have != wanted:
                log.warning(
                    "topic %s has %d partitions, not %d: a topic keeps the count it was made "
                    "with%s",
                    topic["topic"],
                    have,
                    wanted,
                    ""
                    if topic["topic"] in BROADCAST_TOPICS  # read whole: the count shares no work
                    else f", and at most {have} workers of a service share its work",
                )


async def _main() -> None:
    logging.basicConfig(level=logging.INFO)
    topics = Topics(load_settings())
    await topics.start()
    try:
        await topics.ensure()
    finally:
        await topics.stop()


if __name__ == "__main__":
    asyncio.run(_main())
