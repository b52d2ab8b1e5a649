"""Order's HTTP edge (paths without ``/orders``). Its wiring (the checkout saga's orchestrator,
the sweeper, the outcome listener) is ``order/bootstrap.py``'s."""

from __future__ import annotations

from quart import Quart, Response, request

from common.errors import BadRequest
from common.fast_route import FastRoute, Headers, header
from common.http import gateway_start_by, json_response, new_entity_id, parse_number, request_id
from common.settings import Settings, load_settings
from order.bootstrap import OrderService, build

MAX_BATCH = 1_000_000
MAX_QUANTITY = 1_000_000_000


def create_app(settings: Settings | None = None, *, service: OrderService | None = None) -> Quart:
    """Order's app over ``service`` (by default the worker ``build`` makes from ``settings``)."""
    order = build(settings or load_settings()) if service is None else service
    orders, checkout, stock = order.orders, order.checkout, order.stock
    app = order.runtime.app("order")

    @app.post("/create/<user_id>")
    async def create_order(user_id: str) -> Response:
        key = request_id()
        order_id = await orders.create(new_entity_id(key), user_id, key)
        return json_response({"order_id": order_id})

    @app.post("/batch_init/<n>/<n_items>/<n_users>/<item_price>")
    async def batch_init(n: str, n_items: str, n_users: str, item_price: str) -> Response:
        count = parse_number(n, "n")
        items = parse_number(n_items, "n_items", minimum=1)
        users = parse_number(n_users, "n_users", minimum=1)
        price = parse_number(item_price, "item_price")
        if count > MAX_BATCH:
            raise BadRequest(f"n must be at most {MAX_BATCH}")
        await orders.batch_init(count, items, users, price, request_id())
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

    async def checkout_answer(order_id: str, start_by_ms: int | None) -> dict[str, object]:
        await checkout(order_id, start_by_ms)
        return {"order_id": order_id, "paid": True}

    # A request the gateway gave up on (its worker was frozen past the gateway's timeout, and
    # the gateway may have retried it elsewhere) starts no saga: common/http.py, gateway_start_by.
    @app.post("/checkout/<order_id>")
    async def checkout_order(order_id: str) -> Response:
        start_by = gateway_start_by(request.headers.get("X-Request-Start"))
        return json_response(await checkout_answer(order_id, start_by))

    async def fast_checkout(order_id: str, headers: Headers) -> dict[str, object]:
        start_by = gateway_start_by(header(headers, b"x-request-start"))
        return await checkout_answer(order_id, start_by)

    # The hot route, answered in front of Quart (common/fast_route.py says why and what stays).
    app.asgi_app = FastRoute(  # type: ignore[method-assign]
        app.asgi_app,
        service="order",
        method="POST",
        rule="/checkout/<order_id>",
        handler=fast_checkout,
    )
    return app
