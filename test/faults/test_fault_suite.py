"""The fault suite: under a steady load of multi-item checkouts with scarce stock and credit,
kill one component at a time, heal, and check that nothing was lost or made up, that every
client got a true answer, and how long throughput took to come back."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio.cluster import RedisCluster

from test.client import Api, until
from test.conftest import Stack
from test.faults.load import Load, Shop, all_sagas_ended, check_conservation

BASELINE_S = 5.0
"""The load runs this long before the fault; the baseline is its rate over all but the first
second. (Over 2 s it once came out at 533/s, far above the run's usual rate, and the rate
after a stock worker's restart never got back to 90 % of it before the orders ran out.)"""
OBSERVE_S = 25.0  # an upper bound for the assertion; the suite prints the measured time
# A broker that comes back empty formats a new log, and every group then forms from nothing
# and finds the re-created topics only on its next metadata refresh: allow it longer.
OBSERVE_EMPTY_BROKER_S = 45.0
RESULTS = Path(os.environ.get("FAULT_RESULTS", "/tmp/fault-results.tsv"))


async def master_process(stack: Stack, service: str) -> str:
    """The process name of the master owning the slot of key ``{x}``-ish in ``service``."""
    nodes = stack.env()[f"{service.upper()}_REDIS_NODES"].split(",")
    host, port = nodes[0].rsplit(":", 1)
    async with RedisCluster(host=host, port=int(port)) as redis:
        owner = redis.get_node_from_key("{order:fault}")
        assert owner is not None, f"{service}: no node serves the slot"
        return f"redis-{service}-{nodes.index(f'{owner.host}:{owner.port}')}"


Strike = Callable[[], Awaitable[None]]
"""A fault made ready: whatever it has to look up (a pid, which master owns the slot) was looked
up before the clock starts, and it never blocks the event loop the load runs on. (The suite used
to run ``run_local.sh pid`` inside the measured time, on the load's own loop: under load that
lookup took 0.2-1 s, during which the clients sent nothing, and it counted as recovery time.)"""


async def kill(stack: Stack, name: str) -> Strike:
    pid = await asyncio.to_thread(stack.pid, name)

    async def strike() -> None:
        os.kill(pid, signal.SIGKILL)  # supervision restarts it

    return strike


async def fail_over(stack: Stack, service: str) -> Strike:
    """Stop a master long enough for its replica to take over, then bring it back."""
    name = await master_process(stack, service)

    async def strike() -> None:
        await asyncio.to_thread(stack.run, "ctl", "stop", name)
        await until(lambda: _promoted(stack, service, name), within=30)
        await asyncio.to_thread(stack.run, "ctl", "start", name)

    return strike


async def _promoted(stack: Stack, service: str, old: str) -> bool:
    try:
        return await master_process(stack, service) != old
    except Exception:  # the cluster is mid-failover
        return False


async def empty_broker(stack: Stack) -> Strike:
    async def strike() -> None:
        await asyncio.to_thread(stack.restart_broker_empty)

    return strike


FAULTS: dict[str, Callable[[Stack], Awaitable[Strike]]] = {
    "order worker SIGKILL": lambda s: kill(s, "order-0"),
    "stock worker SIGKILL": lambda s: kill(s, "stock-0"),
    "payment worker SIGKILL": lambda s: kill(s, "payment-0"),
    "order Redis master failover": lambda s: fail_over(s, "order"),
    "stock Redis master failover": lambda s: fail_over(s, "stock"),
    "payment Redis master failover": lambda s: fail_over(s, "payment"),
    "broker SIGKILL": lambda s: kill(s, "broker"),
    "broker restarted empty": empty_broker,
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_under_load(api: Api, stack: Stack, fault: str) -> None:
    # Enough orders to keep the load going through the baseline and past the slowest recovery
    # (about 3,400 were used at ~420/s through a Redis failover; 2,500 ran out before the rate
    # came back; a 4 s baseline takes up to 2,000 more).
    shop = Shop(n_items=20, n_users=60, n_orders=9000, stock_each=25, credit_each=12)
    await shop.init(api)
    load = Load(api, shop, clients=24)
    resends_before = await sweeper_resends(stack)
    running = asyncio.ensure_future(load.run())
    start = time.monotonic()
    await asyncio.sleep(BASELINE_S)  # the load runs; this is the measuring window
    strike = await FAULTS[fault](stack)
    baseline = load.rate(start + 1.0, time.monotonic())
    fault_at = time.monotonic()
    await strike()
    within = OBSERVE_EMPTY_BROKER_S if fault == "broker restarted empty" else OBSERVE_S
    recovered_at = await _recovery(load, baseline, fault_at, within)
    load.stop()
    await running
    await all_sagas_ended(stack, list(load.replies))
    statuses = load.statuses()
    recovery = recovered_at - fault_at if recovered_at else float("inf")
    resends = resent_since(resends_before, await sweeper_resends(stack))
    _record(fault, baseline, recovery, statuses, resends)
    print(f"rate per second after the fault, over the baseline: {_shape(load, baseline, fault_at)}")
    assert set(statuses) <= {200, 400}, f"5xx or dropped replies: {statuses}"
    await check_conservation(api, load.replies, shop.stock, shop.credit)
    assert recovered_at is not None, f"throughput not back to 90% within {within}s"


async def _recovery(load: Load, baseline: float, fault_at: float, within: float) -> float | None:
    """When a 1 s window after the fault first reaches 90% of the baseline rate."""
    while time.monotonic() < fault_at + within:
        await asyncio.sleep(0.25)
        now = time.monotonic()
        if now - fault_at >= 1.0 and load.rate(now - 1.0, now) >= 0.9 * baseline:
            return now - 1.0 if now - 1.0 > fault_at else fault_at
    return None


async def sweeper_resends(stack: Stack) -> dict[str, float]:
    """Steps the sweeper re-sent so far, per order worker (a restarted worker counts from zero
    again; one that does not answer is left out)."""
    counts: dict[str, float] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        for address in stack.env()["ORDER_WORKERS"].split(","):
            try:
                async with session.get(f"http://{address}/metrics") as reply:
                    text = await reply.text()
            except (aiohttp.ClientError, TimeoutError):
                continue  # restarting
            for line in text.splitlines():
                if line.startswith("saga_sweeper_resends_total"):
                    counts[address] = counts.get(address, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def resent_since(before: dict[str, float], after: dict[str, float]) -> int:
    """Re-sends between two readings: a worker's count that went down was reset by a restart,
    so all of its count is new."""
    total = 0.0
    for address, count in after.items():
        earlier = before.get(address, 0.0)
        total += count - earlier if count >= earlier else count
    return int(total)


def _shape(load: Load, baseline: float, fault_at: float) -> str:
    """Each whole second's reply rate after the fault as a fraction of the baseline, up to the
    last reply: how the recovery went, whether or not it reached 90 %."""
    seconds = int(max(load.done_at, default=fault_at) - fault_at)
    return " ".join(
        f"{load.rate(fault_at + k, fault_at + k + 1) / baseline:.2f}" for k in range(seconds)
    )


def _record(
    fault: str, baseline: float, recovery: float, statuses: dict[int, int], resends: int
) -> None:
    line = (
        f"{fault}\t{baseline:.0f}/s\t{recovery:.1f}s\t{statuses.get(200, 0)}\t"
        f"{statuses.get(400, 0)}\t{sum(v for k, v in statuses.items() if k not in (200, 400))}"
        f"\tresends {resends}"
    )
    print(f"\nFAULT {line}")
    with RESULTS.open("a") as out:
        out.write(line + "\n")
