"""The simulated clients: a few items with scarce stock, a few users with scarce credit, several
orders (multi-item, the same item twice, an empty one, sometimes one too big for a Kafka record
with an addItem past its bound), checked out concurrently, again after a refusal and
``add_funds``, again once paid (as the stress test does), and sometimes batch_init over it all;
and the record of every answer they got, each checked the moment it was given: a 200 only for a
paid order, a 400 only for a saga that holds nothing (and, once the run is over, a 400 of any
kind never for an order a saga begun before the request paid: ``sim_check``). Waves of
checkouts at one worker (``burst``) make some queue for a turn, some answer without one.
Checkouts go through the gateway (``sim_gateway``), which sends one again to another worker
when the first is frozen past its timeout: the client gets (and the checks judge) the last
try's answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from common.errors import Refused, Unavailable
from order.orders import Orders
from order.saga import order_key
from test.unit.fake_redis import MASTERS
from test.unit.sim_sched import Actor

if TYPE_CHECKING:
    from test.unit.sim import World

PAID, NOT_PAID, NO_ANSWER = "paid", "not paid", "no answer"


OVERSIZED_LINES = 300
"""Lines of 3,500-character ids: over 1 MiB, too big for one Kafka record."""


@dataclass
class OrderSpec:
    order_id: str
    user_id: str
    lines: list[tuple[str, int]]
    total: int
    checkouts: int = 0
    oversized: bool = False

    def fields(self) -> dict[str, str | int]:
        return {
            "user_id": self.user_id,
            "items": json.dumps(self.lines, separators=(",", ":")),
            "total_cost": self.total,
            "paid": 0,
        }


@dataclass(frozen=True)
class Answer:
    """What one checkout request answered, and the saga it waited for ('' if none)."""

    order_id: str
    saga_id: str
    outcome: str
    at_ms: int
    asked_ms: int
    asked: int = 0
    """Where the request arrived in the trace, and where it was answered (``at``)."""
    at: int = 0
    busy: bool = False
    """A 400 of a checkout whose turn did not come: it started nothing (``Outcome.BUSY``)."""
    turn: bool = True
    """Whether it had a turn (else it answered from what the order was: ``_without_turn``)."""
    request: int = -1
    """Its request in ``Gateway.requests`` (the tries it took)."""


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
        self.reset_ms = 0  # when the last batch_init of the orders ran (0: never)
        self.began: dict[str, int] = {}
        """saga id -> where in the trace its start (saga_begin's STARTED) was seen"""
        self.resets: list[int] = []
        """Where in the trace each batch_init of the orders ran."""
        self.payers: dict[str, list[tuple[int, str]]] = {}
        """order id -> (where a reset ran, the saga that had paid the order before it)"""
        self.open: dict[str, int] = {}
        """order id -> its checkouts not answered yet"""
        self.sold: dict[str, OrderSpec] = {}
        """Sagas that paid an order a later reset of the orders alone made unpaid again: what
        they took stays sold (until stock and payment are reset too)."""

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
            lines = self._lines() if n else []  # the first one empty
            total = sum(q * self.items[i][1] for i, q in lines)
            spec = OrderSpec(self._id("o"), rng.choice(list(self.users)), lines, total)
            self.orders[spec.order_id] = spec
        if rng.random() < w.knobs.oversized:
            lines = [(f"{n:04d}" + "x" * 3496, 1) for n in range(OVERSIZED_LINES)]
            spec = OrderSpec(self._id("o"), rng.choice(list(self.users)), lines, 0, oversized=True)
            self.orders[spec.order_id] = spec
            w.count("oversized orders")
            self.todo.append(partial(self.add_item, spec))
        for item_id, (stock, price) in self.items.items():
            fields = {b"stock": b"%d" % stock, b"price": b"%d" % price, b"ceiling": b"%d" % stock}
            w.redis["stock"].hset(f"{{item:{item_id}}}", fields)
        for user_id, credit in self.users.items():
            fields = {b"credit": b"%d" % credit, b"ceiling": b"%d" % credit}
            w.redis["payment"].hset(f"{{user:{user_id}}}", fields)
        for spec in self.orders.values():
            fields = {k.encode(): str(v).encode() for k, v in spec.fields().items()}
            w.redis["order"].hset(order_key(spec.order_id), fields)
        for redis in w.redis.values():
            redis.replicate(range(MASTERS))
        for spec in self.orders.values():
            self.todo.append(partial(self.checkout, spec))
            if rng.random() < 0.4:
                self.todo.append(partial(self.checkout, spec))  # a concurrent checkout
        if rng.random() < 0.5:
            self.todo.append(lambda: self.adjust("stock", rng.choice(item_ids), rng.randint(1, 2)))
        if rng.random() < w.knobs.burst:
            self.todo.append(self.burst)
        rng.shuffle(self.todo)

    def _lines(self) -> list[tuple[str, int]]:
        """One to three lines of the items, sometimes the same item twice."""
        rng, item_ids = self.world.rng, list(self.items)
        lines = [(rng.choice(item_ids), rng.randint(1, 2)) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.3:
            lines.append((lines[0][0], rng.randint(1, 2)))
        return lines

    def start_next(self) -> None:
        self.todo.pop(self.world.rng.randrange(len(self.todo)))()

    # --- requests -------------------------------------------------------------------------------
    def burst(self) -> None:
        """A wave of checkouts at one worker at once (the stress test's locust users arrive in
        waves), some of one order: more than its turns, so that some queue for one."""
        w = self.world
        worker = w.rng.choice(list(w.workers))
        w.count("bursts")
        for _ in range(w.rng.randint(3, 6)):
            self.checkout(w.rng.choice(list(self.orders.values())), worker)

    def checkout(self, spec: OrderSpec, worker_name: str = "") -> None:
        w = self.world
        spec = self.orders[spec.order_id]  # as it is now (a reset may have come since)
        spec.checkouts += 1
        worker = worker_name or w.rng.choice(list(w.workers))  # the gateway's choice
        w.note(f"client: {worker} checkout {spec.order_id}")
        asked = w.loop.now_ms
        if self.open.get(spec.order_id):
            w.count("concurrent checkouts of one order")
        self.open[spec.order_id] = self.open.get(spec.order_id, 0) + 1
        done = self._answered(spec, asked, len(w.trace), len(w.gateway.requests))
        w.gateway.send(spec.order_id, worker, done)

    def _answered(
        self, spec: OrderSpec, asked: int, asked_at: int, request: int
    ) -> Callable[[Actor, asyncio.Task[Any] | None], None]:
        """What the client does with the answer of its checkout's last try (``task`` None:
        the gateway's 504, every try given up on)."""

        def done(actor: Actor, task: asyncio.Task[Any] | None) -> None:
            w = self.world
            self.open[spec.order_id] -= 1
            busy = False
            if task is None or task.cancelled():  # the gateway's 504, or a crash
                outcome = NO_ANSWER
            elif task.exception() is None:
                outcome = PAID
            elif isinstance(task.exception(), Refused):
                outcome = NOT_PAID
                if "timed out" in str(task.exception()):
                    w.count("answer not paid: timed out")
                busy = "no turn came" in str(task.exception())
                if "came too late" in str(task.exception()):
                    w.count("answer not paid: came too late")
                if "still being given back" in str(task.exception()):
                    # Past the answer budget with its compensation unfinished (verdict.py's
                    # _decide): a true 400, but what it holds is given back only later.
                    w.count("answer not paid: still compensating")
                    actor.notes["compensating"] = True
            elif isinstance(task.exception(), Unavailable):
                outcome = NO_ANSWER
                w.count("checkout_503")
                w.note(f"{actor.name} answered 503: {task.exception()!r}")
            else:
                outcome = NO_ANSWER
                w.error(f"{actor.name} raised {task.exception()!r}")
            saga_id = str(actor.notes.get("saga_id", "")) if task is not None else ""
            turn = "no turn" not in actor.notes
            now_ms, at = w.loop.now_ms, len(w.trace)
            answer = Answer(
                spec.order_id, saga_id, outcome, now_ms, asked, asked_at, at, busy, turn, request
            )
            self.answers.append(answer)
            how = "" if turn else ", busy" if busy else ", without a turn"
            w.note(f"{actor.name} answered {outcome} (saga {saga_id or '-'}{how})")
            if "compensating" not in actor.notes:
                self._check_now(actor.name, spec.order_id, saga_id, outcome, asked)
            now = self.orders[spec.order_id]
            if now.checkouts >= 4:
                return
            if outcome == NOT_PAID and w.rng.random() < 0.6:
                self.adjust("payment", now.user_id, max(now.total, 1), then=now)
            elif outcome == PAID and w.rng.random() < 0.5:
                self.todo.append(lambda: self.checkout(now))  # as the stress test does
            elif outcome == NO_ANSWER and w.rng.random() < 0.7:
                self.todo.append(lambda: self.checkout(spec))  # the client retries

        return done

    def _check_now(self, name: str, order_id: str, saga_id: str, outcome: str, asked: int) -> None:
        """The answer is true the moment it is given: a 200 for a paid order (or one its own
        saga paid before a reset came), a 400 for a saga that holds nothing."""
        from test.unit.sim_check import live_holds  # sim_check reads this module's outcomes

        w = self.world
        h = w.redis["order"].data.get(order_key(order_id), {})
        if outcome == PAID:
            paid_by_it = bool(saga_id) and h.get(b"saga_done_by") == saga_id.encode()
            reset_since = self.reset_ms >= asked  # a DONE read before the reset came
            if h.get(b"paid") != b"1" and not paid_by_it and not reset_since:
                w.error(f"{name} answered paid, but order {order_id} is not paid")
        elif outcome == NOT_PAID and saga_id:
            held = live_holds(w, saga_id)
            if held:
                w.error(f"{name} answered not paid while {saga_id} holds {held}")

    def add_item(self, spec: OrderSpec) -> None:
        """addItem on an order past its bound: refused, the order unchanged."""
        w = self.world
        worker = w.workers[w.rng.choice(w.running_workers())]
        orders = Orders(w.stores["order"], worker.orchestrator, w.bus)
        item_id = self.world.rng.choice(list(self.items))
        coro = orders.add_item(spec.order_id, item_id, 1, self.items[item_id][1], self._id("rq"))

        def done(actor: Actor, task: asyncio.Task[Any]) -> None:
            if not task.cancelled() and isinstance(task.exception(), Refused):
                w.count("addItem past the bound refused")
            if not task.cancelled() and task.exception() is None:
                w.error(f"addItem on {spec.order_id}, past its bound, was accepted")
            elif not task.cancelled() and not isinstance(task.exception(), Refused | Unavailable):
                w.error(f"addItem on {spec.order_id} raised {task.exception()!r}")

        w.sched.spawn(f"{worker.name} addItem {spec.order_id}", worker.name, coro, done)

    def reset(self) -> None:
        """The three batch_inits (stock, payment, orders) at one instant, or the orders' alone,
        over whatever runs: new stock, credit, users and lines (an oversized order stays so)."""
        w, rng = self.world, self.world.rng
        everything = rng.random() >= w.knobs.orders_only_reset
        w.count("resets" if everything else "resets of orders alone")
        worker = w.workers[rng.choice(w.running_workers())]  # its books change at once
        items, users = self.items, self.users
        if everything:
            items = {i: (rng.randint(0, 4), price) for i, (_, price) in self.items.items()}
            users = {u: rng.randint(0, 12) for u in self.users}
        specs = {}
        for order_id, spec in self.orders.items():
            if spec.oversized:
                specs[order_id] = spec
                continue
            lines = self._lines() if spec.lines else []
            total = sum(q * items[i][1] for i, q in lines)
            specs[order_id] = OrderSpec(order_id, rng.choice(list(users)), lines, total)
        orders = Orders(w.stores["order"], worker.orchestrator, w.bus)

        async def batch_init() -> None:
            # Nothing here waits until the compensations are sent: the books and the resets
            # change at one instant.
            if everything:
                self._book_reset(items, users)
                stock = ((i, {"stock": n, "price": p}) for i, (n, p) in items.items())
                await w.items.reset(stock)
                await w.users.reset((u, {"credit": c}) for u, c in users.items())
            self._book_orders_reset(specs, keep_sold=not everything)
            await orders.reset((o, spec.fields()) for o, spec in specs.items())

        w.note("client: batch_init of stock, payment and orders")
        w.sched.spawn(f"{worker.name} batch_init", worker.name, batch_init(), self._reset_done)

    def _book_reset(self, items: dict[str, tuple[int, int]], users: dict[str, int]) -> None:
        """What a reset of stock and payment overwrites: the balances, the adjustments applied
        so far, and what sagas sold."""
        from test.unit.sim_check import applied

        w = self.world
        for adj in list(self.adjustments):
            redis = w.redis[adj.service]
            kind = "user" if adj.service == "payment" else "item"
            if applied(redis, kind, adj.entity_id, adj.request_id):
                self.adjustments.remove(adj)
                if adj in self.acknowledged:
                    self.acknowledged.remove(adj)
        self.items, self.users = items, users
        self.sold.clear()

    def _book_orders_reset(self, specs: dict[str, OrderSpec], *, keep_sold: bool) -> None:
        """What a reset of the orders overwrites: an order its saga paid is unpaid again, but
        what that saga took stays sold if the participants keep it (``keep_sold``)."""
        w = self.world
        self.reset_ms = w.loop.now_ms
        self.resets.append(len(w.trace))
        for order_id, spec in specs.items():
            h = w.redis["order"].data.get(order_key(order_id), {})
            if h.get(b"paid") == b"1":
                payer = h.get(b"saga_done_by", b"").decode()
                self.payers.setdefault(order_id, []).append((len(w.trace), payer))
            if keep_sold and h.get(b"paid") == b"1":
                snapshot = json.loads(h.get(b"saga_data", b"{}"))
                sold = OrderSpec(
                    order_id,
                    snapshot["user_id"],
                    [(i, q) for i, q in json.loads(snapshot["items"])],
                    int(snapshot["total_cost"]),
                )
                self.sold[h[b"saga_id"].decode()] = sold
            spec.checkouts = self.orders[order_id].checkouts
            self.orders[order_id] = spec

    def _reset_done(self, actor: Actor, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.world.error(f"{actor.name} raised {task.exception()!r}")

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
            if not answer.turn:
                what = "busy" if answer.busy else answer.outcome
                counts[f"answer without a turn: {what}"] = (
                    counts.get(f"answer without a turn: {what}", 0) + 1
                )
        for order_id in self.orders:
            status = self.saga_status(order_id).decode() or "never started"
            counts[f"order {status}"] = counts.get(f"order {status}", 0) + 1
        return counts
