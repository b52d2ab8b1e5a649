"""Drives sagas: starts them, moves them on each participant reply, aborts them, and announces
their outcome. Every move is a compare-and-set in the saga log, so repeated, late and
out-of-order replies change nothing; the next command is derived from the log alone."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from enum import Enum
from typing import Any

from common.messages import Message
from common.observability import telemetry
from common.saga.definition import SagaDefinition, SagaRun
from common.saga.log import SagaLog
from common.saga.state import SagaState
from common.terms import ENDED, ReplyKind, SagaStatus
from common.types import Handler, Outgoing

log = logging.getLogger(__name__)

SLOW_START_GRACE_MS = 60_000
"""Longer than any start can take: Redis calls give up after REDIS_OP_TIMEOUT_MS (and
``durable`` retries for as long again)."""


Clock = Callable[[], int]
"""Milliseconds since the epoch (the wall clock in production, a test's clock in tests)."""


def now_ms() -> int:
    return int(time.time() * 1000)


class Outcome(Enum):
    """What a request to start a saga found."""

    STARTED = "started"
    JOINED = "joined"  # a saga of this entity is live: wait for it
    DONE = "done"  # the entity is already done (e.g. an order already paid)
    UNKNOWN = "unknown"
    TOO_BIG = "too_big"  # not started: a message of the saga would not fit in a Kafka record
    BUSY = "busy"  # not started: its turn did not come within the answer budget (verdict.py)
    LATE = "late"  # not started: asked after its caller's start-by time (verdict.py)


@dataclass(frozen=True)
class Started:
    outcome: Outcome
    saga_id: str = ""
    commands: tuple[Outgoing, ...] = ()


@dataclass(eq=False)
class Speculation:
    """Whether a new saga of a ``concurrent`` definition asks for every step at once.

    It pays while most sagas succeed: a success is two hops shorter and cheaper, but a failure
    pays for the steps it asked for in vain (their commands and compensations), where one by one
    it would have stopped at the first no. (2026-11-30: asking at once took an unloaded
    checkout from 12-14 to 8.4 ms and wrk from 622-647 to 716-774 checkouts/s; under the fault
    suite's load of scarce stock and credit, mostly failures, it halved the rate, 208-268/s
    against 414-553/s.) So: at once while the failure rate of this worker's recent sagas (an
    exponential average over about ``window`` outcomes) is at most ``max_failure_rate``, one by
    one above it. Each saga records its choice at its start; every later step reads it there.
    """

    max_failure_rate: float = 0.2
    window: int = 50
    failure_rate: float = 0.0

    @classmethod
    def always(cls) -> Speculation:
        return cls(max_failure_rate=1.0)

    @classmethod
    def never(cls) -> Speculation:
        return cls(max_failure_rate=-1.0)

    def __call__(self) -> bool:
        return self.failure_rate <= self.max_failure_rate

    def record(self, succeeded: bool) -> None:
        self.failure_rate += (float(not succeeded) - self.failure_rate) / self.window


@dataclass(eq=False)
class Orchestrator:
    """The saga machinery for one ``SagaDefinition``; ``log`` keeps the state, ``clock`` tells
    the time to every part that reads it (the sweeper, the operator's actions)."""

    definition: SagaDefinition
    log: SagaLog
    _: KW_ONLY
    step_timeout_ms: int
    deadline_ms: int
    clock: Clock = now_ms
    speculation: Speculation = field(default_factory=Speculation)
    """Asked at each start of a concurrent definition's saga: every step at once, or one by one."""

    async def read(self, entity_id: str) -> SagaState | None:
        """Where the entity's saga stands (None for an unknown entity), as its master has it."""
        return await self.log.read(entity_id)

    async def read_durably(self, entity_id: str) -> SagaState | None:
        """``read``, returned once a replica holds what was read: for an answer resting on it."""
        return await self.log.read_durably(entity_id)

    async def start(
        self, entity_id: str, trace_id: str = "", *, start_by: int | None = None
    ) -> Started:
        """Start a saga for ``entity_id`` unless one is live or the entity is done.

        The saga is in the in-flight index from the moment it exists, so the sweeper always
        finds a live saga, whatever crashes after this call: registered in the same step on
        the fast path, before the saga on the slow one.

        Past ``start_by`` (ms) nothing is started: what a start would find, else ``LATE``. It
        is checked on this clock before the start goes out and again by the script that would
        begin the saga, on its master's clock: a start that left in time may arrive late
        (queued behind a blocked connection, or its worker frozen between the two).
        """
        now = self.clock()
        if start_by is not None and now >= start_by:
            return await self.look(entity_id) or Started(Outcome.LATE)
        due = now + self.step_timeout_ms
        deadline = now + self.deadline_ms
        concurrent = self.definition.concurrent and self.speculation()
        found = await self.log.begin_indexed(
            entity_id, now=now, deadline=deadline, due=due, concurrent=concurrent, start_by=start_by
        )
        if found is None:  # the slow path: look first, so that a done entity is not indexed
            found = await self.log.begin(entity_id, start=False, now=0, deadline=0)
            if found[0] == "JOINED":
                await self.log.index_add(entity_id, self.clock() + self.step_timeout_ms)
            if found[0] == "READY":
                found = await self._begin_one_by_one(entity_id, now, due, concurrent, start_by)
        if found[0] == "TOO_BIG":
            log.warning(
                "%s saga of %s not started: its snapshot is %s bytes, more than %d",
                self.definition.name,
                entity_id,
                found[1],
                self.definition.max_snapshot_bytes,
            )
            return Started(Outcome.TOO_BIG)
        if found[0] != "STARTED":
            outcome = Outcome(found[0].lower())
            return Started(outcome, found[1] if len(found) > 1 else "")
        run = SagaRun(
            saga_id=found[1],
            entity_id=entity_id,
            snapshot=json.loads(found[2]),
            trace_id=trace_id,
            started=now,  # saga_begin's saga_started
        )
        commands = self.next_messages(run, (SagaStatus.RUNNING, 0), concurrent=concurrent)
        return Started(Outcome.STARTED, run.saga_id, tuple(commands))

    async def look(self, entity_id: str) -> Started | None:
        """What a start would find, starting nothing: DONE, JOINED (a live saga, kept in the
        in-flight index), UNKNOWN or TOO_BIG; None when a start would begin a saga. Tracked like
        a write (``SagaLog.begin``): run it under ``durable`` when an answer rests on it."""
        found = await self.log.begin(entity_id, start=False, now=0, deadline=0)
        if found[0] == "READY":
            return None
        if found[0] == "JOINED":
            await self.log.index_add(entity_id, self.clock() + self.step_timeout_ms)
        return Started(Outcome(found[0].lower()), found[1] if len(found) > 1 else "")

    async def _begin_one_by_one(
        self, entity_id: str, now: int, due: int, concurrent: bool, start_by: int | None
    ) -> list[str]:
        """The index entry first, then the saga: never a live saga outside the index. The entry
        is first due only after SLOW_START_GRACE_MS, so a sweeper cannot drop it (finding no
        live saga yet) while a slow start is still under way; once a saga exists (this one, or
        one another checkout started meanwhile, whose entry this just pushed away), the entry
        is made due at the ordinary time."""
        # On a replica before the saga exists: the entry may live on another master than the
        # saga, and a saga whose entry a failover there could erase would be driven by nobody.
        await self.log.index_add(entity_id, now + SLOW_START_GRACE_MS, durable=True)
        if start_by is not None and self.clock() >= start_by:
            return ["LATE"]  # the entry finds no saga and is dropped
        found = await self.log.begin(
            entity_id,
            start=True,
            now=now,
            deadline=now + self.deadline_ms,
            concurrent=concurrent,
            start_by=start_by,  # checked again where the saga begins: this call may be slow
        )
        if found[0] in ("STARTED", "JOINED"):
            await self.log.index_add(entity_id, due)
        return found

    def handlers(self) -> dict[type, Handler]:
        """One consumer handler per reply type of the definition."""
        return {reply: self.on_reply for reply in self.definition.replies}

    async def on_reply(self, message: Message) -> Sequence[Outgoing]:
        """Move the saga for a participant's reply; returns what to send next."""
        index, kind = self.definition.replies[type(message)]
        reason = getattr(message, "reason", "")
        moved = await self.log.reply(
            message.entity_id, message.saga_id, kind, index, now=self.clock(), reason=reason
        )
        if moved is None:
            telemetry.saga_reply(self.definition, index, kind, None)
            log.debug("stale %s for %s ignored", type(message).__name__, message.saga_id)
            return []
        to = (moved.status, moved.step)
        run = SagaRun(
            saga_id=message.saga_id,
            entity_id=message.entity_id,
            snapshot=moved.snapshot,
            trace_id=message.trace_id,
            started=message.started,  # every message of the saga carries its start
        )
        back: list[int] = []  # the steps whose compensations this reply sends
        if moved.status in ENDED:
            self.speculation.record(moved.status == SagaStatus.SUCCEEDED)
            messages = self.next_messages(run, to, moved.reason)
        elif not moved.concurrent:
            messages = self.next_messages(run, to)
            back = [moved.step] if moved.status == SagaStatus.COMPENSATING else []
        elif kind is ReplyKind.FAILED:
            # Every compensation at once, but none to a step that holds nothing.
            back = [k for k in range(moved.step, -1, -1) if moved.marks[k] != "c"]
            steps = self.definition.steps
            messages = [(steps[k].topic, steps[k].compensation(run)) for k in back]
        else:  # concurrent: every command went out at the start; a success only moves the log
            messages = []
        telemetry.saga_reply(self.definition, index, kind, to, back)
        return messages

    def next_messages(
        self, run: SagaRun, at: tuple[str, int], reason: str = "", *, concurrent: bool = False
    ) -> list[Outgoing]:
        """What the log says to send for a saga standing at ``at`` (status, step): the current
        step's command or compensation; for a concurrent saga, every command from the current
        step on, or every compensation from it down (a step that already answered gets the
        same answer again, which moves nothing)."""
        status, index = at
        steps = self.definition.steps
        if status == SagaStatus.RUNNING:
            ahead = steps[index:] if concurrent else steps[index : index + 1]
            return [(step.topic, step.command(run)) for step in ahead]
        if status == SagaStatus.COMPENSATING:
            back = steps[index::-1] if concurrent else steps[index : index + 1]
            return [(step.topic, step.compensation(run)) for step in back]
        paid = status == SagaStatus.SUCCEEDED
        return [(self.definition.outcome_topic, self.definition.outcome(run, paid, reason))]

    async def abort(self, entity_id: str, state: SagaState, reason: str) -> list[Outgoing]:
        """Turn a running saga back: compensate its current step (which may or may not have
        taken effect; the participant's tombstone settles it) and every step before; a
        concurrent saga's every step."""
        if state.status != SagaStatus.RUNNING:
            return []
        top = len(self.definition.steps) - 1 if state.concurrent else state.step
        frm, at = (SagaStatus.RUNNING, state.step), (SagaStatus.COMPENSATING, top)
        now = self.clock()
        moved = await self.log.move(entity_id, state.saga_id, frm, at, now=now, reason=reason)
        if moved is None:
            return []
        back = range(top, -1, -1) if state.concurrent else [top]
        telemetry.saga_aborted(self.definition, back, state.saga_id, reason)
        log.warning("saga %s aborted at step %s: %s", state.saga_id, state.step, reason)
        run = SagaRun(
            saga_id=state.saga_id, entity_id=entity_id, snapshot=moved[0], started=state.started
        )
        return self.next_messages(run, at, concurrent=state.concurrent)

    async def reset(
        self,
        entities: Iterable[tuple[str, Mapping[str, Any]]],
        reason: str,
        request_id: str | None = None,
        asked: str = "",
    ) -> list[Outgoing]:
        """Replace the entities' own fields (their batch_init); a saga still running on one is
        turned back in the same step, so no saga begun before the reset finishes on it. Returns
        the compensations to send (of every live saga found), once the writes are replicated.
        Once per ``request_id`` and what it ``asked`` (common/ledger.py, ``reset_once_by``)."""
        turned = await self.log.reset(
            entities, now=self.clock(), reason=reason, request_id=request_id, asked=asked
        )
        messages: list[Outgoing] = []
        for saga in turned:
            log.warning("saga %s turned back at step %s: %s", saga.saga_id, saga.step, reason)
            run = SagaRun(
                saga_id=saga.saga_id,
                entity_id=saga.entity_id,
                snapshot=saga.snapshot,
                started=saga.started,
            )
            at = (SagaStatus.COMPENSATING, saga.step)
            messages += self.next_messages(run, at, concurrent=saga.concurrent)
        return messages
