"""Stock's HTTP edge (paths as the gateway forwards them, without ``/stock``); its wiring is the
participant's (common/participant.py)."""

from __future__ import annotations

from quart import Quart, Response

from common.http import json_response, new_entity_id, parse_number, request_id
from common.messages import STOCK
from common.participant import balance_routes, batch_count, participant_app
from common.settings import Settings
from common.terms import ITEMS
from common.types import MessageBus, Storage
from stock.handlers import handlers


def create_app(
    settings: Settings | None = None, *, store: Storage | None = None, bus: MessageBus | None = None
) -> Quart:
    """Stock's app: the item ledger, its STOCK consumer, and the routes below."""
    app, items = participant_app(settings, ITEMS, STOCK, handlers, store=store, bus=bus)

    @app.post("/item/create/<price>")
    async def create_item(price: str) -> Response:
        fields = {"stock": 0, "price": parse_number(price, "price")}
        key = request_id()
        item_id = await items.create(new_entity_id(key), fields, key, same=("price",))
        return json_response({"item_id": item_id})

    @app.post("/batch_init/<n>/<starting_stock>/<item_price>")
    async def batch_init(n: str, starting_stock: str, item_price: str) -> Response:
        count = batch_count(n)
        stock = parse_number(starting_stock, "starting_stock")
        price = parse_number(item_price, "item_price")
        await items.batch_init(count, {"stock": stock, "price": price}, request_id())
        return json_response({"msg": f"{count} items with stock {stock} at price {price}"})

    @app.get("/find/<item_id>")
    async def find_item(item_id: str) -> Response:
        return json_response(await items.find(item_id, ("stock", "price")))

    # POST /add/<item_id>/<amount> (add_stock), POST /subtract/<item_id>/<amount> (remove_stock)
    balance_routes(app, items, ITEMS, add="/add", subtract="/subtract")
    return app
