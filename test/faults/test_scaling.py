"""Elastic scaling under load (`run_local.sh scale`): while checkouts of two-item orders run over
scarce stock and credit, all three services are scaled 2 -> 3 -> 1 -> 2 (one command per step,
as a deployment's scaling would move them together). Every reply must be 200 or 400
(no 5xx, no dropped connection), stock and credit are conserved exactly, 2xx <=> paid, and every
saga ends. After each scale-up every worker, the new one included, takes a fair share of the
HTTP requests and of its group's partitions and messages; after each scale-down the group holds
only the remaining workers, well before a session timeout would have removed the others."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from common.settings import load_settings
from test.client import Api, until
from test.conftest import Stack
from test.faults.load import Shop, all_sagas_ended, check_conservation
from test.faults.scaling import ROLES, Groups, Role, Work, refuses, work

STEPS = (3, 1, 2)  # every service starts at 2 workers (scaled there first)
PARTITIONS = load_settings({}).topic_partitions  # per topic: the code's default, the stack's
SESSION_TIMEOUT_S = 6.0  # common/kafka_options.py: what a member that does not leave costs
FAIR = 0.5  # every worker gets at least half of an even share
WINDOW_REQUESTS = 150  # a share is measured over at least this many requests ...
WINDOW_MESSAGES = 150  # ... and messages of the service
RESULTS = Path(os.environ.get("SCALE_RESULTS", "/tmp/scale-results.txt"))

# The data: batch_init ids. Items 0..7 are scarce (3 units), the others plentiful; every user can
# pay for 3 orders (2 units at price 1 each), so both outcomes happen all along the run while
# stock and payment keep receiving work.
N_ITEMS, SCARCE_ITEMS, SCARCE_UNITS, STOCK_EACH = 40, 8, 3, 400
N_USERS, CREDIT_EACH = 1500, 6
N_ORDERS = 30000
SHOP = Shop(
    n_items=N_ITEMS,
    n_users=N_USERS,
    n_orders=N_ORDERS,
    stock_each=STOCK_EACH,
    credit_each=CREDIT_EACH,
)
CHECKOUT_CLIENTS, CHECKOUT_PACE_S = 24, 0.16  # at most 150 checkouts/s: the machine is small
READERS, READ_PACE_S = 6, 0.05  # GETs on stock and payment, so that they serve HTTP too


@dataclass
class ScaleLoad:
    """Paced checkouts of the batch_init orders, each once, and reads of items and users."""

    api: Api
    checkouts: dict[str, int] = field(default_factory=dict)  # order -> status (-1: dropped)
    reads: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    _queue: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        self._queue = [str(i) for i in range(N_ORDERS)]
        random.shuffle(self._queue)
        await asyncio.gather(
            *(self._checkout_client() for _ in range(CHECKOUT_CLIENTS)),
            *(self._reader() for _ in range(READERS)),
        )

    def stop(self) -> None:
        self._stop.set()

    async def _send(self, method: str, path: str) -> int:
        try:
            return (await self.api.request(method, path)).status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors[f"{method} {path.split('/')[1]}: {exc!r}"[:120]] += 1
            return -1

    async def _paced(self, pace_s: float) -> None:
        """Waits out the rest of one request's time slot (or until the load stops)."""
        try:
            await asyncio.wait_for(self._stop.wait(), pace_s)
        except TimeoutError:
            pass

    async def _checkout_client(self) -> None:
        while not self._stop.is_set() and self._queue:
            began = time.monotonic()
            order_id = self._queue.pop()
            self.checkouts[order_id] = await self._send("POST", f"/orders/checkout/{order_id}")
            await self._paced(CHECKOUT_PACE_S - (time.monotonic() - began))

    async def _reader(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            if random.random() < 0.5:
                path = f"/stock/find/{random.randrange(N_ITEMS)}"
            else:
                path = f"/payment/find_user/{random.randrange(N_USERS)}"
            self.reads[await self._send("GET", path)] += 1
            await self._paced(READ_PACE_S - (time.monotonic() - began))


@dataclass
class Scaled:
    """What one `scale` command did to one service, as measured (seconds from its start)."""

    service: str
    before: int
    after: int
    command_s: float
    first_message_s: dict[str, float]  # new worker -> its first handled message
    sigterm_s: dict[str, float]  # leaving worker -> when its port began to refuse
    group_settled_s: float  # the group first held exactly the new set, evenly split
    partitions: dict[str, int]
    requests: dict[str, float] = field(default_factory=dict)  # per worker, over the window
    messages: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        parts = [f"SCALE {self.service} {self.before}->{self.after}: command {self.command_s:.1f}s"]
        if self.first_message_s:
            firsts = ", ".join(f"{w} {t:.1f}s" for w, t in self.first_message_s.items())
            parts.append(f"first message: {firsts}")
        if self.sigterm_s:
            parts.append("SIGTERM " + ", ".join(f"{w} {t:.1f}s" for w, t in self.sigterm_s.items()))
        parts.append(f"group settled {self.group_settled_s:.1f}s")
        parts.append("partitions " + " ".join(f"{w}={n}" for w, n in self.partitions.items()))
        if self.requests:
            parts.append("requests " + " ".join(f"{v:.0f}" for v in self.requests.values()))
            parts.append("messages " + " ".join(f"{v:.0f}" for v in self.messages.values()))
        return "; ".join(parts)


class Cluster:
    """The stack's workers of each service, by address (worker k listens on base + k)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        env = stack.env()
        self.bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
        self.base = {
            service: int(env[f"{service.upper()}_WORKERS"].split(",")[0].rsplit(":", 1)[1])
            for service in ROLES
        }

    def address(self, service: str, k: int) -> str:
        return f"127.0.0.1:{self.base[service] + k}"

    def running(self, service: str) -> list[str]:
        """The service's workers that `status` lists, in order."""
        names = [n for n in self.stack.status() if re.fullmatch(rf"{service}-\d+", n)]
        return sorted(names, key=lambda n: int(n.rsplit("-", 1)[1]))


async def test_scaling_under_load(api: Api, stack: Stack) -> None:
    cluster = Cluster(stack)
    # The default stack runs 1 of each (and a standby): start from 2, in one command, and off the
    # event loop, which must see the gateway close the test client's idle connections.
    args = [arg for service in ROLES for arg in (service, "2")]
    await asyncio.to_thread(stack.run, "scale", *args)
    initial_stock = await _make_data(api)
    load = ScaleLoad(api)
    running = asyncio.ensure_future(load.run())
    results: list[Scaled] = []
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
            Groups(cluster.bootstrap) as groups,
        ):
            await until(lambda: _replied(load, 50), within=30)
            for target in STEPS:
                for scaled in await _scale(cluster, session, groups, target):
                    print(f"\n{scaled.line()}")
                    results.append(scaled)
    finally:
        load.stop()
        await running
    statuses = Counter(load.checkouts.values())
    summary = (
        f"SCALE checkouts {dict(statuses)}, reads {dict(load.reads)}, errors {dict(load.errors)}"
    )
    print(f"\n{summary}")
    _record([*(r.line() for r in results), summary])

    assert set(statuses) <= {200, 400}, f"5xx or dropped checkouts: {statuses} {load.errors}"
    assert statuses[200] > 0 and statuses[400] > 0, statuses
    assert set(load.reads) == {200}, f"reads: {load.reads} {load.errors}"
    await all_sagas_ended(cluster.stack, list(load.checkouts))
    await check_conservation(api, load.checkouts, initial_stock, SHOP.credit)
    for scaled in results:
        _check_work(scaled)


def _record(lines: list[str]) -> None:
    with RESULTS.open("a") as out:
        out.write("\n".join(lines) + "\n")


async def _replied(load: ScaleLoad, n: int) -> bool:
    return len(load.checkouts) >= n


async def _make_data(api: Api) -> dict[str, int]:
    """The shop's batch_init data with its scarce items cut down; returns each item's stock."""
    await SHOP.init(api)
    stock = SHOP.stock
    for i in range(SCARCE_ITEMS):
        await api.ok("POST", f"/stock/subtract/{i}/{STOCK_EACH - SCARCE_UNITS}")
        stock[str(i)] = SCARCE_UNITS
    return stock


async def _scale(
    cluster: Cluster, session: aiohttp.ClientSession, groups: Groups, target: int
) -> list[Scaled]:
    """Runs `scale` for every service at once. While it runs: each new worker's first handled
    message, each leaving worker's SIGTERM (its port refuses from then on), and when each group
    first holds exactly the new set with an even split of the partitions. Then checks `status`
    and `env`, and after a scale-up measures every worker's share of the work."""
    before = {service: len(cluster.running(service)) for service in ROLES}
    new = [(role, k) for role in ROLES.values() for k in range(before[role.service], target)]
    leaving = [(role, k) for role in ROLES.values() for k in range(target, before[role.service])]
    expected = {service: [f"{service}-{k}" for k in range(target)] for service in ROLES}
    args = [arg for service in ROLES for arg in (service, str(target))]
    started = time.monotonic()
    command = await asyncio.create_subprocess_exec(
        cluster.stack.ctl,
        "scale",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    done = asyncio.ensure_future(command.communicate())
    first: dict[str, float] = {}  # new worker -> its first handled message
    gone: dict[str, float] = {}  # leaving worker -> its SIGTERM
    settled: dict[str, float] = {}  # service -> its group holds the new set
    command_s = 0.0
    while True:
        now = time.monotonic() - started
        if done.done() and not command_s:
            command_s = now
            if command.returncode != 0:
                break
        for role, k in new:
            name = f"{role.service}-{k}"
            if name not in first:
                seen = await work(session, cluster.address(role.service, k), role)
                if seen is not None and seen.messages > 0:
                    first[name] = time.monotonic() - started
        for role, k in leaving:
            name = f"{role.service}-{k}"
            if name not in gone and await refuses(cluster.address(role.service, k)):
                gone[name] = time.monotonic() - started
        for role in ROLES.values():
            if role.service not in settled:
                group = await groups.describe(role)
                if group.state == "Stable" and _even(
                    group.partitions, expected[role.service], role
                ):
                    settled[role.service] = time.monotonic() - started
        if command_s and len(first) == len(new) and len(settled) == len(ROLES):
            break
        assert now < 120, f"scale to {target}: first messages {first}, groups settled {settled}"
        await asyncio.sleep(0.1)
    _, stderr = await done
    assert command.returncode == 0, stderr.decode()
    print(f"\nSCALE to {target}:\n{stderr.decode().strip()}")

    results = []
    for role in ROLES.values():
        service = role.service
        # `status` and `env` show the new set at once.
        assert cluster.running(service) == expected[service]
        addresses = [cluster.address(service, k) for k in range(target)]
        assert cluster.stack.env()[f"{service.upper()}_WORKERS"] == ",".join(addresses)
        group = await groups.describe(role)
        assert group.state == "Stable" and _even(group.partitions, expected[service], role)
        results.append(
            Scaled(
                service,
                before[service],
                target,
                command_s,
                {n: t for n, t in first.items() if n.startswith(f"{service}-")},
                {n: t for n, t in gone.items() if n.startswith(f"{service}-")},
                settled[service],
                dict(sorted(group.partitions.items())),
            )
        )
    for scaled in results:
        if scaled.after > scaled.before:
            role = ROLES[scaled.service]
            scaled.requests, scaled.messages = await _shares(session, cluster, role, target)
    return results


def _even(partitions: dict[str, int], workers: list[str], role: Role) -> bool:
    total = PARTITIONS * role.topics
    low, high = total // len(workers), -(-total // len(workers))
    return sorted(partitions) == sorted(workers) and all(
        low <= n <= high for n in partitions.values()
    )


async def _shares(
    session: aiohttp.ClientSession, cluster: Cluster, role: Role, n: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Requests and messages each worker handled over a window of the load after the scale."""
    addresses = {f"{role.service}-{k}": cluster.address(role.service, k) for k in range(n)}

    async def read() -> dict[str, Work]:
        seen = {w: await work(session, a, role) for w, a in addresses.items()}
        missing = [w for w, v in seen.items() if v is None]
        assert not missing, f"no metrics from {missing}"
        return {w: v for w, v in seen.items() if v is not None}

    start = await read()
    deltas: dict[str, Work] = {}

    async def enough() -> bool:
        nonlocal deltas
        now = await read()
        deltas = {
            w: Work(now[w].requests - start[w].requests, now[w].messages - start[w].messages)
            for w in now
        }
        return (
            sum(d.requests for d in deltas.values()) >= WINDOW_REQUESTS
            and sum(d.messages for d in deltas.values()) >= WINDOW_MESSAGES
        )

    await until(enough, within=30)
    return (
        {w: d.requests for w, d in deltas.items()},
        {w: d.messages for w, d in deltas.items()},
    )


def _check_work(scaled: Scaled) -> None:
    """After a scale-down the group had the remaining workers only, sooner after the SIGTERM
    than a member that did not leave could have been dropped (it heartbeats until it stops,
    then its session runs out). After a scale-up every worker, the new ones first of all, did
    its share of the work."""
    if scaled.after < scaled.before:
        last_sigterm = max(scaled.sigterm_s.values())
        assert scaled.group_settled_s - last_sigterm < SESSION_TIMEOUT_S - 1, scaled.line()
        return
    for name in (f"{scaled.service}-{k}" for k in range(scaled.before, scaled.after)):
        assert name in scaled.first_message_s, f"{name} handled no message"
    for what, counts in (("requests", scaled.requests), ("messages", scaled.messages)):
        even = sum(counts.values()) / len(counts)
        assert all(v >= FAIR * even for v in counts.values()), (scaled.line(), what)


async def test_a_leaving_worker_killed_with_checkouts_costs_no_5xx(api: Api, stack: Stack) -> None:
    """Scale order 8 -> 1 while checkouts that the gateway took before its reload still wait
    on the leaving workers, and SIGKILL one of them once all of them are told to stop. nginx
    retries its checkouts on the next servers of the upstreams they began with, which refuse
    connections once told to stop: after three tries the client got a 502 (a success to the
    course's clients, whether its saga paid or not). `scale` now tells workers to stop only
    once the gateway's old worker processes have answered what they held."""
    cluster = Cluster(stack)
    # One payment worker: paused, it holds every saga.
    await asyncio.to_thread(stack.run, "scale", "order", "8", "payment", "1")
    victim = await asyncio.to_thread(stack.pid, "order-1")
    payment = await asyncio.to_thread(stack.pid, "payment-0")
    draining = Path(stack.env()["STATE_DIR"]) / "nginx" / "draining"
    item = await api.item(price=1, stock=100)
    held = 40
    users = [await api.user(credit=1) for _ in range(held + 1)]
    orders = [await api.order(user, [(item, 1)]) for user in users]
    leaving = [cluster.address("order", k) for k in range(1, 8)]
    loop = asyncio.get_running_loop()
    killed_at_once = False
    os.kill(payment, signal.SIGSTOP)  # every saga waits at its payment step
    try:
        async with Api(api.base_url) as first, Api(api.base_url) as later:
            # One checkout in flight before the scale holds the gateway's drain open ...
            holder = asyncio.ensure_future(first.post(f"/orders/checkout/{orders[-1]}"))
            await until(lambda: _stock_is(api, item, 99), within=20)
            command = await asyncio.create_subprocess_exec(
                stack.ctl, "scale", "order", "1", stderr=asyncio.subprocess.PIPE
            )
            await until(lambda: _exists(draining), within=30)
            # ... while these, on new connections, reach the gateway's old worker process and
            # through it all eight workers; then its connection closes and the gateway reloads.
            checkouts = [
                asyncio.ensure_future(later.post(f"/orders/checkout/{o}")) for o in orders[:-1]
            ]
            await until(lambda: _stock_is(api, item, 99 - held), within=20)
            holder.cancel()
            await asyncio.gather(holder, return_exceptions=True)
            # Held checkouts and all, a worker told to stop refuses connections at once.
            end = loop.time() + 10
            while loop.time() < end and not killed_at_once:
                if await _all_refuse(leaving):
                    with contextlib.suppress(ProcessLookupError):  # it may have exited already
                        os.kill(victim, signal.SIGKILL)
                    killed_at_once = True
                await asyncio.sleep(0.01)  # the poll's pace
            os.kill(payment, signal.SIGCONT)
            if not killed_at_once:  # they are told to stop once their checkouts are answered
                await until(lambda: _all_refuse(leaving), within=90)
                with contextlib.suppress(ProcessLookupError):  # it may have exited already
                    os.kill(victim, signal.SIGKILL)
            replies = await asyncio.gather(*checkouts)
    finally:
        os.kill(payment, signal.SIGCONT)
    _, stderr = await command.communicate()
    assert command.returncode == 0, stderr.decode()
    statuses = Counter(r.status for r in replies)
    assert set(statuses) <= {200, 400}, (statuses, killed_at_once)
    assert [await api.paid(o) for o in orders[:-1]] == [r.status == 200 for r in replies]


async def _all_refuse(addresses: list[str]) -> bool:
    return all([await refuses(address) for address in addresses])


async def _stock_is(api: Api, item: str, units: int) -> bool:
    return await api.stock(item) == units


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)
