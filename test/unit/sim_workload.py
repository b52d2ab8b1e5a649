"""The simulated clients: a few items with scarce stock, a few users with scarce credit, several
orders (multi-item, the same item twice, an empty one), checked out concurrently and again after
a refusal and ``add_funds``; and the record of every answer they got."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.errors import Refused, Unavailable
from order.saga import order_key
from test.unit.fake_redis import MASTERS
from test.unit.sim_sched import Actor

if TYPE_CHECKING:
    from test.unit.sim import World

PAID, NOT_PAID, NO_ANSWER = "paid", "not paid", "no answer"


@dataclass
class OrderSpec:
    order_id: str
    user_id: str
    lines: list[tuple[str, int]]
    total: int
    checkouts: int = 0


@dataclass(frozen=True)
class Answer:
    """What one checkout request answered, and the saga it waited for ('' if none)."""

    order_id: str
    saga_id: str
    outcome: str
    at_ms: int


@dataclass(frozen=True)
class Adjustment:
    service: str
    entity_id: str
    request_id: str
    delta: int


class Workload:
    """Initial state, the client requests still to send (``todo``) and what was answered."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.items: dict[str, tuple[int, int]] = {}  # id -> (initial stock, price)
        self.users: dict[str, int] = {}  # id -> initial credit
        self.orders: dict[str, OrderSpec] = {}
        self.todo: list[Callable[[], None]] = []
        self.answers: list[Answer] = []
        self.adjustments: list[Adjustment] = []
        self.acknowledged: list[Adjustment] = []

    def _id(self, prefix: str) -> str:
        return f"{prefix}{self.world.rng.getrandbits(32):08x}"

    def setup(self) -> None:
        """Write the initial state (replicated) and queue the first requests."""
        rng, w = self.world.rng, self.world
        for _ in range(rng.randint(2, 4)):
            self.items[self._id("i")] = (rng.randint(0, 4), rng.randint(1, 4))
        for _ in range(rng.randint(1, 3)):
            self.users[self._id("u")] = rng.randint(0, 12)
        item_ids = list(self.items)
        for n in range(rng.randint(3, 6)):
            lines = [(rng.choice(item_ids), rng.randint(1, 2)) for _ in range(rng.randint(1, 3))]
            if n == 0:
                lines = []  # an empty order
            elif rng.random() < 0.3:
                lines.append((lines[0][0], rng.randint(1, 2)))  # the same item twice
            total = sum(q * self.items[i][1] for i, q in lines)
            spec = OrderSpec(self._id("o"), rng.choice(list(self.users)), lines, total)
            self.orders[spec.order_id] = spec
        for item_id, (stock, price) in self.items.items():
            w.redis["stock"].hset(
                f"{{item:{item_id}}}", {b"stock": b"%d" % stock, b"price": b"%d" % price}
            )
        for user_id, credit in self.users.items():
            w.redis["payment"].hset(f"{{user:{user_id}}}", {b"credit": b"%d" % credit})
        for spec in self.orders.values():
            fields = {
                b"user_id": spec.user_id.encode(),
                b"items": json.dumps(spec.lines, separators=(",", ":")).encode(),
                b"total_cost": b"%d" % spec.total,
                b"paid": b"0",
            }
            w.redis["order"].hset(order_key(spec.order_id), fields)
        for redis in w.redis.values():
            redis.replicate(range(MASTERS))
        for spec in self.orders.values():
            self.todo.append(lambda s=spec: self.checkout(s))
            if rng.random() < 0.4:
                self.todo.append(lambda s=spec: self.checkout(s))  # a concurrent checkout
        if rng.random() < 0.5:
            self.todo.append(lambda: self.adjust("stock", rng.choice(item_ids), rng.randint(1, 2)))
        rng.shuffle(self.todo)

    def start_next(self) -> None:
        self.todo.pop(self.world.rng.randrange(len(self.todo)))()

    # --- requests -------------------------------------------------------------------------------
    def checkout(self, spec: OrderSpec) -> None:
        w = self.world
        spec.checkouts += 1
        worker = w.rng.choice(list(w.workers.values()))
        name = f"{worker.name} checkout {spec.order_id}"
        w.note(f"client: {name}")
        w.sched.spawn(name, worker.name, worker.checkout(spec.order_id), self._answered(spec))

    def _answered(self, spec: OrderSpec) -> Callable[[Actor, asyncio.Task[Any]], None]:
        def done(actor: Actor, task: asyncio.Task[Any]) -> None:
            w = self.world
            if task.cancelled():
                outcome = NO_ANSWER
            elif task.exception() is None:
                outcome = PAID
            elif isinstance(task.exception(), Refused):
                outcome = NOT_PAID
                if "timed out" in str(task.exception()):
                    w.count("answer not paid: timed out")
            elif isinstance(task.exception(), Unavailable):
                outcome = NO_ANSWER
                w.count("checkout_503")
                w.note(f"{actor.name} answered 503: {task.exception()!r}")
            else:
                outcome = NO_ANSWER
                w.error(f"{actor.name} raised {task.exception()!r}")
            saga_id = str(actor.notes.get("saga_id", ""))
            self.answers.append(Answer(spec.order_id, saga_id, outcome, w.loop.now_ms))
            w.note(f"{actor.name} answered {outcome} (saga {saga_id or '-'})")
            if spec.checkouts >= 4:
                return
            if outcome == NOT_PAID and w.rng.random() < 0.6:
                self.adjust("payment", spec.user_id, max(spec.total, 1), then=spec)
            elif outcome == NO_ANSWER and w.rng.random() < 0.7:
                self.todo.append(lambda: self.checkout(spec))  # the client retries

        return done

    def adjust(
        self, service: str, entity_id: str, delta: int, then: OrderSpec | None = None
    ) -> None:
        """``add_funds`` / ``add stock`` through the ledger; then maybe check ``then`` out again."""
        w = self.world
        ledger = w.users if service == "payment" else w.items
        adjustment = Adjustment(service, entity_id, self._id("rq"), delta)
        self.adjustments.append(adjustment)
        process = f"{service}-0"
        name = f"{process} add {delta} to {entity_id}"
        w.note(f"client: {name}")

        def done(actor: Actor, task: asyncio.Task[Any]) -> None:
            if not task.cancelled() and task.exception() is None:
                self.acknowledged.append(adjustment)
            elif not task.cancelled() and not isinstance(task.exception(), Unavailable):
                w.error(f"{name} raised {task.exception()!r}")
            if then is not None:
                self.todo.append(lambda: self.checkout(then))

        coro = ledger.adjust(entity_id, delta, adjustment.request_id)
        w.sched.spawn(name, process, coro, done)

    # --- the end ---------------------------------------------------------------------------------
    def saga_status(self, order_id: str) -> bytes:
        h = self.world.redis["order"].data.get(order_key(order_id), {})
        return h.get(b"saga_status", b"")  # type: ignore[no-any-return]

    def all_terminal(self) -> bool:
        return all(self.saga_status(o) in (b"", b"succeeded", b"failed") for o in self.orders)

    def stats(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for answer in self.answers:
            counts[f"answer {answer.outcome}"] = counts.get(f"answer {answer.outcome}", 0) + 1
        for order_id in self.orders:
            status = self.saga_status(order_id).decode() or "never started"
            counts[f"order {status}"] = counts.get(f"order {status}", 0) + 1
        return counts
