"""Atomicity under concurrency: many clients race for the same item or the same credit."""

from __future__ import annotations

import asyncio
from collections import Counter

from test.client import Api


async def test_concurrent_subtract_never_oversells(api: Api) -> None:
    item_id = await api.item(price=1, stock=100)
    replies = await asyncio.gather(*(api.post(f"/stock/subtract/{item_id}/1") for _ in range(200)))
    assert Counter(r.status for r in replies) == {200: 100, 400: 100}
    assert await api.stock(item_id) == 0


async def test_concurrent_pay_never_overdraws(api: Api) -> None:
    user_id = await api.user(credit=100)
    replies = await asyncio.gather(*(api.post(f"/payment/pay/{user_id}/1") for _ in range(200)))
    assert Counter(r.status for r in replies) == {200: 100, 400: 100}
    assert await api.credit(user_id) == 0


async def test_concurrent_add_and_subtract_conserve_stock(api: Api) -> None:
    item_id = await api.item(price=1, stock=50)
    adds = [api.post(f"/stock/add/{item_id}/2") for _ in range(50)]
    subs = [api.post(f"/stock/subtract/{item_id}/1") for _ in range(100)]
    replies = await asyncio.gather(*adds, *subs)
    added = 2 * sum(r.status == 200 for r in replies[:50])
    taken = sum(r.status == 200 for r in replies[50:])
    assert added == 100
    assert await api.stock(item_id) == 50 + added - taken
