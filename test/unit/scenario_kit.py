"""What the scripted scenarios share: a clock the saga code reads, a store gate that holds one
named caller's calls until the test lets them through, and the checkout saga wired over the
fakes (``test_saga_scenarios``, ``test_edge_scenarios``)."""

from __future__ import annotations

import asyncio
import contextvars
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiokafka.structs import TopicPartition

from common.consumer import ConsumerLoop
from common.errors import Refused
from common.ledger import LUA_DIR, Ledger
from common.messages import PAYMENT, PAYMENT_PROCESSING, STOCK, STOCK_PROCESSING, Message, encode
from common.saga.log import SagaLog
from common.saga.orchestrator import Orchestrator
from common.saga.sweeper import Sweeper
from common.saga.verdict import Verdicts
from common.saga.waiters import Waiters
from common.terms import ITEMS, USERS
from order.bootstrap import checkout_orchestrator
from order.checkout import Checkout
from order.orders import Orders
from order.saga import order_key
from payment.handlers import handlers as payment_handlers
from stock.handlers import handlers as stock_handlers
from test.unit.fake_bus import FakeBus
from test.unit.fake_redis import MASTERS, FakeRedis, master_of
from test.unit.fake_store import FakeStore, Gate, no_gate

STEP_MS, DEADLINE_MS = 2000, 10_000
ORDER_LUA = Path(__file__).resolve().parents[2] / "order" / "lua"


class Clock:
    """Milliseconds since the epoch, moved only by the test."""

    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


class ScenarioBroken(Exception):
    """A scenario could not be set up as written (the code took another path): a real
    failure, not the expected one of its strict xfail (those expect AssertionError)."""


def given(condition: bool, what: str) -> None:
    if not condition:
        raise ScenarioBroken(what)


def fresh_ids(prefix: str) -> Iterator[str]:
    while True:
        yield f"{prefix}{uuid.uuid4().hex[:8]}"


class Hold:
    """A store gate that holds the calls of one named execution whose label starts with a
    prefix until the test releases them: only once a call starting with ``after[rule]`` was
    made, if the rule has one, and after letting ``skip[rule]`` of them through."""

    def __init__(self) -> None:
        self.who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="")
        self.rules: dict[tuple[str, str], asyncio.Event] = {}
        self.skip: dict[tuple[str, str], int] = {}
        self.after: dict[tuple[str, str], str] = {}
        self.parked: dict[str, int] = {}
        self._seen: set[tuple[str, str]] = set()

    async def __call__(self, label: str) -> None:
        who = self.who.get()
        for rule, event in self.rules.items():
            if rule[0] != who or not label.startswith(rule[1]) or not self._armed(rule):
                continue
            if self.skip.get(rule, 0) > 0:
                self.skip[rule] -= 1
                continue
            self.parked[who] = self.parked.get(who, 0) + 1
            await event.wait()
        self._seen.add((who, label))

    def _armed(self, rule: tuple[str, str]) -> bool:
        after = self.after.get(rule)
        return after is None or any(
            w == rule[0] and seen.startswith(after) for w, seen in self._seen
        )

    async def run_as(self, who: str, coro: Any) -> Any:
        self.who.set(who)
        return await coro

    async def park(self, who: str, call: str, coro: Any) -> tuple[asyncio.Task[Any], asyncio.Event]:
        """Run ``coro`` as ``who`` until it parks at its first call starting with ``call`` (once
        ``after`` and ``skip`` allow, if set): its task, and the event that lets it go on."""
        release = self.rules[(who, call)] = asyncio.Event()
        task = asyncio.create_task(self.run_as(who, coro))
        await until(lambda: self.parked.get(who, 0) >= 1, task)
        return task, release

    async def until_parked(self, who: str, count: int) -> None:
        for _ in range(1000):
            if self.parked.get(who, 0) >= count:
                return
            await asyncio.sleep(0)
        raise ScenarioBroken(f"{who} never parked {count} calls")


async def until(condition: Callable[[], bool], task: asyncio.Task[Any]) -> None:
    """Return once ``condition()`` holds; fail if ``task`` ends first or it never does."""
    for _ in range(2000):
        if condition():
            return
        if task.done():
            await task
            raise AssertionError("finished before the condition held")
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def answered_paid(answer: asyncio.Task[None]) -> bool:
    """Whether the checkout ``answer`` said paid (it returned) or not paid (``Refused``)."""
    try:
        await answer
    except Refused:
        return False
    return True


async def reply_held_at_its_barrier(
    hold: Hold, consumer: ConsumerLoop, bus: FakeBus, topic: str, key: str, reply: Message
) -> asyncio.Task[Any]:
    """``reply`` published on ``topic`` (under ``key``) and handed to ``consumer`` as ``"O"``,
    parked at its barrier: the move it makes is on the master, no replica holds it yet."""
    bus.append(topic, key.encode(), encode(reply))
    (at, partition), *_ = [k for k, entries in bus.logs.items() if entries]
    batch = {TopicPartition(at, partition): bus.records(at, partition, 0, 1)}
    moving, _ = await hold.park("O", "replicate", consumer._process(batch))
    return moving


def orchestrator_over(store: FakeStore, clock: Callable[[], int]) -> Orchestrator:
    """The checkout saga's orchestrator over ``store``, as order's composition root builds it,
    reading ``clock``."""
    return checkout_orchestrator(
        store, step_timeout_ms=STEP_MS, deadline_ms=DEADLINE_MS, clock=clock
    )


def checkout_saga(redis: FakeRedis, hold: Hold) -> tuple[FakeStore, SagaLog, Orchestrator]:
    """The checkout saga's store, log and orchestrator over ``redis`` (and its clock), gated by
    ``hold``."""
    store = FakeStore(redis, hold)
    store.load_scripts(LUA_DIR)
    orchestrator = orchestrator_over(store, redis.now_ms)
    return store, orchestrator.log, orchestrator


def orchestrator_loop(orchestrator: Orchestrator, store: FakeStore, bus: FakeBus) -> ConsumerLoop:
    """The orchestrator's consumer loop over the fakes; the test hands it batches itself
    (``_process``), so it subscribes to nothing."""
    return ConsumerLoop(
        name="orchestrator",
        bus=bus,
        store=store,
        topics=[],
        group_id="order",
        handlers=orchestrator.handlers(),
    )


def sweeper_of(orchestrator: Orchestrator, store: FakeStore, bus: FakeBus) -> Sweeper:
    """A sweeper of worker ``order-0`` over the fakes; the test calls ``sweep`` itself."""
    return Sweeper(orchestrator, store, bus, "order-0", interval_ms=500)


def checkout_edge(
    orchestrator: Orchestrator,
    store: FakeStore,
    *,
    bus: FakeBus | None = None,
    waiters: Waiters | None = None,
    timeout_ms: int = 40,
    answer_ms: int | None = None,
    concurrency: int = 0,
) -> Checkout:
    """The HTTP side of checkout over the fakes, polling often (unless ``waiters`` are given),
    timing out after ``timeout_ms``, answering by ``answer_ms`` (default: half a second later)
    and driving at most ``concurrency`` checkouts at once (0: any number)."""
    verdicts = Verdicts(
        orchestrator,
        store,
        bus or FakeBus(),
        waiters or Waiters(poll_interval_s=0.005),
        timeout_ms=timeout_ms,
        answer_ms=timeout_ms + 500 if answer_ms is None else answer_ms,
        concurrency=concurrency,
    )
    return Checkout(verdicts)


def one_unpaid_order(
    redis: FakeRedis,
    *,
    user: str = "u1",
    total: int = 3,
    order_id: str = "",
    replicated: bool = True,
) -> str:
    """A one-line order of ``user`` (a fresh id unless given), replicated everywhere unless
    ``replicated`` is false (then on its master only)."""
    order_id = order_id or next(fresh_ids("o"))
    redis.hset(
        order_key(order_id),
        {
            b"user_id": user.encode(),
            b"items": b'[["i1",1]]',
            b"total_cost": b"%d" % total,
            b"paid": b"0",
        },
    )
    if replicated:
        redis.replicate(range(MASTERS))
    return order_id


GROUPS: dict[str, tuple[str, ...]] = {
    "stock": (STOCK,),
    "payment": (PAYMENT,),
    "order": (STOCK_PROCESSING, PAYMENT_PROCESSING),
}


class Services:
    """Order (the orchestrator), stock and payment, each over a Redis of its own, and the
    consumer loops that carry the saga's messages between them over one ``FakeBus``:
    ``deliver`` runs what a group has not consumed yet, as its consumer would."""

    def __init__(self, now_ms: Callable[[], int] | None = None, gate: Gate = no_gate) -> None:
        clock = now_ms or Clock()
        self.redis = {name: FakeRedis(clock) for name in GROUPS}
        self.stores = {name: FakeStore(r, gate) for name, r in self.redis.items()}
        for store in self.stores.values():
            store.load_scripts(LUA_DIR)
        self.orchestrator = orchestrator_over(self.stores["order"], clock)
        self.log = self.orchestrator.log
        self.items = Ledger(self.stores["stock"], ITEMS)
        self.users = Ledger(self.stores["payment"], USERS)
        self.bus = FakeBus(groups=GROUPS)
        handlers = {
            "stock": stock_handlers(self.items),
            "payment": payment_handlers(self.users),
            "order": self.orchestrator.handlers(),
        }
        self.consumers = {
            name: ConsumerLoop(
                name=name,
                bus=self.bus,
                store=self.stores[name],
                topics=list(topics),
                group_id=name,
                handlers=handlers[name],
            )
            for name, topics in GROUPS.items()
        }

    def checkout_edge(
        self,
        *,
        waiters: Waiters | None = None,
        timeout_ms: int = 40,
        answer_ms: int | None = None,
        concurrency: int = 0,
    ) -> Checkout:
        """``checkout_edge`` over the order service's store and the bus."""
        return checkout_edge(
            self.orchestrator,
            self.stores["order"],
            bus=self.bus,
            waiters=waiters,
            timeout_ms=timeout_ms,
            answer_ms=answer_ms,
            concurrency=concurrency,
        )

    def orders(self) -> Orders:
        """The order service's ``Orders`` over its store."""
        self.stores["order"].load_scripts(ORDER_LUA)
        return Orders(self.stores["order"], self.orchestrator, self.bus)

    async def batch_init(self, n: int, *, stock: int, credit: int, price: int = 1) -> None:
        """The three batch_init routes, in the benchmark's order: items, users, then orders
        (each of ``n`` entities; every order holds two one-unit lines)."""
        await self.items.batch_init(n, {"stock": stock, "price": price})
        await self.users.batch_init(n, {"credit": credit})
        await self.orders().batch_init(n, n, n, price)

    def item(self, stock: int, price: int = 1, item_id: str = "") -> str:
        item_id = item_id or next(fresh_ids("i"))
        fields = {b"stock": b"%d" % stock, b"price": b"%d" % price}
        self.redis["stock"].hset(self.items.key(item_id), fields)
        self.redis["stock"].replicate(range(MASTERS))
        return item_id

    def user(self, credit: int) -> str:
        user_id = next(fresh_ids("u"))
        self.redis["payment"].hset(self.users.key(user_id), {b"credit": b"%d" % credit})
        self.redis["payment"].replicate(range(MASTERS))
        return user_id

    def order(self, user_id: str, lines: list[tuple[str, int]], total: int) -> str:
        order_id = next(fresh_ids("o"))
        fields = {
            b"user_id": user_id.encode(),
            b"items": json.dumps(lines).encode(),
            b"total_cost": b"%d" % total,
            b"paid": b"0",
        }
        self.redis["order"].hset(order_key(order_id), fields)
        self.redis["order"].replicate(range(MASTERS))
        return order_id

    def balance(self, ledger: Ledger, entity_id: str) -> int:
        redis = self.redis["stock" if ledger is self.items else "payment"]
        return int(redis.hget(ledger.key(entity_id), ledger.field.encode()) or b"0")

    def record(self, ledger: Ledger, entity_id: str, saga_id: str) -> bytes | None:
        """The participant's operation record of ``saga_id`` on the entity."""
        redis = self.redis["stock" if ledger is self.items else "payment"]
        return redis.get(f"{ledger.key(entity_id)}:op:{saga_id}")

    async def deliver(self, *groups: str) -> int:
        """Run every message the ``groups`` (default: all) have not consumed through their
        loops, in batches per partition, committing each; until none is left. Returns how
        many were handled. A batch that fails raises (it stays unconsumed)."""
        handled = 0
        while True:
            backlog = [
                (group, topic, partition)
                for group in groups or tuple(GROUPS)
                for topic, partition in self.bus.backlog(group, GROUPS[group])
            ]
            if not backlog:
                return handled
            for group, topic, partition in backlog:
                start = self.bus.position(group, topic, partition)
                end = len(self.bus.logs[(topic, partition)])
                records = self.bus.records(topic, partition, start, end)
                await self.consumers[group]._process({TopicPartition(topic, partition): records})
                self.bus.commit(group, topic, partition, end, self.bus.epoch)
                handled += end - start


def order_apart_from_its_shard(redis: FakeRedis, log: SagaLog, *, replicated: bool = True) -> str:
    """``one_unpaid_order`` of an id whose in-flight index shard lives on another master than
    the order itself (so a failover can take one and not the other)."""
    order_id = next(
        o
        for o in fresh_ids("o")
        if master_of(log.shard_key(log.shard_of(o))) != master_of(order_key(o))
    )
    return one_unpaid_order(redis, order_id=order_id, replicated=replicated)
