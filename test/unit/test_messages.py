"""``common.messages``: every message of every topic survives the wire; foreign bytes do not."""

from __future__ import annotations

import uuid
from typing import Any, get_args

import msgspec
import pytest

from common.messages import (
    ALL_TOPICS,
    MAX_REASON_CHARS,
    TOPIC_TYPES,
    CheckoutFinished,
    Message,
    bounded_reason,
    decode,
    encode,
)


def _types(topic: str) -> tuple[type[Message], ...]:
    kind: Any = TOPIC_TYPES[topic]
    return get_args(kind) or (kind,)


def sample(cls: type[Message]) -> Message:
    """An instance of ``cls`` with fresh random ids and a value in every field."""
    fresh = uuid.uuid4().hex
    values: dict[str, Any] = {
        "saga_id": f"o{fresh[:8]}:1:{fresh[8:16]}",
        "order_id": f"o{fresh[:8]}",
        "trace_id": fresh,
        "user_id": f"u{fresh[16:24]}",
        "amount": int(fresh[24:28], 16),
        "items": ((f"i{fresh[:4]}", 2), (f"i{fresh[4:8]}", 1), (f"i{fresh[:4]}", 3)),
        "reason": "not enough credit: ünïcode ok",
        "paid": True,
        "started": 1_700_000_000_000 + int(fresh[28:32], 16),
    }
    names = [f.name for f in msgspec.structs.fields(cls)]
    unknown = set(names) - set(values)
    assert not unknown, f"teach sample() the fields {unknown} of {cls.__name__}"
    return cls(**{name: values[name] for name in names})


CASES = [(topic, cls) for topic in ALL_TOPICS for cls in _types(topic)]


def test_every_topic_carries_messages() -> None:
    assert set(TOPIC_TYPES) == set(ALL_TOPICS)
    assert all(_types(topic) for topic in ALL_TOPICS)


@pytest.mark.parametrize(("topic", "cls"), CASES, ids=[f"{t}-{c.__name__}" for t, c in CASES])
def test_round_trip(topic: str, cls: type[Message]) -> None:
    message = sample(cls)
    decoded = decode(topic, encode(message))
    assert type(decoded) is cls
    assert decoded == message


@pytest.mark.parametrize(("topic", "cls"), CASES, ids=[f"{t}-{c.__name__}" for t, c in CASES])
def test_a_message_of_another_topic_is_refused(topic: str, cls: type[Message]) -> None:
    payload = encode(sample(cls))
    for other in ALL_TOPICS:
        if cls not in _types(other):
            with pytest.raises(msgspec.DecodeError):
                decode(other, payload)


def test_messages_are_frozen_and_tagged() -> None:
    for _, cls in CASES:
        message = sample(cls)
        with pytest.raises(AttributeError):
            message.saga_id = "other"  # type: ignore[misc]
        assert msgspec.msgpack.decode(encode(message))["type"] == cls.__name__


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not msgpack at all",
        b'{"type": "StockUpdated", "saga_id": "s", "order_id": "o"}',  # JSON, not msgpack
        msgspec.msgpack.encode({"saga_id": "s", "order_id": "o"}),  # no tag
        msgspec.msgpack.encode({"type": "NoSuchMessage", "saga_id": "s", "order_id": "o"}),
        msgspec.msgpack.encode({"type": "StockUpdated", "order_id": "o"}),  # saga_id missing
        msgspec.msgpack.encode([1, 2, 3]),
    ],
)
def test_foreign_payloads_raise_decode_error(payload: bytes) -> None:
    for topic in ALL_TOPICS:
        with pytest.raises(msgspec.DecodeError):
            decode(topic, payload)


@pytest.mark.parametrize("count", [0, 1, 5, 60, 5000])
def test_a_reason_is_bounded_and_says_what_it_left_out(count: int) -> None:
    parts = [f"{uuid.uuid4().hex}: short" for _ in range(count)]
    reason = bounded_reason(parts)
    assert len(reason) <= MAX_REASON_CHARS
    if len("; ".join(parts)) <= MAX_REASON_CHARS:
        assert reason == "; ".join(parts)
    else:
        kept = reason.split("; ")
        assert kept[:-1] == parts[: len(kept) - 1]
        assert kept[-1] == f"and {count - (len(kept) - 1)} more"


@pytest.mark.parametrize("count", [1, 2, 15])
def test_a_reason_whose_first_part_is_too_long_keeps_its_start(count: int) -> None:
    parts = [("x" * 5000) + f"{i}: unknown" for i in range(count)]
    reason = bounded_reason(parts)
    assert len(reason) <= MAX_REASON_CHARS
    first, *rest = reason.split("; ")
    assert first.startswith("x" * 900) and first.endswith("…")
    assert rest == ([f"and {count - 1} more"] if count > 1 else [])


def test_notable_messages_are_named_not_guessed() -> None:
    """What is logged when sent with LOG_MESSAGES off: failures, compensations and unpaid
    outcomes, declared on the message classes (telemetry reads ``notable``)."""
    notable = {cls.__name__ for _, cls in CASES if cls.NOTABLE}
    assert notable == {
        "StockCompensationRequested",
        "StockUpdateFailed",
        "StockCompensated",
        "PaymentCancelRequested",
        "PaymentFailed",
        "PaymentCancelled",
    }
    finished: Any = sample(CheckoutFinished)
    assert not finished.notable
    assert msgspec.structs.replace(finished, paid=False).notable
