#!/usr/bin/env python3
"""The course's consistency test, re-implemented, with stricter checks of our own.

Scenario (per run, fresh data): one item with ``--stock`` units (100) at price 1, ``--users``
users (1000) with credit 1 each, ``--orders`` orders (1000) of one unit each, users drawn with
replacement. Then every checkout is fired at once through one aiohttp session whose connector
keeps at most ``--concurrency`` (100) requests in flight, and the state is read the moment the
last reply is in.

How the official client judges a reply: only 4xx is a failure; 2xx, 5xx and a dropped connection
all count as a success. We count the same way for the four course figures, and report 5xx and
connection errors separately as errors, since this system must never produce them.

Ground truth: a checkout can succeed only while the item has stock and its user still has the
one credit, so at most ``min(stock, distinct users among the orders)`` checkouts can succeed; in
the standard set-up (100 units, ~630 distinct users) that is exactly 100, which is what the
course expects. With S = expected successes, i = replies counted as success (non-4xx),
stock_left and Σcredit read right after the last reply, the four course figures are:

    Stock service inconsistencies in the logs:       i − S              (signed, as the course)
    Stock service inconsistencies in the database:   (stock − stock_left) − S   (signed)
    Payment service inconsistencies in the logs:     |(users − S) − (users − i)|
    Payment service inconsistencies in the database: |(users − S) − Σcredit|

"Logs" is what the client saw (the replies), "database" what the services hold. Our own checks,
all of which must hold too: stock_left = stock − #2xx and Σcredit = users − #2xx (the state is
exactly what the 2xx replies imply), no credit below 0, every user charged at most once, and
the set of paid orders (GET /orders/find) equals the set of orders that got a 2xx.

Exit status: 0 only if every run had zero on all four figures, passed every check of ours and
saw no 5xx and no connection error.

Usage: .venv/bin/python test/run_consistency_test.py [--urls test/urls.json] [--runs N]
                                                      [--orders 1000] [--stock 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
T = TypeVar("T")

# The course's client waits up to aiohttp's default of 300 s for any reply.
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=300)


class SetupError(RuntimeError):
    """Creating the test data failed: the run cannot say anything about consistency."""


@dataclass(frozen=True)
class Urls:
    order: str
    payment: str
    stock: str

    @classmethod
    def load(cls, path: Path) -> Urls:
        raw = json.loads(path.read_text())
        return cls(
            order=raw["ORDER_URL"].rstrip("/"),
            payment=raw["PAYMENT_URL"].rstrip("/"),
            stock=raw["STOCK_URL"].rstrip("/"),
        )


@dataclass
class Reply:
    """One checkout's outcome as the client saw it."""

    order_id: str
    status: int | None  # None: the connection failed or timed out
    latency_s: float
    detail: str = ""

    @property
    def official_success(self) -> bool:
        """The course's rule: anything but a 4xx is a success."""
        return self.status is None or not 400 <= self.status < 500

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class RunResult:
    index: int
    figures: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    errors: int = 0  # 5xx replies plus connection errors
    successes: int = 0
    checkout_wall_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.problems and self.errors == 0 and not any(self.figures.values())


# ---------------------------------------------------------------------------------------------
# HTTP helpers


async def _request(session: aiohttp.ClientSession, method: str, url: str) -> tuple[int, Any]:
    """Status and decoded body (JSON if possible, else text) of a set-up or read request.

    Reads (GET) retry a failed connection twice; a POST is never retried, since repeating a
    create or add_funds whose reply was lost would change the data the test reasons about.
    """
    tries = 3 if method == "GET" else 1
    for attempt in range(tries):
        try:
            async with session.request(method, url) as resp:
                text = await resp.text()
                try:
                    body: Any = json.loads(text)
                except ValueError:
                    body = text
                return resp.status, body
        except (TimeoutError, aiohttp.ClientError) as exc:
            if attempt == tries - 1:
                raise SetupError(f"{method} {url}: {exc!r}") from exc
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


async def _expect(session: aiohttp.ClientSession, method: str, url: str) -> Any:
    status, body = await _request(session, method, url)
    if status != 200:
        raise SetupError(f"{method} {url} answered {status}: {body!r}")
    return body


async def bounded(
    limit: int, jobs: Iterable[Callable[[], Awaitable[T]]], desc: str | None = None
) -> list[T]:
    """Run the jobs with at most ``limit`` at a time; results in job order. With ``desc``, a
    progress bar counts the finished jobs on a terminal (nothing is drawn otherwise)."""
    gate = asyncio.Semaphore(limit)
    jobs = list(jobs)
    bar = tqdm(total=len(jobs), desc=desc, unit="req", disable=None if desc else True, leave=False)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            result = await job()
        bar.update(1)
        return result

    try:
        return list(await asyncio.gather(*(one(job) for job in jobs)))
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# The scenario


@dataclass
class Dataset:
    item_id: str
    user_ids: list[str]
    order_ids: list[str]
    order_user: dict[str, str]  # order id -> user id


async def populate(
    session: aiohttp.ClientSession, urls: Urls, *, stock: int, users: int, orders: int, limit: int
) -> Dataset:
    """One item, ``users`` users with credit 1, ``orders`` one-unit orders (random users)."""
    item = await _expect(session, "POST", f"{urls.stock}/stock/item/create/1")
    item_id = str(item["item_id"])
    await _expect(session, "POST", f"{urls.stock}/stock/add/{item_id}/{stock}")

    async def new_user() -> str:
        body = await _expect(session, "POST", f"{urls.payment}/payment/create_user")
        user_id = str(body["user_id"])
        await _expect(session, "POST", f"{urls.payment}/payment/add_funds/{user_id}/1")
        return user_id

    user_ids = await bounded(limit, [new_user] * users, "users")
    chosen = [random.choice(user_ids) for _ in range(orders)]

    def new_order(user_id: str) -> Callable[[], Awaitable[str]]:
        async def job() -> str:
            body = await _expect(session, "POST", f"{urls.order}/orders/create/{user_id}")
            order_id = str(body["order_id"])
            await _expect(session, "POST", f"{urls.order}/orders/addItem/{order_id}/{item_id}/1")
            return order_id

        return job

    order_ids = await bounded(limit, [new_order(u) for u in chosen], "orders")
    return Dataset(item_id, user_ids, order_ids, dict(zip(order_ids, chosen, strict=True)))


async def fire_checkouts(urls: Urls, order_ids: list[str], concurrency: int) -> list[Reply]:
    """Every checkout at once, as the course does: one session, ``concurrency`` connections.

    The gate has the connector's size, so it never holds a request back that the connector
    would have sent; it only lets the latency clock start when the request really goes out.
    """
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    bar = tqdm(total=len(order_ids), desc="checkouts", unit="req", disable=None, leave=False)

    async def checkout(session: aiohttp.ClientSession, order_id: str) -> Reply:
        async with gate:
            started = time.perf_counter()
            try:
                async with session.post(f"{urls.order}/orders/checkout/{order_id}") as resp:
                    detail = await resp.text()
                    return Reply(order_id, resp.status, time.perf_counter() - started, detail)
            except (TimeoutError, aiohttp.ClientError) as exc:
                return Reply(order_id, None, time.perf_counter() - started, repr(exc))
            finally:
                bar.update(1)

    try:
        async with aiohttp.ClientSession(connector=connector, timeout=CLIENT_TIMEOUT) as session:
            return list(await asyncio.gather(*(checkout(session, o) for o in order_ids)))
    finally:
        bar.close()


async def read_state(
    session: aiohttp.ClientSession, urls: Urls, data: Dataset, limit: int
) -> tuple[int, dict[str, int]]:
    """The item's stock and every user's credit: the "database" side, read right away."""
    item = await _expect(session, "GET", f"{urls.stock}/stock/find/{data.item_id}")

    async def credit_of(user_id: str) -> tuple[str, int]:
        body = await _expect(session, "GET", f"{urls.payment}/payment/find_user/{user_id}")
        return user_id, int(body["credit"])

    credits = await bounded(limit, [partial(credit_of, u) for u in data.user_ids])
    return int(item["stock"]), dict(credits)


async def read_paid(
    session: aiohttp.ClientSession, urls: Urls, data: Dataset, limit: int
) -> set[str]:
    async def paid(order_id: str) -> tuple[str, bool]:
        body = await _expect(session, "GET", f"{urls.order}/orders/find/{order_id}")
        return order_id, bool(body["paid"])

    found = await bounded(limit, [partial(paid, o) for o in data.order_ids])
    return {order_id for order_id, is_paid in found if is_paid}


# ---------------------------------------------------------------------------------------------
# Judging


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


_ID = re.compile(r"'[^']*'|\b[0-9a-f]{16,}\b")


def _reason(detail: str) -> str:
    """A refusal's reason with the ids masked, so that equal reasons group."""
    try:
        body = json.loads(detail)
    except ValueError:
        body = detail.strip() or "(empty body)"
    text = str(body.get("error", body)) if isinstance(body, dict) else str(body)
    return _ID.sub("<id>", text)[:100]


def judge(
    run: RunResult,
    data: Dataset,
    replies: list[Reply],
    stock_left: int,
    credits: dict[str, int],
    *,
    stock: int,
) -> None:
    """Fill in the four course figures and our own checks' problems."""
    users = len(data.user_ids)
    distinct = len(set(data.order_user.values()))
    expected = min(stock, distinct)
    official = sum(r.official_success for r in replies)
    ok = [r for r in replies if r.ok]
    total_credit = sum(credits.values())

    run.successes = official
    run.figures = {
        "Stock service inconsistencies in the logs": official - expected,
        "Stock service inconsistencies in the database": (stock - stock_left) - expected,
        "Payment service inconsistencies in the logs": abs((users - expected) - (users - official)),
        "Payment service inconsistencies in the database": abs((users - expected) - total_credit),
    }

    if stock_left != stock - len(ok):
        run.problems.append(
            f"stock left {stock_left} != {stock} - #2xx ({len(ok)}) = {stock - len(ok)}"
        )
    if total_credit != users - len(ok):
        run.problems.append(
            f"total credit {total_credit} != {users} - #2xx ({len(ok)}) = {users - len(ok)}"
        )
    negative = [u for u, c in credits.items() if c < 0]
    if negative:
        run.problems.append(f"{len(negative)} users with negative credit, e.g. {negative[0]}")
    charged = Counter(data.order_user[r.order_id] for r in ok)
    twice = [u for u, n in charged.items() if n > 1]
    if twice:
        run.problems.append(f"{len(twice)} users got more than one 2xx checkout (credit was 1)")
    mismatch = [u for u in data.user_ids if credits[u] != 1 - charged.get(u, 0)]
    if mismatch:
        u = mismatch[0]
        run.problems.append(
            f"{len(mismatch)} users whose credit differs from what their 2xx replies imply, "
            f"e.g. {u}: credit {credits[u]}, 2xx checkouts {charged.get(u, 0)}"
        )


def describe_refusals(
    data: Dataset, replies: list[Reply], stock_left: int, credits: dict[str, int]
) -> list[str]:
    """Why the 4xx happened, and refusals that a serial execution would not have made."""
    lines = []
    reasons = Counter(_reason(r.detail) for r in replies if r.status and 400 <= r.status < 500)
    for reason, n in reasons.most_common(5):
        lines.append(f"  4xx x{n}: {reason}")
    if stock_left > 0:
        # With stock still there, a refused order whose user kept the credit was refusable only
        # because of a transient reservation: legal for a saga, but the course counts it.
        spurious = [
            r
            for r in replies
            if r.status and 400 <= r.status < 500 and credits[data.order_user[r.order_id]] > 0
        ]
        if spurious:
            lines.append(
                f"  {len(spurious)} orders were refused although stock is left "
                f"and their user still has credit"
            )
    return lines


# ---------------------------------------------------------------------------------------------
# One run


async def run_once(index: int, urls: Urls, args: argparse.Namespace) -> RunResult:
    run = RunResult(index)
    print(f"=== run {index}: {args.stock} units, {args.users} users, {args.orders} orders")
    setup_connector = aiohttp.TCPConnector(limit=args.setup_concurrency)
    async with aiohttp.ClientSession(connector=setup_connector, timeout=CLIENT_TIMEOUT) as session:
        t0 = time.perf_counter()
        data = await populate(
            session,
            urls,
            stock=args.stock,
            users=args.users,
            orders=args.orders,
            limit=args.setup_concurrency,
        )
        distinct = len(set(data.order_user.values()))
        print(
            f"populated in {time.perf_counter() - t0:.2f} s "
            f"({distinct} distinct users among the orders; "
            f"expected successes: {min(args.stock, distinct)})"
        )

        t0 = time.perf_counter()
        replies = await fire_checkouts(urls, data.order_ids, args.concurrency)
        run.checkout_wall_s = time.perf_counter() - t0
        # Read at once: anything not applied by now counts as an inconsistency.
        stock_left, credits = await read_state(session, urls, data, args.concurrency)
        paid = await read_paid(session, urls, data, args.concurrency)

        statuses = Counter(
            "conn-error" if r.status is None else f"{r.status // 100}xx" for r in replies
        )
        latencies = [r.latency_s * 1000 for r in replies]
        run.p50_ms = percentile(latencies, 50)
        run.p99_ms = percentile(latencies, 99)
        run.errors = statuses["5xx"] + statuses["conn-error"]
        print(
            f"checkouts: {len(replies)} in {run.checkout_wall_s:.2f} s "
            f"({len(replies) / run.checkout_wall_s:.0f}/s), latency p50 {run.p50_ms:.0f} ms, "
            f"p99 {run.p99_ms:.0f} ms, max {max(latencies):.0f} ms, "
            f"mean {statistics.fmean(latencies):.0f} ms"
        )
        print(
            f"replies: 2xx={statuses['2xx']} 4xx={statuses['4xx']} 5xx={statuses['5xx']} "
            f"connection errors={statuses['conn-error']}  (official successes, non-4xx: "
            f"{sum(r.official_success for r in replies)})"
        )
        print(
            f"state right after: stock left {stock_left}, total credit {sum(credits.values())},"
            f" paid orders {len(paid)}"
        )
        for reply in replies:
            if reply.status is None or reply.status >= 500:
                run.problems.append(f"order {reply.order_id}: {reply.status} {reply.detail[:120]}")
                if len(run.problems) >= 5:
                    break

        judge(run, data, replies, stock_left, credits, stock=args.stock)
        ok_ids = {r.order_id for r in replies if r.ok}
        if paid - ok_ids:
            bad = sorted(paid - ok_ids)
            by_status = Counter(str(r.status) for r in replies if r.order_id in paid and not r.ok)
            run.problems.append(
                f"{len(bad)} paid orders did not get a 2xx (their replies: {dict(by_status)}), "
                f"e.g. {bad[0]}"
            )
        if ok_ids - paid:
            run.problems.append(
                f"{len(ok_ids - paid)} orders got a 2xx but are not paid, "
                f"e.g. {sorted(ok_ids - paid)[0]}"
            )
        for line in describe_refusals(data, replies, stock_left, credits):
            print(line)

        for name, value in run.figures.items():
            print(f"{name}: {value}")
        for problem in run.problems:
            print(f"PROBLEM: {problem}")

        if run.problems or any(run.figures.values()):
            # Lag or loss? Read once more after a pause; this does not change the verdict.
            await asyncio.sleep(args.settle)
            later_stock, later_credits = await read_state(session, urls, data, args.concurrency)
            later_paid = await read_paid(session, urls, data, args.concurrency)
            print(
                f"after {args.settle:.0f} s more: stock left {later_stock}, total credit "
                f"{sum(later_credits.values())}, paid orders {len(later_paid)}"
            )
    print(f"run {index}: {'PASS' if run.passed else 'FAIL'}")
    return run


async def main_async(args: argparse.Namespace) -> int:
    urls = Urls.load(Path(args.urls))
    results = []
    for index in range(1, args.runs + 1):
        try:
            results.append(await run_once(index, urls, args))
        except SetupError as exc:
            print(f"run {index}: SETUP FAILED: {exc}")
            return 2
    if args.runs > 1:
        print("=== summary")
        for r in results:
            figures = " ".join(str(v) for v in r.figures.values())
            print(
                f"run {r.index}: {'PASS' if r.passed else 'FAIL'}  four figures [{figures}]  "
                f"successes {r.successes}  errors {r.errors}  wall {r.checkout_wall_s:.2f} s  "
                f"p50 {r.p50_ms:.0f} ms  p99 {r.p99_ms:.0f} ms"
            )
    return 0 if all(r.passed for r in results) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--urls",
        default=str(HERE / "urls.json"),
        help="JSON with ORDER_URL, PAYMENT_URL, STOCK_URL (default: %(default)s)",
    )
    parser.add_argument("--runs", type=int, default=1, help="repeat with fresh data")
    parser.add_argument("--orders", type=int, default=1000, help="orders of one unit each")
    parser.add_argument("--stock", type=int, default=100, help="units of the one item")
    parser.add_argument("--users", type=int, default=1000, help="users with credit 1 each")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=100,
        help="checkouts in flight at once (the course uses 100)",
    )
    parser.add_argument(
        "--setup-concurrency",
        type=int,
        default=64,
        help="requests in flight while creating the data",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="on a failure, seconds to wait before a diagnostic re-read",
    )
    args = parser.parse_args(argv)
    if min(args.runs, args.orders, args.stock, args.users, args.concurrency) < 1:
        parser.error("--runs, --orders, --stock, --users and --concurrency must be >= 1")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args())))
