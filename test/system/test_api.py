"""Every route of the API through the gateway: reply shapes, content type, and each failure,
with the state unchanged after every failure."""

from __future__ import annotations

import pytest

from test.client import Api

BAD_NUMBERS = ["-1", "1.5", "abc", "99999999999999999999999", "1e3", "0x10", "%20"]


async def test_stock_item_lifecycle(api: Api) -> None:
    reply = await api.post("/stock/item/create/7")
    assert reply.status == 200 and reply.content_type == "application/json"
    item_id = reply.json()["item_id"]
    assert (await api.ok("GET", f"/stock/find/{item_id}")) == {"stock": 0, "price": 7}
    await api.ok("POST", f"/stock/add/{item_id}/10")
    await api.ok("POST", f"/stock/subtract/{item_id}/4")
    assert await api.stock(item_id) == 6
    assert (await api.post(f"/stock/subtract/{item_id}/7")).status == 400
    assert await api.stock(item_id) == 6
    await api.ok("POST", f"/stock/subtract/{item_id}/6")
    assert await api.stock(item_id) == 0


@pytest.mark.parametrize("bad", BAD_NUMBERS)
async def test_stock_bad_numbers_are_400_and_change_nothing(api: Api, bad: str) -> None:
    item_id = await api.item(price=3, stock=5)
    for path in (
        f"/stock/add/{item_id}/{bad}",
        f"/stock/subtract/{item_id}/{bad}",
        f"/stock/item/create/{bad}",
        f"/stock/batch_init/{bad}/1/1",
    ):
        reply = await api.post(path)
        assert reply.status == 400, (path, reply)
        assert reply.content_type == "application/json"
    assert (await api.ok("GET", f"/stock/find/{item_id}")) == {"stock": 5, "price": 3}


@pytest.mark.parametrize(
    ("find", "changes"),
    [
        ("/stock/find/nope-item", ("/stock/add/nope-item/1", "/stock/subtract/nope-item/1")),
        (
            "/payment/find_user/nope-user",
            ("/payment/add_funds/nope-user/1", "/payment/pay/nope-user/1"),
        ),
    ],
    ids=["stock", "payment"],
)
async def test_unknown_entity(api: Api, find: str, changes: tuple[str, ...]) -> None:
    for method, path in [("GET", find), *(("POST", change) for change in changes)]:
        assert (await api.request(method, path)).status == 400, path
    assert (await api.get(find)).status == 400  # not created by the add


async def test_payment_user_lifecycle(api: Api) -> None:
    reply = await api.post("/payment/create_user")
    assert reply.status == 200 and reply.content_type == "application/json"
    user_id = reply.json()["user_id"]
    assert (await api.ok("GET", f"/payment/find_user/{user_id}")) == {
        "user_id": user_id,
        "credit": 0,
    }
    await api.ok("POST", f"/payment/add_funds/{user_id}/50")
    await api.ok("POST", f"/payment/pay/{user_id}/20")
    assert await api.credit(user_id) == 30
    assert (await api.post(f"/payment/pay/{user_id}/31")).status == 400
    assert await api.credit(user_id) == 30


@pytest.mark.parametrize("bad", BAD_NUMBERS)
async def test_payment_bad_numbers_are_400_and_change_nothing(api: Api, bad: str) -> None:
    user_id = await api.user(credit=9)
    for path in (
        f"/payment/add_funds/{user_id}/{bad}",
        f"/payment/pay/{user_id}/{bad}",
        f"/payment/batch_init/{bad}/1",
        f"/payment/batch_init/1/{bad}",
    ):
        assert (await api.post(path)).status == 400, path
    assert await api.credit(user_id) == 9


async def test_order_lifecycle(api: Api) -> None:
    user_id = await api.user()
    item_a = await api.item(price=3)
    item_b = await api.item(price=5)
    reply = await api.post(f"/orders/create/{user_id}")
    assert reply.status == 200 and reply.content_type == "application/json"
    order_id = reply.json()["order_id"]
    await api.ok("POST", f"/orders/addItem/{order_id}/{item_a}/2")
    await api.ok("POST", f"/orders/addItem/{order_id}/{item_b}/1")
    await api.ok("POST", f"/orders/addItem/{order_id}/{item_a}/1")
    reply = await api.get(f"/orders/find/{order_id}")
    assert reply.content_type == "application/json"
    assert reply.json() == {
        "order_id": order_id,
        "paid": False,
        "user_id": user_id,
        "total_cost": 14,
        "items": [[item_a, 2], [item_b, 1], [item_a, 1]],
    }


async def test_order_add_item_failures_change_nothing(api: Api) -> None:
    user_id = await api.user()
    item_id = await api.item(price=2)
    order_id = await api.order(user_id, [(item_id, 1)])
    before = await api.ok("GET", f"/orders/find/{order_id}")
    for path in (
        f"/orders/addItem/{order_id}/{item_id}/0",
        f"/orders/addItem/{order_id}/{item_id}/-1",
        f"/orders/addItem/{order_id}/{item_id}/abc",
        f"/orders/addItem/{order_id}/no-such-item/1",
        f"/orders/addItem/no-such-order/{item_id}/1",
    ):
        assert (await api.post(path)).status == 400, path
    assert await api.ok("GET", f"/orders/find/{order_id}") == before
    assert (await api.get("/orders/find/no-such-order")).status == 400


async def test_unknown_user_orders_are_accepted_but_never_paid(api: Api) -> None:
    item_id = await api.item(price=1, stock=5)
    order_id = await api.order("no-such-user", [(item_id, 1)])
    assert (await api.post(f"/orders/checkout/{order_id}")).status == 400
    assert not await api.paid(order_id)
    assert await api.stock(item_id) == 5


async def test_batch_init_creates_literal_ids(api: Api) -> None:
    reply = await api.post("/stock/batch_init/50/7/3")
    assert reply.status == 200 and "msg" in reply.json()
    assert await api.ok("GET", "/stock/find/49") == {"stock": 7, "price": 3}
    await api.ok("POST", "/payment/batch_init/50/11")
    assert await api.ok("GET", "/payment/find_user/49") == {"user_id": "49", "credit": 11}
    await api.ok("POST", "/orders/batch_init/50/50/50/3")
    order = await api.ok("GET", "/orders/find/49")
    assert order["paid"] is False and order["total_cost"] == 6
    assert len(order["items"]) == 2 and all(q == 1 and 0 <= int(i) < 50 for i, q in order["items"])
    assert 0 <= int(order["user_id"]) < 50


@pytest.mark.parametrize(
    "path",
    [
        "/orders/batch_init/1/0/1/1",
        "/orders/batch_init/1/1/0/1",
        "/orders/batch_init/x/1/1/1",
        "/stock/batch_init/1/-5/1",
        "/payment/batch_init/-1/1",
        "/stock/batch_init/99999999/1/1",
    ],
)
async def test_batch_init_bad_numbers(api: Api, path: str) -> None:
    assert (await api.post(path)).status == 400


async def test_unknown_route_is_404(api: Api) -> None:
    assert (await api.get("/stock/no/such/route")).status == 404
