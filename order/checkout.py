"""The HTTP side of checkout: the checkout saga's verdict (``common/saga/verdict.py``: start or
join the order's saga, turn it back past its timeout, wait for its end) told as HTTP: 200 once
paid, 400 once not paid and nothing held (also when its turn did not come in time, or the
request reached the worker after the gateway had given up on it: it started nothing, and no
saga of the order was running), 404 for an unknown order. Never 5xx, never
early."""

from __future__ import annotations

from common.errors import NotFound, Refused
from common.saga.orchestrator import Outcome
from common.saga.verdict import Verdicts


class Checkout:
    """``await checkout(order_id)`` returns when the order is paid, raises Refused if not."""

    def __init__(self, verdicts: Verdicts) -> None:
        self._verdicts = verdicts

    async def __call__(self, order_id: str, start_by_ms: int | None = None) -> None:
        """``start_by_ms``: when the gateway will have given up on this request (and may have
        retried it on another worker): past it, no saga is started (``Verdicts``)."""
        answer = await self._verdicts(order_id, start_by_ms)
        if answer.outcome is Outcome.UNKNOWN:
            raise NotFound(f"order {order_id!r} not found")
        if answer.outcome is Outcome.TOO_BIG:
            raise Refused(f"order {order_id!r} is too big to check out")
        if answer.outcome is Outcome.BUSY:
            raise Refused(f"order {order_id!r} not checked out: no turn came in time; try again")
        if answer.outcome is Outcome.LATE:
            raise Refused(
                f"order {order_id!r} not checked out: the request came too late; try again"
            )
        if answer.verdict is None:  # Outcome.DONE: paid already
            return
        paid, reason = answer.verdict
        if not paid:
            raise Refused(f"order {order_id!r} not paid: {reason or 'checkout failed'}")
