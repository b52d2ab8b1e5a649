"""Payment's saga commands: charge an order's total once, or cancel the charge."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from common.ledger import Ledger, Taken
from common.messages import (
    PAYMENT_PROCESSING,
    PaymentCancelled,
    PaymentCancelRequested,
    PaymentCompleted,
    PaymentFailed,
    PaymentRequested,
)
from common.types import Handler, Outgoing

_REASONS = {
    Taken.SHORT: "not enough credit",
    Taken.UNKNOWN: "unknown user",
    Taken.REFUSED: "payment cancelled",
    Taken.FENCED: "user reset (batch_init) after the checkout began",
}


async def charge(message: PaymentRequested, users: Ledger) -> Sequence[Outgoing]:
    """Charge the user at most once for this saga; a redelivery gets the same answer."""
    result = await users.take(message.user_id, message.saga_id, message.amount, message.started)
    ids = message.reply_ids()
    if result is Taken.TAKEN:
        return [(PAYMENT_PROCESSING, PaymentCompleted(**ids))]
    return [(PAYMENT_PROCESSING, PaymentFailed(**ids, reason=_REASONS[result]))]


async def cancel(message: PaymentCancelRequested, users: Ledger) -> Sequence[Outgoing]:
    """Refund the saga's charge if there was one; bar it for good if there was not."""
    await users.restore(message.user_id, message.saga_id, message.started)
    ids = message.reply_ids()
    return [(PAYMENT_PROCESSING, PaymentCancelled(**ids))]


def handlers(users: Ledger) -> dict[type, Handler]:
    return {
        PaymentRequested: partial(charge, users=users),
        PaymentCancelRequested: partial(cancel, users=users),
    }
