"""Checkouts take turns: an order worker drives at most ``CHECKOUT_CONCURRENCY`` checkouts at
once and the others wait in arrival order, so a burst is answered first come, first served. A
checkout whose turn does not come while a saga could still be seen through within its answer
budget starts nothing and answers from the order as it is: paid (200), the verdict of a saga
running on it, or a true 400 (not paid, nothing held)."""

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
    checkout = svc.checkout_edge(timeout_ms=30_000, answer_ms=60_000, concurrency=1)
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


async def test_without_a_turn_a_paid_order_is_still_a_200() -> None:
    """A paid order needs no turn: checked out again (the course's stress test does it) while
    every turn is held, it answers 200, not the 400 of "no turn came"."""
    hold = Hold()
    svc = Services(gate=hold)
    item, user = svc.item(stock=2), svc.user(credit=2)
    paid, other = (svc.order(user, [(item, 1)], total=1) for _ in range(2))
    checkout = svc.checkout_edge(timeout_ms=40, answer_ms=150, concurrency=1)
    first = asyncio.create_task(hold.run_as("first", checkout(paid)))
    await until(lambda: len(started(svc)) == 1, first)
    await svc.deliver()
    assert await answered_paid(first)
    # The one turn is held by a start that hangs in the store; the paid order comes again.
    running, release = await hold.park("other", "", checkout(other))
    assert await hold.run_as("again", checkout(paid)) is None  # 200
    assert started(svc) == [paid]  # nothing started for it a second time
    release.set()  # the parked start goes on, past its own budget: its saga is turned back
    assert not await answered_paid(running)


async def test_without_a_turn_a_live_saga_s_verdict_is_the_answer() -> None:
    """A retry that lands on a worker with no free turn, while the order's saga runs on
    another worker, waits for that saga's verdict (it starts nothing): paid, a 200."""
    hold = Hold()
    svc = Services(gate=hold)
    item, user = svc.item(stock=2), svc.user(credit=2)
    order, other = (svc.order(user, [(item, 1)], total=1) for _ in range(2))
    free = svc.checkout_edge(timeout_ms=5_000, answer_ms=5_000)
    busy = svc.checkout_edge(timeout_ms=40, answer_ms=150, concurrency=1)
    on_free = asyncio.create_task(hold.run_as("free", free(order)))
    await until(lambda: started(svc) == [order], on_free)
    running, release = await hold.park("other", "", busy(other))
    retry = asyncio.create_task(hold.run_as("retry", busy(order)))
    for _ in range(20):  # the retry, without a turn, joins the live saga instead of refusing
        await asyncio.sleep(0.001)
    assert not retry.done()
    await svc.deliver()
    assert await answered_paid(on_free)
    assert await answered_paid(retry)
    assert started(svc) == [order]
    release.set()  # the parked start goes on, past its own budget: its saga is turned back
    assert not await answered_paid(running)


async def test_a_turn_too_late_to_see_a_saga_through_starts_nothing() -> None:
    """A queued checkout waits for its turn only while a saga it starts could still run for
    its timeout and be turned back within the answer budget. (It used to start one with the
    budget nearly spent, turn it back at once and answer 400 while the saga still held stock.)"""
    svc = Services()
    item, user = svc.item(stock=5), svc.user(credit=5)
    first, second = (svc.order(user, [(item, 1)], total=1) for _ in range(2))
    checkout = svc.checkout_edge(timeout_ms=100, answer_ms=300, concurrency=1)
    one = asyncio.create_task(checkout(first))
    await until(lambda: started(svc) == [first], one)
    two = asyncio.create_task(checkout(second))
    # Nothing is delivered for 200 ms: the first keeps its turn (it turns its saga back at its
    # timeout, then waits for the compensation) past the second's last moment to start, 150 ms
    # (300 - 1.5 x 100) into its budget; then the first ends and frees its turn, with 100 ms of
    # the second's budget left: too little to see a saga through.
    await asyncio.sleep(0.2)  # the moment is the scenario: between those two deadlines
    await svc.deliver()
    assert not await answered_paid(one)
    assert not await answered_paid(two)  # 400: no saga was started for it
    assert svc.redis["order"].hget(order_key(second), b"saga_id") is None
    await svc.deliver()
    assert svc.balance(svc.items, item) == 5  # nothing held by either
