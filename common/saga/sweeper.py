"""The sweeper: re-sends the current command of sagas that made no progress, and aborts the ones
past their deadline. One mechanism for a crashed orchestrator or participant, a lost message and
a broker that came back empty. Each shard of the in-flight index has one owner at a time."""

from __future__ import annotations

import asyncio
import logging

from common.effects import Effects
from common.observability import telemetry
from common.saga.orchestrator import Orchestrator
from common.tasks import Background
from common.terms import AbortReason, SagaStatus
from common.types import MessageBus, Outgoing, Storage

log = logging.getLogger(__name__)

MAX_BACKOFF_MS = 8_000  # a long outage must not leave sagas waiting long after it heals


class Sweeper:
    """Walks the due entries of the index shards this worker leases, every ``interval_ms``."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        store: Storage,
        bus: MessageBus,
        worker_id: str,
        *,
        interval_ms: int,
        batch: int = 200,
        concurrency: int = 32,
    ) -> None:
        self._orch = orchestrator
        self._log = orchestrator.log
        self._store = store
        self._bus = bus
        self._worker = worker_id
        self._interval_ms = interval_ms
        self._batch = batch
        self._limit = asyncio.Semaphore(concurrency)
        self._task = Background("saga-sweeper", self._run)
        self.resends = 0
        self.aborts = 0
        self._held_at: int | None = None
        """When a sweep last found the broker not answering (the orchestrator's clock)."""

    async def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # the next round retries; sweeping is idempotent
                log.exception("sweep failed")
            await asyncio.sleep(self._interval_ms / 1000)

    async def sweep(self) -> int:
        """One round over the leased shards; returns how many messages it sent."""
        now = self._orch.clock()
        step_timeout = self._orch.step_timeout_ms
        if self._bus.unacknowledged_for() * 1000 > step_timeout / 2:
            # The broker is not answering (down, restarting): the stalled sagas' messages wait
            # in the producer, and a re-send would only queue behind them.
            self._held_at = now
            return 0
        if self._held_at is not None and now - self._held_at < step_timeout:
            # It answers again. A step's timeout counts only time the broker answered: the
            # replies it held up (a participant's, waiting in its producer or its next fetch)
            # get a whole step timeout to arrive before their steps are sent again.
            return 0
        lease_ms = self._interval_ms * 4
        # All shards at once: the calls to one master go out in one pipeline.
        leased = await asyncio.gather(
            *(
                self._log.lease_due(
                    shard, self._worker, lease_ms=lease_ms, now=now, limit=self._batch
                )
                for shard in range(self._log.index_shards)
            )
        )
        due = [
            (shard, entity, score) for shard, rows in enumerate(leased) for entity, score in rows
        ]
        if not due:
            return 0
        async with Effects(self._store, self._bus) as fx:
            results = await asyncio.gather(
                *(self._check(shard, entity, score, now) for shard, entity, score in due)
            )
            fx.send(message for result in results for message in result)
        return len(fx.sent)

    async def _check(self, shard: int, entity_id: str, score: float, now: int) -> list[Outgoing]:
        async with self._limit:
            state = await self._log.read(entity_id)
            if state is None or not state.live:
                # Dropping the entry rests on this read: confirm it on a replica first.
                state = await self._log.read_durably(entity_id)
            if state is None or not state.live:
                await self._log.index_drop(entity_id, score, shard)
                return []
            step_timeout = self._orch.step_timeout_ms
            if now - state.updated < step_timeout:
                await self._log.index_reschedule(entity_id, state.updated + step_timeout, shard)
                return []
            if state.status == SagaStatus.RUNNING and now >= state.deadline:
                self.aborts += 1
                telemetry.swept(self._orch.definition.name, "abort", state.saga_id)
                await self._log.index_reschedule(entity_id, now + step_timeout, shard)
                return await self._orch.abort(entity_id, state, AbortReason.DEADLINE)
            resends = await self._log.touch(entity_id, state, now)
            if resends == 0:
                return []
            self.resends += 1
            telemetry.swept(self._orch.definition.name, "resend", state.saga_id)
            backoff = min(step_timeout * 2 ** min(resends - 1, 5), MAX_BACKOFF_MS)
            await self._log.index_reschedule(entity_id, now + backoff, shard)
            log.info(
                "re-sending step %s/%s of %s (re-send %d)",
                state.status,
                state.step,
                state.saga_id,
                resends,
            )
            at = (state.status, state.step)
            return self._orch.next_messages(state.run(entity_id), at, concurrent=state.concurrent)
