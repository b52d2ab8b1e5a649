"""The operator's tool (``python -m order.admin``) on the live stack: it shows a saga's history,
lists the stuck ones, and its retry and abort keep the invariants: stock and credit are
conserved, and an order is paid exactly when its saga took both."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiokafka import AIOKafkaProducer

from common.messages import STOCK, StockUpdateRequested, encode
from test.client import Api, until
from test.conftest import Stack
from test.system.ops import admin, balances, by_status, delta, lost_saga, nodes_of, scrape, warm_up


@pytest.fixture(scope="module", autouse=True)
async def warm(api: Api) -> None:
    await warm_up(api)


async def test_show_tells_a_paid_checkouts_history(api: Api, stack: Stack) -> None:
    item = await api.item(price=3, stock=10)
    user = await api.user(credit=100)
    order = await api.order(user, [(item, 2)])
    assert (await api.post(f"/orders/checkout/{order}")).status == 200
    status, report = await admin(stack, "show", order)
    assert status == 0
    assert report["saga"]["status"] == "succeeded"
    assert [r["record"] for r in report["records"]["stock"]] == ["T:2"]
    assert [r["record"] for r in report["records"]["payment"]] == ["T:6"]
    assert report["holds"] == {"stock": {item: 2}, "credit": 6}
    assert report["consistent"] is True
    events = [event["what"] for event in report["history"]]
    assert events[0].startswith("saga started") and "took 2" in " ".join(events)
    assert (await admin(stack, "show", "no-such-order"))[0] == 1


@pytest.mark.parametrize("at_once", [True, False], ids=["at-once", "one-by-one"])
async def test_retry_moves_a_lost_saga_and_charges_once(
    api: Api, stack: Stack, at_once: bool
) -> None:
    item = await api.item(price=3, stock=10)
    user = await api.user(credit=100)
    order = await api.order(user, [(item, 2)])
    saga = await lost_saga(nodes_of(stack, "order"), order, concurrent=at_once)

    status, listed = await admin(stack, "stuck", "--older-than", "30s")
    assert status == 0
    row = next(r for r in listed if r["order_id"] == order)
    assert (row["saga_id"], row["status"], row["step"]) == (saga, "running", "reserve_stock")
    _, younger = await admin(stack, "stuck", "--older-than", "2m")
    assert order not in {r["order_id"] for r in younger}
    # Nothing moves it on its own.
    await asyncio.sleep(1)
    assert await balances(api, item, user, order) == (10, 100, False)

    status, result = await admin(stack, "retry", order, "--saga", saga, "--wait", "20")
    assert status == 0 and result["done"], result
    # Asked at once, both commands are re-sent; one by one, the current step's.
    charge = ["PaymentRequested on PAYMENT"] if at_once else []
    assert result["sent"] == ["StockUpdateRequested on STOCK", *charge]
    assert result["final"]["status"] == "succeeded"
    assert await balances(api, item, user, order) == (8, 94, True)

    # A retry of a finished saga, or of another saga than the one named, does nothing.
    status, again = await admin(stack, "retry", order)
    assert (status, again["done"]) == (2, False)
    status, other = await admin(stack, "abort", order, "--saga", f"{order}:9:00000000")
    assert (status, other["done"]) == (2, False)
    assert await balances(api, item, user, order) == (8, 94, True)
    _, report = await admin(stack, "show", order)
    assert report["consistent"] is True


async def test_abort_turns_a_lost_saga_back_and_bars_its_late_command(
    api: Api, stack: Stack, producer: AIOKafkaProducer
) -> None:
    item = await api.item(price=3, stock=10)
    marker = await api.item(price=1, stock=10)
    user = await api.user(credit=100)
    order = await api.order(user, [(item, 2)])
    saga = await lost_saga(nodes_of(stack, "order"), order, concurrent=True)

    status, result = await admin(
        stack, "abort", order, "--saga", saga, "--reason", "aborted by operator", "--wait", "20"
    )
    assert status == 0 and result["done"], result
    both = ["PaymentCancelRequested on PAYMENT", "StockCompensationRequested on STOCK"]
    assert result["sent"] == both
    assert (result["final"]["status"], result["final"]["reason"]) == (
        "failed",
        "aborted by operator",
    )
    _, report = await admin(stack, "show", order)
    # The tombstones: the charge went out with the reservation, so both steps are barred.
    assert [r["record"] for r in report["records"]["stock"]] == ["X"]
    assert [r["record"] for r in report["records"]["payment"]] == ["X"]
    assert report["consistent"] is True

    # The lost command turns up after all: the tombstone refuses it. A later message on the
    # same key (same partition) tells when it has been consumed.
    late = StockUpdateRequested(saga_id=saga, order_id=order, trace_id="", items=((item, 2),))
    probe = StockUpdateRequested(
        saga_id=f"{saga}-probe", order_id=order, trace_id="", items=((marker, 1),)
    )
    for message in (late, probe):
        await producer.send_and_wait(STOCK, encode(message), key=order.encode())
    await until(lambda: _stock_is(api, marker, 9))
    assert await balances(api, item, user, order) == (10, 100, False)

    # The order can still be checked out: a new saga, charged once.
    assert (await api.post(f"/orders/checkout/{order}")).status == 200
    assert await balances(api, item, user, order) == (8, 94, True)


async def test_abort_while_payment_is_down(api: Api, stack: Stack) -> None:
    """A real stuck saga: payment is stopped while a checkout waits at the charge step. The
    sweeper re-sends (and the metric shows it); the operator aborts; payment comes back and
    finds a charge followed by its cancellation: the user ends up charged nothing."""
    item = await api.item(price=3, stock=10)
    user = await api.user(credit=100)
    order = await api.order(user, [(item, 2)])
    payments = sorted(by_status(stack, "payment-"))
    before = await scrape(stack, "order")
    stack.run("ctl", "stop", *payments)
    try:
        checkout = asyncio.create_task(api.post(f"/orders/checkout/{order}"))
        saga, at_once = await _wait_for_resend_at_charge(stack, order)
        _, listed = await admin(stack, "stuck", "--older-than", "0s")
        assert saga in {row["saga_id"] for row in listed}
        status, result = await admin(stack, "abort", order, "--saga", saga)
        assert status == 0 and result["done"], result
        # Asked at once, the stock is given back at once too; one by one, after the cancel.
        restore = ["StockCompensationRequested on STOCK"] if at_once else []
        assert result["sent"] == ["PaymentCancelRequested on PAYMENT", *restore]
        assert result["state"]["status"] == "compensating"
    finally:
        stack.run("ctl", "start", *payments)
    reply = await asyncio.wait_for(checkout, 90)
    assert reply.status == 400, reply
    await until(lambda: _saga_is(stack, order, "failed"), within=60)
    assert await balances(api, item, user, order) == (10, 100, False)
    _, report = await admin(stack, "show", order)
    assert report["consistent"] is True and report["holds"] == {"stock": {}, "credit": 0}
    after = await scrape(stack, "order")
    assert delta(before, after, "saga_sweeper_resends_total", saga="checkout") >= 1
    assert delta(before, after, "saga_finished_total", saga="checkout", outcome="failed") >= 1


async def _wait_for_resend_at_charge(stack: Stack, order: str) -> tuple[str, bool]:
    """The saga id, once the saga waits at the charge step and was re-sent at least once, and
    whether it asked for both steps at once (the worker chose, from its recent failures)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while True:
        with contextlib.suppress(AssertionError):
            _, report = await admin(stack, "show", order)
            saga = report["saga"]
            if saga and saga["step_name"] == "charge_user" and saga["resends"] >= 1:
                return str(saga["saga_id"]), bool(saga["at_once"])
        assert loop.time() < end, "the saga never waited at the charge step"
        await asyncio.sleep(0.3)


async def _saga_is(stack: Stack, order: str, status: str) -> bool:
    _, report = await admin(stack, "show", order)
    return bool(report["saga"] and report["saga"]["status"] == status)


async def _stock_is(api: Api, item: str, expected: int) -> bool:
    return await api.stock(item) == expected
