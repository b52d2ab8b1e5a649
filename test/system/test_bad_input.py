"""Bad input on every route the services describe in their OpenAPI documents: malformed,
negative, huge, empty-ish and unknown values always get a 4xx (400, or 404 where the path no
longer matches a route), never a 5xx, and change nothing."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any
from urllib.parse import quote

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test.client import Api
from test.conftest import Stack

SERVICES = ("orders", "stock", "payment")
ACCEPT_ANY_ID = {"order.create_order", "payment.create_user"}

# Numbers that are not plain non-negative decimal integers up to 10**15.
BAD_NUMBERS = st.one_of(
    st.just(""),
    st.integers(max_value=-1).map(str),
    st.integers(min_value=10**15 + 1).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e3", "0x10", "+1", " 1", "1 ", "١٢", "1_000", "--1", "٣", "１"]),
    st.text(min_size=1, max_size=12).filter(lambda t: not (t.isascii() and t.isdigit())),
)
# Ids no entity has: batch_init makes "0".."n-1" (n <= 10**6), creates make 32 hex digits.
UNKNOWN_IDS = st.one_of(
    st.just(""),
    st.text(min_size=1, max_size=40).filter(lambda t: not t.isdigit() and len(t) != 32),
    st.sampled_from(["-1", "99999999999", "../..", "%00", "null", "{item:1}", "' OR 1=1"]),
)


def load_operations(gateway_url: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path as the gateway exposes it, operation) of every described route."""
    ops = []
    for service in SERVICES:
        with urllib.request.urlopen(f"{gateway_url}/{service}/openapi.json") as reply:
            assert reply.headers["Content-Type"] == "application/json"
            doc = json.load(reply)
        prefix = doc["servers"][0]["url"]
        for path, methods in doc["paths"].items():
            for method, op in methods.items():
                ops.append((method.upper(), prefix + path, op))
    return ops


def test_every_api_route_is_described(gateway_url: str) -> None:
    described = {(m, p) for m, p, _ in load_operations(gateway_url)}
    for route in [
        ("POST", "/orders/checkout/{order_id}"),
        ("POST", "/orders/addItem/{order_id}/{item_id}/{quantity}"),
        ("GET", "/orders/find/{order_id}"),
        ("POST", "/orders/create/{user_id}"),
        ("POST", "/orders/batch_init/{n}/{n_items}/{n_users}/{item_price}"),
        ("POST", "/stock/item/create/{price}"),
        ("GET", "/stock/find/{item_id}"),
        ("POST", "/stock/add/{item_id}/{amount}"),
        ("POST", "/stock/subtract/{item_id}/{amount}"),
        ("POST", "/stock/batch_init/{n}/{starting_stock}/{item_price}"),
        ("POST", "/payment/create_user"),
        ("GET", "/payment/find_user/{user_id}"),
        ("POST", "/payment/add_funds/{user_id}/{amount}"),
        ("POST", "/payment/pay/{user_id}/{amount}"),
        ("POST", "/payment/batch_init/{n}/{starting_money}"),
    ]:
        assert route in described, route


@st.composite
def bad_request(
    draw: st.DrawFn, operations: list[tuple[str, str, dict[str, Any]]]
) -> tuple[str, str]:
    """A described route with at least one bad number, or with unknown ids only. (Creating
    an order for any user id is allowed, as the README says, so that route is left out.)"""
    method, path, op = draw(
        st.sampled_from([o for o in operations if o[2]["operationId"] not in ACCEPT_ANY_ID])
    )
    params = op["parameters"]
    numbers = [p["name"] for p in params if p["schema"]["type"] == "integer"]
    spoil = (
        set(draw(st.lists(st.sampled_from(numbers), min_size=1, unique=True))) if numbers else set()
    )
    for param in params:
        name = param["name"]
        if name in numbers:
            value = draw(BAD_NUMBERS) if name in spoil else "1"
        else:
            value = draw(UNKNOWN_IDS)
        path = path.replace("{" + name + "}", quote(value, safe=""))
    return method, path


async def snapshot(api: Api, item: str, user: str, order: str) -> tuple[Any, ...]:
    return (
        await api.ok("GET", f"/stock/find/{item}"),
        await api.ok("GET", f"/payment/find_user/{user}"),
        await api.ok("GET", f"/orders/find/{order}"),
    )


async def one_order(api: Api) -> tuple[str, str, str]:
    """(item, user, order): a fresh item in stock, a user with credit, and an order of one unit."""
    item = await api.item(price=3, stock=5)
    user = await api.user(credit=7)
    return item, user, await api.order(user, [(item, 1)])


def test_bad_input_is_4xx_and_changes_nothing(gateway_url: str) -> None:
    async def run() -> None:
        async with Api(gateway_url) as api:
            item, user, order = await one_order(api)
            before = await snapshot(api, item, user, order)
            seen: list[tuple[str, str, int]] = []

            @settings(
                max_examples=300,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(bad_request(load_operations(gateway_url)))
            def hammer(request: tuple[str, str]) -> None:
                method, path = request
                reply = asyncio.run_coroutine_threadsafe(api.request(method, path), loop).result()
                seen.append((method, path, reply.status))
                assert reply.status in (400, 404), (method, path, reply)

            loop = asyncio.get_running_loop()
            await asyncio.to_thread(hammer)
            assert len(seen) >= 100
            assert await snapshot(api, item, user, order) == before

    asyncio.run(run())


# Item ids that a URL built by plain string joining would change on the way to stock: a query
# or a fragment cuts the id short (so "<item>?x" was priced as <item> and added, a 200 for an
# item that does not exist), control characters are dropped, a trailing dot segment resolved.
ALTERED_ON_THE_WAY = ["?", "#", "?a", "#a", "..?", "\n", "\r\n", "\t", " ", "%", "%3F"]


def test_add_item_refuses_every_item_id_that_is_no_item(gateway_url: str) -> None:
    """addItem to a real order with an item id no item has answers 400 and leaves the order as
    it was, also when the id begins with a real item's id and the rest is what a URL would cut
    off. (Slashes and lone dot segments are left out: the gateway decodes %2F and resolves dot
    segments, as nginx does, so "<item>%2F" and a lone "." or "/" make a path of no route, 404;
    see test_an_empty_segment_names_no_entity.)"""

    async def run() -> None:
        async with Api(gateway_url) as api:
            item, user, order = await one_order(api)
            before = await snapshot(api, item, user, order)
            seen: list[tuple[str, int]] = []

            async def add(item_id: str) -> None:
                reply = await api.request(
                    "POST", f"/orders/addItem/{order}/{quote(item_id, safe='')}/1"
                )
                seen.append((item_id, reply.status))
                assert reply.status == 400, (item_id, reply)

            for suffix in ALTERED_ON_THE_WAY:
                await add(suffix)
                await add(item + suffix)
            await add(item + ".")
            await add(item + "..")

            @settings(
                max_examples=150,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(st.text(min_size=1, max_size=12).filter(lambda t: "/" not in t))
            def hammer(suffix: str) -> None:
                asyncio.run_coroutine_threadsafe(add(item + suffix), loop).result()

            loop = asyncio.get_running_loop()
            await asyncio.to_thread(hammer)
            assert len(seen) >= 150
            assert await snapshot(api, item, user, order) == before

    asyncio.run(run())


def test_an_empty_segment_names_no_entity(gateway_url: str, stack: Stack) -> None:
    """A path with an empty segment, `//<id>` or `%2F<id>` (which nginx decodes first), is no
    route: 404, and nothing changes. The gateway merged slashes, and a worker redirected such a
    path to the merged one, so `/orders/checkout//<id>` checked out order <id>."""

    async def run() -> None:
        async with Api(gateway_url) as api:
            item, user, order = await one_order(api)
            before = await snapshot(api, item, user, order)
            paths = [
                ("POST", f"/orders/checkout//{order}"),
                ("POST", f"/orders/checkout/%2F{order}"),
                ("GET", f"/orders/find//{order}"),
                ("POST", f"/stock/add//{item}/1"),
                ("POST", f"/payment/pay/%2F{user}/1"),
            ]
            for method, path in paths:
                reply = await api.request(method, path)
                assert reply.status == 404, (method, path, reply)
            # And a worker asked directly, without the gateway: no redirect to the merged path.
            worker = stack.env()["ORDER_WORKERS"].split(",")[0]
            async with aiohttp.ClientSession() as session:
                url = f"http://{worker}/checkout//{order}"
                async with session.post(url, allow_redirects=False) as direct:
                    assert direct.status == 404, (url, direct.status, await direct.text())
            assert await snapshot(api, item, user, order) == before

    asyncio.run(run())
