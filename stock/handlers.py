"""Stock's saga commands: reserve every line of an order, or give the reservation back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial

from common.ledger import Ledger, Taken
from common.messages import (
    STOCK_PROCESSING,
    Lines,
    StockCompensated,
    StockCompensationRequested,
    StockUpdated,
    StockUpdateFailed,
    StockUpdateRequested,
    bounded_reason,
)
from common.types import Handler, Outgoing


def merge_lines(lines: Lines) -> dict[str, int]:
    """One quantity per item (an order may list the same item twice)."""
    merged: dict[str, int] = {}
    for item_id, quantity in lines:
        merged[item_id] = merged.get(item_id, 0) + quantity
    return merged


async def reserve(message: StockUpdateRequested, items: Ledger) -> Sequence[Outgoing]:
    """Take every line, each atomically and at most once. If one line cannot be taken, give
    back all lines of this saga (which also bars late retries), then report the failure."""
    lines = merge_lines(message.items)
    saga_id, started = message.saga_id, message.started
    results = await asyncio.gather(
        *(items.take(item_id, saga_id, quantity, started) for item_id, quantity in lines.items())
    )
    ids = message.reply_ids()
    if all(result is Taken.TAKEN for result in results):
        return [(STOCK_PROCESSING, StockUpdated(**ids))]
    # The restores act on these results, so they must not rest on a write a failover could
    # erase: the takes run again (idempotent) until a replica holds what they found.
    results = await items.store.durable(
        lambda: asyncio.gather(
            *(items.take(item_id, saga_id, qty, started) for item_id, qty in lines.items())
        )
    )
    if all(result is Taken.TAKEN for result in results):
        return [(STOCK_PROCESSING, StockUpdated(**ids))]
    await asyncio.gather(*(items.restore(item_id, saga_id, started) for item_id in lines))
    reasons = sorted(
        f"{item_id}: {result.name.lower()}"
        for item_id, result in zip(lines, results, strict=True)
        if result is not Taken.TAKEN
    )
    return [(STOCK_PROCESSING, StockUpdateFailed(**ids, reason=bounded_reason(reasons)))]


async def release(message: StockCompensationRequested, items: Ledger) -> Sequence[Outgoing]:
    """Give back every line the saga took; lines it never took are barred for good."""
    lines = merge_lines(message.items)
    saga_id, started = message.saga_id, message.started
    await asyncio.gather(*(items.restore(item_id, saga_id, started) for item_id in lines))
    ids = message.reply_ids()
    return [(STOCK_PROCESSING, StockCompensated(**ids))]


def handlers(items: Ledger) -> dict[type, Handler]:
    return {
        StockUpdateRequested: partial(reserve, items=items),
        StockCompensationRequested: partial(release, items=items),
    }
