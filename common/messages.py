"""Every message on the bus, the topic it travels on, and one encoder/decoder per topic.

Commands are named as orders (``StockUpdateRequested`` asks stock to reserve), replies and events
in the past tense. Every message carries the saga id (``<order_id>:<attempt>``) so a later
checkout of a failed order is a new saga, and is keyed by the order id so one saga's messages stay
in one partition, in order.
"""

from __future__ import annotations

from typing import ClassVar, Final, TypedDict

import msgspec

STOCK: Final = "STOCK"
STOCK_PROCESSING: Final = "STOCK_PROCESSING"
PAYMENT: Final = "PAYMENT"
PAYMENT_PROCESSING: Final = "PAYMENT_PROCESSING"
ORDER_STATUS_UPDATE: Final = "ORDER_STATUS_UPDATE"
ALL_TOPICS: Final = (STOCK, STOCK_PROCESSING, PAYMENT, PAYMENT_PROCESSING, ORDER_STATUS_UPDATE)

MAX_MESSAGE_BYTES: Final = 256 * 1024
"""The most any message may take encoded. Kafka refuses a record over 1 MiB by default (the
producer's max.request.size, the broker's message.max.bytes); a saga checks before it starts
that every message it may send stays under this (``SagaDefinition.max_snapshot_bytes``)."""
MAX_REASON_CHARS: Final = 1000
"""A reply's or an outcome's reason is for people: at most this long."""


class SagaIds(TypedDict):
    """The fields every message of one saga carries (``Message``'s own)."""

    saga_id: str
    order_id: str
    trace_id: str
    started: int


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """Base of all messages: which saga, and which order it belongs to (the partition key).
    ``started`` is when the saga began (ms since the epoch): a participant fences off a saga
    older than the last reset of an entity (0 from a sender that does not know: fenced)."""

    saga_id: str
    order_id: str
    trace_id: str = ""
    started: int = 0

    NOTABLE: ClassVar[bool] = False
    """Logged when sent even with LOG_MESSAGES off: failures, compensations (not on the wire)."""

    @property
    def notable(self) -> bool:
        """Whether sending this message is worth a log line whatever LOG_MESSAGES says."""
        return self.NOTABLE

    @property
    def entity_id(self) -> str:
        """The entity whose saga this is, and the partition key: the generic saga code's name
        for ``order_id`` (the wire's, kept so that every version reads every message)."""
        return self.order_id

    def reply_ids(self) -> SagaIds:
        """The ids a reply to this message carries (same saga, key, trace and start)."""
        return saga_ids(self.saga_id, self.order_id, self.trace_id, self.started)


def saga_ids(saga_id: str, entity_id: str, trace_id: str = "", started: int = 0) -> SagaIds:
    """The fields every message of saga ``saga_id`` of ``entity_id`` carries (the entity is
    an order: the wire calls it ``order_id``)."""
    return {"saga_id": saga_id, "order_id": entity_id, "trace_id": trace_id, "started": started}


Lines = tuple[tuple[str, int], ...]


# --- STOCK: commands to stock -------------------------------------------------------------------
class StockUpdateRequested(Message, frozen=True, kw_only=True, tag=True):
    """Reserve ``quantity`` of each item, all or nothing."""

    items: Lines


class StockCompensationRequested(Message, frozen=True, kw_only=True, tag=True):
    """Give back what the saga reserved; if it reserved nothing, refuse it from now on."""

    NOTABLE = True

    items: Lines


# --- STOCK_PROCESSING: stock's replies ----------------------------------------------------------
class StockUpdated(Message, frozen=True, kw_only=True, tag=True):
    """Every line is reserved."""


class StockUpdateFailed(Message, frozen=True, kw_only=True, tag=True):
    """Nothing is reserved (lines already taken were given back)."""

    NOTABLE = True

    reason: str


class StockCompensated(Message, frozen=True, kw_only=True, tag=True):
    """The saga holds no stock, and never will."""

    NOTABLE = True


# --- PAYMENT: commands to payment ---------------------------------------------------------------
class PaymentRequested(Message, frozen=True, kw_only=True, tag=True):
    """Charge ``amount`` to ``user_id``."""

    user_id: str
    amount: int


class PaymentCancelRequested(Message, frozen=True, kw_only=True, tag=True):
    """Refund the saga's charge if it happened; refuse the charge from now on if not."""

    NOTABLE = True

    user_id: str
    amount: int


# --- PAYMENT_PROCESSING: payment's replies ------------------------------------------------------
class PaymentCompleted(Message, frozen=True, kw_only=True, tag=True):
    """The user was charged."""


class PaymentFailed(Message, frozen=True, kw_only=True, tag=True):
    """The user was not charged."""

    NOTABLE = True

    reason: str


class PaymentCancelled(Message, frozen=True, kw_only=True, tag=True):
    """The saga holds no money of the user, and never will."""

    NOTABLE = True


# --- ORDER_STATUS_UPDATE: outcomes, read by every order worker ----------------------------------
class CheckoutFinished(Message, frozen=True, kw_only=True, tag=True):
    """The saga reached a terminal state."""

    paid: bool
    reason: str = ""

    @property
    def notable(self) -> bool:
        return not self.paid


StockCommand = StockUpdateRequested | StockCompensationRequested
StockReply = StockUpdated | StockUpdateFailed | StockCompensated
PaymentCommand = PaymentRequested | PaymentCancelRequested
PaymentReply = PaymentCompleted | PaymentFailed | PaymentCancelled

TOPIC_TYPES: Final[dict[str, object]] = {
    STOCK: StockCommand,
    STOCK_PROCESSING: StockReply,
    PAYMENT: PaymentCommand,
    PAYMENT_PROCESSING: PaymentReply,
    ORDER_STATUS_UPDATE: CheckoutFinished,
}

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[str, msgspec.msgpack.Decoder[Message]] = {
    topic: msgspec.msgpack.Decoder(kind) for topic, kind in TOPIC_TYPES.items()
}


def bounded_reason(parts: list[str]) -> str:
    """``parts`` joined by "; ", cut to MAX_REASON_CHARS (saying how many were left out)."""
    reason = "; ".join(parts)
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    room = MAX_REASON_CHARS - 40
    kept: list[str] = []
    for part in parts:
        if len("; ".join([*kept, part])) > room:
            break
        kept.append(part)
    if not kept:  # the first part alone is too long: the start of it still says what failed
        kept.append(parts[0][: room - 1] + "…")
    left_out = len(parts) - len(kept)
    return "; ".join([*kept, f"and {left_out} more"] if left_out else kept)


def encode(message: Message) -> bytes:
    """The wire form of ``message`` (msgpack, tagged by type)."""
    return _encoder.encode(message)


def decode(topic: str, payload: bytes) -> Message:
    """Decode a message read from ``topic``; raises ``msgspec.DecodeError`` for foreign bytes."""
    return _decoders[topic].decode(payload)
