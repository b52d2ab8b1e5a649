"""Helpers of the operability tests: scraping every worker's /metrics, running the admin
command, and making a saga that no automatic mechanism will move."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from common.saga.log import SagaLog
from common.saga.orchestrator import now_ms
from common.settings import load_settings
from common.store import Store
from order.saga import CHECKOUT
from test.conftest import Stack

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("order", "payment", "stock")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def warm_up(api: Any, within: float = 90.0) -> None:
    """Return once a checkout goes through: right after the stack (re)started, consumer groups
    may still be forming, and a checkout would be turned back at its deadline."""
    item = await api.item(price=1, stock=1000)
    user = await api.user(credit=1000)
    order = await api.order(user, [(item, 1)])
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while (await api.post(f"/orders/checkout/{order}")).status != 200:
        assert loop.time() < end, "no checkout went through: is the stack up?"


def workers(stack: Stack, service: str) -> list[str]:
    """host:port of every worker of ``service`` (``run_local.sh env``)."""
    return stack.env()[f"{service.upper()}_WORKERS"].split(",")


async def scrape(stack: Stack, service: str) -> Samples:
    """Every sample of every worker of ``service``, summed over the workers."""
    total: Samples = defaultdict(float)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for address in workers(stack, service):
            async with session.get(f"http://{address}/metrics") as reply:
                assert reply.status == 200, address
                text = await reply.text()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    total[(sample.name, frozenset(sample.labels.items()))] += sample.value
    return total


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and wanted <= lbls)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def admin_env(stack: Stack) -> dict[str, str]:
    env = stack.env()
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ORDER_REDIS_NODES": env["ORDER_REDIS_NODES"],
        "STOCK_REDIS_NODES": env["STOCK_REDIS_NODES"],
        "PAYMENT_REDIS_NODES": env["PAYMENT_REDIS_NODES"],
        "KAFKA_BOOTSTRAP_SERVERS": env["KAFKA_BOOTSTRAP_SERVERS"],
    }


async def admin(stack: Stack, *args: str) -> tuple[int, Any]:
    """Run ``python -m order.admin ARGS --json``; (exit status, decoded output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "order.admin",
        *args,
        "--json",
        cwd=REPO,
        env=admin_env(stack),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    try:
        return proc.returncode, json.loads(out)
    except ValueError as exc:
        raise AssertionError(f"admin {args}: {proc.returncode} {out!r} {err!r}") from exc


async def lost_saga(
    nodes: str, order_id: str, *, age_ms: int = 60_000, concurrent: bool = False
) -> str:
    """Start the order's checkout saga as the orchestrator would (asking for every step at
    once if ``concurrent``), but send nothing: its commands are lost. Its index entry is due in
    an hour and its deadline is an hour away, so the sweeper leaves it alone: only an operator
    moves it. Returns the saga id."""
    settings = load_settings({"REDIS_NODES": nodes})
    store = Store(settings)
    log = SagaLog(store, CHECKOUT)
    await store.start()
    try:
        now = now_ms()
        later = now + 3_600_000
        await log.index_add(order_id, later)
        found = await store.durable(
            lambda: log.begin(
                order_id, start=True, now=now - age_ms, deadline=later, concurrent=concurrent
            )
        )
        assert found[0] == "STARTED", found
        return found[1]
    finally:
        await store.stop()


async def balances(api: Any, item: str, user: str, order: str) -> tuple[int, int, bool]:
    return await api.stock(item), await api.credit(user), await api.paid(order)


def nodes_of(stack: Stack, service: str) -> str:
    return stack.env()[f"{service.upper()}_REDIS_NODES"]


def by_status(stack: Stack, prefix: str) -> Mapping[str, str]:
    return {name: state for name, (state, _) in stack.status().items() if name.startswith(prefix)}
