"""An operator's hands on sagas: find the stuck ones, re-send one's current step, turn one back.

Every action goes through the same compare-and-set scripts as the orchestrator and the sweeper
(``saga_touch`` for a re-send, ``saga_move`` for an abort), so an operator racing a reply, the
sweeper or another operator changes nothing that the saga's own rules would not: the loser of
the race is told the saga moved, and does nothing. Writes are replicated before any message is
sent, as everywhere else.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from common.effects import Effects
from common.saga.orchestrator import Orchestrator
from common.saga.state import SagaState
from common.terms import LIVE, AbortReason, SagaStatus
from common.types import Outgoing, Publisher, Storage


@dataclass(frozen=True)
class Stuck:
    """A live saga, as the in-flight index and the saga log show it."""

    entity_id: str
    state: SagaState
    due: float  # when the sweeper looks at it next (ms since the epoch)


@dataclass(frozen=True)
class Action:
    """What an operator's retry or abort did: ``done`` is False when it changed nothing."""

    done: bool
    detail: str
    sent: list[str] = field(default_factory=list)
    state: SagaState | None = None


class SagaAdmin:
    """Operator actions on the sagas of one orchestrator."""

    def __init__(self, orchestrator: Orchestrator, store: Storage, bus: Publisher) -> None:
        self._orch = orchestrator
        self._log = orchestrator.log
        self._store = store
        self._bus = bus

    async def read(self, entity_id: str) -> SagaState | None:
        return await self._log.read(entity_id)

    async def stuck(self, older_than_ms: int, *, now: int | None = None) -> list[Stuck]:
        """Live sagas that began at least ``older_than_ms`` ago, oldest first."""
        now = self._orch.clock() if now is None else now
        entries: dict[str, float] = {}
        for shard in range(self._log.index_shards):
            key = self._log.shard_key(shard)
            rows = await self._store.zrange_scored(key)
            entries.update((member.decode(), score) for member, score in rows)
        limit = asyncio.Semaphore(32)

        async def look(entity_id: str) -> SagaState | None:
            async with limit:
                return await self._log.read(entity_id)

        states = await asyncio.gather(*(look(entity_id) for entity_id in entries))
        found = [
            Stuck(entity_id, state, entries[entity_id])
            for entity_id, state in zip(entries, states, strict=True)
            if state is not None and state.live and now - state.started >= older_than_ms
        ]
        return sorted(found, key=lambda s: s.state.started)

    async def retry(self, entity_id: str, saga_id: str | None = None) -> Action:
        """Re-send the current step (command or compensation) of a live saga, as the sweeper
        would (for a saga that asked for every step at once, every command from the current
        step on, or every compensation from it down); the participants' operation records make
        a second delivery harmless."""
        state = await self._log.read(entity_id)
        refusal = _refusal(state, saga_id)
        if refusal is not None or state is None:
            return Action(False, refusal or "no saga", state=state)
        async with Effects(self._store, self._bus) as fx:
            resends = await self._log.touch(entity_id, state, self._orch.clock())
            if resends == 0:
                fx.cancel()
                return Action(False, "the saga moved while we looked: read it again", state=state)
            at = (state.status, state.step)
            run = state.run(entity_id)
            fx.send(self._orch.next_messages(run, at, concurrent=state.concurrent))
            await self._follow(entity_id)
        return await self._sent(entity_id, fx.sent, f"re-sent (re-send {resends})")

    async def abort(self, entity_id: str, saga_id: str | None = None, reason: str = "") -> Action:
        """Turn a running saga back through its compensations (the current step's included:
        its participant settles whether it ran; a saga that asked for every step at once, all
        of them). A saga already compensating gets its current compensation re-sent."""
        state = await self._log.read(entity_id)
        refusal = _refusal(state, saga_id)
        if refusal is not None or state is None:
            return Action(False, refusal or "no saga", state=state)
        if state.status == SagaStatus.COMPENSATING:
            action = await self.retry(entity_id, state.saga_id)
            detail = f"already turning back: its compensation {action.detail}"
            return Action(action.done, detail, action.sent, action.state)
        async with Effects(self._store, self._bus) as fx:
            messages = await self._orch.abort(entity_id, state, reason or AbortReason.OPERATOR)
            if not messages:
                fx.cancel()
                return Action(False, "the saga moved while we looked: read it again", state=state)
            fx.send(messages)
            await self._follow(entity_id)
        return await self._sent(entity_id, fx.sent, "turned back")

    async def wait(self, entity_id: str, saga_id: str, timeout_s: float) -> SagaState | None:
        """The saga's state once it is no longer live (or after ``timeout_s``)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while True:
            state = await self._log.read(entity_id)
            if state is None or state.saga_id != saga_id or not state.live:
                return state
            if loop.time() >= end:
                return state
            await asyncio.sleep(0.2)

    async def _follow(self, entity_id: str) -> None:
        """From now on the sweeper follows the saga again, whatever its index entry said."""
        await self._log.index_add(entity_id, self._orch.clock() + self._orch.step_timeout_ms)

    async def _sent(self, entity_id: str, messages: list[Outgoing], detail: str) -> Action:
        sent = [f"{type(message).__name__} on {topic}" for topic, message in messages]
        return Action(True, detail, sent, await self._log.read(entity_id))


def _refusal(state: SagaState | None, saga_id: str | None) -> str | None:
    if state is None or not state.saga_id:
        return "no saga: the order is unknown or was never checked out"
    if saga_id is not None and state.saga_id != saga_id:
        return f"the order's saga is now {state.saga_id}, not {saga_id}: nothing done"
    if not state.live:
        return (
            f"saga {state.saga_id} is {state.status}: nothing to do "
            "(checking the order out again starts a new saga)"
        )
    if state.status not in LIVE:
        return f"saga {state.saga_id} is in an unknown state {state.status!r}"
    return None
