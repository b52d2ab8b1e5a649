"""Payment's HTTP edge (paths without ``/payment``); its wiring is the participant's
(common/participant.py)."""

from __future__ import annotations

from quart import Quart, Response

from common.http import json_response, new_entity_id, parse_number, request_id
from common.messages import PAYMENT
from common.participant import balance_routes, batch_count, participant_app
from common.settings import Settings
from common.terms import USERS
from common.types import MessageBus, Storage
from payment.handlers import handlers


def create_app(
    settings: Settings | None = None, *, store: Storage | None = None, bus: MessageBus | None = None
) -> Quart:
    """Payment's app: the user ledger, its PAYMENT consumer, and the routes below."""
    app, users = participant_app(settings, USERS, PAYMENT, handlers, store=store, bus=bus)

    @app.post("/create_user")
    async def create_user() -> Response:
        key = request_id()
        user_id = await users.create(new_entity_id(key), {"credit": 0}, key)
        return json_response({"user_id": user_id})

    @app.post("/batch_init/<n>/<starting_money>")
    async def batch_init(n: str, starting_money: str) -> Response:
        count = batch_count(n)
        credit = parse_number(starting_money, "starting_money")
        await users.batch_init(count, {"credit": credit}, request_id())
        return json_response({"msg": f"{count} users with credit {credit}"})

    @app.get("/find_user/<user_id>")
    async def find_user(user_id: str) -> Response:
        found = await users.find(user_id, ("credit",))
        return json_response({"user_id": user_id, "credit": found["credit"]})

    # POST /add_funds/<user_id>/<amount> (add_credit), POST /pay/<user_id>/<amount> (remove_credit)
    balance_routes(app, users, USERS, add="/add_funds", subtract="/pay")
    return app
