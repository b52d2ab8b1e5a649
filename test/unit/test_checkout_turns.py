"""Checkouts take turns: an order worker drives at most ``CHECKOUT_CONCURRENCY`` checkouts at
once and the others wait in arrival order, so a burst is answered first come, first served. A
checkout whose turn does not come within its answer budget starts nothing and is refused (a
true 400: not paid, nothing held)."""

from __future__ import annotations

import asyncio

import pytest

from common.errors import Refused
from common.messages import StockUpdateRequested
from order.saga import order_key
from test.unit.scenario_kit import Hold, Services, answered_paid, until


def shop(svc: Services, n: int) -> list[str]:
    """``n`` orders of one unit each, every one of which can be paid."""
    item, user = svc.item(stock=n), svc.user(credit=n)
    return [svc.order(user, [(item, 1)], total=1) for _ in range(n)]


def started(svc: Services) -> list[str]:
    """The orders whose sagas asked for stock, in the order they asked."""
    return [m.order_id for _, m in svc.bus.published if isinstance(m, StockUpdateRequested)]


async def test_a_checkout_waits_for_its_turn_and_turns_go_in_arrival_order() -> None:
    svc = Services()
    orders = shop(svc, 3)
    checkout = svc.checkout_edge(timeout_ms=30_000, answer_ms=30_000, concurrency=1)
    answers = []
    for order_id in orders:
        answers.append(asyncio.create_task(checkout(order_id)))
        await asyncio.sleep(0)  # each one arrives, in this order
    await until(lambda: len(started(svc)) == 1, answers[0])
    for _ in range(20):  # the others stay queued while the first one's saga is unanswered
        await asyncio.sleep(0.001)
    assert started(svc) == orders[:1]
    for n, answer in enumerate(answers, start=1):
        await until(lambda: len(started(svc)) >= n, answer)  # noqa: B023 (awaited here)
        await svc.deliver()  # stock, order, payment, order: this saga ends
        assert await answered_paid(answer)
        assert started(svc) == orders[:n]
    assert all(svc.redis["order"].hget(order_key(o), b"paid") == b"1" for o in orders)


async def test_a_checkout_whose_turn_does_not_come_in_time_starts_nothing() -> None:
    hold = Hold()
    svc = Services(gate=hold)
    item, user = svc.item(stock=2), svc.user(credit=2)
    first, second = (svc.order(user, [(item, 1)], total=1) for _ in range(2))
    checkout = svc.checkout_edge(timeout_ms=40, answer_ms=150, concurrency=1)
    # The first checkout's start hangs in the store (a master that does not answer): it keeps
    # its turn past the second one's whole answer budget.
    running, release = await hold.park("first", "", checkout(first))
    with pytest.raises(Refused, match="no turn"):
        await hold.run_as("second", checkout(second))
    assert svc.redis["order"].hget(order_key(second), b"saga_id") is None
    assert second not in started(svc)
    release.set()  # the first goes on, past its own budget by now: it turns its saga back
    assert not await answered_paid(running)
    await svc.deliver()
    assert svc.balance(svc.items, item) == 2  # nothing held by either
