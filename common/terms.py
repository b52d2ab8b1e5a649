"""The shared words of the system, each defined once: saga statuses, reply kinds, abort reasons,
the two ledgers and their operation record codes. Everything that stores, compares, logs or
labels a metric with one of them imports it from here.

The enums are ``StrEnum``s: a member equals, encodes and prints as its text, so values read
back from Redis (plain strings) compare equal to them and the stored forms never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final


class SagaStatus(StrEnum):
    """Where a saga stands (its ``saga_status`` field; the Lua scripts use the same words)."""

    RUNNING = "running"
    COMPENSATING = "compensating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


LIVE: Final = frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING})
ENDED: Final = frozenset({SagaStatus.SUCCEEDED, SagaStatus.FAILED})


class ReplyKind(StrEnum):
    """What a participant's reply says of a step (the ``kind`` label of ``saga_replies``)."""

    SUCCEEDED = "succeeded"  # the command took effect
    FAILED = "failed"  # the command took no effect, and holds nothing
    COMPENSATED = "compensated"  # the compensation is done (or the command barred)


class AbortReason(StrEnum):
    """Why a running saga was turned back without a participant's failure (the ``reason``
    label of ``saga_aborts``; any other reason is counted as ``other``)."""

    DEADLINE = "deadline passed"  # the sweeper
    CHECKOUT_TIMEOUT = "checkout timed out"  # the waiting HTTP request
    OPERATOR = "aborted by operator"  # python -m order.admin abort
    OTHER = "other"


class Taken(Enum):
    """An operation record's code (``{item:42}:op:<saga>``, written by take.lua and
    restore.lua): the participant's stored reply to one saga. ``label`` names it in metrics."""

    TAKEN = "T"  # stored as ``T:<n>``
    SHORT = "S"
    UNKNOWN = "U"
    REFUSED = "X"  # compensated before (or instead of) the take
    FENCED = "F"  # the entity was reset after the saga began (reset.lua)

    @property
    def label(self) -> str:
        return self.name.lower()


TAKEN_PREFIX: Final = "T:"
"""How a record of a take that happened begins (``T:<n>``: it took n)."""


class Restored(StrEnum):
    """What a compensation found (the ``result`` label of ``ledger_compensations``)."""

    REFUNDED = "refunded"  # the take had happened: given back
    TOMBSTONED = "tombstoned"  # nothing taken yet: the take is barred
    REPEATED = "repeated"  # given back before
    NOTHING = "nothing"  # the take had failed


@dataclass(frozen=True)
class LedgerKind:
    """One participant's ledger: entities ``{<prefix>:<id>}`` counting one ``field``."""

    prefix: str
    field: str
    service: str


ITEMS: Final = LedgerKind(prefix="item", field="stock", service="stock")
USERS: Final = LedgerKind(prefix="user", field="credit", service="payment")
LEDGERS: Final = (ITEMS, USERS)
