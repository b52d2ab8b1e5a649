"""Orders in the order service's Redis Cluster: one hash per order, ``{order:<id>}``, which also
holds the order's checkout saga state (``saga_*`` fields)."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Iterator
from typing import Any

from common.errors import NotFound, Refused, RequestIdReused
from common.ledger import BALANCE_LIMIT, REQUEST_RECORD_TTL_S, create_entity, request_record
from common.saga.orchestrator import Orchestrator
from common.types import Arg, Publisher, Storage
from order.saga import order_key

log = logging.getLogger(__name__)

RESET_REASON = "order reset by batch_init"

MAX_ORDER_LINES = 1000
MAX_ORDER_LINE_BYTES = 100_000
"""An order holds at most MAX_ORDER_LINES lines and MAX_ORDER_LINE_BYTES bytes of them (its
``items`` field, JSON): its checkout's largest message (the stock command and its compensation,
which carry every line) then stays far below MAX_MESSAGE_BYTES, hence below Kafka's 1 MiB.
(Item ids are at most 64 characters, so the line count is what binds.)"""

_FIND_FIELDS = ["user_id", "items", "total_cost", "paid"]
_ADD_ITEM_REFUSALS = {
    "PAID": "order {} is already paid",
    "BUSY": "order {} is being checked out",
    "OVERFLOW": "order {} would cost too much",
    "TOO_BIG": (
        f"order {{}} is full: at most {MAX_ORDER_LINES} lines and "
        f"{MAX_ORDER_LINE_BYTES} bytes of them"
    ),
}


class Orders:
    """Creating, finding and filling orders; ``batch_init`` resets them under their sagas."""

    def __init__(self, store: Storage, checkout: Orchestrator, bus: Publisher) -> None:
        self._store = store
        self._checkout = checkout
        self._bus = bus

    async def create(self, order_id: str, user_id: str, request_id: str) -> str:
        """A new order (kept if it exists: a retried create); its id once replicated. An
        existing order of another user was made by another request with this request id:
        refused (RequestIdReused), nothing changed. The create's ``request_id`` is kept on the
        order, so another request under it there (an addItem) is refused too."""
        fields: dict[str, Arg] = {"user_id": user_id, "items": "[]", "total_cost": 0, "paid": 0}
        await create_entity(
            self._store,
            order_key(order_id),
            fields,
            request_id,
            same=("user_id",),
            what=f"order {order_id!r}",
        )
        return order_id

    async def find(self, order_id: str) -> dict[str, Any]:
        key = order_key(order_id)
        values = await self._store.hmget(key, _FIND_FIELDS)
        user_id, items, total_cost, paid = values
        if user_id is None:
            raise NotFound(f"order {order_id!r} not found")
        return {
            "order_id": order_id,
            "paid": paid == b"1",
            "items": json.loads(items or b"[]"),
            "user_id": user_id.decode(),
            "total_cost": int(total_cost or 0),
        }

    async def add_item(
        self, order_id: str, item_id: str, quantity: int, price: int, request_id: str
    ) -> int:
        """Append a line, at most once per ``request_id``; the new total. Refused once the
        order is paid or checking out, or when the line would take it past its bound."""
        key = order_key(order_id)
        request = request_record(key, request_id)
        args: list[Arg] = [
            item_id,
            quantity,
            price,
            BALANCE_LIMIT,
            REQUEST_RECORD_TTL_S,
            MAX_ORDER_LINES,
            MAX_ORDER_LINE_BYTES,
        ]
        status, total = await self._store.durable(
            lambda: self._store.script("add_item", [key, request], args)
        )
        status = status.decode()
        if status == "UNKNOWN":
            raise NotFound(f"order {order_id!r} not found")
        if status == "REUSED":
            raise RequestIdReused(f"order {order_id!r}")
        if status != "OK":
            raise Refused(_ADD_ITEM_REFUSALS[status].format(repr(order_id)))
        return int(total)

    async def batch_init(
        self, n: int, n_items: int, n_users: int, item_price: int, request_id: str | None = None
    ) -> None:
        """Orders ``"0"`` … ``str(n-1)``: a random user, two random one-unit lines, unpaid.

        A checkout still running on one of them is turned back in the same step (its fields
        are replaced, its saga's stay, so its compensations end it): once those are through,
        every reset order is unpaid and holds nothing, and no saga begun before can pay it."""

        def entries() -> Iterator[tuple[str, dict[str, Any]]]:
            rng = random.Random()
            for i in range(n):
                items = [[str(rng.randrange(n_items)), 1], [str(rng.randrange(n_items)), 1]]
                yield (
                    str(i),
                    {
                        "user_id": str(rng.randrange(n_users)),
                        "items": json.dumps(items),
                        "total_cost": 2 * item_price,
                    },
                )

        await self.reset(entries(), request_id, f"{n} {n_items} {n_users} {item_price}")

    async def reset(
        self,
        orders: Iterable[tuple[str, dict[str, Any]]],
        request_id: str | None = None,
        asked: str = "",
    ) -> None:
        """Replace each order's fields (``batch_init``), once per ``request_id`` and what it
        ``asked``; see there."""
        compensations = await self._checkout.reset(orders, RESET_REASON, request_id, asked)
        try:
            await self._bus.publish(compensations)
        except Exception as exc:  # the sagas are compensating and indexed: the sweeper re-sends
            log.warning(
                "sending the compensations of %d reset orders failed: %r", len(compensations), exc
            )
