"""Kill a process under load: the gateway routes around a dead worker, and the saga machinery
finishes every checkout truthfully, even through a broker killed mid-checkout (it comes back with
its log; the broker that comes back empty is the fault suite's)."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from redis.asyncio.cluster import RedisCluster

from test.client import Api, Reply, until
from test.conftest import Stack


async def running(stack: Stack, name: str, old_pid: int) -> bool:
    state, pid = stack.status()[name]
    return state == "RUNNING" and pid != str(old_pid)


async def test_killed_stock_worker_is_routed_around(api: Api, stack: Stack) -> None:
    item_id = await api.item(price=1, stock=1000)
    killed = stack.kill("stock-0")
    replies = [await api.post(f"/stock/subtract/{item_id}/1") for _ in range(40)]
    replies += await asyncio.gather(*(api.post(f"/stock/add/{item_id}/1") for _ in range(40)))
    assert Counter(r.status for r in replies) == {200: 80}
    assert await api.stock(item_id) == 1000
    await until(lambda: running(stack, "stock-0", killed), within=30)


@dataclass
class Rush:
    """One-credit users each checking out one unit of one item, their checkouts in flight."""

    item_id: str
    users: list[str]
    orders: list[str]
    checkouts: list[asyncio.Task[Reply]]


async def rush(api: Api, *, stock: int, buyers: int) -> Rush:
    """A fresh item with ``stock`` units and ``buyers`` orders of one unit each, by one-credit
    users, whose checkouts are sent and given time to reach the workers."""
    item_id = await api.item(price=1, stock=stock)
    users = [await api.user(credit=1) for _ in range(buyers)]
    orders = [await api.order(user, [(item_id, 1)]) for user in users]
    checkouts = [asyncio.ensure_future(api.post(f"/orders/checkout/{o}")) for o in orders]
    await asyncio.sleep(0.05)  # let the checkouts reach the workers before the fault
    return Rush(item_id, users, orders, checkouts)


async def kill_during_checkouts(
    api: Api, stack: Stack, *names: str, stock: int, buyers: int
) -> str:
    """Kill the processes ``names`` at once during a ``rush``: every checkout answers 200 or
    400 and tells the truth (``assert_consistent``). Returns the item once they run again."""
    # The pids first: looked up after the rush, they would hold up this event loop (the
    # checkouts' client) for a subprocess while they finish, and the kill could come after them.
    killed = {name: await asyncio.to_thread(stack.pid, name) for name in names}
    run = await rush(api, stock=stock, buyers=buyers)
    in_flight = sum(not checkout.done() for checkout in run.checkouts)
    for pid in killed.values():
        os.kill(pid, signal.SIGKILL)  # supervision restarts it
    assert in_flight, "every checkout had its answer before the kill: the rush is too small"
    replies = await asyncio.gather(*run.checkouts)
    assert {r.status for r in replies} <= {200, 400}, Counter(r.status for r in replies)
    await assert_consistent(api, run, stock, replies)
    for name, pid in killed.items():
        await until(functools.partial(running, stack, name, pid), within=30)
    return run.item_id


async def test_killed_order_worker_loses_no_checkout(api: Api, stack: Stack) -> None:
    """Checkouts in flight on the killed worker are retried by the gateway on another one."""
    await kill_during_checkouts(api, stack, "order-0", stock=60, buyers=80)


async def test_an_order_worker_killed_with_its_standby_loses_no_checkout(
    api: Api, stack: Stack
) -> None:
    """No worker is left for the gateway's retry of the checkouts in flight: the gateway's
    holder sends them on once a restarted one listens (without it they answered 502, a success
    to the course's clients, and ended unpaid)."""
    await kill_during_checkouts(api, stack, "order-0", "order-standby", stock=60, buyers=80)


async def test_broker_killed_mid_checkout(api: Api, stack: Stack) -> None:
    item_id = await kill_during_checkouts(api, stack, "broker", stock=50, buyers=70)
    # And the system takes new checkouts after the restart.
    fresh_user = await api.user(credit=5)
    fresh = await api.order(fresh_user, [(item_id, 0 + 1)])
    expected = 200 if await api.stock(item_id) > 0 else 400
    assert (await api.post(f"/orders/checkout/{fresh}")).status == expected


async def assert_consistent(api: Api, run: Rush, stock: int, replies: Sequence[Reply]) -> None:
    """Every 2xx is a paid order charged once, every 4xx holds nothing, and totals add up."""
    paid = [await api.paid(o) for o in run.orders]
    assert paid == [r.status == 200 for r in replies]
    credits = [await api.credit(u) for u in run.users]
    assert credits == [0 if p else 1 for p in paid]
    assert await api.stock(run.item_id) == stock - sum(paid)


async def test_whole_stack_restarted_takes_checkouts(api: Api, stack: Stack) -> None:
    """Every process restarted at once (as after a power cut): the services come up while
    their Redis clusters are still forming, and must still start consuming once they have."""
    run = await rush(api, stock=30, buyers=40)
    stack.run("ctl", "restart", "all")
    await asyncio.gather(*run.checkouts, return_exceptions=True)  # the gateway went down too

    async def settled() -> bool:
        """Every saga of the run ended: paid orders are charged once, others hold nothing."""
        try:
            paid = [await api.paid(o) for o in run.orders]
            credits = [await api.credit(u) for u in run.users]
            stock = await api.stock(run.item_id)
        except Exception:  # still starting
            return False
        return credits == [0 if p else 1 for p in paid] and stock == 30 - sum(paid)

    await until(settled, within=60)

    fresh_item = await api.item(price=1, stock=10)

    async def checkout_pays() -> bool:
        user = await api.user(credit=1)
        order = await api.order(user, [(fresh_item, 1)])
        return (await api.post(f"/orders/checkout/{order}")).status == 200

    await until(checkout_pays, within=60)


async def test_a_standby_that_failed_once_takes_the_next_kill(api: Api, stack: Stack) -> None:
    """The standby is the gateway's backup: it gets requests only while no active worker
    listens, so a failure nginx once counted against it is never cleared by traffic. At the
    next SIGKILL of the active worker it must still take every request at once (with
    ``max_fails=1`` nginx let one probe through and answered the others 502)."""
    user = await api.user(credit=0)
    # A true double outage first: both workers of payment stopped, one request fails at the
    # gateway (nginx counts that against the standby), then both run again. No worker got it,
    # so the gateway refuses it (400, not a 502 the course's clients would count as done).
    await asyncio.to_thread(stack.run, "ctl", "stop", "payment-0", "payment-standby")
    assert (await api.post(f"/payment/add_funds/{user}/1")).status == 400
    await asyncio.to_thread(stack.run, "ctl", "start", "payment-0", "payment-standby")
    refused: list[int] = []

    async def serving() -> bool:
        status = (await api.post(f"/payment/add_funds/{user}/1")).status
        if status != 200:
            refused.append(status)
        return status == 200

    await until(serving, within=30)
    added = await api.credit(user)
    assert set(refused) <= {400} and added == 1, (refused, added)  # the 400s added nothing
    # Past the gateway's fail_timeout (2 s), as a standby that failed long ago would be.
    await asyncio.sleep(2.5)

    replies: list[Reply] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            replies.append(await api.post(f"/payment/add_funds/{user}/1"))

    clients = [asyncio.ensure_future(client()) for _ in range(12)]
    await until(lambda: _at_least(replies, 200), within=20)
    killed = await asyncio.to_thread(stack.kill, "payment-0")
    await until(lambda: running(stack, "payment-0", killed), within=30)
    served = len(replies)
    await until(lambda: _at_least(replies, served + 200), within=20)
    stop.set()
    await asyncio.gather(*clients)
    assert Counter(r.status for r in replies) == {200: len(replies)}
    assert await api.credit(user) == added + len(replies)


async def _at_least(replies: list[Reply], count: int) -> bool:
    return len(replies) >= count


Interrupt = Callable[[], Awaitable[asyncio.subprocess.Process]]


async def _checkouts_across(
    api: Api,
    stack: Stack,
    gateway_url: str,
    interrupt: Interrupt,
    recover: Callable[[], Awaitable[None]],
    buyers: int = 3000,
) -> None:
    """20 clients check out one-unit orders of 100 units among ``buyers`` one-credit users
    until the gateway's port closes; ``interrupt`` starts, once 40 are answered, the command
    that stops the stack's processes (which must exit 0), and ``recover`` brings the stack
    back. Every checkout answered must be 200 or 400 and tell the truth, and no checkout that
    reached the order service may go unanswered: the gateway answers what it has read. A
    connection may still drop with a request the gateway never read (sent on a keep-alive
    connection it was closing, or still in its accept queue when it closed its port, which the
    kernel then resets: no server that closes its port under load avoids that); such an order
    saw no saga begin. (The commands take seconds before they stop anything, `up` checking its
    set-up first: 400 buyers were all served before that.)"""
    stock = 100
    item_id = await api.item(price=1, stock=stock)
    users = list(await asyncio.gather(*(api.user(credit=1) for _ in range(buyers))))
    orders = list(await asyncio.gather(*(api.order(user, [(item_id, 1)]) for user in users)))
    replies: dict[str, Reply] = {}
    dropped: list[str] = []
    unsent = iter(orders)

    async def client() -> None:
        for order in unsent:
            try:
                replies[order] = await api.post(f"/orders/checkout/{order}")
            except aiohttp.ClientConnectorError:  # the port is closed: nothing was sent
                return
            except aiohttp.ClientConnectionError:  # sent, and the connection dropped
                dropped.append(order)
                return

    clients = [asyncio.ensure_future(client()) for _ in range(20)]
    await until(lambda: _at_least(list(replies.values()), 40), within=30)
    process = await interrupt()
    try:
        await asyncio.gather(*clients)
        assert len(replies) < buyers, "the load ended before the stop: it is too small"
        assert await process.wait() == 0
    finally:
        await process.wait()
        await recover()
    statuses = Counter(reply.status for reply in replies.values())
    assert set(statuses) <= {200, 400}, statuses
    async with Api(gateway_url) as fresh:
        paid = [await fresh.paid(order) for order in orders]
        assert paid == [order in replies and replies[order].status == 200 for order in orders]
        assert [await fresh.credit(user) for user in users] == [0 if p else 1 for p in paid]
        assert await fresh.stock(item_id) == stock - sum(paid)
    host, port = stack.env()["ORDER_REDIS_NODES"].split(",")[0].rsplit(":", 1)
    async with RedisCluster(host=host, port=int(port)) as redis:
        begun = [await redis.hget(f"{{order:{order}}}", "saga_attempt") for order in dropped]
    assert begun == [None] * len(dropped), "the gateway dropped checkouts it had passed on"


def _run_local(stack: Stack, command: str) -> Awaitable[asyncio.subprocess.Process]:
    return asyncio.create_subprocess_exec(
        stack.ctl, command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )


async def test_down_answers_the_checkouts_in_flight(
    api: Api, stack: Stack, gateway_url: str
) -> None:
    """`run_local.sh down` under a load of checkouts: the gateway stops taking connections but
    answers the requests it holds before the workers, the broker and Redis stop, so every
    checkout sent gets 200 or 400 and tells the truth; the rest find the port closed. (A `down`
    that stopped the gateway and the workers at once dropped the 20 checkouts in flight of such
    a load, 9 of which were never paid: successes to the course's clients.) The stack comes
    back with `up`."""

    async def up() -> None:
        await asyncio.to_thread(stack.run, "up")

    await _checkouts_across(api, stack, gateway_url, lambda: _run_local(stack, "down"), up)


async def test_up_after_supervisord_was_killed_answers_the_checkouts_in_flight(
    api: Api, stack: Stack, gateway_url: str
) -> None:
    """supervisord SIGKILLed under a load of checkouts: its programs go on serving, and the next
    `up` stops them as `down` does (the gateway first, answering what it holds) before it
    starts the stack again, so every checkout sent gets 200 or 400 and tells the truth. (The
    sweep of such leftovers stopped them all at once, which dropped the checkouts in flight.)"""
    supervisord = int((Path(stack.env()["STATE_DIR"]) / "supervisord.pid").read_text())

    async def kill_then_up() -> asyncio.subprocess.Process:
        os.kill(supervisord, signal.SIGKILL)
        return await _run_local(stack, "up")

    async def up_again() -> None:  # whatever the first `up` did, the stack is up after this
        await asyncio.to_thread(stack.run, "up")

    await _checkouts_across(api, stack, gateway_url, kill_then_up, up_again)
