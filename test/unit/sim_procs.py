"""The simulated processes: order workers (orchestrator, checkout edge, waiters, sweeper, outcome
listener) and the stock and payment participants, built by the services' own composition roots
(``order/bootstrap.py``, ``common/participant.py``) over the simulation's fakes, clock and
randomness."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiokafka.structs import ConsumerRecord, TopicPartition

from common.consumer import ConsumerLoop
from common.errors import Unavailable
from common.messages import ORDER_STATUS_UPDATE, PAYMENT, STOCK
from common.participant import build_participant
from common.saga.orchestrator import Speculation, Started
from common.saga.sweeper import Sweeper
from common.saga.waiters import Verdict, Waiters
from common.terms import ITEMS, USERS
from order.bootstrap import build
from payment.handlers import handlers as payment_handlers
from stock.handlers import handlers as stock_handlers
from test.unit.sim_sched import Actor, current_actor

if TYPE_CHECKING:
    from test.unit.sim import World


class NotingWaiters(Waiters):
    """``Waiters`` that note, on the waiting actor, which saga its checkout waits for."""

    async def wait(
        self, saga_id: str, poll: Callable[[], Awaitable[Verdict | None]], timeout_s: float
    ) -> Verdict | None:
        actor = current_actor()
        if actor is not None:
            actor.notes["saga_id"] = saga_id
        return await super().wait(saga_id, poll, timeout_s)


class Participants:
    """The stock and payment services: stateless consumer loops over their own stores, wired
    by the participant helper as ``stock/app.py`` and ``payment/app.py`` wire them."""

    def __init__(self, world: World) -> None:
        settings = world.settings
        stock = build_participant(
            settings, ITEMS, STOCK, stock_handlers, store=world.stores["stock"], bus=world.bus
        )
        payment = build_participant(
            settings, USERS, PAYMENT, payment_handlers, store=world.stores["payment"], bus=world.bus
        )
        self.consumers = {"stock": stock.consumer, "payment": payment.consumer}


class OrderWorker:
    """One order process. ``boot`` (re)creates all of its in-memory state, as a restart does."""

    sweeper: Sweeper

    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.name = name
        self.outcome_positions: dict[int, int] = {}
        self.frozen = False
        self.resume_ms = 0
        self._sleepers: list[asyncio.Future[None]] = []
        self._resume: asyncio.TimerHandle | None = None

    def boot(self) -> None:
        w = self.world
        if hasattr(self, "sweeper"):  # a restart: keep the old process's counts
            w.count("sweeper resends", self.sweeper.resends)
            w.count("sweeper aborts", self.sweeper.aborts)
        if self.frozen:  # killed while frozen: the new process runs
            self.resume()
        order = build(
            dataclasses.replace(w.settings, worker_id=self.name),
            store=w.stores["order"],
            bus=w.bus,
            waiters=NotingWaiters(),
            clock=self.now,
            rng=w.ids,
            index_shards=w.knobs.index_shards,
        )
        self.orchestrator = order.orchestrator
        look = self.orchestrator.look

        async def look_noted(entity_id: str) -> Started | None:
            """``Orchestrator.look``, noting on the checkout that its turn did not come."""
            actor = current_actor()
            if actor is not None:
                actor.notes["no turn"] = True
            return await look(entity_id)

        self.orchestrator.look = look_noted  # type: ignore[method-assign]
        # Each saga asks for its steps at once or one by one at random: both ways, and sagas of
        # either kind side by side, meet every fault the simulation makes.
        self.orchestrator.speculation = CoinFlip(random.Random(w.rng.random()))
        self.log = order.orchestrator.log
        self.waiters = order.waiters
        self.checkout = order.checkout
        self.sweeper = order.sweeper
        self.consumer = order.replies
        self.outcomes = order.outcomes
        # A listener without a group starts at the end of each partition.
        self.outcome_positions = {
            p: len(w.bus.logs[(ORDER_STATUS_UPDATE, p)]) for p in range(w.bus.partitions)
        }
        w.sched.spawn(
            f"{self.name} sweeper", self.name, self._sweep_forever(), _report(w), background=True
        )

    # --- freezing (SIGSTOP ... SIGCONT) --------------------------------------------------------
    def now(self) -> int:
        """The process's clock. Whatever of it runs while it is frozen (a timer fired, a call it
        had sent came back) runs, in truth, once it resumes: it reads the time of its resume."""
        now = self.world.loop.now_ms
        return max(now, self.resume_ms) if self.frozen else now

    def freeze(self, ms: int) -> None:
        """Stop the process for ``ms``: nothing it sends from now on (a store or bus call, an
        answer) leaves it before it resumes, and requests sent to it wait unread till then.
        Calls already sent go on (their replies wait for it)."""
        loop = self.world.loop
        self.frozen = True
        self.resume_ms = loop.now_ms + ms
        self.world.frozen.add(self.name)
        self._resume = loop.call_at(self.resume_ms / 1000, self.resume)

    def resume(self) -> None:
        self.frozen = False
        self.world.frozen.discard(self.name)
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self.world.note(f"{self.name} resumes")
        for sleeper in self._sleepers:
            if not sleeper.done():
                sleeper.set_result(None)
        self._sleepers.clear()

    async def awake(self) -> None:
        """Return at once, or once the process resumes."""
        if self.frozen:
            sleeper = self.world.loop.create_future()
            self._sleepers.append(sleeper)
            await sleeper

    async def serve(self, order_id: str, start_by_ms: int | None) -> None:
        """A checkout request, as ``order/app.py`` serves it (read once the process runs)."""
        await self.awake()
        try:
            await self.checkout(order_id, start_by_ms)
        except Exception:
            await self.awake()  # its answer leaves once the process runs
            raise
        await self.awake()

    async def _sweep_forever(self) -> None:
        """``Sweeper._run``: a round every interval; a failed round is retried by the next."""
        while True:
            try:
                await self.sweeper.sweep()
            except Unavailable as exc:
                self.world.note(f"{self.name} sweep failed: {exc!r}")
            except Exception as exc:
                self.world.error(f"{self.name} sweep raised {exc!r}")
            await asyncio.sleep(self.world.knobs.sweep_interval_ms / 1000)

    # --- the outcome listener -------------------------------------------------------------------
    def unread(self) -> list[int]:
        bus = self.world.bus
        if sum(self.outcome_positions.values()) >= bus.sizes.get(ORDER_STATUS_UPDATE, 0):
            return []
        logs = bus.logs
        return [
            p
            for p, pos in self.outcome_positions.items()
            if pos < len(logs[(ORDER_STATUS_UPDATE, p)])
        ]

    def read_outcomes(self) -> None:
        w = self.world
        p = w.rng.choice(self.unread())
        start = self.outcome_positions[p]
        end = min(len(w.bus.logs[(ORDER_STATUS_UPDATE, p)]), start + w.rng.randint(1, 3))
        self.outcome_positions[p] = end
        batch = {
            TopicPartition(ORDER_STATUS_UPDATE, p): w.bus.records(
                ORDER_STATUS_UPDATE, p, start, end
            )
        }
        w.sched.spawn(f"{self.name} outcomes", self.name, self.outcomes._process(batch), _report(w))


async def consume(
    world: World,
    loop: ConsumerLoop,
    key: tuple[str, str, int],
    records: list[ConsumerRecord],
    end: int,
    epoch: int,
) -> None:
    """``ConsumerLoop._run`` for one batch of one partition: process it (retried while Redis is
    unavailable, as ``_process_until_done`` does), then commit unless rebalanced away."""
    group, topic, partition = key
    batch = {TopicPartition(topic, partition): records}
    delay = 0.05
    for _ in range(4):
        try:
            await loop._process(batch)
            break
        except Unavailable as exc:
            world.note(f"batch {topic}/{partition} failed, retried: {exc!r}")
            await asyncio.sleep(delay)
            delay *= 2
    else:
        return  # given up: not committed, so it is read again
    await world.gate(f"commit {group} {topic}/{partition}@{end}")
    actor = current_actor()
    if actor is not None and actor.notes.get("zombie"):
        world.note(f"commit of {group} {topic}/{partition}@{end} refused: rebalanced")
        return
    if not world.bus.commit(group, topic, partition, end, epoch):
        world.note(f"commit of {group} {topic}/{partition}@{end} refused: broker restarted")


def _report(world: World) -> Callable[[Actor, asyncio.Task[Any]], None]:
    def done(actor: Actor, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            world.error(f"{actor.name}: {task.exception()!r}")

    return done


class CoinFlip(Speculation):
    """A speculation that asks for every step at once for about half the sagas."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self._rng = rng

    def __call__(self) -> bool:
        return self._rng.random() < 0.5
