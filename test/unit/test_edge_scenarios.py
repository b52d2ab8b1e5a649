"""The holes of issue 16 ("True answers at the edges"), one scripted interleaving each, on the
production saga code over the fakes. Each failed against the code of 06b336f; the contract they
check is the README's: 200 only once the order is paid, 400 only once it is not paid and holds
nothing, nothing lost or created."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import TopicPartition

from common.errors import Refused, Unavailable
from common.ledger import BALANCE_LIMIT, Taken
from common.messages import (
    PAYMENT_PROCESSING,
    PaymentCancelled,
    PaymentCompleted,
    PaymentRequested,
    StockCompensated,
    StockUpdated,
    StockUpdateRequested,
    encode,
    saga_ids,
)
from common.saga.definition import SagaRun
from common.saga.orchestrator import Outcome
from common.saga.waiters import Verdict, Waiters
from order.orders import MAX_ORDER_LINE_BYTES, MAX_ORDER_LINES
from order.saga import CHECKOUT, order_key
from test.unit.fake_bus import MAX_REQUEST_SIZE, FakeBus, record_size
from test.unit.fake_redis import FakeRedis, master_of
from test.unit.scenario_kit import (
    DEADLINE_MS,
    STEP_MS,
    Clock,
    Hold,
    ScenarioBroken,
    Services,
    answered_paid,
    checkout_edge,
    checkout_saga,
    fresh_ids,
    given,
    one_unpaid_order,
    orchestrator_loop,
    reply_held_at_its_barrier,
    sweeper_of,
    until,
)


async def test_hole1_a_paid_answer_on_the_slow_start_rests_on_a_replica(clock: Clock) -> None:
    """The one-round-trip start fails (a WAIT that timed out, NOSCRIPT, MOVED...), so the
    start looks first: it finds the order paid by a move that no replica holds yet."""
    redis, hold = FakeRedis(clock), Hold()
    store, log, orchestrator = checkout_saga(redis, hold)
    order_id = one_unpaid_order(redis)
    started = await store.durable(lambda: orchestrator.start(order_id))
    ids = saga_ids(started.saga_id, order_id)
    await store.durable(lambda: orchestrator.on_reply(StockUpdated(**ids)))
    bus = FakeBus()
    consumer = orchestrator_loop(orchestrator, store, bus)
    # The payment's reply arrives late (past the deadline): the move to 'succeeded' is made on
    # the order's master, its barrier still pending.
    clock.ms += DEADLINE_MS
    reply = PaymentCompleted(**ids)
    moving = await reply_held_at_its_barrier(
        hold, consumer, bus, PAYMENT_PROCESSING, order_id, reply
    )
    given(redis.hget(order_key(order_id), b"paid") == b"1", "the move is on the master")
    # A second checkout of the order, on the slow start.
    store.one_round_trip = False
    answer = asyncio.create_task(hold.run_as("C", checkout_edge(orchestrator, store)(order_id)))
    await asyncio.wait({answer}, timeout=5.0)
    # The order's master fails over before the move was replicated.
    redis.failover(master_of(order_key(order_id)))
    moving.cancel()
    # The sweeper finds the saga past its deadline and turns it back; the participants comply.
    sweeper = sweeper_of(orchestrator, store, bus)
    clock.ms += STEP_MS
    await sweeper.sweep()
    await store.durable(lambda: orchestrator.on_reply(PaymentCancelled(**ids)))
    await store.durable(lambda: orchestrator.on_reply(StockCompensated(**ids)))
    said_paid = await answered_paid(answer)
    paid = redis.hget(order_key(order_id), b"paid") == b"1"
    assert said_paid == paid, f"checkout answered paid={said_paid}, the order ends paid={paid}"


class CountingWaiters(Waiters):
    """``Waiters`` that count the waits that ended, and run ``on_end(n)`` after the n-th."""

    def __init__(self, on_end: Callable[[int], None] = lambda n: None) -> None:
        super().__init__(poll_interval_s=0.005)
        self.ended = 0
        self.on_end = on_end

    async def wait(
        self, saga_id: str, poll: Callable[[], Awaitable[Verdict | None]], timeout_s: float
    ) -> Verdict | None:
        try:
            return await super().wait(saga_id, poll, timeout_s)
        finally:
            self.ended += 1
            self.on_end(self.ended)


async def test_hole2_a_saga_that_succeeded_is_never_answered_not_paid() -> None:
    """The checkout timed out and every durable read of its decision fails (the order's
    replica resyncs); meanwhile the saga succeeds, and the replica catches up just before the
    decision's last read."""
    redis = FakeRedis()
    store, log, orchestrator = checkout_saga(redis, Hold())
    order_id = one_unpaid_order(redis)
    master = master_of(order_key(order_id))
    bus = FakeBus()

    def caught_up_after_the_decision_waited(ended: int) -> None:
        if ended == 2:  # the wait after the timeout's turn-back attempt found no verdict
            redis.resynced(master)

    waiters = CountingWaiters(caught_up_after_the_decision_waited)
    checkout = checkout_edge(
        orchestrator, store, bus=bus, waiters=waiters, timeout_ms=50, answer_ms=30_000
    )
    answer = asyncio.create_task(checkout(order_id))
    await until(lambda: bool(bus.published), answer)
    ids = saga_ids(bus.published[0][1].saga_id, order_id)
    await store.durable(lambda: orchestrator.on_reply(StockUpdated(**ids)))
    redis.replica_back(master)  # from now on no durable read of the order passes
    await until(lambda: waiters.ended >= 1, answer)  # timed out: deciding
    await orchestrator.on_reply(PaymentCompleted(**ids))  # on the master; the replica lags
    said_paid = await answered_paid(answer)
    paid = redis.hget(order_key(order_id), b"paid") == b"1"
    given(paid, "the saga succeeded")
    assert said_paid == paid, f"checkout answered paid={said_paid}, the order ends paid={paid}"


async def test_hole3_a_not_paid_answer_waits_for_the_compensation() -> None:
    """The checkout times out with stock reserved and the payment unanswered: it turns the
    saga back. Its 400 must wait until the reservation is given back."""
    svc = Services()
    item, user = svc.item(stock=5), svc.user(credit=10)
    order_id = svc.order(user, [(item, 2)], total=2)
    waiters = CountingWaiters()
    checkout = svc.checkout_edge(waiters=waiters, timeout_ms=50, answer_ms=30_000)
    answer = asyncio.create_task(checkout(order_id))
    await until(lambda: bool(svc.bus.published), answer)
    saga_id = svc.bus.published[0][1].saga_id
    await svc.deliver("stock")
    await svc.deliver("order")  # reserved; the payment is asked, and never answers in time
    given(svc.record(svc.items, item, saga_id) == b"T:2", "the stock is reserved")
    given(any(isinstance(m, PaymentRequested) for _, m in svc.bus.published), "payment asked")
    held_at_answer: list[bytes | None] = []
    answer.add_done_callback(lambda _: held_at_answer.append(svc.record(svc.items, item, saga_id)))
    # The checkout times out, turns the saga back and waits once for its end; had it answered
    # by now, it would have answered with the stock still held.
    await until(lambda: answer.done() or waiters.ended >= 2, answer)
    while not answer.done():  # the participants come back: the compensations go through
        await svc.deliver()
        await asyncio.sleep(0.01)
    assert not await answered_paid(answer)
    assert held_at_answer and not (held_at_answer[0] or b"").startswith(b"T:"), (
        f"answered not paid while the saga held {held_at_answer}"
    )
    assert svc.balance(svc.items, item) == 5


async def test_hole6_no_reservation_is_acted_on_without_a_replica() -> None:
    """Stock's master has no replica connected (killed, restarting) when it reserves; the
    replica comes back and resyncs; the master dies and the resyncing replica is promoted
    (``cluster-replica-validity-factor 0``) without the reservation. The order must not end
    paid with its stock not reserved."""
    svc = Services()
    item, user = svc.item(stock=5), svc.user(credit=10)
    order_id = svc.order(user, [(item, 1)], total=1)
    stock = svc.redis["stock"]
    master = master_of(svc.items.key(item))
    started = await svc.stores["order"].durable(lambda: svc.orchestrator.start(order_id))
    await svc.bus.publish(started.commands)
    stock.replica_down(master)
    try:
        await svc.deliver("stock")  # reserved, and StockUpdated sent if the barrier passes
    except Unavailable:
        pass  # not vouched for: the batch stays unconsumed
    stock.replica_back(master)
    await svc.deliver("order", "payment")
    await svc.deliver("order")
    stock.failover(master)  # the resyncing replica takes over
    for _ in range(5):  # then everything heals
        await svc.deliver()
    paid = svc.redis["order"].hget(order_key(order_id), b"paid") == b"1"
    given(paid, "the order is paid in the end")
    record = svc.record(svc.items, item, started.saga_id)
    assert (record, svc.balance(svc.items, item)) == (b"T:1", 4), "paid, but no stock reserved"


async def test_hole5_a_refund_never_pushes_a_balance_past_the_limit() -> None:
    """A charge, then funds added up to the limit, then the charge refunded: the balance went
    past the limit, and from then on even ``pay 1`` was refused."""
    svc = Services()
    users = svc.users
    user = await users.create(next(fresh_ids("u")), {"credit": 0}, next(fresh_ids("r")))
    await users.adjust(user, 10, next(fresh_ids("rq")))
    saga_id = f"{next(fresh_ids('o'))}:1:aa"
    given(await users.take(user, saga_id, 10, started=1) is Taken.TAKEN, "charged")
    with contextlib.suppress(Refused):
        await users.adjust(user, BALANCE_LIMIT, next(fresh_ids("rq")))
    await users.restore(user, saga_id, started=1)
    credit = svc.balance(users, user)
    assert credit <= BALANCE_LIMIT, f"credit {credit} is past the limit"
    assert await users.adjust(user, -1, next(fresh_ids("rq"))) == credit - 1


async def test_hole7_an_order_too_big_for_one_message_is_refused_before_its_saga_starts(
    clock: Clock,
) -> None:
    """About 29,000 lines of 32-character ids make the first command larger than the
    producer's 1 MiB: it could not be sent, nor could the compensation of the deadline abort;
    the saga stayed compensating forever, and every sweeper round that met it failed."""
    svc = Services(clock)
    lines = [(uuid.uuid4().hex, 1) for _ in range(30_000)]
    order_id = svc.order(svc.user(credit=10**6), lines, total=len(lines))
    checkout = svc.checkout_edge(timeout_ms=50, answer_ms=300)
    assert not await answered_paid(asyncio.create_task(checkout(order_id)))
    sweeper = sweeper_of(svc.orchestrator, svc.stores["order"], svc.bus)
    failed_rounds = []
    for _ in range(10):  # well past the step timeout and the deadline
        clock.ms += STEP_MS
        try:
            await sweeper.sweep()
        except MessageSizeTooLargeError as exc:
            failed_rounds.append(exc)
    state = await svc.log.read(order_id)
    assert state is None or not state.live, f"its saga is {state.status} for good"
    assert not failed_rounds, f"{len(failed_rounds)} sweeper rounds failed"


async def test_hole7_an_order_whose_compensation_does_not_fit_holds_nothing(
    clock: Clock,
) -> None:
    """Inside the 6-byte window (StockCompensationRequested's tag is 6 bytes longer than
    StockUpdateRequested's) the stock is reserved, the charge fails, and the reservation can
    never be given back."""
    svc = Services(clock)
    plenty = svc.item(stock=10**6)
    user = svc.user(credit=0)
    order_id = next(fresh_ids("o"))
    lines = _lines_in_the_window(order_id, user, plenty, clock(), svc)
    svc.redis["order"].hset(
        order_key(order_id),
        {
            b"user_id": user.encode(),
            b"items": json.dumps(lines).encode(),
            b"total_cost": b"%d" % len(lines),
            b"paid": b"0",
        },
    )
    started = await svc.stores["order"].durable(lambda: svc.orchestrator.start(order_id))
    if started.commands:
        await svc.bus.publish(started.commands)
    sweeper = sweeper_of(svc.orchestrator, svc.stores["order"], svc.bus)
    for _ in range(10):  # the participants answer; the sweeper runs past the deadline
        for group in ("stock", "order", "payment"):
            with contextlib.suppress(MessageSizeTooLargeError):
                await svc.deliver(group)
        clock.ms += STEP_MS
        with contextlib.suppress(MessageSizeTooLargeError):
            await sweeper.sweep()
    state = await svc.log.read(order_id)
    assert state is None or not state.live, f"its saga is {state.status} for good"
    assert svc.balance(svc.items, plenty) == 10**6, "stock held by an order that is not paid"


def _lines_in_the_window(
    order_id: str, user: str, plenty: str, started: int, svc: Services
) -> list[tuple[str, int]]:
    """Lines (many of ``plenty``, one of an item whose id length fine-tunes the size) for which
    the saga's stock command fits in one Kafka record and its compensation does not."""
    step = CHECKOUT.steps[0]

    def sizes(count: int, pad: int) -> tuple[int, int, list[tuple[str, int]]]:
        lines = [(plenty, 1)] * count + [("p" * pad, 1)]
        run = SagaRun(
            saga_id=f"{order_id}:1:00000000",
            entity_id=order_id,
            snapshot={"user_id": user, "items": json.dumps(lines), "total_cost": "1"},
        )
        key = order_id.encode()
        command = record_size(key, encode(step.command(run)))
        compensation = record_size(key, encode(step.compensation(run)))
        return command, compensation, lines

    base, per = sizes(70_000, 1)[0], sizes(70_001, 1)[0] - sizes(70_000, 1)[0]
    count = 70_000 + (MAX_REQUEST_SIZE - base) // per
    for pad in range(1, 32):
        command, compensation, lines = sizes(count, pad)
        if command <= MAX_REQUEST_SIZE < compensation:
            svc.item(stock=10, item_id="p" * pad)
            return lines
    raise ScenarioBroken("no order size between the command's and the compensation's")


async def test_hole7_add_item_keeps_an_order_within_its_bound() -> None:
    svc = Services()
    orders = svc.orders()
    item = svc.item(stock=0)
    full = svc.order(svc.user(credit=0), [(item, 1)] * (MAX_ORDER_LINES - 1), total=0)
    assert await orders.add_item(full, item, 1, 0, next(fresh_ids("rq"))) == 0
    with pytest.raises(Refused, match="full"):
        await orders.add_item(full, item, 1, 0, next(fresh_ids("rq")))
    assert len((await orders.find(full))["items"]) == MAX_ORDER_LINES
    # Long ids (longer than any the API makes) meet the byte bound first.
    long_id = "x" * 200
    wide = svc.order(svc.user(credit=0), [], total=0)
    added = 0
    with pytest.raises(Refused, match="full"):
        for _ in range(MAX_ORDER_LINES):
            await orders.add_item(wide, long_id, 1, 0, next(fresh_ids("rq")))
            added += 1
    assert 0 < added < MAX_ORDER_LINES
    stored = svc.redis["order"].hget(order_key(wide), b"items") or b""
    assert len(stored) <= MAX_ORDER_LINE_BYTES < len(stored) + len(long_id) + 8


async def _quiet(svc: Services, clock: Clock) -> None:
    """Every message delivered and the sweeper run well past the deadline: nothing moves."""
    sweeper = sweeper_of(svc.orchestrator, svc.stores["order"], svc.bus)
    for _ in range(12):
        await svc.deliver()
        clock.ms += STEP_MS
        await sweeper.sweep()
    await svc.deliver()


async def _order_state(svc: Services, order_id: str) -> tuple[bool, str]:
    state = await svc.log.read(order_id)
    paid = svc.redis["order"].hget(order_key(order_id), b"paid") == b"1"
    return paid, state.status if state is not None else ""


async def test_hole4_an_order_reset_under_a_live_saga_turns_it_back(clock: Clock) -> None:
    """The orders are reset while a checkout's saga has reserved the stock and charged the
    user (its reply not yet handled): the order's saga fields were wiped, its replies went
    stale, the sweeper dropped it, and nothing gave back what it took; the waiting checkout
    answered 400 'order vanished' while the user was charged."""
    svc = Services(clock)
    await svc.batch_init(1, stock=10, credit=10)
    clock.ms += 1000
    held_at_answer: list[list[bytes | None]] = []

    async def checkout_noting_what_is_held() -> None:
        """The checkout; what its saga holds is read the moment it answers, in the same step
        (a done-callback ran a loop turn later, after the test had looked)."""
        try:
            await svc.checkout_edge(timeout_ms=30_000, answer_ms=31_000)("0")
        finally:
            saga_id = svc.bus.published[0][1].saga_id
            held_at_answer.append(
                [svc.record(svc.items, "0", saga_id), svc.record(svc.users, "0", saga_id)]
            )

    answer = asyncio.create_task(checkout_noting_what_is_held())
    await until(lambda: bool(svc.bus.published), answer)
    saga_id = svc.bus.published[0][1].saga_id
    await svc.deliver("stock")
    await svc.deliver("order")
    await svc.deliver("payment")  # charged; PaymentCompleted not handled yet
    given(svc.record(svc.users, "0", saga_id) == b"T:2", "the user is charged")
    clock.ms += 1000
    await svc.orders().batch_init(1, 1, 1, 1)
    await _quiet(svc, clock)
    said_paid = await answered_paid(answer)
    paid, status = await _order_state(svc, "0")
    assert (paid, status in ("running", "compensating")) == (False, False), (paid, status)
    assert (svc.balance(svc.items, "0"), svc.balance(svc.users, "0")) == (10, 10)
    assert not said_paid
    assert not any((r or b"").startswith(b"T:") for r in held_at_answer[0]), held_at_answer


async def test_hole4_a_compensation_after_a_stock_reset_gives_nothing_back(clock: Clock) -> None:
    """A saga reserved 3 units; stock is reset to 10; the charge fails and the compensation
    gave the old 3 back onto the new 10."""
    svc = Services(clock)
    await svc.batch_init(1, stock=10, credit=0)
    clock.ms += 1000
    started = await svc.stores["order"].durable(lambda: svc.orchestrator.start("0"))
    await svc.bus.publish(started.commands)
    await svc.deliver("stock")
    given(svc.balance(svc.items, "0") == 8, "the saga reserved its two lines")
    clock.ms += 1000
    await svc.items.batch_init(1, {"stock": 10, "price": 1})
    await _quiet(svc, clock)  # the charge fails (no credit): the saga is turned back
    given((await _order_state(svc, "0"))[1] == "failed", "the saga failed")
    assert svc.balance(svc.items, "0") == 10


async def test_hole4_a_take_after_a_stock_reset_is_refused(clock: Clock) -> None:
    """A saga begins; stock is reset before its reservation is handled: the reservation was
    taken from the new stock, and the order paid with it."""
    svc = Services(clock)
    await svc.batch_init(1, stock=10, credit=10)
    clock.ms += 1000
    started = await svc.stores["order"].durable(lambda: svc.orchestrator.start("0"))
    await svc.bus.publish(started.commands)
    clock.ms += 1000
    await svc.items.batch_init(1, {"stock": 10, "price": 1})
    await _quiet(svc, clock)
    assert svc.balance(svc.items, "0") == 10, "the reset stock was taken by an older saga"


async def test_hole4_a_command_delivered_again_after_a_reset_gets_its_first_answer(
    clock: Clock,
) -> None:
    """A saga paid its order; stock and users are reset (batch_init); then its two commands are
    delivered again (a broker replaying them). Each got "fenced" this time, and its record
    ``T:2`` was overwritten with ``F``: the order's admin view then found a paid saga that had
    reserved and charged nothing ("saga succeeded but not every line is reserved")."""
    svc = Services(clock)
    await svc.batch_init(1, stock=10, credit=10)
    clock.ms += 1000
    started = await svc.stores["order"].durable(lambda: svc.orchestrator.start("0"))
    await svc.bus.publish(started.commands)
    await _quiet(svc, clock)
    given(await _order_state(svc, "0") == (True, "succeeded"), "the saga paid the order")
    clock.ms += 1000
    await svc.items.batch_init(1, {"stock": 7, "price": 1})
    await svc.users.batch_init(1, {"credit": 5})
    commands = (StockUpdateRequested, PaymentRequested)
    again = [(t, m) for t, m in svc.bus.published if isinstance(m, commands)]
    given(len(again) == 2, "one command of each step")
    replied = len(svc.bus.published) + len(again)
    await svc.bus.publish(again)
    await svc.deliver("stock", "payment")
    assert [type(m) for _, m in svc.bus.published[replied:]] in (
        [StockUpdated, PaymentCompleted],
        [PaymentCompleted, StockUpdated],
    )
    assert svc.record(svc.items, "0", started.saga_id) == b"T:2"
    assert svc.record(svc.users, "0", started.saga_id) == b"T:2"
    await _quiet(svc, clock)
    assert await _order_state(svc, "0") == (True, "succeeded")
    assert (svc.balance(svc.items, "0"), svc.balance(svc.users, "0")) == (7, 5)


async def test_hole4_a_rerun_of_the_benchmark_s_init_leaves_every_entity_as_it_sets_it(
    clock: Clock,
) -> None:
    """Sagas at every stage when the three batch_inits run again (stock, payment, orders):
    once quiet, every reset entity holds exactly what the reset gave it."""
    svc = Services(clock)
    n = 6
    await svc.batch_init(n, stock=10, credit=10)
    clock.ms += 1000
    for order_id in map(str, range(n)):
        started = await svc.stores["order"].durable(partial(svc.orchestrator.start, order_id))
        await svc.bus.publish(started.commands)
    await svc.deliver("stock")  # every saga reserved
    await svc.deliver("order")
    for _ in range(2):  # some are charged, some succeed; the rest wait
        batch = [k for k in svc.bus.backlog("payment", ("PAYMENT",))][:1]
        for topic, partition in batch:
            start = svc.bus.position("payment", topic, partition)
            records = svc.bus.records(topic, partition, start, start + 1)
            await svc.consumers["payment"]._process({TopicPartition(topic, partition): records})
            svc.bus.commit("payment", topic, partition, start + 1, svc.bus.epoch)
        await svc.deliver("order")
    clock.ms += 1000
    await svc.batch_init(n, stock=7, credit=5)
    await _quiet(svc, clock)
    for entity in map(str, range(n)):
        assert svc.balance(svc.items, entity) == 7, f"item {entity}"
        assert svc.balance(svc.users, entity) == 5, f"user {entity}"
        paid, status = await _order_state(svc, entity)
        assert not paid and status not in ("running", "compensating"), (entity, paid, status)


async def test_hole4_a_checkout_whose_saga_paid_before_a_reset_answers_paid(
    clock: Clock,
) -> None:
    """Its saga succeeds; before the waiting checkout reads that, the orders are reset and the
    order is checked out again. Its answer is its own saga's verdict: paid."""
    hold = Hold()
    svc = Services(clock, hold)
    await svc.batch_init(1, stock=10, credit=10)
    clock.ms += 1000
    polled = asyncio.Event()
    hold.rules[("C", "hmget")] = polled  # the waiting checkout reads nothing until released
    checkout = svc.checkout_edge(timeout_ms=30_000, answer_ms=31_000)
    answer = asyncio.create_task(hold.run_as("C", checkout("0")))
    await until(lambda: bool(svc.bus.published), answer)
    saga_id = svc.bus.published[0][1].saga_id
    await svc.deliver()
    given((await _order_state(svc, "0")) == (True, "succeeded"), "its saga paid the order")
    clock.ms += 1000
    await svc.orders().batch_init(1, 1, 1, 1)
    again = await svc.stores["order"].durable(lambda: svc.orchestrator.start("0"))
    given(again.outcome is Outcome.STARTED, "a new checkout of the reset order began")
    polled.set()
    assert await answered_paid(answer)
    assert svc.record(svc.users, "0", saga_id) == b"T:2"
