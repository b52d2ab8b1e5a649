#!/usr/bin/env python3
"""Checkout benchmark: initialise, drive load with wrk, verify the invariants, plot.

Modes (run one after the other with --mode both):
  first  first-time checkouts only: every request checks out a distinct unpaid order, ids
         0..99999 consumed in order (first_checkout.lua), at a fixed number of connections.
         Committed checkouts/s = 2xx replies / duration: each 2xx is a saga that committed.
  mixed  the locust test's mix at full speed: random order ids, repeats of paid orders
         included (mixed_checkout.lua).

Then, after a short settle (in-flight sagas finish), the state is read back through the API
and the invariants are checked:
  Σ credit + Σ total_cost of paid orders = initial credit
  Σ stock  + Σ units in paid orders      = initial stock
--verify full reads all 300,000 entities; --verify touched reads only the orders the runs
handed out and their users and items, and checks every one of those entities exactly (valid
when no other order was checked out since the init, i.e. not after --skip-init). Both also
check each run's first-time orders: those paid must match its 2xx replies.

Per-second samples (replies by class, and the mean latency by Little's law:
connections / replies per second, exact for wrk's closed loop) go to a CSV and a PNG in
results/; latency percentiles are wrk's own, over the whole run.

Usage: .venv/bin/python stress-test/bench.py [--mode first|mixed|both] [--duration 30]
           [--connections 64] [--threads 1] [--skip-init] [--urls test/urls.json]
           [--verify full|touched|none] [--read-concurrency 64]
Exit status: 0 if the invariants hold and no 5xx or socket error was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from init_orders import DEFAULT_URLS, Sizes, init_all, load_urls
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SCRIPTS = {"first": HERE / "first_checkout.lua", "mixed": HERE / "mixed_checkout.lua"}


# ---------------------------------------------------------------------------------------------
# wrk


def ensure_wrk() -> str:
    """The wrk binary; installs Debian's package when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing Debian's package")
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "apt-get"]
    subprocess.run([*apt, "update", "-qq"], check=True)
    subprocess.run([*apt, "install", "-y", "-qq", "wrk"], check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("could not install wrk")
    return found


@dataclass
class WrkRun:
    """What wrk and report.lua saw in one mode."""

    mode: str
    connections: int
    duration_s: float = 0.0
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency_us: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    issued: dict[int, int] = field(default_factory=dict)  # thread -> ids handed out
    touched: set[int] = field(default_factory=set)  # every order id handed out
    exhausted: bool = False

    def count(self, klass: int) -> int:
        return sum(n for code, n in self.statuses.items() if code // 100 == klass)

    @property
    def socket_errors(self) -> int:
        e = self.errors
        return e.get("connect", 0) + e.get("read", 0) + e.get("write", 0) + e.get("timeout", 0)


def parse_report(mode: str, connections: int, text: str) -> WrkRun:
    run = WrkRun(mode, connections)
    for line in text.splitlines():
        kind, *values = line.split()
        numbers = [int(v) for v in values]
        if kind == "summary":
            run.duration_s = numbers[0] / 1e6
            run.requests = numbers[1]
        elif kind == "errors":
            run.errors = dict(
                zip(("connect", "read", "write", "status", "timeout"), numbers, strict=True)
            )
        elif kind == "latency":
            names = ("mean", "stdev", "max", "p50", "p90", "p95", "p99", "p99.9")
            run.latency_us = dict(zip(names, numbers, strict=True))
        elif kind == "status":
            run.statuses[numbers[0]] = numbers[1]
        elif kind == "second":
            run.seconds.append((numbers[0], numbers[1], numbers[2], numbers[3], numbers[4]))
        elif kind == "touched":
            run.touched.add(numbers[0])
        elif kind == "issued":
            run.issued[numbers[0]] = numbers[1]
            run.exhausted |= bool(numbers[2])
    run.seconds.sort()
    return run


def run_wrk(
    wrk: str,
    mode: str,
    base_url: str,
    *,
    duration: int,
    connections: int,
    threads: int,
    first_id: int,
    last_id: int,
) -> WrkRun:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.txt"
        env = {
            **os.environ,
            "BENCH_REPORT": str(report),
            "BENCH_THREADS": str(threads),
            "BENCH_FIRST_ID": str(first_id),
            "BENCH_LAST_ID": str(last_id),
        }
        command = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "300s",
            "-s",
            str(SCRIPTS[mode]),
            base_url,
        ]
        print(f"--- {mode}: {' '.join(command[1:])}", flush=True)
        done = _run_with_clock(command, env, duration, mode)
        if done.returncode != 0 or not report.exists():
            raise SystemExit(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return parse_report(mode, connections, report.read_text())


def _run_with_clock(
    command: list[str], env: dict[str, str], duration: int, mode: str
) -> subprocess.CompletedProcess[str]:
    """Run wrk; on a terminal, a bar counts its seconds (wrk itself prints only at the end)."""
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        tqdm(total=duration, unit="s", desc=mode, disable=None, leave=False) as bar,
    ):
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)
        started = time.monotonic()
        while proc.poll() is None:
            time.sleep(0.5)
            bar.n = min(int(time.monotonic() - started), duration)
            bar.refresh()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(command, proc.returncode, out.read(), err.read())


# ---------------------------------------------------------------------------------------------
# Reading the state back


async def read_all(
    session: aiohttp.ClientSession,
    jobs: Iterable[tuple[str, str]],
    workers: int,
    on_reply: Callable[[str, dict[str, Any]], None],
    progress: tqdm[Any] | None = None,
) -> None:
    """GET every (key, url) with ``workers`` requests in flight; ``on_reply(key, json body)``;
    ``progress`` (a bar) advances by one per reply."""
    pending = iter(jobs)

    async def worker() -> None:
        for key, url in pending:
            for attempt in range(3):
                try:
                    async with session.get(url) as resp:
                        if resp.status != 200:
                            raise RuntimeError(f"GET {url} answered {resp.status}")
                        on_reply(key, await resp.json())
                        if progress is not None:
                            progress.update(1)
                        break
                except (aiohttp.ClientError, TimeoutError):
                    if attempt == 2:
                        raise
                    await asyncio.sleep(0.2)

    await asyncio.gather(*(worker() for _ in range(workers)))


@dataclass
class Order:
    user: str
    items: list[tuple[str, int]]
    total: int
    paid: bool


async def read_orders(
    urls: dict[str, str], ids: Iterable[int], workers: int, progress: tqdm[Any] | None = None
) -> dict[str, Order]:
    orders: dict[str, Order] = {}

    def order(key: str, body: dict[str, Any]) -> None:
        items = [(str(item), int(quantity)) for item, quantity in body["items"]]
        orders[key] = Order(str(body["user_id"]), items, body["total_cost"], body["paid"])

    base = f"{urls['ORDER_URL']}/orders/find"
    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(connector=connector) as session:
        await read_all(session, ((str(i), f"{base}/{i}") for i in ids), workers, order, progress)
    return orders


async def read_balances(
    urls: dict[str, str],
    users: Iterable[str],
    items: Iterable[str],
    workers: int,
    progress: tqdm[Any] | None = None,
) -> tuple[dict[str, int], dict[str, int]]:
    """Credit per user and stock per item."""
    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(connector=connector) as session:
        credit = await read_field(
            session, f"{urls['PAYMENT_URL']}/payment/find_user", users, "credit", workers, progress
        )
        stock = await read_field(
            session, f"{urls['STOCK_URL']}/stock/find", items, "stock", workers, progress
        )
    return credit, stock


async def read_field(
    session: aiohttp.ClientSession,
    base: str,
    keys: Iterable[str],
    field: str,
    workers: int,
    progress: tqdm[Any] | None,
) -> dict[str, int]:
    """The number ``field`` of what ``GET {base}/{key}`` answers, per key (see ``read_all``)."""
    values: dict[str, int] = {}
    await read_all(
        session,
        ((key, f"{base}/{key}") for key in keys),
        workers,
        lambda key, body: values.__setitem__(key, int(body[field])),
        progress,
    )
    return values


def check_balances(
    sizes: Sizes, orders: dict[str, Order], credit: dict[str, int], stock: dict[str, int]
) -> tuple[list[str], list[str]]:
    """Every user's credit and every item's stock against the paid orders among ``orders``.

    Exact for the entities read, provided no order outside ``orders`` was checked out since
    the data was initialised (true for a run that initialised its own data).
    """
    spent: dict[str, int] = {u: 0 for u in credit}
    sold: dict[str, int] = {i: 0 for i in stock}
    paid = [o for o in orders.values() if o.paid]
    for order in paid:
        spent[order.user] = spent.get(order.user, 0) + order.total
        for item, quantity in order.items:
            sold[item] = sold.get(item, 0) + quantity
    bad_users = [u for u in credit if credit[u] != sizes.credit - spent[u]]
    bad_items = [i for i in stock if stock[i] != sizes.stock - sold[i]]
    negative = sum(v < 0 for v in credit.values()) + sum(v < 0 for v in stock.values())
    total_credit = sum(credit.values()) + sum(o.total for o in paid)
    total_stock = sum(stock.values()) + sum(q for o in paid for _, q in o.items)
    lines = [
        f"  paid orders: {len(paid)} of {len(orders)} read",
        f"  credit: sum over {len(credit)} users + paid totals = {total_credit} "
        f"(initial {len(credit) * sizes.credit}); users off: {len(bad_users)}",
        f"  stock:  sum over {len(stock)} items + units in paid orders = {total_stock} "
        f"(initial {len(stock) * sizes.stock}); items off: {len(bad_items)}",
    ]
    failures = []
    if bad_users or total_credit != len(credit) * sizes.credit:
        example = f", e.g. user {bad_users[0]}: {credit[bad_users[0]]}" if bad_users else ""
        failures.append(f"credit invariant broken for {len(bad_users)} users{example}")
    if bad_items or total_stock != len(stock) * sizes.stock:
        example = f", e.g. item {bad_items[0]}: {stock[bad_items[0]]}" if bad_items else ""
        failures.append(f"stock invariant broken for {len(bad_items)} items{example}")
    if negative:
        failures.append(f"{negative} negative balances")
    return lines, failures


def verify(
    urls: dict[str, str], sizes: Sizes, runs: list[WrkRun], scope: str, workers: int
) -> list[str]:
    """Read the state back (every entity, or only what the runs touched); the failures."""
    started = time.perf_counter()
    if scope == "full":
        order_ids: Iterable[int] = range(sizes.orders)
        print(f"--- verify (full): every order, user and item ({workers} in flight)", flush=True)
    else:
        touched = set().union(*(run.touched for run in runs))
        order_ids = sorted(touched)
        print(
            f"--- verify (touched): {len(touched)} orders checked out, their users and items",
            flush=True,
        )
    # On a terminal, a bar counts the reads (its total grows once the users and items are known).
    with tqdm(unit="read", desc="verify", disable=None, leave=False) as bar:
        bar.total = sizes.orders + sizes.users + sizes.items if scope == "full" else len(touched)
        orders = asyncio.run(read_orders(urls, order_ids, workers, bar))
        if scope == "full":
            users: Iterable[str] = (str(i) for i in range(sizes.users))
            items: Iterable[str] = (str(i) for i in range(sizes.items))
        else:
            users = sorted({o.user for o in orders.values()})
            items = sorted({item for o in orders.values() for item, _ in o.items})
            bar.total += len(users) + len(items)
        credit, stock = asyncio.run(read_balances(urls, users, items, workers, bar))
    lines, failures = check_balances(sizes, orders, credit, stock)
    reads = len(orders) + len(credit) + len(stock)
    elapsed = time.perf_counter() - started
    print(f"  {reads} reads in {elapsed:.1f} s ({reads / elapsed:.0f}/s)")
    for line in lines:
        print(line)
    print("  invariants " + ("hold" if not failures else "BROKEN"))
    return failures


# ---------------------------------------------------------------------------------------------
# Output


def summarise(run: WrkRun) -> list[str]:
    lat = {k: v / 1000 for k, v in run.latency_us.items()}
    ok = run.count(2)
    lines = [
        f"{run.mode}: {run.requests} replies in {run.duration_s:.1f} s at {run.connections} "
        f"connections: {run.requests / run.duration_s:.0f} requests/s",
        f"  2xx={ok} 4xx={run.count(4)} 5xx={run.count(5)} other={run.count(1) + run.count(3)}"
        f"  socket errors: {run.errors}",
        f"  latency (wrk): p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, "
        f"p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms, mean {lat['mean']:.0f} ms",
    ]
    if run.mode == "first":
        lines.insert(1, f"  committed checkouts/s: {ok / run.duration_s:.0f}")
    return lines


def write_samples(runs: list[WrkRun], stamp: str) -> Path:
    path = RESULTS / f"bench-{stamp}.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            [
                "mode",
                "second",
                "unix_time",
                "replies",
                "2xx",
                "4xx",
                "5xx",
                "mean_latency_ms_littles_law",
            ]
        )
        for run in runs:
            if not run.seconds:
                continue
            t0 = run.seconds[0][0]
            for unix, replies, ok, c4, c5 in run.seconds:
                latency = run.connections / replies * 1000 if replies else ""
                writer.writerow(
                    [
                        run.mode,
                        unix - t0,
                        unix,
                        replies,
                        ok,
                        c4,
                        c5,
                        f"{latency:.1f}" if latency != "" else "",
                    ]
                )
    return path


def plot(runs: list[WrkRun], stamp: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install -r stress-test/requirements.txt): no plot")
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for run in runs:
        if not run.seconds:
            continue
        t0 = run.seconds[0][0]
        # The first and last seconds are partial; leave them out of the picture.
        rows = run.seconds[1:-1] or run.seconds
        xs = [unix - t0 for unix, *_ in rows]
        top.plot(xs, [r[1] for r in rows], label=f"{run.mode}: replies/s")
        top.plot(xs, [r[2] for r in rows], linestyle="--", label=f"{run.mode}: 2xx/s")
        (line,) = bottom.plot(
            xs,
            [run.connections / r[1] * 1000 if r[1] else 0 for r in rows],
            label=f"{run.mode}: mean latency (Little's law)",
        )
        bottom.axhline(run.latency_us["p99"] / 1000, linestyle=":", color=line.get_color())
    top.set_ylabel("replies per second")
    top.legend()
    top.grid(alpha=0.3)
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds into the run (dotted: wrk's p99 over the run)")
    bottom.legend()
    bottom.grid(alpha=0.3)
    fig.suptitle(f"checkout benchmark {stamp}")
    fig.tight_layout()
    path = RESULTS / f"bench-{stamp}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("first", "mixed", "both"), default="both")
    parser.add_argument("--duration", type=int, default=30, help="seconds per mode")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (keep it light)")
    parser.add_argument("--skip-init", action="store_true", help="keep the data that is there")
    parser.add_argument(
        "--first-id",
        type=int,
        default=0,
        help="first order id of the first-time run (with --skip-init: the "
        "first id not yet checked out)",
    )
    parser.add_argument("--urls", default=str(DEFAULT_URLS), help="default: %(default)s")
    parser.add_argument(
        "--verify",
        choices=("full", "touched", "none"),
        default="full",
        help="afterwards read back every user, item and order (full), or only the orders "
        "the runs checked out with their users and items (touched)",
    )
    parser.add_argument("--read-concurrency", type=int, default=64)
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds to let in-flight sagas finish before reading the state",
    )
    args = parser.parse_args()
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")

    urls = load_urls(args.urls)
    sizes = Sizes()
    base_url = urls["ORDER_URL"]
    wrk = ensure_wrk()
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    failures: list[str] = []

    if not args.skip_init:
        print("--- init (batch_init x3)")
        asyncio.run(init_all(urls, sizes))

    modes = ["first", "mixed"] if args.mode == "both" else [args.mode]
    runs: list[WrkRun] = []
    for mode in modes:
        run = run_wrk(
            wrk,
            mode,
            base_url,
            duration=args.duration,
            connections=args.connections,
            threads=args.threads,
            first_id=args.first_id,
            last_id=sizes.orders,
        )
        runs.append(run)
        for line in summarise(run):
            print(line)
        if run.count(5) or run.socket_errors:
            failures.append(f"{mode}: {run.count(5)} 5xx and {run.socket_errors} socket errors")
        if mode == "first":
            if run.exhausted:
                print(
                    "  note: ran out of unpaid order ids before the end (raise --first-id "
                    "range or shorten --duration); the last second(s) are repeats"
                )
            if run.count(4):
                failures.append(
                    f"first: {run.count(4)} first-time checkouts refused (4xx) "
                    "although every user and item has plenty"
                )
            if args.verify != "none":
                time.sleep(args.settle)
                orders = asyncio.run(read_orders(urls, run.touched, args.read_concurrency))
                paid = sum(o.paid for o in orders.values())
                # Handed out but never answered before wrk stopped (wrk also asks the script
                # for one request up front that it never sends).
                unanswered = max(len(run.touched) - run.requests, 0)
                print(
                    f"  orders handed out: {len(run.touched)}, paid now: {paid}, 2xx replies: "
                    f"{run.count(2)}, unanswered at the stop: {unanswered}"
                )
                if not run.count(2) <= paid <= run.count(2) + unanswered + run.count(5):
                    failures.append(
                        f"first: {paid} of the handed-out orders are paid but wrk saw "
                        f"{run.count(2)} 2xx ({unanswered} unanswered at the stop)"
                    )

    samples = write_samples(runs, stamp)
    picture = plot(runs, stamp)
    print(f"samples: {samples}" + (f"\nplot: {picture}" if picture else ""))

    if args.verify != "none":
        time.sleep(args.settle)
        failures += verify(urls, sizes, runs, args.verify, args.read_concurrency)

    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else "FAIL")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
