"""A checkout the gateway has given up on starts no saga. A worker frozen past the gateway's
``proxy_read_timeout`` (SIGSTOP, a paused VM) still holds, when it resumes, requests the gateway
timed out and retried on another worker, which may have answered them already: 400 "no turn
came in time" for a retry that queued behind 64 others on the standby. Seen on 2026-11-30:
order-0 stopped for 100 s under 200 clients; the standby answered 14 checkouts 400 at 85 s,
and order-0, resumed at 100 s, started and paid their sagas. The gateway sends when it first
sent a request (``X-Request-Start``); past that and its timeout a checkout only joins or reads."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from common.errors import Refused, Unavailable
from common.http import GATEWAY_CLOCK_MARGIN_S, GATEWAY_READ_TIMEOUT_S, gateway_start_by
from common.ledger import LUA_DIR
from common.messages import StockUpdateRequested
from common.saga.orchestrator import Outcome
from common.settings import load_settings
from order.bootstrap import build
from order.saga import order_key
from test.unit.fake_bus import FakeBus
from test.unit.fake_redis import MASTERS, FakeRedis
from test.unit.fake_store import FakeStore
from test.unit.scenario_kit import (
    Clock,
    Hold,
    Services,
    answered_paid,
    checkout_saga,
    one_unpaid_order,
    until,
)


def started(svc: Services) -> list[str]:
    return [m.order_id for _, m in svc.bus.published if isinstance(m, StockUpdateRequested)]


async def test_a_checkout_past_its_start_by_time_starts_nothing() -> None:
    clock = Clock()
    svc = Services(now_ms=clock)
    item, user = svc.item(stock=1), svc.user(credit=1)
    order = svc.order(user, [(item, 1)], total=1)
    checkout = svc.checkout_edge(concurrency=4)
    with pytest.raises(Refused, match="too late"):
        await checkout(order, clock.ms)
    assert svc.redis["order"].hget(order_key(order), b"saga_id") is None
    assert started(svc) == []


async def test_a_late_checkout_still_joins_a_live_saga_and_sees_a_paid_order() -> None:
    clock = Clock()
    svc = Services(now_ms=clock)
    item, user = svc.item(stock=1), svc.user(credit=1)
    order = svc.order(user, [(item, 1)], total=1)
    checkout = svc.checkout_edge(timeout_ms=10_000, answer_ms=20_000, concurrency=4)
    in_time = asyncio.create_task(checkout(order, clock.ms + 1))
    await until(lambda: started(svc) == [order], in_time)
    late = asyncio.create_task(checkout(order, clock.ms - 1))  # joins the running saga
    for _ in range(20):
        await asyncio.sleep(0)
    await svc.deliver()
    assert await answered_paid(in_time)
    assert await answered_paid(late)
    assert await answered_paid(asyncio.create_task(checkout(order, clock.ms - 1)))
    assert started(svc) == [order]
    assert svc.balance(svc.items, item) == 0


def test_the_start_by_time_is_the_gateway_s_first_send_plus_its_timeout_less_a_margin() -> None:
    bound = (GATEWAY_READ_TIMEOUT_S - GATEWAY_CLOCK_MARGIN_S) * 1000
    assert gateway_start_by("1796053658.111") == 1796053658111 + bound
    for absent in (None, "", "soon", "nan", "inf", "-inf"):
        assert gateway_start_by(absent) is None


async def test_an_unreadable_checkout_is_not_answered_503_while_the_gateway_still_waits() -> None:
    """A checkout whose saga cannot be read past its answer budget (a worker frozen for most of
    it, then the order's replicas away) reads on while the gateway waits, so that no 503 (a
    success, for the course's clients) answers a checkout that may not commit. Until
    2026-11-30 22:10 it read until ``start_by`` + the clock margin on the worker's own clock:
    the gateway's give-up only when both clocks agree. A worker whose clock runs ahead of the
    gateway's (here by 4.5 s, inside the margin) answered 503 half a second before the gateway
    gave up, and that 503 reached the client."""
    skew_ms, gateway_waits_s = 4500, 0.5
    clock = Clock()
    redis = FakeRedis(clock)
    store = FakeStore(redis)
    store.load_scripts(LUA_DIR)
    settings = dataclasses.replace(
        load_settings({}), checkout_timeout_ms=40, checkout_answer_ms=100
    )
    order = build(settings, store=store, bus=FakeBus(), clock=clock)
    order_id = one_unpaid_order(redis)
    for master in range(MASTERS):
        redis.replica_down(master)
    # The gateway sent the request 59.5 s ago by its own clock (it gives up in 0.5 s); this
    # worker's clock is 4.5 s ahead of it.
    sent_s = (clock.ms - skew_ms) / 1000 - (GATEWAY_READ_TIMEOUT_S - gateway_waits_s)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(Unavailable):
        await order.checkout(order_id, gateway_start_by(f"{sent_s:.3f}"))
    assert loop.time() - began >= gateway_waits_s


@pytest.mark.parametrize("one_round_trip", [True, False])
async def test_a_start_that_reaches_redis_past_its_start_by_time_starts_nothing(
    clock: Clock, one_round_trip: bool
) -> None:
    """The start-by bound holds where the saga would begin (saga_begin.lua, on its master's
    clock), not only before the start goes out: a start that left in time but reached Redis
    past the bound (queued behind a blocked connection, or its worker frozen between the two)
    began a saga after the gateway had given up and retried the checkout elsewhere. Found by
    the simulation (seed 15247 of 8,000-16,000, 2026-11-30 23:17): the retry answered "not
    paid", and the first try's start, queued for 22 s behind a replication wait, then began a
    saga that paid the order."""
    redis, hold = FakeRedis(clock), Hold()
    store, log, orchestrator = checkout_saga(redis, hold)
    store.one_round_trip = one_round_trip
    order_id = one_unpaid_order(redis)
    start_by = clock.ms + 1_000
    # The call that would begin the saga: the one round trip, or on the one-by-one path the
    # second saga_begin (after the look and the index entry).
    rule = ("C", "on_master_of") if one_round_trip else ("C", "saga_begin")
    begin = hold.rules[rule] = asyncio.Event()
    hold.skip[rule] = 0 if one_round_trip else 1
    starting = asyncio.create_task(
        hold.run_as("C", orchestrator.start(order_id, start_by=start_by))
    )
    await until(lambda: hold.parked.get("C", 0) >= 1, starting)
    clock.ms = start_by  # the gateway has given up on this try by now
    begin.set()
    assert (await starting).outcome is Outcome.LATE
    assert redis.hget(order_key(order_id), b"saga_id") is None
