"""Scripted fault scenarios: one interleaving each, spelled out, on the production saga code
over the fakes. Each known bug the simulation found has its own scenario here (xfail, strict),
so it stays reproducible whatever else changes; see ``test_saga_simulation`` for the search."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from common.consumer import ConsumerLoop
from common.errors import Refused, Unavailable
from common.ledger import LUA_DIR, Ledger
from common.messages import (
    STOCK,
    PaymentCancelled,
    PaymentCompleted,
    StockCompensated,
    StockUpdated,
    StockUpdateRequested,
    encode,
    saga_ids,
)
from common.saga.orchestrator import SLOW_START_GRACE_MS, Outcome
from common.terms import ITEMS
from order.saga import order_key
from stock.handlers import handlers as stock_handlers
from test.unit.fake_bus import FakeBus
from test.unit.fake_redis import MASTERS, FakeRedis, master_of
from test.unit.fake_store import FakeStore
from test.unit.scenario_kit import (
    DEADLINE_MS,
    STEP_MS,
    Clock,
    Hold,
    answered_paid,
    checkout_edge,
    checkout_saga,
    fresh_ids,
    given,
    one_unpaid_order,
    orchestrator_loop,
    orchestrator_over,
    order_apart_from_its_shard,
    reply_held_at_its_barrier,
    sweeper_of,
    until,
)


@pytest.mark.parametrize("one_round_trip", [True, False])
async def test_a_started_saga_stays_indexed_across_a_failover(
    clock: Clock, one_round_trip: bool
) -> None:
    """Found by the simulation (SIM_FAITHFUL=1, seeds 165, 681 at 54dea2d): the index entry
    was a plain ZADD nothing replicated. Fixed in bee964f; kept as its regression test, on
    both of the start's paths."""
    redis = FakeRedis(clock)
    store = FakeStore(redis)
    store.one_round_trip = one_round_trip
    store.load_scripts(LUA_DIR)
    orchestrator = orchestrator_over(store, clock)
    log = orchestrator.log
    order_id = order_apart_from_its_shard(redis, log)

    # Checkout._start: the start, replicated (the saga's state is now safe on a replica).
    started = await store.durable(lambda: orchestrator.start(order_id))
    given(started.outcome is Outcome.STARTED, "the checkout starts the saga")
    # The order process dies before publishing the first command, and the master holding the
    # index shard fails over before anything replicated it.
    redis.failover(master_of(log.shard_key(log.shard_of(order_id))))
    state = await log.read(order_id)
    given(state is not None and state.status == "running", "the saga survived")

    bus = FakeBus()
    sweeper = sweeper_of(orchestrator, store, bus)
    for _ in range(20):  # well past the step timeout and the deadline
        clock.ms += STEP_MS
        await sweeper.sweep()
    assert [type(m).__name__ for _, m in bus.published if m.saga_id == started.saga_id]


async def test_a_stale_reservation_does_not_revoke_a_confirmed_one() -> None:
    redis, hold = FakeRedis(), Hold()
    # first_node_wins: the barrier as it should be (see test_store), to show this bug apart.
    store = FakeStore(redis, hold, first_node_wins=True)
    store.load_scripts(LUA_DIR)
    items = Ledger(store, ITEMS)
    ids = fresh_ids("i")
    plenty = next(ids)
    scarce = next(i for i in ids if master_of(items.key(i)) != master_of(items.key(plenty)))
    redis.hset(items.key(plenty), {b"stock": b"5", b"price": b"1"})
    redis.hset(items.key(scarce), {b"stock": b"0", b"price": b"1"})
    redis.replicate(range(MASTERS))
    order_id = next(fresh_ids("o"))
    saga_id = f"{order_id}:1:{uuid.uuid4().hex[:8]}"
    command = StockUpdateRequested(
        saga_id=saga_id, order_id=order_id, items=((plenty, 1), (scarce, 1))
    )
    bus = FakeBus()

    def consumer() -> ConsumerLoop:
        return ConsumerLoop(
            name="stock",
            bus=bus,
            store=store,
            topics=[STOCK],
            group_id="stock",
            handlers=stock_handlers(items),
        )

    bus.append(STOCK, order_id.encode(), encode(command))
    batch = {TopicPartition(STOCK, bus.partition(order_id.encode())): _records(bus)}

    # A (about to be rebalanced away) takes: plenty T, scarce S (short); it is held before
    # giving the lines back. Since the fix, A confirms its takes on a replica before any
    # restore, so the failover below can no longer erase the 'S' that its restores rest on.
    release = asyncio.Event()
    hold.rules[("A", "restore")] = release
    stale = asyncio.create_task(hold.run_as("A", consumer()._process(batch)))
    await hold.until_parked("A", 1)
    # scarce's master fails over. Then stock arrives for scarce.
    redis.failover(master_of(items.key(scarce)))
    await items.adjust(scarce, 1, uuid.uuid4().hex)
    # B, the partition's new owner, handles the same command.
    await hold.run_as("B", consumer()._process(batch))
    release.set()
    with contextlib.suppress(Unavailable):
        await stale
    records = {i: redis.get(f"{items.key(i)}:op:{saga_id}") for i in (plenty, scarce)}
    replies = {type(m).__name__ for _, m in bus.published}
    if "StockUpdated" in replies:
        assert records == {plenty: b"T:1", scarce: b"T:1"}, "StockUpdated sent for nothing held"
    else:
        assert not any(r and r.startswith(b"T:") for r in records.values()), records


def _records(bus: FakeBus) -> list[Any]:
    (topic, partition), *_ = [k for k, log in bus.logs.items() if log]
    return bus.records(topic, partition, 0, len(bus.logs[(topic, partition)]))


async def test_a_timed_out_checkout_answers_what_the_saga_does() -> None:
    redis, hold = FakeRedis(), Hold()
    store, log, orchestrator = checkout_saga(redis, hold)
    order_id = one_unpaid_order(redis)
    checkout = checkout_edge(orchestrator, store)
    # The checkout times out with the saga still at its first step; it reads the saga and is
    # about to abort it when the stock reply moves the saga on.
    answer, release = await hold.park("C", "saga_move", checkout(order_id))
    state = await log.read(order_id)
    given(state is not None and (state.status, state.step) == ("running", 0), "at step 0")
    assert state is not None
    ids = saga_ids(state.saga_id, order_id)
    await orchestrator.on_reply(StockUpdated(**ids))
    moved = await log.read(order_id)
    given(moved is not None and (moved.status, moved.step) == ("running", 1), "the saga moves on")
    release.set()
    # The payment is slow: its reply comes after the checkout answered (or after a while).
    await asyncio.wait({answer}, timeout=5.0)
    await orchestrator.on_reply(PaymentCompleted(**ids))
    said_paid = await answered_paid(answer)
    paid = redis.hget(order_key(order_id), b"paid") == b"1"
    assert said_paid == paid, f"checkout answered paid={said_paid}, the order ends paid={paid}"


async def test_a_failover_during_a_timed_out_checkout_is_no_5xx() -> None:
    redis, hold = FakeRedis(), Hold()
    store, log, orchestrator = checkout_saga(redis, hold)
    order_id = one_unpaid_order(redis)
    checkout = checkout_edge(orchestrator, store)
    # No participant answers: the checkout times out and aborts the saga. The order's master
    # fails over after the abort, before its barrier (the start's barrier passes).
    hold.after[("C", "replicate")] = "saga_move"  # the abort's barrier
    answer, release = await hold.park("C", "replicate", checkout(order_id))
    redis.failover(master_of(order_key(order_id)))
    release.set()
    status = 200
    try:
        await answer
    except Refused as exc:
        status = exc.http_status  # 400: not paid (true: nothing was taken)
    except Unavailable as exc:
        status = exc.http_status
    assert status < 500, f"the checkout answered {status}"


async def test_a_paid_answer_survives_a_failover(clock: Clock) -> None:
    redis, hold = FakeRedis(clock), Hold()
    store, log, orchestrator = checkout_saga(redis, hold)
    order_id = one_unpaid_order(redis, replicated=False)
    started = await store.durable(lambda: orchestrator.start(order_id))
    ids = saga_ids(started.saga_id, order_id)
    await store.durable(lambda: orchestrator.on_reply(StockUpdated(**ids)))
    bus = FakeBus()
    checkout = checkout_edge(orchestrator, store, bus=bus, timeout_ms=2000)
    # A second checkout of the order joins the running saga and waits for it.
    answer = asyncio.create_task(hold.run_as("C", checkout(order_id)))
    # The payment's reply arrives late (past the deadline); the orchestrator's move to
    # 'succeeded' is made and about to be replicated.
    clock.ms += DEADLINE_MS
    consumer = orchestrator_loop(orchestrator, store, bus)
    reply = PaymentCompleted(**ids)
    moving = await reply_held_at_its_barrier(
        hold, consumer, bus, "PAYMENT_PROCESSING", order_id, reply
    )
    await asyncio.wait({answer}, timeout=5.0)  # the waiting checkout polls meanwhile
    # The order's master fails over before the move was replicated.
    redis.failover(master_of(order_key(order_id)))
    moving.cancel()  # its barrier would refuse; the batch will be read again, later
    # Meanwhile the sweeper finds the saga past its deadline, and turns it back.
    sweeper = sweeper_of(orchestrator, store, bus)
    clock.ms += STEP_MS
    await sweeper.sweep()
    await store.durable(lambda: orchestrator.on_reply(PaymentCancelled(**ids)))
    await store.durable(lambda: orchestrator.on_reply(StockCompensated(**ids)))
    await store.durable(lambda: orchestrator.on_reply(reply))  # the redelivery: stale now
    said_paid = await answered_paid(answer)
    paid = redis.hget(order_key(order_id), b"paid") == b"1"
    assert said_paid == paid, f"checkout answered paid={said_paid}, the order ends paid={paid}"


async def test_a_slow_start_then_a_crash_leaves_the_saga_indexed(clock: Clock) -> None:
    redis, hold = FakeRedis(clock), Hold()
    store, log, orchestrator = checkout_saga(redis, hold)
    order_id = one_unpaid_order(redis)
    store.one_round_trip = False  # the entry and the saga one by one, if the code can do both
    bus = FakeBus()
    sweeper = sweeper_of(orchestrator, store, bus)
    # The start registers the order, then its saga_begin stalls (a failover under way: the
    # client retries for seconds), past the step timeout.
    begin, reindex = asyncio.Event(), asyncio.Event()
    hold.rules[("C", "saga_begin")] = begin
    hold.skip[("C", "saga_begin")] = 1
    hold.rules[("C", "zadd")] = reindex
    hold.skip[("C", "zadd")] = 1
    starting = asyncio.create_task(hold.run_as("C", orchestrator.start(order_id)))
    await until(lambda: hold.parked.get("C", 0) >= 1, starting)
    clock.ms += STEP_MS + 1
    await sweeper.sweep()  # the entry is due; the order has no live saga: dropped
    begin.set()  # the saga begins...
    await until(lambda: hold.parked.get("C", 0) >= 2, starting)
    starting.cancel()  # ...and the process dies before registering it again
    state = await log.read(order_id)
    given(state is not None and state.status == "running", "the saga began")
    assert state is not None
    # The entry of a one-by-one start is first due only after SLOW_START_GRACE_MS, so the
    # sweep above could not drop it; past that grace the sweeper finds the orphaned saga.
    clock.ms += SLOW_START_GRACE_MS
    for _ in range(20):  # well past the step timeout and the deadline
        clock.ms += STEP_MS
        await sweeper.sweep()
    assert [type(m).__name__ for _, m in bus.published if m.saga_id == state.saga_id]


async def test_the_sweeper_keeps_a_saga_whose_end_a_failover_erased(clock: Clock) -> None:
    redis, hold = FakeRedis(clock), Hold()
    store, log, orchestrator = checkout_saga(redis, hold)
    order_id = order_apart_from_its_shard(redis, log, replicated=False)
    store.one_round_trip = False  # the index entry in the order's own shard, on another master
    started = await store.durable(lambda: orchestrator.start(order_id))
    ids = saga_ids(started.saga_id, order_id)
    await store.durable(lambda: orchestrator.on_reply(StockUpdated(**ids)))
    redis.replicate(range(MASTERS))  # the index entry too: this is not the first bug again
    bus = FakeBus()
    consumer = orchestrator_loop(orchestrator, store, bus)
    # The payment's reply is applied (succeeded) but not yet replicated when the sweeper looks.
    moving = await reply_held_at_its_barrier(
        hold, consumer, bus, "PAYMENT_PROCESSING", order_id, PaymentCompleted(**ids)
    )
    sweeper = sweeper_of(orchestrator, store, bus)
    clock.ms += STEP_MS + 1
    await sweeper.sweep()  # finds the saga ended: drops its index entry
    # The order's master fails over; the order process dies; the broker comes back empty.
    redis.failover(master_of(order_key(order_id)))
    moving.cancel()
    bus.restart()
    state = await log.read(order_id)
    if state is not None and state.live:  # the move was erased: the sweeper must still drive it
        for _ in range(20):  # well past the step timeout and the deadline
            clock.ms += STEP_MS
            await sweeper.sweep()
        assert [type(m).__name__ for _, m in bus.published if m.saga_id == started.saga_id]
    else:  # since the fix the sweeper confirms the end on a replica before dropping the entry
        assert state is not None and state.status == "succeeded"


async def test_a_failover_during_the_one_round_trip_start_is_no_5xx(clock: Clock) -> None:
    redis, hold = FakeRedis(clock), Hold()
    store, log, orchestrator = checkout_saga(redis, hold)
    order_id = one_unpaid_order(redis)
    checkout = checkout_edge(orchestrator, store)
    # Parked at FakeStore.on_master_of's barrier.
    answer, release = await hold.park("C", "wait", checkout(order_id))
    redis.failover(master_of(order_key(order_id)))  # the master dies during the WAIT
    release.set()
    status, raised = 200, ""
    try:
        await answer
    except (Refused, Unavailable) as exc:
        status = exc.http_status
    except Exception as exc:  # what the HTTP edge turns into a 500
        status, raised = 500, repr(exc)
    assert status < 500, f"the checkout answered {status} {raised}"


async def test_a_start_rerun_after_a_failover_registers_the_saga_again(clock: Clock) -> None:
    redis, hold = FakeRedis(clock), Hold()
    store = FakeStore(redis, hold)
    store.load_scripts(LUA_DIR)
    store.one_round_trip = False  # the one-by-one start (slot map moved, script not loaded...)
    orchestrator = orchestrator_over(store, clock)
    log = orchestrator.log
    order_id = order_apart_from_its_shard(redis, log)
    # Checkout._start: the start under durable(); the index shard's master fails over before
    # the barrier, so durable() runs the start again.
    starting, release = await hold.park(
        "C", "replicate", store.durable(lambda: orchestrator.start(order_id))
    )
    redis.failover(master_of(log.shard_key(log.shard_of(order_id))))
    release.set()
    started = await starting
    state = await log.read(order_id)
    given(state is not None and state.status == "running", "the saga survived")
    assert state is not None
    bus = FakeBus()
    if started.outcome is Outcome.STARTED:
        await bus.publish(started.commands)
    sent_before = len(bus.published)
    sweeper = sweeper_of(orchestrator, store, bus)
    for _ in range(20):  # well past the step timeout and the deadline
        clock.ms += STEP_MS
        await sweeper.sweep()
    # No participant answers here: a sweeper that knows the saga re-sends or aborts it.
    resent = [m for _, m in bus.published[sent_before:] if m.saga_id == state.saga_id]
    assert resent, f"the start answered {started.outcome.value}; the sweeper never saw the saga"


async def test_a_second_slow_start_does_not_push_the_live_saga_s_entry_away(clock: Clock) -> None:
    """Found by the simulation (seed 4505 of the issue 16 search, where a compensation then
    waited 54 s): two checkouts of one order take the slow start; the second registers the
    order with the slow start's grace after the first started the saga, then joins it. The
    entry stayed due only after SLOW_START_GRACE_MS: the sweeper left the saga alone."""
    redis, hold = FakeRedis(clock), Hold()
    store, log, orchestrator = checkout_saga(redis, hold)
    store.one_round_trip = False
    order_id = one_unpaid_order(redis)
    # The second is parked after its look found no saga.
    second, release = await hold.park("C2", "zadd", orchestrator.start(order_id))
    first = await hold.run_as("C1", orchestrator.start(order_id))
    given(first.outcome is Outcome.STARTED, "the first checkout starts the saga")
    release.set()
    given((await second).outcome is Outcome.JOINED, "the second joins it")
    bus = FakeBus()  # the first command is lost: only the sweeper can move the saga
    sweeper = sweeper_of(orchestrator, store, bus)
    for _ in range(3):
        clock.ms += STEP_MS
        await sweeper.sweep()
    assert [m for _, m in bus.published if m.saga_id == first.saga_id], "never re-sent"


async def test_a_slow_start_begins_no_saga_its_index_entry_could_lose(clock: Clock) -> None:
    """Found by the simulation (seed 5091 of the issue 16 search): on the slow start the
    saga (on the order's master) reached a replica while its index entry (another master,
    whose replica was away) did not; the checkout's process died, that master failed over
    while its replica resynced, and no sweeper ever saw the saga."""
    redis = FakeRedis(clock)
    store, log, orchestrator = checkout_saga(redis, Hold())
    store.one_round_trip = False
    order_id = order_apart_from_its_shard(redis, log)
    index_master = master_of(log.shard_key(log.shard_of(order_id)))
    redis.replica_down(index_master)
    with contextlib.suppress(Unavailable):  # the checkout retries, then its process dies
        await store.durable(lambda: orchestrator.start(order_id))
    redis.replica_back(index_master)
    redis.failover(index_master)
    state = await log.read(order_id)
    if state is None or not state.live:
        return  # no saga began: nothing to lose
    bus = FakeBus()
    sweeper = sweeper_of(orchestrator, store, bus)
    clock.ms += SLOW_START_GRACE_MS
    for _ in range(20):
        clock.ms += STEP_MS
        await sweeper.sweep()
    assert [m for _, m in bus.published if m.saga_id == state.saga_id], "a saga nobody drives"
