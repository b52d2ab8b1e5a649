"""Puts a throw-away broker through what the services will ask of it, so that the class archive
``local/broker.sh archive`` dumps holds the classes of those paths too, not only those of a
start: topic creation, idempotent produce with acks=all, a static group member's join, fetch,
commit and leave, a listener's fetch from the end.

    python local/kafka_warmup.py HOST:PORT
"""

import asyncio
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

TOPIC = "warmup"
RECORDS = 200


async def warm_up(servers: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        # On the second broker the topic exists: the reply says so, nothing is raised.
        await admin.create_topics([NewTopic(TOPIC, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=servers, enable_idempotence=True, acks="all")
    listener = AIOKafkaConsumer(TOPIC, bootstrap_servers=servers, auto_offset_reset="latest")
    member = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=servers,
        group_id=TOPIC,
        group_instance_id=f"{TOPIC}-member",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await producer.start()
    await listener.start()
    await member.start()
    try:
        sent = [
            await producer.send(TOPIC, b"x" * 300, key=str(i).encode(), headers=[("h", b"v")])
            for i in range(RECORDS)
        ]
        await asyncio.gather(*sent)
        got = 0
        while got < RECORDS:
            batch = await member.getmany(timeout_ms=1000)
            got += sum(len(records) for records in batch.values())
            await member.commit()
        await listener.getmany(timeout_ms=100)
    finally:
        await member.stop()
        await listener.stop()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(warm_up(sys.argv[1]), 60))
