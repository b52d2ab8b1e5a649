"""A client's own X-Request-Id through the gateway, as ingress-nginx passes it on: the same id
twice is one effect (a retry), two ids are two effects. Dashed UUIDs, the form most clients send."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any

import aiohttp

from common.ledger import LUA_DIR, Ledger
from common.saga.log import SagaLog
from common.settings import load_settings
from common.store import Store
from common.terms import ITEMS, USERS
from common.types import Arg
from order.orders import RESET_REASON
from order.saga import CHECKOUT
from test.client import Api
from test.conftest import Stack
from test.system.ops import nodes_of


async def send_as(
    session: aiohttp.ClientSession, gateway_url: str, path: str, request_id: str
) -> tuple[int, Any]:
    """POST ``path`` under ``request_id``: the status and the JSON answer."""
    headers = {"X-Request-Id": request_id}
    async with session.post(gateway_url + path, headers=headers) as reply:
        return reply.status, await reply.json()


async def post(session: aiohttp.ClientSession, url: str, request_id: str | None) -> int:
    headers = {} if request_id is None else {"X-Request-Id": request_id}
    async with session.post(url, headers=headers) as reply:
        await reply.read()
        return reply.status


async def test_subtract_and_pay_happen_once_per_request_id(api: Api, gateway_url: str) -> None:
    item = await api.item(price=1, stock=10)
    user = await api.user(credit=10)
    async with aiohttp.ClientSession() as session:
        reads: list[tuple[str, Callable[[], Awaitable[int]]]] = [
            (f"/stock/subtract/{item}/2", lambda: api.stock(item)),
            (f"/payment/pay/{user}/2", lambda: api.credit(user)),
        ]
        for path, read in reads:
            retried = str(uuid.uuid4())
            assert [await post(session, gateway_url + path, retried) for _ in range(2)] == [200] * 2
            assert await read() == 8, path
            for other in (str(uuid.uuid4()), str(uuid.uuid4())):
                assert await post(session, gateway_url + path, other) == 200
            assert await read() == 4, path
            # Without an id of its own, each request is new (the gateway makes one per request).
            for _ in range(2):
                assert await post(session, gateway_url + path, None) == 200
            assert await read() == 0, path


async def test_a_retried_create_returns_the_same_entity(api: Api, gateway_url: str) -> None:
    retried = str(uuid.uuid4())
    async with aiohttp.ClientSession() as session:
        created = []
        for _ in range(2):
            async with session.post(
                gateway_url + "/payment/create_user", headers={"X-Request-Id": retried}
            ) as reply:
                assert reply.status == 200
                created.append((await reply.json())["user_id"])
        assert created[0] == created[1]
        # A short id a client chose never names an entity that exists for another reason
        # (batch_init's users "0" ... "n-1").
        async with session.post(
            gateway_url + "/payment/create_user", headers={"X-Request-Id": "0"}
        ) as reply:
            user_id = (await reply.json())["user_id"]
    assert user_id not in ("0", created[0])
    assert await api.credit(user_id) == 0


async def test_a_request_id_reused_for_another_request_is_refused(
    api: Api, gateway_url: str
) -> None:
    """An X-Request-Id is the key of one request: the same request again is a retry (the
    first answer, no new effect); another request under it (another route, amount, line or
    user) is a 400 that changes nothing, not the first request's answer."""
    item = await api.item(price=3, stock=10)
    user = await api.user(credit=10)
    order = await api.order(user)

    async with aiohttp.ClientSession() as session:
        send = partial(send_as, session, gateway_url)

        cases = [
            (
                f"/payment/add_funds/{user}/5",
                [f"/payment/pay/{user}/5", f"/payment/add_funds/{user}/6"],
            ),
            (f"/stock/add/{item}/4", [f"/stock/subtract/{item}/4", f"/stock/add/{item}/1"]),
            (
                f"/orders/addItem/{order}/{item}/1",
                [
                    f"/orders/addItem/{order}/{item}/2",
                    f"/orders/addItem/{order}/{await api.item()}/1",
                ],
            ),
            ("/stock/item/create/5", ["/stock/item/create/6"]),
            (f"/orders/create/{user}", [f"/orders/create/{await api.user()}"]),
        ]
        for first, others in cases:
            request_id = str(uuid.uuid4())
            status, answer = await send(first, request_id)
            assert status == 200, (first, answer)
            before = (
                await api.credit(user),
                await api.stock(item),
                await api.ok("GET", f"/orders/find/{order}"),
            )
            for other in others:
                status, refused = await send(other, request_id)
                assert status == 400, (first, other, refused)
                assert "X-Request-Id" in refused["error"], refused
            assert await send(first, request_id) == (200, answer), first
            after = (
                await api.credit(user),
                await api.stock(item),
                await api.ok("GET", f"/orders/find/{order}"),
            )
            assert after == before, first
    assert (await api.credit(user), await api.stock(item)) == (15, 14)
    found = await api.ok("GET", f"/orders/find/{order}")
    assert (found["items"], found["total_cost"]) == ([[item, 1]], 3)


async def test_a_create_s_request_id_is_spent_on_what_it_made(api: Api, gateway_url: str) -> None:
    """The id of a create is kept on the entity it made: a mutation of that entity under the
    same id is another request, a 400 that changes nothing, not a first use of the id."""
    item = await api.item(price=2, stock=5)
    async with aiohttp.ClientSession() as session:
        send = partial(send_as, session, gateway_url)

        made = [
            ("/payment/create_user", "user_id", "/payment/add_funds/{}/50"),
            ("/stock/item/create/3", "item_id", "/stock/add/{}/7"),
            (f"/orders/create/{await api.user()}", "order_id", f"/orders/addItem/{{}}/{item}/1"),
        ]
        entities: list[str] = []
        for create, field, mutate in made:
            request_id = str(uuid.uuid4())
            status, created = await send(create, request_id)
            assert status == 200, created
            entity = created[field]
            status, refused = await send(mutate.format(entity), request_id)
            assert status == 400 and "X-Request-Id" in refused["error"], (mutate, refused)
            assert await send(create, request_id) == (200, created)  # the create's own retry
            entities.append(entity)
    user, new_item, order = entities
    assert await api.credit(user) == 0
    assert await api.stock(new_item) == 0
    assert (await api.ok("GET", f"/orders/find/{order}"))["items"] == []


async def test_a_batch_init_under_a_used_request_id_changes_nothing(
    api: Api, gateway_url: str
) -> None:
    """The copy of a batch_init that comes again (a worker frozen with it resumes after the
    gateway's retry did it) leaves every entity as it has been used since; a new request resets."""
    retried = {service: str(uuid.uuid4()) for service in ("stock", "payment", "orders")}
    paths = {
        "stock": "/stock/batch_init/3/5/1",
        "payment": "/payment/batch_init/3/5",
        "orders": "/orders/batch_init/3/3/3/1",
    }
    async with aiohttp.ClientSession() as session:
        for service, path in paths.items():
            assert await post(session, gateway_url + path, retried[service]) == 200
        await api.ok("POST", "/stock/subtract/0/2")
        await api.ok("POST", "/payment/pay/0/2")
        await api.ok("POST", "/orders/checkout/1")
        used = (
            [await api.stock(i) for i in "012"],
            [await api.credit(u) for u in "012"],
            [await api.paid(o) for o in "012"],
        )
        assert used[2] == [False, True, False]
        for service, path in paths.items():
            assert await post(session, gateway_url + path, retried[service]) == 200
        again = (
            [await api.stock(i) for i in "012"],
            [await api.credit(u) for u in "012"],
            [await api.paid(o) for o in "012"],
        )
        assert again == used
        for path in paths.values():
            assert await post(session, gateway_url + path, None) == 200
        assert [await api.stock(i) for i in "012"] == [5, 5, 5]
        assert [await api.credit(u) for u in "012"] == [5, 5, 5]
        assert [await api.paid(o) for o in "012"] == [False, False, False]


async def test_another_batch_init_under_a_used_request_id_is_refused(gateway_url: str) -> None:
    """A batch_init under a request id that a batch_init asking other numbers used is a 400 and
    changes nothing; the same request again is its retry (200, nothing more). Before, each entity
    the first one had reset was left as it was and the answer was 200 ("3 items with stock 100 at
    price 7" over items still at 3 and 5 at price 1), and entities past its n were reset."""
    first = {
        "stock": "/stock/batch_init/3/5/1",
        "payment": "/payment/batch_init/3/5",
        "orders": "/orders/batch_init/3/3/3/1",
    }
    other = {
        "stock": "/stock/batch_init/4/100/7",
        "payment": "/payment/batch_init/4/100",
        "orders": "/orders/batch_init/4/3/3/9",
    }
    ids = {service: str(uuid.uuid4()) for service in first}
    reads = [
        f"/{route}/{i}"
        for route in ("stock/find", "payment/find_user", "orders/find")
        for i in "0123"
    ]
    async with aiohttp.ClientSession() as session:

        async def state() -> list[tuple[int, Any]]:
            found = []
            for path in reads:
                async with session.get(gateway_url + path) as reply:
                    found.append((reply.status, await reply.json()))
            return found

        for service, path in first.items():
            assert (await send_as(session, gateway_url, path, ids[service]))[0] == 200
        for path in ("/stock/subtract/0/2", "/payment/pay/0/2"):
            assert await post(session, gateway_url + path, None) == 200
        before = await state()
        for service, path in other.items():
            status, answer = await send_as(session, gateway_url, path, ids[service])
            assert status == 400, (path, answer)
            assert "already used for another request" in answer["error"]
        assert await state() == before
        for service, path in first.items():
            assert (await send_as(session, gateway_url, path, ids[service]))[0] == 200
        assert await state() == before


async def test_a_batch_init_copy_after_another_batch_init_changes_nothing(
    api: Api, gateway_url: str
) -> None:
    """The copy of a batch_init that comes again after ANOTHER batch_init reset its entities
    (a worker frozen with it resumes after the gateway's retry did it and the client went on
    with a new init) is still the same request: 200, nothing more. It reset every entity again
    (each keeps only the last reset's id): the units and credit the second init's paid orders
    and payments took came back, and the orders were replaced."""
    paths = {
        "stock": "/stock/batch_init/3/5/1",
        "payment": "/payment/batch_init/3/5",
        "orders": "/orders/batch_init/3/3/3/1",
    }
    first = {service: str(uuid.uuid4()) for service in paths}
    async with aiohttp.ClientSession() as session:
        for service, path in paths.items():
            assert await post(session, gateway_url + path, first[service]) == 200
        for path in paths.values():  # the client's next init: a new request id, same numbers
            assert await post(session, gateway_url + path, str(uuid.uuid4())) == 200
        await api.ok("POST", "/stock/subtract/0/2")
        await api.ok("POST", "/payment/pay/0/2")
        orders = [await api.ok("GET", f"/orders/find/{o}") for o in "012"]
        used = (
            [await api.stock(i) for i in "012"],
            [await api.credit(u) for u in "012"],
        )
        assert used[0][0] == 3 and used[1][0] == 3
        for service, path in paths.items():  # the first init's copy
            assert await post(session, gateway_url + path, first[service]) == 200
        assert ([await api.stock(i) for i in "012"], [await api.credit(u) for u in "012"]) == used
        assert [await api.ok("GET", f"/orders/find/{o}") for o in "012"] == orders


class FrozenMidWay:
    """A worker's store that writes a batch_init's first reset, then stops until ``resume``:
    the worker frozen in the middle of its writes (SIGSTOP, a paused VM)."""

    def __init__(self, stack: Stack, service: str) -> None:
        self.store = Store(load_settings({"REDIS_NODES": nodes_of(stack, service)}), LUA_DIR)
        self.stopped, self.resume = asyncio.Event(), asyncio.Event()
        write = self.store.bulk_script

        async def bulk_script(
            name: str, calls: Iterable[tuple[Sequence[str], Sequence[Arg]]], chunk: int = 5000
        ) -> list[Any]:
            first, *rest = list(calls)
            replies = await write(name, [first], chunk)
            self.stopped.set()
            await self.resume.wait()
            return replies + await write(name, rest, chunk)

        self.store.bulk_script = bulk_script  # type: ignore[method-assign]


async def test_a_batch_init_frozen_mid_way_leaves_what_a_later_batch_init_reset(
    stack: Stack, api: Api, gateway_url: str
) -> None:
    """A worker frozen in the middle of a batch_init's writes resumes after the gateway's retry
    did the request and the client's next batch_init ran: the entities it had not reached keep
    what that next init and the sales since left them. Before, it reset them again: stock and
    credit [3, 5, 5] for [3, 3, 3], and the orders were replaced."""
    paths = {
        "stock": "/stock/batch_init/3/5/1",
        "payment": "/payment/batch_init/3/5",
        "orders": "/orders/batch_init/3/3/3/1",
    }
    first = {service: str(uuid.uuid4()) for service in paths}
    frozen = {service: FrozenMidWay(stack, service) for service in ("stock", "payment", "order")}
    for worker in frozen.values():
        await worker.store.start()
    order_fields = {"user_id": "0", "items": '[["0", 1], ["0", 1]]', "total_cost": 2}
    writes = [
        Ledger(frozen["stock"].store, ITEMS).batch_init(
            3, {"stock": 5, "price": 1}, first["stock"]
        ),
        Ledger(frozen["payment"].store, USERS).batch_init(3, {"credit": 5}, first["payment"]),
        SagaLog(frozen["order"].store, CHECKOUT).reset(
            ((o, order_fields) for o in "012"),
            now=0,
            reason=RESET_REASON,
            request_id=first["orders"],
            asked="3 3 3 1",  # order/orders.py's for these numbers: the gateway's retry's
        ),
    ]
    tasks = [asyncio.ensure_future(write) for write in writes]
    try:
        for worker in frozen.values():
            await asyncio.wait_for(worker.stopped.wait(), 30)
        async with aiohttp.ClientSession() as session:
            for service, path in paths.items():  # the gateway's retry, on a live worker
                assert await post(session, gateway_url + path, first[service]) == 200
            for path in paths.values():  # the client's next init
                assert await post(session, gateway_url + path, str(uuid.uuid4())) == 200
        for i in "012":
            await api.ok("POST", f"/stock/subtract/{i}/2")
            await api.ok("POST", f"/payment/pay/{i}/2")
        orders = [await api.ok("GET", f"/orders/find/{o}") for o in "012"]
        for worker in frozen.values():
            worker.resume.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert [await api.stock(i) for i in "012"] == [3, 3, 3]
        assert [await api.credit(u) for u in "012"] == [3, 3, 3]
        assert [await api.ok("GET", f"/orders/find/{o}") for o in "012"] == orders
    finally:
        for task in tasks:
            task.cancel()
        for worker in frozen.values():
            await worker.store.stop()
