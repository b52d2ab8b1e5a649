"""The checkout asks for the stock and the charge at once while most checkouts succeed, one by
one while many fail; either way a 400 comes only once nothing is held (order/saga.py,
common/saga/orchestrator.py ``Speculation``)."""

from __future__ import annotations

import asyncio

import pytest

from common.saga.orchestrator import Speculation
from order.bootstrap import checkout_orchestrator
from test.unit.scenario_kit import Services, answered_paid, until

STEPS = ("StockUpdateRequested", "PaymentRequested")


def sent(svc: Services) -> list[str]:
    return [type(message).__name__ for _, message in svc.bus.published]


async def checkout_until_answered(svc: Services, order_id: str, *order: str) -> bool:
    """Check ``order_id`` out, delivering each group's backlog in the given ``order`` (then
    everything) until the checkout answers; whether it said paid."""
    answer = asyncio.create_task(svc.checkout_edge(timeout_ms=5_000)(order_id))
    await until(lambda: bool(svc.bus.published), answer)
    for group in order:
        await svc.deliver(group)
    while not answer.done():
        await svc.deliver()
        await asyncio.sleep(0.001)
    return await answered_paid(answer)


async def test_a_shortage_found_after_the_charge_refunds_it_before_the_400() -> None:
    svc = Services()
    item, user = svc.item(stock=1, price=3), svc.user(credit=10)
    order_id = svc.order(user, [(item, 2)], total=6)
    # The charge is made first; the reservation then finds too little stock.
    paid = await checkout_until_answered(svc, order_id, "payment", "stock")
    assert not paid
    assert sent(svc)[:2] == list(STEPS)  # both asked at once
    assert "PaymentCancelRequested" in sent(svc)
    assert "StockCompensationRequested" not in sent(svc)  # the failed step holds nothing
    assert (svc.balance(svc.users, user), svc.balance(svc.items, item)) == (10, 1)


async def test_the_charge_answering_first_pays_once_the_stock_does() -> None:
    svc = Services()
    item, user = svc.item(stock=5, price=3), svc.user(credit=10)
    order_id = svc.order(user, [(item, 2)], total=6)
    assert await checkout_until_answered(svc, order_id, "payment", "order", "stock")
    assert (svc.balance(svc.users, user), svc.balance(svc.items, item)) == (4, 3)


async def test_after_many_failures_the_steps_are_asked_one_by_one() -> None:
    svc = Services()
    poor = svc.user(credit=0)
    item = svc.item(stock=1_000)
    speculation = svc.orchestrator.speculation
    failed = 0
    while speculation():
        order_id = svc.order(poor, [(item, 1)], total=1)
        assert not await checkout_until_answered(svc, order_id)
        failed += 1
        assert failed < 100, "still asking at once after 100 failures in a row"
    # The next checkout asks for the stock only, and is charged only once it has it.
    before = len(svc.bus.published)
    rich = svc.user(credit=10)
    order_id = svc.order(rich, [(item, 1)], total=1)
    assert await checkout_until_answered(svc, order_id)
    asked = sent(svc)[before:]
    assert asked[0] == "StockUpdateRequested" and asked.index("PaymentRequested") > 1
    assert svc.balance(svc.users, rich) == 9
    assert svc.balance(svc.items, item) == 999  # every failed checkout gave its unit back


def test_the_speculation_comes_back_once_checkouts_succeed_again() -> None:
    speculation = Speculation()
    assert speculation()  # a new worker asks at once
    failures = 0
    while speculation():
        speculation.record(succeeded=False)
        failures += 1
    successes = 0
    while not speculation():
        speculation.record(succeeded=True)
        successes += 1
    # Neither one odd outcome nor a long history decides it: about a window's worth does.
    assert 5 < failures < speculation.window
    assert 0 < successes < speculation.window


@pytest.mark.parametrize(
    ("steps", "first", "after_failures"),
    [
        ("auto", True, False),
        ("at-once", True, True),
        ("one-by-one", False, False),
    ],
)
def test_checkout_steps_chooses_the_speculation(
    steps: str, first: bool, after_failures: bool
) -> None:
    orchestrator = checkout_orchestrator(
        Services().stores["order"], step_timeout_ms=1000, deadline_ms=5000, steps=steps
    )
    assert orchestrator.speculation() is first
    for _ in range(orchestrator.speculation.window):
        orchestrator.speculation.record(succeeded=False)
    assert orchestrator.speculation() is after_failures
