"""The checkout saga, declared: reserve the order's stock and charge its user. A concurrent
saga: while few checkouts fail, both are asked at once (``Speculation``, ``CHECKOUT_STEPS``)
and the order is paid once both answered yes, a no from either turning both back; otherwise
one after the other, the charge once the stock is reserved.

Each step's compensation stands next to it. Timeouts, retries, compare-and-set and the sweeper
live in ``common.saga``; this file only says what checkout is.
"""

from __future__ import annotations

from common.messages import (
    ORDER_STATUS_UPDATE,
    PAYMENT,
    STOCK,
    CheckoutFinished,
    PaymentCancelled,
    PaymentCancelRequested,
    PaymentCompleted,
    PaymentFailed,
    PaymentRequested,
    StockCompensated,
    StockCompensationRequested,
    StockUpdated,
    StockUpdateFailed,
    StockUpdateRequested,
)
from common.saga import SagaDefinition, SagaRun, Step


def order_key(order_id: str) -> str:
    return f"{{order:{order_id}}}"


def lines(run: SagaRun) -> tuple[tuple[str, int], ...]:
    return tuple((str(item), int(qty)) for item, qty in run.json("items") or ())


reserve_stock = Step(
    name="reserve_stock",
    topic=STOCK,
    command=lambda run: StockUpdateRequested(**run.ids, items=lines(run)),
    succeeded=StockUpdated,
    failed=StockUpdateFailed,
    compensation=lambda run: StockCompensationRequested(**run.ids, items=lines(run)),
    compensated=StockCompensated,
)

charge_user = Step(
    name="charge_user",
    topic=PAYMENT,
    command=lambda run: PaymentRequested(
        **run.ids, user_id=run.snapshot["user_id"], amount=int(run.snapshot["total_cost"])
    ),
    succeeded=PaymentCompleted,
    failed=PaymentFailed,
    compensation=lambda run: PaymentCancelRequested(
        **run.ids, user_id=run.snapshot["user_id"], amount=int(run.snapshot["total_cost"])
    ),
    compensated=PaymentCancelled,
)

CHECKOUT = SagaDefinition(
    name="checkout",
    steps=(reserve_stock, charge_user),
    concurrent=True,
    done_field="paid",
    snapshot=("user_id", "items", "total_cost"),
    outcome_topic=ORDER_STATUS_UPDATE,
    outcome=lambda run, paid, reason: CheckoutFinished(**run.ids, paid=paid, reason=reason),
    entity_key=order_key,
)
