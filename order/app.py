"""Order's HTTP edge (paths without ``/orders``) and its wiring: the checkout saga's
orchestrator consumes the participants' replies, a sweeper re-drives stalled sagas, and every
worker follows ORDER_STATUS_UPDATE to answer the checkouts waiting on it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import aiohttp
from quart import Response

from common.bus import Bus, ConsumerLoop, Outgoing
from common.errors import BadRequest, NotFound, Unavailable
from common.http import json_response, new_entity_id, parse_number, request_id
from common.ledger import LUA_DIR
from common.messages import (
    ORDER_STATUS_UPDATE,
    PAYMENT_PROCESSING,
    STOCK_PROCESSING,
    CheckoutFinished,
)
from common.saga.log import SagaLog
from common.saga.orchestrator import Orchestrator
from common.saga.sweeper import Sweeper
from common.saga.waiters import Waiters
from common.service import Runtime
from common.settings import load_settings
from common.store import Store
from order.checkout import Checkout
from order.orders import Orders
from order.saga import CHECKOUT

MAX_BATCH = 1_000_000
MAX_QUANTITY = 1_000_000_000

settings = load_settings()
store = Store(settings, LUA_DIR, Path(__file__).parent / "lua")
bus = Bus(settings)
orchestrator = Orchestrator(
    CHECKOUT,
    SagaLog(store, CHECKOUT),
    step_timeout_ms=settings.saga_step_timeout_ms,
    deadline_ms=settings.saga_deadline_ms,
)
orders = Orders(store, orchestrator, bus)
waiters = Waiters()
checkout = Checkout(
    orchestrator,
    store,
    bus,
    waiters,
    timeout_ms=settings.checkout_timeout_ms,
    answer_ms=settings.checkout_answer_ms,
)


def _wake_local_waiters(sent: Sequence[Outgoing]) -> None:
    """Outcomes this worker published answer its own waiters at once (replicated already)."""
    for _, message in sent:
        if isinstance(message, CheckoutFinished):
            waiters.resolve(message.saga_id, message.paid, message.reason)


async def _on_finished(message: CheckoutFinished) -> Sequence[Outgoing]:
    waiters.resolve(message.saga_id, message.paid, message.reason)
    return []


class StockClient:
    """Reads item prices from the stock service over HTTP."""

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def price(self, item_id: str) -> int:
        assert self._session is not None
        try:
            async with self._session.get(f"{self._base_url}/find/{item_id}") as reply:
                if reply.status == 400:
                    raise NotFound(f"item {item_id!r} not found")
                if reply.status != 200:
                    raise Unavailable(f"stock service answered {reply.status}")
                return int((await reply.json())["price"])
        except aiohttp.ClientError as exc:
            raise Unavailable(f"stock service unreachable: {exc}") from exc


stock = StockClient(settings.stock_url)
runtime = Runtime(settings, store, bus)
runtime.components += [
    stock,
    ConsumerLoop(
        name="orchestrator",
        bus=bus,
        store=store,
        topics=[STOCK_PROCESSING, PAYMENT_PROCESSING],
        group_id="order",
        handlers=orchestrator.handlers(),
        after_publish=_wake_local_waiters,
    ),
    ConsumerLoop(
        name="outcomes",
        bus=bus,
        store=None,
        topics=[ORDER_STATUS_UPDATE],
        group_id=None,
        handlers={CheckoutFinished: _on_finished},
    ),
    Sweeper(
        orchestrator,
        store,
        bus,
        settings.worker_id,
        interval_ms=max(settings.saga_step_timeout_ms // 4, 100),
    ),
]
app = runtime.app("order")


@app.post("/create/<user_id>")
async def create_order(user_id: str) -> Response:
    return json_response({"order_id": await orders.create(new_entity_id(request_id()), user_id)})


@app.post("/batch_init/<n>/<n_items>/<n_users>/<item_price>")
async def batch_init(n: str, n_items: str, n_users: str, item_price: str) -> Response:
    count = parse_number(n, "n")
    items = parse_number(n_items, "n_items", minimum=1)
    users = parse_number(n_users, "n_users", minimum=1)
    price = parse_number(item_price, "item_price")
    if count > MAX_BATCH:
        raise BadRequest(f"n must be at most {MAX_BATCH}")
    await orders.batch_init(count, items, users, price)
    return json_response({"msg": f"{count} orders over {items} items and {users} users"})


@app.get("/find/<order_id>")
async def find_order(order_id: str) -> Response:
    return json_response(await orders.find(order_id))


@app.post("/addItem/<order_id>/<item_id>/<quantity>")
async def add_item(order_id: str, item_id: str, quantity: str) -> Response:
    count = parse_number(quantity, "quantity", minimum=1)
    if count > MAX_QUANTITY:
        raise BadRequest(f"quantity must be at most {MAX_QUANTITY}")
    await orders.find(order_id)  # an unknown order is refused before asking stock
    price = await stock.price(item_id)
    total = await orders.add_item(order_id, item_id, count, price, request_id())
    return json_response({"order_id": order_id, "total_cost": total})


@app.post("/checkout/<order_id>")
async def checkout_order(order_id: str) -> Response:
    await checkout(order_id)
    return json_response({"order_id": order_id, "paid": True})
