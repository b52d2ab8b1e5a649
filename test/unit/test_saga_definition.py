"""The checkout saga's declaration (``order/saga.py``) as the generic machinery reads it."""

from __future__ import annotations

import json
import uuid

import pytest

from common import messages as m
from common.messages import MAX_MESSAGE_BYTES, MAX_REASON_CHARS, encode, saga_ids
from common.saga.definition import SagaRun
from common.terms import SagaStatus
from order.bootstrap import checkout_orchestrator
from order.orders import MAX_ORDER_LINE_BYTES, MAX_ORDER_LINES
from order.saga import CHECKOUT, order_key
from test.unit.fake_lua import cjson_encode
from test.unit.fake_redis import FakeRedis
from test.unit.fake_store import FakeStore


def a_run() -> SagaRun:
    order_id, user_id = f"o{uuid.uuid4().hex[:8]}", f"u{uuid.uuid4().hex[:8]}"
    snapshot = {
        "user_id": user_id,
        "items": json.dumps([["i1", 2], ["i2", 1], ["i1", 1]]),
        "total_cost": "17",
    }
    return SagaRun(saga_id=f"{order_id}:1:abcd", entity_id=order_id, snapshot=snapshot)


def test_replies_map_each_reply_to_its_step_and_kind() -> None:
    assert CHECKOUT.replies == {
        m.StockUpdated: (0, "succeeded"),
        m.StockUpdateFailed: (0, "failed"),
        m.StockCompensated: (0, "compensated"),
        m.PaymentCompleted: (1, "succeeded"),
        m.PaymentFailed: (1, "failed"),
        m.PaymentCancelled: (1, "compensated"),
    }


def test_both_steps_are_asked_at_once_and_paid_is_the_done_field() -> None:
    assert [step.name for step in CHECKOUT.steps] == ["reserve_stock", "charge_user"]
    assert CHECKOUT.concurrent
    assert CHECKOUT.done_field == "paid"
    assert CHECKOUT.entity_key("o1") == order_key("o1") == "{order:o1}"


def test_commands_and_compensations_are_built_from_the_snapshot() -> None:
    run = a_run()
    ids = saga_ids(run.saga_id, run.entity_id, run.trace_id)
    lines = (("i1", 2), ("i2", 1), ("i1", 1))
    reserve, charge = CHECKOUT.steps
    assert (reserve.topic, charge.topic) == (m.STOCK, m.PAYMENT)
    assert reserve.command(run) == m.StockUpdateRequested(**ids, items=lines)
    assert reserve.compensation(run) == m.StockCompensationRequested(**ids, items=lines)
    user = run.snapshot["user_id"]
    assert charge.command(run) == m.PaymentRequested(**ids, user_id=user, amount=17)
    assert charge.compensation(run) == m.PaymentCancelRequested(**ids, user_id=user, amount=17)


def test_an_empty_order_reserves_nothing() -> None:
    run = SagaRun("o:1:x", "o", {"user_id": "u", "items": "[]", "total_cost": "0"})
    assert CHECKOUT.steps[0].command(run).items == ()  # type: ignore[attr-defined]


def test_next_messages_follow_the_log() -> None:
    orchestrator = checkout_orchestrator(
        FakeStore(FakeRedis()), step_timeout_ms=1000, deadline_ms=5000
    )
    run = a_run()
    assert orchestrator.handlers().keys() == CHECKOUT.replies.keys()

    def sent(at: tuple[str, int], *, concurrent: bool = True) -> list[tuple[str, type]]:
        messages = orchestrator.next_messages(run, at, concurrent=concurrent)
        return [(t, type(m)) for t, m in messages]

    # Concurrent: running, every command from the current step on; turning back, every
    # compensation from the current step down.
    charge, reserve = (m.PAYMENT, m.PaymentRequested), (m.STOCK, m.StockUpdateRequested)
    cancel, restore = (m.PAYMENT, m.PaymentCancelRequested), (m.STOCK, m.StockCompensationRequested)
    assert sent((SagaStatus.RUNNING, 0)) == [reserve, charge]
    assert sent((SagaStatus.RUNNING, 1)) == [charge]
    assert sent((SagaStatus.COMPENSATING, 1)) == [cancel, restore]
    assert sent((SagaStatus.COMPENSATING, 0)) == [restore]
    # One by one: only the current step's.
    assert sent((SagaStatus.RUNNING, 0), concurrent=False) == [reserve]
    assert sent((SagaStatus.RUNNING, 1), concurrent=False) == [charge]
    assert sent((SagaStatus.COMPENSATING, 1), concurrent=False) == [cancel]
    assert sent((SagaStatus.SUCCEEDED, 1)) == [(m.ORDER_STATUS_UPDATE, m.CheckoutFinished)]
    (_, outcome), *_ = orchestrator.next_messages(run, (SagaStatus.FAILED, -1), "no credit")
    assert outcome == m.CheckoutFinished(
        saga_id=run.saga_id,
        order_id=run.entity_id,
        trace_id=run.trace_id,
        paid=False,
        reason="no credit",
    )


def _snapshot_of_about(size: int, *, id_chars: int, user_chars: int) -> dict[str, str]:
    """A checkout snapshot whose JSON (as saga_begin.lua encodes it) is as long as it can be
    without passing ``size`` bytes: lines of ``id_chars``-character ids (two bytes each, the
    widest) and ten-digit quantities."""

    def snapshot(count: int) -> dict[str, str]:
        items = [["é" * id_chars, 10**9]] * count
        text = json.dumps(items, separators=(",", ":"), ensure_ascii=False)
        return {"user_id": "u" * user_chars, "items": text, "total_cost": str(2**53 - 1)}

    one, two = len(cjson_encode(snapshot(1))), len(cjson_encode(snapshot(2)))
    count = 1 + (size - one) // (two - one)
    while len(cjson_encode(snapshot(count))) > size:
        count -= 1
    return snapshot(count)


@pytest.mark.parametrize(("id_chars", "user_chars"), [(1, 8), (64, 8), (64, 8000), (500, 1)])
def test_every_message_a_saga_may_send_fits_when_its_snapshot_fits(
    id_chars: int, user_chars: int
) -> None:
    """saga_begin.lua refuses a snapshot longer than ``max_snapshot_bytes``: under it, every
    command, compensation and outcome of the checkout saga must fit in MAX_MESSAGE_BYTES (the
    longest ids the API makes, a ten-digit attempt, the longest reason)."""
    snapshot = _snapshot_of_about(
        CHECKOUT.max_snapshot_bytes, id_chars=id_chars, user_chars=user_chars
    )
    assert len(cjson_encode(snapshot)) <= CHECKOUT.max_snapshot_bytes
    order_id = "o" * 64
    run = SagaRun(
        saga_id=f"{order_id}:{10**10}:ffffffff",
        entity_id=order_id,
        snapshot=snapshot,
        trace_id="f" * 32,
    )
    reason = "é" * MAX_REASON_CHARS
    messages = [step.command(run) for step in CHECKOUT.steps]
    messages += [step.compensation(run) for step in CHECKOUT.steps]
    messages += [CHECKOUT.outcome(run, paid, reason) for paid in (True, False)]
    sizes = {type(m).__name__: len(encode(m)) for m in messages}
    assert max(sizes.values()) <= MAX_MESSAGE_BYTES, sizes


def test_an_order_filled_to_its_bound_can_start_a_saga() -> None:
    """An order filled by addItem to its bound, with the longest ids, starts a saga."""
    line = ["i" * 64, 10**9]
    items = json.dumps([line] * MAX_ORDER_LINES, separators=(",", ":"))
    assert len(items) <= MAX_ORDER_LINE_BYTES
    snapshot = {"user_id": "u" * 8000, "items": items, "total_cost": str(2**53 - 1)}
    assert len(cjson_encode(snapshot)) <= CHECKOUT.max_snapshot_bytes
