"""Payment's saga commands: charge an order's total once, or cancel the charge."""

from __future__ import annotations

from collections.abc import Sequence

from common.bus import Handler, Outgoing
from common.ledger import Ledger, Taken
from common.messages import (
    PAYMENT_PROCESSING,
    PaymentCancelled,
    PaymentCancelRequested,
    PaymentCompleted,
    PaymentFailed,
    PaymentRequested,
)

_REASONS = {
    Taken.SHORT: "not enough credit",
    Taken.UNKNOWN: "unknown user",
    Taken.REFUSED: "payment cancelled",
}


async def charge(message: PaymentRequested, users: Ledger) -> Sequence[Outgoing]:
    """Charge the user at most once for this saga; a redelivery gets the same answer."""
    result = await users.take(message.user_id, message.saga_id, message.amount)
    ids = {"saga_id": message.saga_id, "order_id": message.order_id, "trace_id": message.trace_id}
    if result is Taken.TAKEN:
        return [(PAYMENT_PROCESSING, PaymentCompleted(**ids))]
    return [(PAYMENT_PROCESSING, PaymentFailed(**ids, reason=_REASONS[result]))]


async def cancel(message: PaymentCancelRequested, users: Ledger) -> Sequence[Outgoing]:
    """Refund the saga's charge if there was one; bar it for good if there was not."""
    await users.restore(message.user_id, message.saga_id)
    ids = {"saga_id": message.saga_id, "order_id": message.order_id, "trace_id": message.trace_id}
    return [(PAYMENT_PROCESSING, PaymentCancelled(**ids))]


def handlers(users: Ledger) -> dict[type, Handler]:
    async def on_payment(message: PaymentRequested) -> Sequence[Outgoing]:
        return await charge(message, users)

    async def on_cancel(message: PaymentCancelRequested) -> Sequence[Outgoing]:
        return await cancel(message, users)

    return {PaymentRequested: on_payment, PaymentCancelRequested: on_cancel}
