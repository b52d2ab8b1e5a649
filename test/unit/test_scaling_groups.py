"""The scaling test's view of a consumer group (test/faults/scaling.py): a coordinator that moves
or is briefly unavailable is asked again, instead of failing the fault test that reads it (the
single broker, starved of CPU, once answered DescribeGroups with NOT_COORDINATOR)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from test.faults.scaling import ROLES, Groups


@dataclass
class _Response:
    groups: list[tuple[Any, ...]]


class _Coordinator:
    """Answers DescribeGroups with the given error codes in turn, then with a stable group of
    one member."""

    def __init__(self, errors: list[int]) -> None:
        self._errors = list(errors)
        self.lookups = 0

    async def coordinator_lookup(self, *_: object) -> int:
        self.lookups += 1
        return 1

    async def send(self, *_: object) -> _Response:
        if self._errors:
            return _Response([(self._errors.pop(0), "order", "", "", "", [])])
        member = ("m-1", "order-0-orchestrator", "/127.0.0.1", b"", b"")
        return _Response([(0, "order", "Stable", "consumer", "range", [member])])


async def test_a_moving_coordinator_is_asked_again() -> None:
    groups = Groups("127.0.0.1:1")
    coordinator = _Coordinator([16, 15, 14])
    groups._client = coordinator
    group = await groups.describe(ROLES["order"])
    assert group.state == "Stable" and group.partitions == {"order-0": 0}
    assert coordinator.lookups == 4


async def test_any_other_error_fails_at_once() -> None:
    groups = Groups("127.0.0.1:1")
    coordinator = _Coordinator([25])  # UNKNOWN_MEMBER_ID: not a coordinator's move
    groups._client = coordinator
    with pytest.raises(AssertionError, match="error 25"):
        await groups.describe(ROLES["order"])
    assert coordinator.lookups == 1
