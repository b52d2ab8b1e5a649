"""What the scaling test reads of a running stack: each worker's counters (its own /metrics)
and each consumer group's members and partitions (the broker's own view)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.protocol.admin import (
    DescribeGroupsRequest_v0,
    DescribeGroupsRequest_v1,
    DescribeGroupsRequest_v2,
)
from aiokafka.protocol.api import Request

_SAMPLE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
COORDINATOR_MOVING = {14, 15, 16}  # COORDINATOR_LOAD_IN_PROGRESS, _NOT_AVAILABLE, NOT_COORDINATOR
COORDINATOR_TRIES = 50  # 0.2 s apart
NOT_API = {"/metrics", "/ready", "/health", "/openapi.json", "unmatched"}


@dataclass(frozen=True)
class Role:
    """A service as its consumer group sees it."""

    service: str
    group: str  # the consumer group of its workers
    consumer: str  # the consumer loop's name: the `consumer` label, the client id's suffix
    topics: int  # topics the group reads, of TOPIC_PARTITIONS partitions each


ROLES = {
    "order": Role("order", "order", "orchestrator", 2),
    "payment": Role("payment", "payment", "payment", 1),
    "stock": Role("stock", "stock", "stock", 1),
}


def total(text: str, name: str, keep: Callable[[dict[str, str]], bool]) -> float:
    """The sum of the samples of metric ``name`` whose labels ``keep`` accepts."""
    result = 0.0
    for line in text.splitlines():
        found = _SAMPLE.match(line)
        if found and found.group(1) == name and keep(dict(_LABEL.findall(found.group(2)))):
            result += float(found.group(3))
    return result


@dataclass(frozen=True)
class Work:
    """What one worker has done since it started: API requests answered, group messages
    handled."""

    requests: float
    messages: float


async def work(session: aiohttp.ClientSession, address: str, role: Role) -> Work | None:
    """The worker's counters, or None while it does not answer (starting, gone)."""
    try:
        async with session.get(f"http://{address}/metrics") as reply:
            if reply.status != 200:
                return None
            text = await reply.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    return Work(
        requests=total(text, "http_requests_total", lambda lb: lb.get("route") not in NOT_API),
        messages=total(
            text, "bus_messages_handled_total", lambda lb: lb.get("consumer") == role.consumer
        ),
    )


async def refuses(address: str) -> bool:
    """Whether the worker at ``address`` refuses connections: it got its SIGTERM (hypercorn
    closes its listening socket at once) or has not started."""
    host, port = address.rsplit(":", 1)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return False


class _DescribeGroups(
    Request[DescribeGroupsRequest_v0 | DescribeGroupsRequest_v1 | DescribeGroupsRequest_v2]  # type: ignore[misc]
):
    """DescribeGroups up to v2: aiokafka 0.14 reads a v3 answer with the v2 layout and fails."""

    API_KEY = 15

    def __init__(self, groups: list[str]) -> None:
        self._groups = groups

    def build(
        self,
        request_struct_class: type[
            DescribeGroupsRequest_v0 | DescribeGroupsRequest_v1 | DescribeGroupsRequest_v2
        ],
    ) -> DescribeGroupsRequest_v0 | DescribeGroupsRequest_v1 | DescribeGroupsRequest_v2:
        return request_struct_class(self._groups)


@dataclass(frozen=True)
class Group:
    state: str
    partitions: dict[str, int]  # worker id -> partitions assigned to its member


class Groups:
    """Reads consumer groups from the broker."""

    def __init__(self, bootstrap: str) -> None:
        self._client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)

    async def __aenter__(self) -> Groups:
        await self._client.bootstrap()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._client.close()

    async def describe(self, role: Role) -> Group:
        """The group as its coordinator sees it. A coordinator that is loading, not available
        or moved (Kafka's errors 14-16: the single broker's controller, starved of CPU on this
        machine, once timed out its own heartbeat) is looked up and asked again."""
        for _ in range(COORDINATOR_TRIES - 1):
            error_code, state, members = await self._ask(role)
            if error_code not in COORDINATOR_MOVING:
                break
            await asyncio.sleep(0.2)
        else:
            error_code, state, members = await self._ask(role)
        assert error_code == 0, f"DescribeGroups {role.group}: error {error_code}"
        partitions = {}
        suffix = f"-{role.consumer}"
        for _, client_id, _, _, assignment in members:
            worker = client_id.removesuffix(suffix)
            decoded = ConsumerProtocolMemberAssignment.decode(assignment) if assignment else None
            partitions[worker] = len(decoded.partitions()) if decoded else 0
        return Group(state, partitions)

    async def _ask(self, role: Role) -> tuple[int, str, list[tuple[str, str, str, bytes, bytes]]]:
        node = await self._client.coordinator_lookup(CoordinationType.GROUP, role.group)
        response = await self._client.send(node, _DescribeGroups([role.group]))
        error_code, _, state, _, _, members = response.groups[0][:6]
        return error_code, state, members
