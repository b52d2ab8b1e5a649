"""Request ids as idempotency keys: the forms clients and ingress-nginx send are kept as they are,
and a mutation sent twice with one id (a gateway's retry) happens once, through the real routes of
stock and payment over a ``FakeStore``."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import pytest
from quart import Quart

import payment.app as payment_app
import stock.app as stock_app
from common.http import idempotency_key, new_entity_id
from common.ledger import LUA_DIR, Ledger
from common.settings import load_settings
from common.terms import ITEMS, USERS
from test.unit.fake_bus import FakeBus
from test.unit.fake_redis import FakeRedis
from test.unit.fake_store import FakeStore

HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize(
    "given",
    [
        str(uuid.uuid4()),  # dashed, the common form (ingress-nginx passes it on as it is)
        str(uuid.uuid4()).upper(),
        uuid.uuid4().hex,  # nginx's $request_id
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",  # a ULID
        "a",
        "7",
        "client-42.attempt_1",
        "x" * 64,
    ],
    # Fresh UUIDs per run, but the same test ids in every process that collects them
    # (pytest-xdist runs the unit tests in two).
    ids=["uuid", "uuid-upper", "uuid-hex", "ulid", "letter", "digit", "dotted", "longest"],
)
def test_usual_request_ids_are_the_key_as_given(given: str) -> None:
    assert idempotency_key(given) == given


@pytest.mark.parametrize(
    "given",
    ["x" * 65, ".", "..", "-abc", "_abc", "a b", "a/b", "a\n", "caf\u00e9", "{item:1}", "a:b"],
)
def test_other_ids_are_hashed_to_a_stable_key(given: str) -> None:
    key = idempotency_key(given)
    assert key[0] == "~" and HEX32.fullmatch(key[1:])
    assert idempotency_key(given) == key  # a retry carries the same header: the same key
    assert key != idempotency_key(given + "x")
    # No id taken as it is names the same key: a client that sent the hash itself as its id
    # made another request (before, 32 hex digits were taken as given and were the hash).
    assert idempotency_key(key[1:]) != key and idempotency_key(key) != key


def test_no_id_gets_a_new_key_each_time() -> None:
    first, second = idempotency_key(""), idempotency_key("")
    assert HEX32.fullmatch(first) and HEX32.fullmatch(second)
    assert first != second


def test_a_created_entity_id_never_is_a_request_id_a_client_chose() -> None:
    for key in ("0", "42", str(uuid.uuid4())):
        entity = new_entity_id(key)
        assert HEX32.fullmatch(entity)
        assert entity != key
        assert new_entity_id(key) == entity  # a retried create finds the same entity


# --- the routes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Participants:
    """stock's and payment's apps over one FakeStore, and their ledgers (the apps' clients are
    never started: the test client does not run the serving lifecycle)."""

    stock: Quart
    payment: Quart
    items: Ledger
    users: Ledger


@pytest.fixture
def apps() -> Participants:
    store = FakeStore(FakeRedis())
    store.load_scripts(LUA_DIR)
    settings = load_settings({})
    return Participants(
        stock=stock_app.create_app(settings, store=store, bus=FakeBus()),
        payment=payment_app.create_app(settings, store=store, bus=FakeBus()),
        items=Ledger(store, ITEMS),
        users=Ledger(store, USERS),
    )


async def post(app: Quart, path: str, request_id: str | None) -> tuple[int, dict[str, object]]:
    client = app.test_client()
    headers = {} if request_id is None else {"X-Request-Id": request_id}
    reply = await client.post(path, headers=headers)
    return reply.status_code, await reply.get_json()


async def test_subtract_with_one_dashed_uuid_twice_happens_once(
    apps: Participants,
) -> None:
    items = apps.items
    item = f"i{uuid.uuid4().hex[:8]}"
    await items.create(item, {"stock": 10, "price": 1}, "create-" + item)
    retried = str(uuid.uuid4())
    for _ in range(2):
        assert await post(apps.stock, f"/subtract/{item}/3", retried) == (
            200,
            {"item_id": item, "stock": 7},
        )
    for other in (str(uuid.uuid4()), str(uuid.uuid4())):
        assert (await post(apps.stock, f"/subtract/{item}/3", other))[0] == 200
    assert (await items.find(item, ("stock",)))["stock"] == 1


async def test_pay_with_one_dashed_uuid_twice_happens_once(
    apps: Participants,
) -> None:
    users = apps.users
    user = f"u{uuid.uuid4().hex[:8]}"
    await users.create(user, {"credit": 10}, "create-" + user)
    retried = str(uuid.uuid4())
    for _ in range(2):
        assert (await post(apps.payment, f"/pay/{user}/4", retried))[0] == 200
    assert (await users.find(user, ("credit",)))["credit"] == 6
    assert (await post(apps.payment, f"/pay/{user}/4", str(uuid.uuid4())))[0] == 200
    assert (await users.find(user, ("credit",)))["credit"] == 2
    # Without any id (a direct call, not through a gateway) each request is its own.
    assert (await post(apps.payment, f"/pay/{user}/1", None))[0] == 200
    assert (await post(apps.payment, f"/pay/{user}/1", None))[0] == 200
    assert (await users.find(user, ("credit",)))["credit"] == 0


async def test_a_retried_create_returns_the_same_new_entity(
    apps: Participants,
) -> None:
    users = apps.users
    await users.create("0", {"credit": 500}, "create-0")  # as batch_init makes it
    for request_id in (str(uuid.uuid4()), "0"):
        status, first = await post(apps.payment, "/create_user", request_id)
        assert status == 200
        assert await post(apps.payment, "/create_user", request_id) == (200, first)
        assert first["user_id"] != "0"
        assert (await users.find(str(first["user_id"]), ("credit",)))["credit"] == 0
    _, other = await post(apps.payment, "/create_user", str(uuid.uuid4()))
    assert other != first
