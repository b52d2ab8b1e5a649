"""Where a saga stands, as its log (``common/saga/log.py``) reads it."""

from __future__ import annotations

from dataclasses import dataclass

from common.saga.definition import SagaRun
from common.terms import LIVE


@dataclass(frozen=True)
class SagaState:
    """Where one saga stands."""

    saga_id: str
    status: str
    step: int
    updated: int
    deadline: int
    resends: int
    snapshot: dict[str, str]
    reason: str
    started: int
    done_by: str = ""  # the saga that last made the entity done (kept across a reset)
    done: bool = False  # the entity's done field (an order's ``paid``) now
    concurrent: bool = False  # every step was asked for at its start

    @property
    def live(self) -> bool:
        return self.status in LIVE

    def run(self, entity_id: str) -> SagaRun:
        return SagaRun(
            saga_id=self.saga_id,
            entity_id=entity_id,
            snapshot=self.snapshot,
            started=self.started,
        )


@dataclass(frozen=True)
class TurnedBack:
    """A live saga an entity's reset found: turned back then, or already turning back."""

    entity_id: str
    saga_id: str
    step: int
    snapshot: dict[str, str]
    started: int
    concurrent: bool = False


@dataclass(frozen=True)
class Replied:
    """Where a participant's reply left its saga (``SagaLog.reply``)."""

    status: str
    step: int
    marks: str  # per step: 's' took effect, 'c' holds nothing, '-' not heard from
    snapshot: dict[str, str]
    reason: str
    concurrent: bool
