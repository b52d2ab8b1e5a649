"""The operator's retry and abort (common/saga/admin.py) follow the orchestrator's
compare-and-set rules: they act only on the saga they read, only while it is live, and lose
cleanly to anything that moved it meanwhile. Hand-written fakes of the saga log (with the CAS
semantics of saga_move.lua / saga_touch.lua), the store and the bus."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from common.saga.admin import SagaAdmin
from common.saga.orchestrator import Orchestrator
from common.saga.state import SagaState
from common.terms import AbortReason
from order.admin import parse_duration_ms, render
from order.saga import CHECKOUT

SNAPSHOT = {"user_id": "u", "items": '[["i", 2]]', "total_cost": "6"}


class FakeLog:
    """One saga per entity; ``move`` and ``touch`` compare-and-set as the Lua scripts do."""

    def __init__(self) -> None:
        self.sagas: dict[str, SagaState] = {}
        self.indexed: dict[str, int] = {}
        self.before_touch: Any = None  # a race to run between the read and the touch
        self.index_shards = 16

    def put(self, entity: str, status: str, step: int, *, started: int = 0) -> SagaState:
        state = SagaState(
            f"{entity}:1:aa", status, step, started, 10**13, 0, SNAPSHOT, "", started,
            concurrent=True,
        )  # fmt: skip
        self.sagas[entity] = state
        return state

    async def read(self, entity: str) -> SagaState | None:
        return self.sagas.get(entity)

    async def move(
        self, entity: str, saga_id: str, frm: Any, to: Any, *, now: int, reason: str = ""
    ) -> Any:
        s = self.sagas.get(entity)
        if s is None or (s.saga_id, s.status, s.step) != (saga_id, *frm):
            return None
        self.sagas[entity] = dataclasses.replace(
            s, status=to[0], step=to[1], updated=now, resends=0, reason=reason or s.reason
        )
        return dict(s.snapshot), self.sagas[entity].reason

    async def touch(self, entity: str, state: SagaState, now: int) -> int:
        if self.before_touch is not None:
            self.before_touch()
        s = self.sagas.get(entity)
        if s is None or (s.saga_id, s.status, s.step, s.updated) != (
            state.saga_id,
            state.status,
            state.step,
            state.updated,
        ):
            return 0
        self.sagas[entity] = dataclasses.replace(s, updated=now, resends=s.resends + 1)
        return s.resends + 1

    async def index_add(self, entity: str, due: int) -> None:
        self.indexed[entity] = due

    def shard_key(self, shard: int) -> str:
        return f"shard{shard}"


class FakeStore:
    def __init__(self) -> None:
        self.replicated = 0

    @contextlib.contextmanager
    def tracking(self) -> Iterator[dict[str, str]]:
        yield {}

    async def replicate(self, written: Any) -> None:
        self.replicated += 1


class FakeBus:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def publish(self, messages: Any, *, acknowledged: bool = True) -> None:
        self.sent.extend(messages)


@pytest.fixture
def parts() -> tuple[SagaAdmin, FakeLog, FakeBus]:
    log = FakeLog()
    orchestrator = Orchestrator(CHECKOUT, log, step_timeout_ms=2000, deadline_ms=10000)  # type: ignore[arg-type]
    bus = FakeBus()
    return SagaAdmin(orchestrator, FakeStore(), bus), log, bus  # type: ignore[arg-type]


def kinds(bus: FakeBus) -> list[str]:
    return [type(message).__name__ for _, message in bus.sent]


async def test_retry_resends_the_current_step_and_reindexes(parts: Any) -> None:
    admin, log, bus = parts
    saga = log.put("o", "running", 1).saga_id
    action = await admin.retry("o", saga)
    assert action.done and kinds(bus) == ["PaymentRequested"]
    (_, payment) = bus.sent[0]
    assert (payment.saga_id, payment.user_id, payment.amount) == (saga, "u", 6)
    assert log.sagas["o"].resends == 1 and "o" in log.indexed
    assert log.sagas["o"].status == "running"  # a retry never moves the saga itself


async def test_retry_of_a_compensating_saga_resends_the_compensation(parts: Any) -> None:
    admin, log, bus = parts
    log.put("o", "compensating", 0)
    assert (await admin.retry("o")).done
    assert kinds(bus) == ["StockCompensationRequested"]


async def test_retry_loses_to_a_move_between_read_and_touch(parts: Any) -> None:
    admin, log, bus = parts
    log.put("o", "running", 0)
    log.before_touch = lambda: log.put("o", "running", 1)  # a reply moved it meanwhile
    action = await admin.retry("o")
    assert not action.done and "moved" in action.detail
    assert bus.sent == []


async def test_abort_turns_back_every_step_of_the_concurrent_checkout(parts: Any) -> None:
    admin, log, bus = parts
    saga = log.put("o", "running", 0).saga_id
    action = await admin.abort("o", saga)
    both = ["PaymentCancelRequested", "StockCompensationRequested"]
    assert action.done and kinds(bus) == both  # the charge went out at the start too
    state = log.sagas["o"]
    assert (state.status, state.step, state.reason) == ("compensating", 1, AbortReason.OPERATOR)
    # A second abort finds it compensating: it re-sends the compensations, moves nothing.
    again = await admin.abort("o", saga)
    assert again.done and "already turning back" in again.detail
    assert kinds(bus) == both + both
    assert (log.sagas["o"].status, log.sagas["o"].step) == ("compensating", 1)


@pytest.mark.parametrize("status", ["succeeded", "failed"])
async def test_finished_sagas_are_left_alone(parts: Any, status: str) -> None:
    admin, log, bus = parts
    log.put("o", status, -1 if status == "failed" else 1)
    for action in (await admin.retry("o"), await admin.abort("o")):
        assert not action.done and status in action.detail
    assert bus.sent == [] and log.sagas["o"].status == status


async def test_naming_another_saga_or_none_does_nothing(parts: Any) -> None:
    admin, log, bus = parts
    log.put("o", "running", 0)
    assert not (await admin.abort("o", "o:7:ff")).done
    assert not (await admin.retry("missing")).done
    assert bus.sent == [] and log.sagas["o"].status == "running"


def test_durations() -> None:
    assert [parse_duration_ms(t) for t in ("1500ms", "30s", "2.5", "5m", "1h")] == [
        1500,
        30_000,
        2500,
        300_000,
        3_600_000,
    ]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration_ms("soon")


def test_render_of_a_missing_and_an_unchecked_order() -> None:
    assert render({"found": False, "order_id": "x"}) == "order x: not found"
    order = {"user_id": "u", "total_cost": 0, "paid": False, "items": [], "attempts": 0}
    text = render({"found": True, "order_id": "x", "order": order, "saga": None})
    assert "never checked out" in text
