"""Leaving a consumer group at once at a graceful stop, though the member is static, and
stopping a consumer whose group coordination is stuck: the one place that uses aiokafka
internals (pinned by test/unit/test_bus_leave.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.client import ConnectionGroup
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import KafkaError, NoError, for_code
from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest

log = logging.getLogger(__name__)

LEAVE_TIMEOUT_S = 3.0
"""How long leaving the group may take; past it the partitions move when the session expires."""
CLOSE_TIMEOUT_S = 5.0
"""How long each part of a consumer's stop (its group coordination, then the rest) may take."""


async def leave_group(consumer: AIOKafkaConsumer, group_id: str, name: str) -> None:
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
        log.warning("%s: could not leave group %s (%r)", name, group_id, exc)
        return
    error = for_code(response.error_code)
    if error is NoError:
        log.info("%s: left group %s", name, group_id)
    else:
        log.warning("%s: leaving group %s: %s", name, group_id, error.__name__)


async def stop_consumer(consumer: AIOKafkaConsumer, name: str) -> None:
    """``consumer.stop()``, bounded, and leaving nothing running behind.

    aiokafka's stop first closes the group coordinator, which waits for its coordination task;
    when that is what got stuck (the reason a consumer is made anew), the stop never gets to
    the rest: the heartbeat task went on sending, and logging errors, for minutes, and the
    fetcher and the connections stayed open beside the consumer made in its place. So the
    coordinator is closed first, with a bound; every task still running one of its methods is
    cancelled; then the stop, which finds the coordinator closed, closes the fetcher and the
    client."""
    coordinator = consumer._coordinator
    if isinstance(coordinator, GroupCoordinator):
        # Whatever the close ends with (a timeout, or the error the coordination task died
        # of), what still runs is cancelled and the rest of the stop goes on.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(coordinator.close(), CLOSE_TIMEOUT_S)
        running = tasks_of(coordinator)
        if running:
            log.warning("%s: group coordination did not close; cancelling it", name)
            for task in running:
                task.cancel()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(consumer.stop(), CLOSE_TIMEOUT_S)


def tasks_of(owner: object) -> list[asyncio.Task[Any]]:
    """The tasks still running a method of ``owner``. For a group coordinator: its coordination,
    heartbeat and commit-refresh routines, and any commit whose caller gave up: aiokafka runs
    each commit in a task of its own behind ``asyncio.shield``, which a cancelled caller leaves
    running, and which would fail unread (an ERROR "Task exception was never retrieved") once
    the stop closes the connections."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done()
        and (frame := getattr(task.get_coro(), "cr_frame", None)) is not None
        and frame.f_locals.get("self") is owner
    ]
