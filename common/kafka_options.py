"""How every Kafka client of the services is configured, in one place, so that one test
(test/unit/test_kafka_settings.py) can hold them against the broker's bounds in
env/kafka/broker.env, which every deployment's broker runs with."""

from __future__ import annotations

from typing import Any

from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from common.settings import Settings

METADATA_MAX_AGE_MS = 3000
"""How stale a client's view of topics may get: after a broker came back empty, producers and
consumers find the re-created topics within this."""

SESSION_TIMEOUT_MS = 6000
"""A dead group member's partitions move to the others after this. It is Apache Kafka's default
``group.min.session.timeout.ms``, the shortest session any broker accepts unless told otherwise;
a worker restarted within it rejoins under its static member id and keeps its partitions."""

HEARTBEAT_INTERVAL_MS = 1000
"""A third of the session or less, as Kafka advises; also how soon a member hears of a
rebalance."""

FETCH_MAX_WAIT_MS = 1000
"""How long the broker holds a fetch that finds nothing. A fetch returns as soon as data arrives
(``fetch_min_bytes`` 1), so this costs no latency; it sets how often an idle consumer asks
(twice less often than aiokafka's 500 ms: fetches are most of an idle stack's requests)."""

MAX_REQUEST_SIZE = 1_048_576
"""The largest produce request, at most the broker's ``message.max.bytes`` (1 MiB by default)."""


def producer_options(settings: Settings) -> dict[str, Any]:
    """Idempotent and acknowledged by every in-sync replica: a retried send is never written
    twice and an acknowledged one is on disk on every replica the broker keeps."""
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": f"{settings.worker_id}-producer",
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": settings.kafka_linger_ms,
        "max_request_size": MAX_REQUEST_SIZE,
        # A send waits this long for the broker before it fails: long enough to outlast a
        # broker restart, so what was queued then is delivered, not left to the sweeper.
        "request_timeout_ms": 30000,
        "metadata_max_age_ms": METADATA_MAX_AGE_MS,
    }


def consumer_options(settings: Settings, name: str, group_id: str | None) -> dict[str, Any]:
    """A consumer of group ``group_id``, or with ``None`` a listener that reads every partition
    from the end and commits nothing.

    Group members are static (``group_instance_id``): a worker that restarts under the same
    ``WORKER_ID`` gets its partitions back without a rebalance. Offsets are committed by the
    consumer loop only after a batch's effects are durable. A fetch returns as soon as data
    arrives (``fetch_min_bytes`` 1), so its wait (FETCH_MAX_WAIT_MS) costs no latency.
    """
    client_id = f"{settings.worker_id}-{name}"
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "metadata_max_age_ms": METADATA_MAX_AGE_MS,
        "max_poll_records": 500,
        "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
    }
    if group_id is None:
        # Outcomes published before this worker started concern no request of its own.
        options["auto_offset_reset"] = "latest"
        return options
    options.update(
        group_instance_id=client_id,
        partition_assignment_strategy=(RoundRobinPartitionAssignor,),
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        # A group whose committed position points past the log (a broker that came back empty)
        # starts over from the beginning: handlers are idempotent, a skipped command is not.
        auto_offset_reset="earliest",
    )
    return options
