"""The saga's topics: created by the services themselves at start (and again if a broker comes
back without them), with the partitions and replicas of the settings. Nothing else creates
topics (the broker's auto-creation is off). ``python -m common.topics`` creates them once, for a
deployment that wants them before any service starts."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from common.messages import ALL_TOPICS
from common.settings import Settings, load_settings

log = logging.getLogger(__name__)


class Topics:
    """An admin client that makes the missing topics; ``start``/``stop`` bracket its life."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._admin: AIOKafkaAdminClient | None = None

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
        missing = [t for t in ALL_TOPICS if t not in set(await self._admin.list_topics())]
        if missing:
            partitions = self._settings.topic_partitions
            replicas = self._settings.topic_replication
            response = await self._admin.create_topics(
                [NewTopic(t, partitions, replicas) for t in missing]
            )
            for topic, code, *detail in response.topic_errors:
                if code == 0:
                    log.info("created topic %s (%d partitions)", topic, partitions)
                elif code != TopicAlreadyExistsError.errno:  # another worker made it first
                    raise for_code(code)(f"creating topic {topic}: {detail}")
        return missing


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
