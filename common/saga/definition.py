"""How a saga is declared: an ordered list of steps, each a command next to its compensation."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.messages import MAX_MESSAGE_BYTES, Message, SagaIds, saga_ids
from common.observability.tracing import trace_id_for
from common.terms import ReplyKind


@dataclass(frozen=True)
class SagaRun:
    """One saga as its steps see it: ids, plus the entity fields snapshotted when it began."""

    saga_id: str
    entity_id: str
    snapshot: dict[str, str]
    trace_id: str = ""
    started: int = 0  # when the saga began (ms since the epoch)

    def __post_init__(self) -> None:
        # A re-send, an abort: the saga's own trace (common/observability/tracing.py).
        if not self.trace_id:
            object.__setattr__(self, "trace_id", trace_id_for(self.saga_id))

    @property
    def ids(self) -> SagaIds:
        """The fields every message of this saga carries."""
        return saga_ids(self.saga_id, self.entity_id, self.trace_id, self.started)

    def json(self, name: str) -> Any:
        """A snapshotted field that holds JSON text."""
        return json.loads(self.snapshot[name] or "null")


Build = Callable[[SagaRun], Message]


@dataclass(frozen=True)
class Step:
    """A forward command and the compensation that undoes it (or bars it, if it never ran).

    The participant answers the command with ``succeeded`` (effect applied) or ``failed``
    (nothing applied, nothing held), and the compensation with ``compensated``.
    """

    name: str
    topic: str
    command: Build
    succeeded: type[Message]
    failed: type[Message]
    compensation: Build
    compensated: type[Message]


@dataclass(frozen=True)
class SagaDefinition:
    """A saga over entities kept in one Redis hash each.

    ``steps`` run in order, each once the one before has succeeded; the last one is the pivot:
    once it succeeds the saga is done and ``done_field`` of the entity is set to ``"1"`` in the
    same atomic write. A ``concurrent`` definition's saga may instead send every step's command
    at its start (when the orchestrator's ``Speculation`` says so; the saga records which): it
    is then done once every step has succeeded, in whatever order they answer, and a failure
    turns back every step (a compensation that finds its command not yet run bars it). Fit
    for steps whose commands do not depend on each other's results.
    ``snapshot`` names the entity fields the commands are built from. A saga does not start
    from a snapshot (as saga_begin.lua encodes it, JSON) longer than ``max_snapshot_bytes``:
    the bound must be one under which every command, compensation and outcome the steps build
    fits in MAX_MESSAGE_BYTES, or a saga could start that can neither go on nor turn back.
    """

    name: str
    steps: tuple[Step, ...]
    done_field: str
    snapshot: tuple[str, ...]
    outcome_topic: str
    outcome: Callable[[SagaRun, bool, str], Message]
    entity_key: Callable[[str], str]
    max_snapshot_bytes: int = MAX_MESSAGE_BYTES - 16 * 1024
    concurrent: bool = False
    replies: dict[type[Message], tuple[int, ReplyKind]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        replies: dict[type[Message], tuple[int, ReplyKind]] = {}
        for index, step in enumerate(self.steps):
            replies[step.succeeded] = (index, ReplyKind.SUCCEEDED)
            replies[step.failed] = (index, ReplyKind.FAILED)
            replies[step.compensated] = (index, ReplyKind.COMPENSATED)
        object.__setattr__(self, "replies", replies)
