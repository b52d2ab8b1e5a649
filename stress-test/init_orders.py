#!/usr/bin/env python3
"""Initialise the stress test's data through the batch_init routes, as the course's script does.

Creates (overwriting what is there) the literal ids "0".."n-1":
  stock:   100,000 items with 1,000,000 units each at price 1
  payment: 100,000 users with 1,000,000 credit each
  order:   100,000 unpaid orders, each of two one-unit lines over random items and a random user
and prints how long each call took.

Usage: .venv/bin/python stress-test/init_orders.py [--urls test/urls.json] [--n 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
DEFAULT_URLS = HERE.parent / "test" / "urls.json"

N_ITEMS = 100_000
ITEM_STARTING_STOCK = 1_000_000
ITEM_PRICE = 1
N_USERS = 100_000
USER_STARTING_CREDIT = 1_000_000
N_ORDERS = 100_000
UNITS_PER_ORDER = 2  # batch_init orders hold two one-unit lines

# The course's client gives each batch_init up to aiohttp's default of 300 s.
TIMEOUT = aiohttp.ClientTimeout(total=300)


@dataclass(frozen=True)
class Sizes:
    """What one initialisation creates; the invariants' initial totals follow from it."""

    items: int = N_ITEMS
    stock: int = ITEM_STARTING_STOCK
    price: int = ITEM_PRICE
    users: int = N_USERS
    credit: int = USER_STARTING_CREDIT
    orders: int = N_ORDERS

    @property
    def total_stock(self) -> int:
        return self.items * self.stock

    @property
    def total_credit(self) -> int:
        return self.users * self.credit


def load_urls(path: str | Path) -> dict[str, str]:
    raw = json.loads(Path(path).read_text())
    return {key: raw[key].rstrip("/") for key in ("ORDER_URL", "PAYMENT_URL", "STOCK_URL")}


async def _post(session: aiohttp.ClientSession, url: str) -> tuple[float, str]:
    started = time.perf_counter()
    async with session.post(url) as resp:
        body = await resp.text()
        elapsed = time.perf_counter() - started
        if resp.status != 200:
            raise RuntimeError(f"POST {url} answered {resp.status}: {body[:200]}")
        return elapsed, body


async def _ticking(bar: tqdm[Any]) -> None:
    """Keep the bar's clock moving while one long call is in flight."""
    while True:
        await asyncio.sleep(0.5)
        bar.refresh()


async def init_all(urls: dict[str, str], sizes: Sizes = Sizes(), *, quiet: bool = False) -> float:
    """Run the three batch_inits one after the other; returns the total seconds. On a
    terminal a progress bar shows which call runs and for how long (none otherwise)."""
    calls = [
        (
            "stock",
            f"{urls['STOCK_URL']}/stock/batch_init/{sizes.items}/{sizes.stock}/{sizes.price}",
        ),
        ("payment", f"{urls['PAYMENT_URL']}/payment/batch_init/{sizes.users}/{sizes.credit}"),
        (
            "orders",
            f"{urls['ORDER_URL']}/orders/batch_init/"
            f"{sizes.orders}/{sizes.items}/{sizes.users}/{sizes.price}",
        ),
    ]
    total = 0.0
    bar = tqdm(total=len(calls), unit="call", disable=True if quiet else None, leave=False)
    ticker = asyncio.create_task(_ticking(bar))
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            for name, url in calls:
                bar.set_description(f"batch_init {name}")
                elapsed, body = await _post(session, url)
                total += elapsed
                bar.update(1)
                if not quiet:
                    tqdm.write(f"{name:8} batch_init: {elapsed:6.2f} s  {body.strip()[:100]}")
    finally:
        ticker.cancel()
        bar.close()
    if not quiet:
        print(f"all three: {total:.2f} s")
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--urls", default=str(DEFAULT_URLS), help="default: %(default)s")
    parser.add_argument("--n", type=int, default=N_ORDERS, help="items, users and orders each")
    args = parser.parse_args()
    sizes = Sizes(items=args.n, users=args.n, orders=args.n)
    try:
        asyncio.run(init_all(load_urls(args.urls), sizes))
    except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
        print(f"init failed: {exc!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
