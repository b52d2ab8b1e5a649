"""A saga's verdict, for whoever waits on it (an HTTP request): start or join the entity's saga,
then answer only with how it ended: succeeded, or failed with nothing held. Never early.

Two budgets: a saga still running ``timeout_ms`` after it began is turned back (its
compensations give back what it holds), and the answer waits for the saga's end until
``answer_ms`` after the call, which the caller keeps below its own client's timeout. The
verdict comes from the outcome message (``Waiters``) or, as the fallback, from the saga's state
read through the orchestrator (replicated before it is answered).

Calls take turns: at most ``concurrency`` of them start or wait on a saga at once, the others
wait in arrival order. A burst (the course's locust users arrive in waves of ~200) is then
served first come, first answered, instead of every saga of the burst sharing the stack and
all of them ending late together. A call whose turn does not come while enough of its answer
budget is left to see a saga through (its timeout, and half as long again to turn it back)
starts nothing, and answers from what the entity is then: done, the verdict of a saga another
call runs on it, or ``Outcome.BUSY`` (no saga, nothing held)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, TypeVar

from common.effects import Effects
from common.errors import Unavailable
from common.observability import telemetry
from common.saga.orchestrator import Orchestrator, Outcome, Started
from common.saga.state import SagaState
from common.saga.waiters import Verdict, Waiters
from common.terms import AbortReason, SagaStatus
from common.types import Publisher, Storage

log = logging.getLogger(__name__)
T = TypeVar("T")


class Budget(NamedTuple):
    """A call's times (the event loop's clock, s)."""

    answer_by: float
    """When its answer is due."""
    last_by: float
    """The last moment its caller still waits for it (no sooner than ``answer_by``)."""


ROUND_S = 1.0
"""How often a call past its timeout reads its saga again (and turns it back if it runs)."""


@dataclass(frozen=True)
class Answer:
    """What the start found, and the verdict of the saga started or joined (None otherwise:
    the entity is unknown, already done, or too big for a saga)."""

    outcome: Outcome
    verdict: Verdict | None = None


class Verdicts:
    """``await verdicts(entity_id)`` starts or joins the entity's saga and returns its
    ``Answer`` once the saga ended (or raises Unavailable past the answer budget)."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        store: Storage,
        bus: Publisher,
        waiters: Waiters,
        *,
        timeout_ms: int,
        answer_ms: int,
        concurrency: int = 0,
        caller_waits_ms: int = 0,
    ) -> None:
        self._orch = orchestrator
        self._store = store
        self._bus = bus
        self._waiters = waiters
        self._timeout_s = timeout_ms / 1000
        self._answer_s = max(answer_ms, timeout_ms) / 1000
        # What a saga started now may need of the budget: its timeout, then turning it back.
        self._see_through_s = min(self._answer_s, 1.5 * self._timeout_s)
        self._turns = asyncio.Semaphore(concurrency) if concurrency > 0 else None
        self._caller_waits_ms = caller_waits_ms

    async def __call__(self, entity_id: str, start_by_ms: int | None = None) -> Answer:
        """``start_by_ms``: past this time (ms, the orchestrator's clock) the call starts no
        saga, only joins one or reads the entity (``Outcome.LATE``: not started, nothing held):
        its caller has given up on it by then and may have asked again elsewhere.

        Its caller (the gateway) waits ``caller_waits_ms`` past ``start_by_ms``: when the
        budget is spent while the entity cannot be read (a worker frozen for most of it, then
        a replica away), it is read until then rather than answered 503 at once."""
        loop = asyncio.get_running_loop()
        answer_by = loop.time() + self._answer_s
        last_by = answer_by
        if start_by_ms is not None:
            waits_ms = start_by_ms + self._caller_waits_ms - self._orch.clock()
            last_by = max(answer_by, loop.time() + waits_ms / 1000)
        by = Budget(answer_by, last_by)
        if self._turns is None:
            return await self._answer(entity_id, by, start_by_ms)
        # A free turn is taken at once; a queued call waits only while a saga it would start
        # could still be seen through within the budget.
        start_by = answer_by - self._see_through_s
        if not await self._take_turn(self._turns, start_by - loop.time()):
            return await self._without_turn(entity_id, by)
        try:
            return await self._answer(entity_id, by, start_by_ms)
        finally:
            self._turns.release()

    @staticmethod
    async def _take_turn(turns: asyncio.Semaphore, within_s: float) -> bool:
        """Whether a turn was taken within ``within_s``. A free one is taken at once, without
        the task and timer of ``wait_for`` (the common case, on every checkout)."""
        if not turns.locked():  # no turn is waited for either: taking one does not suspend
            await turns.acquire()
            return True
        try:
            await asyncio.wait_for(turns.acquire(), within_s)
        except TimeoutError:
            return False
        return True

    async def _answer(self, entity_id: str, by: Budget, start_by_ms: int | None) -> Answer:
        # A client that hangs up (or a gateway that gives up on this worker) cancels the
        # caller; the start and its first command are shielded from that, so a saga that
        # began always moves on at once instead of waiting for the sweeper's re-send.
        begin = asyncio.ensure_future(self._begin(entity_id, by.last_by, start_by_ms))
        begin.add_done_callback(_retrieve)
        return await self._follow(entity_id, await asyncio.shield(begin), by)

    async def _without_turn(self, entity_id: str, by: Budget) -> Answer:
        """No turn came in time to start a saga and see it through: start nothing, and answer
        from what the entity is now (read like a write, since an answer rests on it). Done:
        DONE. A saga of it live (another call's, on this worker or another): its verdict,
        waited for without a turn, since this starts nothing. Else BUSY: not done, and no saga
        holds anything for it. (The look starts nothing: it may go on until the caller's
        last moment.)"""
        found = await self._until_budget(by.last_by, lambda: self._orch.look(entity_id))
        return await self._follow(entity_id, found or Started(Outcome.BUSY), by)

    async def _follow(self, entity_id: str, started: Started, by: Budget) -> Answer:
        """The answer for what the start (or the look) found: the verdict of a saga it started
        or joined, once that saga ended; else what it found."""
        loop = asyncio.get_running_loop()
        telemetry.saga_begun(self._orch.definition.name, started.outcome.value, started.saga_id)
        if started.outcome not in (Outcome.STARTED, Outcome.JOINED):
            return Answer(started.outcome)
        saga_id = started.saga_id
        poll = partial(self._poll, entity_id, saga_id)
        forward_s = min(self._timeout_s, by.answer_by - loop.time())
        verdict = await self._waiters.wait(saga_id, poll, forward_s)
        if verdict is None:
            verdict = await self._decide(entity_id, saga_id, by)
        telemetry.saga_answered(verdict[0])
        return Answer(started.outcome, verdict)

    async def _begin(self, entity_id: str, last_by: float, start_by_ms: int | None) -> Started:
        # The saga's start is replicated before its first command goes out (or re-run, if a
        # failover may have erased it: the start then finds its own saga, or starts anew).
        started = await self._start(entity_id, last_by, start_by_ms)
        if started.outcome is Outcome.STARTED:
            try:
                await self._bus.publish(started.commands, acknowledged=False)
            except Exception as exc:  # the saga is logged and indexed: the sweeper re-sends
                log.warning(
                    "publishing %s failed (%r); the sweeper will re-send", started.saga_id, exc
                )
        return started

    async def _start(self, entity_id: str, last_by: float, start_by_ms: int | None) -> Started:
        """Start or join the saga (``_until_budget``; past it the start may exist
        unreplicated: its outcome is unknown). Retried until the caller's last moment: past
        ``start_by_ms`` a start starts nothing, it joins or reads (``Outcome.LATE``)."""
        # trace id "": the saga's own, derived from its id (observability/tracing.py)
        return await self._until_budget(
            last_by, lambda: self._orch.start(entity_id, "", start_by=start_by_ms)
        )

    async def _until_budget(self, last_by: float, action: Callable[[], Awaitable[T]]) -> T:
        """``action``, returned once a replica holds what it wrote or read, retried while the
        store is unavailable (a failover takes seconds, a replica may be resyncing): only past
        ``last_by``, the caller's last moment (``Budget``), does Unavailable reach the caller
        (a 503). (The look of a checkout without a turn was tried once: a replica away answered
        it 503 with half its budget left; found by the simulation with the gateway's retries,
        2026-11-30.)"""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await self._store.durable(action)
            except Unavailable:
                if loop.time() > last_by:
                    raise
                await asyncio.sleep(0.2)

    async def _poll(self, entity_id: str, saga_id: str) -> Verdict | None:
        try:
            state = await self._orch.read(entity_id)
            if verdict_of(state, saga_id) is not None:
                state = await self._orch.read_durably(entity_id)  # an answer rests on it
        except Unavailable:
            return None  # keep waiting: the verdict may still arrive on the bus
        return verdict_of(state, saga_id)

    async def _decide(self, entity_id: str, saga_id: str, by: Budget) -> Verdict:
        """Past the timeout: turn a still-running saga back (again if it moved meanwhile), then
        wait for its end until the answer budget, so that a failure means nothing is held; a
        saga that cannot be read then is read again until the caller's last moment."""
        loop = asyncio.get_running_loop()
        poll = partial(self._poll, entity_id, saga_id)
        state: SagaState | None = None
        while True:
            read = False  # whether ``state`` is the saga as it is now
            try:
                state = await self._orch.read_durably(entity_id)
                verdict = verdict_of(state, saga_id)
                if verdict is not None:
                    return verdict
                if state is not None and state.status == SagaStatus.RUNNING:
                    await self._turn_back(entity_id, state)
                    continue  # read what that did (or what moved the saga meanwhile)
                read = True
            except Unavailable as exc:
                log.warning("deciding %s: %r", saga_id, exc)
            left = (by.answer_by if read else by.last_by) - loop.time()
            if left <= 0:
                break
            verdict = await self._waiters.wait(saga_id, poll, min(left, ROUND_S))
            if verdict is not None:
                return verdict
        ours = state is not None and state.saga_id == saga_id
        if ours and state is not None and state.status == SagaStatus.COMPENSATING:
            # Not done, and it never will be, but its compensation did not finish within the
            # answer budget (a participant unreachable all along): what it holds is given back
            # when the participant returns. Any other answer would be less true (a 5xx counts
            # as a success).
            log.warning("saga %s still compensating at the answer budget: failed", saga_id)
            return (False, "checkout timed out; its reservation is still being given back")
        raise Unavailable(f"saga {saga_id} undecided after the answer budget")

    async def _turn_back(self, entity_id: str, state: SagaState) -> None:
        """Abort the running saga (nothing, if it moved since ``state`` was read)."""
        # A failed publish is only logged: the sweeper re-sends the compensation.
        async with Effects(self._store, self._bus, best_effort=True) as fx:
            fx.send(await self._orch.abort(entity_id, state, AbortReason.CHECKOUT_TIMEOUT))


def verdict_of(state: SagaState | None, saga_id: str) -> Verdict | None:
    """What the saga log answers for ``saga_id``: None while the saga is live."""
    if state is None:
        return (False, "order vanished")
    if state.saga_id != saga_id:
        # Ours ended and another began: ours made the entity done (and a reset came since), or
        # the entity tells the truth.
        return (state.done_by == saga_id or state.done, "checkout failed")
    if state.status == SagaStatus.SUCCEEDED:
        return (True, "")
    if state.status == SagaStatus.FAILED:
        return (False, state.reason)
    return None


def _retrieve(task: asyncio.Future[Started]) -> None:
    """Mark a shielded start's failure as seen: its caller, when still there, reports it."""
    if not task.cancelled():
        task.exception()
