"""Order's composition root: every object of an order worker is built here, from its settings,
and nowhere else. The app (``order/app.py``), the operator's tool (``order/admin.py``) and the
tests and simulation call ``build``, the last two with fakes for the store and the bus and a
clock and randomness of their own. Building connects nothing: the runtime's parts connect when
the app serves (or when the tool starts what it needs)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from common.bus import Bus
from common.consumer import ConsumerLoop
from common.http import GATEWAY_WAITS_PAST_START_BY_S
from common.ledger import LUA_DIR
from common.messages import (
    ORDER_STATUS_UPDATE,
    PAYMENT_PROCESSING,
    STOCK_PROCESSING,
    CheckoutFinished,
)
from common.saga.log import INDEX_SHARDS, SagaLog
from common.saga.orchestrator import Clock, Orchestrator, Speculation, now_ms
from common.saga.sweeper import Sweeper
from common.saga.verdict import Verdicts
from common.saga.waiters import Waiters
from common.service import Runtime
from common.settings import Settings
from common.store import Store
from common.types import MessageBus, Outgoing, Storage
from order.checkout import Checkout
from order.orders import Orders
from order.saga import CHECKOUT
from order.stock_client import StockClient

ORDER_LUA = Path(__file__).parent / "lua"
SWEEPS_PER_STEP = 4
"""The sweeper looks this many times per step timeout (at most every 100 ms)."""
STANDBY_POLL_S = 0.1
"""How often a standby's waiting checkouts read their saga: a standby follows no outcomes (it
serves only while the active worker restarts, and its checkouts are driven there)."""


@dataclass(frozen=True)
class OrderService:
    """One order worker's objects."""

    settings: Settings
    store: Storage
    bus: MessageBus
    orchestrator: Orchestrator
    orders: Orders
    waiters: Waiters
    checkout: Checkout
    stock: StockClient
    replies: ConsumerLoop
    """Drives the sagas: the participants' replies, in consumer group ``order``."""
    outcomes: ConsumerLoop
    """Answers this worker's waiting checkouts: every outcome, read without a group."""
    sweeper: Sweeper
    runtime: Runtime


def checkout_orchestrator(
    store: Storage,
    *,
    step_timeout_ms: int,
    deadline_ms: int,
    clock: Clock = now_ms,
    rng: random.Random | None = None,
    index_shards: int = INDEX_SHARDS,
    steps: str = "auto",
) -> Orchestrator:
    """The checkout saga's orchestrator, its log in ``store`` (the order's own hashes);
    ``steps`` is ``CHECKOUT_STEPS``: when it asks for the stock and the charge at once."""
    log = SagaLog(store, CHECKOUT, rng=rng, index_shards=index_shards)
    speculation = {
        "auto": Speculation,
        "at-once": Speculation.always,
        "one-by-one": Speculation.never,
    }[steps]()
    return Orchestrator(
        CHECKOUT,
        log,
        step_timeout_ms=step_timeout_ms,
        deadline_ms=deadline_ms,
        clock=clock,
        speculation=speculation,
    )


def build(
    settings: Settings,
    *,
    store: Storage | None = None,
    bus: MessageBus | None = None,
    waiters: Waiters | None = None,
    clock: Clock = now_ms,
    rng: random.Random | None = None,
    index_shards: int = INDEX_SHARDS,
) -> OrderService:
    """An order worker from ``settings``; ``store``, ``bus`` and ``waiters`` replace the real
    ones, ``clock`` and ``rng`` the wall clock and the saga ids' randomness."""
    store = Store(settings, LUA_DIR, ORDER_LUA) if store is None else store
    bus = Bus(settings) if bus is None else bus
    if waiters is None:
        waiters = Waiters(STANDBY_POLL_S) if settings.standby else Waiters()
    orchestrator = checkout_orchestrator(
        store,
        step_timeout_ms=settings.saga_step_timeout_ms,
        deadline_ms=settings.saga_deadline_ms,
        clock=clock,
        rng=rng,
        index_shards=index_shards,
        steps=settings.checkout_steps,
    )
    verdicts = Verdicts(
        orchestrator,
        store,
        bus,
        waiters,
        timeout_ms=settings.checkout_timeout_ms,
        answer_ms=settings.checkout_answer_ms,
        concurrency=settings.checkout_concurrency,
        caller_waits_ms=GATEWAY_WAITS_PAST_START_BY_S * 1000,  # past start_by: common/http.py
    )
    replies = ConsumerLoop(
        name="orchestrator",
        bus=bus,
        store=store,
        topics=[STOCK_PROCESSING, PAYMENT_PROCESSING],
        group_id="order",
        handlers=orchestrator.handlers(),
        on_durable=partial(_wake_local_waiters, waiters),
    )
    outcomes = ConsumerLoop(
        name="outcomes",
        bus=bus,
        store=None,
        topics=[ORDER_STATUS_UPDATE],
        group_id=None,
        handlers={CheckoutFinished: partial(_on_finished, waiters)},
    )
    sweeper = Sweeper(
        orchestrator,
        store,
        bus,
        settings.worker_id,
        interval_ms=max(settings.saga_step_timeout_ms // SWEEPS_PER_STEP, 100),
    )
    stock = StockClient(settings.stock_url, timeout_s=settings.redis_op_timeout_ms / 1000 + 2)
    runtime = Runtime(settings, store, bus)
    # A standby serves HTTP only: the active workers consume the replies and sweep.
    runtime.components += [stock] if settings.standby else [stock, replies, outcomes, sweeper]
    return OrderService(
        settings=settings,
        store=store,
        bus=bus,
        orchestrator=orchestrator,
        orders=Orders(store, orchestrator, bus),
        waiters=waiters,
        checkout=Checkout(verdicts),
        stock=stock,
        replies=replies,
        outcomes=outcomes,
        sweeper=sweeper,
        runtime=runtime,
    )


def _wake_local_waiters(waiters: Waiters, sent: Sequence[Outgoing]) -> None:
    """The outcomes of this worker's batch answer its own waiters as soon as the saga log's
    verdict is on a replica: the verdict rests on that write, not on the outcome event, which
    other workers' waiters follow (a waiter that misses it reads the saga log instead)."""
    for _, message in sent:
        if isinstance(message, CheckoutFinished):
            waiters.resolve(message.saga_id, message.paid, message.reason)


async def _on_finished(waiters: Waiters, message: CheckoutFinished) -> Sequence[Outgoing]:
    waiters.resolve(message.saga_id, message.paid, message.reason)
    return []
