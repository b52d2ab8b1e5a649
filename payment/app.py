"""Payment's HTTP edge (paths without ``/payment``) and its wiring."""

from __future__ import annotations

from quart import Response

from common.bus import Bus, ConsumerLoop
from common.errors import BadRequest
from common.http import json_response, new_entity_id, parse_number, request_id
from common.ledger import LUA_DIR, Ledger
from common.messages import PAYMENT
from common.service import Runtime
from common.settings import load_settings
from common.store import Store
from common.terms import USERS
from payment.handlers import handlers

MAX_BATCH = 1_000_000

settings = load_settings()
store = Store(settings, LUA_DIR)
bus = Bus(settings)
users = Ledger(store, USERS)
runtime = Runtime(settings, store, bus)
runtime.components.append(
    ConsumerLoop(
        name="payment",
        bus=bus,
        store=store,
        topics=[PAYMENT],
        group_id="payment",
        handlers=handlers(users),
    )
)
app = runtime.app("payment")


@app.post("/create_user")
async def create_user() -> Response:
    user_id = await users.create(new_entity_id(request_id()), {"credit": 0})
    return json_response({"user_id": user_id})


@app.post("/batch_init/<n>/<starting_money>")
async def batch_init(n: str, starting_money: str) -> Response:
    count = parse_number(n, "n")
    if count > MAX_BATCH:
        raise BadRequest(f"n must be at most {MAX_BATCH}")
    credit = parse_number(starting_money, "starting_money")
    await users.batch_init(count, {"credit": credit})
    return json_response({"msg": f"{count} users with credit {credit}"})


@app.get("/find_user/<user_id>")
async def find_user(user_id: str) -> Response:
    found = await users.find(user_id, ("credit",))
    return json_response({"user_id": user_id, "credit": found["credit"]})


@app.post("/add_funds/<user_id>/<amount>")
async def add_credit(user_id: str, amount: str) -> Response:
    credit = await users.adjust(user_id, parse_number(amount, "amount"), request_id())
    return json_response({"user_id": user_id, "credit": credit})


@app.post("/pay/<user_id>/<amount>")
async def remove_credit(user_id: str, amount: str) -> Response:
    credit = await users.adjust(user_id, -parse_number(amount, "amount"), request_id())
    return json_response({"user_id": user_id, "credit": credit})
