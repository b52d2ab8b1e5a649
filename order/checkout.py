"""The HTTP side of checkout: start or join the order's saga, then answer only with its
verdict: 200 once paid, 400 once not paid and nothing held. Never 5xx, never early."""

from __future__ import annotations

import asyncio
import logging

from common import telemetry
from common.bus import Bus, Outgoing
from common.errors import NotFound, Refused, Unavailable
from common.saga.log import FAILED, SUCCEEDED
from common.saga.orchestrator import Orchestrator, Outcome, Started
from common.saga.waiters import Verdict, Waiters
from common.store import Store

log = logging.getLogger(__name__)

_DECIDE_ATTEMPTS = 5


class Checkout:
    """``await checkout(order_id)`` returns when the order is paid, raises Refused if not."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        store: Store,
        bus: Bus,
        waiters: Waiters,
        *,
        timeout_ms: int,
    ) -> None:
        self._orch = orchestrator
        self._store = store
        self._bus = bus
        self._waiters = waiters
        self._timeout_s = timeout_ms / 1000

    async def __call__(self, order_id: str) -> None:
        # A client that hangs up (or a gateway that gives up on this worker) cancels this
        # handler; the start and its first command are shielded from that, so a saga that
        # began always moves on at once instead of waiting for the sweeper's re-send.
        begin = asyncio.ensure_future(self._begin(order_id))
        begin.add_done_callback(_retrieve)
        started = await asyncio.shield(begin)
        telemetry.saga_begun(self._orch.definition.name, started.outcome.value, started.saga_id)
        if started.outcome is Outcome.UNKNOWN:
            raise NotFound(f"order {order_id!r} not found")
        if started.outcome is Outcome.DONE:
            return
        verdict = await self._waiters.wait(
            started.saga_id, lambda: self._poll(order_id, started.saga_id), self._timeout_s
        )
        if verdict is None:
            verdict = await self._decide(order_id, started.saga_id)
        paid, reason = verdict
        telemetry.saga_answered(paid)
        if not paid:
            raise Refused(f"order {order_id!r} not paid: {reason or 'checkout failed'}")

    async def _begin(self, order_id: str) -> Started:
        trace_id = ""  # the saga's own: derived from its id (common/tracing.py)
        # The saga's start is replicated before its first command goes out (or re-run, if a
        # failover may have erased it: the start then finds its own saga, or starts anew).
        started = await self._start(order_id, trace_id)
        if started.outcome is Outcome.STARTED:
            try:
                await self._bus.publish(started.commands, acknowledged=False)
            except Exception as exc:  # the saga is logged and indexed: the sweeper re-sends
                log.warning(
                    "publishing %s failed (%r); the sweeper will re-send", started.saga_id, exc
                )
        return started

    async def _start(self, order_id: str, trace_id: str) -> Started:
        """Start or join the saga, retrying while the order's Redis is unavailable (a failover
        takes seconds); only past the checkout timeout does Unavailable reach the client."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._timeout_s
        while True:
            try:
                return await self._store.durable(lambda: self._orch.start(order_id, trace_id))
            except Unavailable:
                if loop.time() > give_up:
                    raise
                await asyncio.sleep(0.2)

    async def _poll(self, order_id: str, saga_id: str) -> Verdict | None:
        try:
            state = await self._orch.log.read(order_id)
            if state is not None and not state.live:
                state = await self._orch.log.read_durably(order_id)  # an answer rests on it
        except Unavailable:
            return None  # keep waiting: the verdict may still arrive on the bus
        if state is None:
            return (False, "order vanished")
        if state.saga_id != saga_id:  # ours ended and another began: the order tells the truth
            return (state.status == SUCCEEDED, "checkout failed")
        if state.status == SUCCEEDED:
            return (True, "")
        if state.status == FAILED:
            return (False, state.reason)
        return None

    async def _decide(self, order_id: str, saga_id: str) -> Verdict:
        """Past the timeout: turn a still-running saga back (again if it moved meanwhile), then
        wait a bounded while for its compensations, so that a 400 means not paid, for good."""
        for _ in range(_DECIDE_ATTEMPTS):
            try:
                state = await self._orch.log.read_durably(order_id)
                if state is None or state.saga_id != saga_id or not state.live:
                    break
                if state.status == "running":
                    with self._store.tracking() as written:
                        messages = await self._orch.abort(order_id, state, "checkout timed out")
                    await self._store.replicate(written)
                    if not messages:
                        continue  # it moved between the read and the abort: read again
                    await self._publish(saga_id, messages)
                break
            except Unavailable as exc:
                log.warning("deciding %s: %r", saga_id, exc)
                await asyncio.sleep(0.2)
        verdict = await self._waiters.wait(
            saga_id, lambda: self._poll(order_id, saga_id), self._timeout_s / 2
        )
        if verdict is not None:
            return verdict
        state = await self._orch.log.read_durably(order_id)
        if state is not None and state.saga_id == saga_id and state.status == "running":
            # Never turned back: its outcome is not known, and a 4xx could be a lie.
            raise Unavailable(f"saga {saga_id} undecided after the checkout timeout")
        # Compensating: not paid, and it never will be; the compensation is under way.
        return (False, "checkout timed out")

    async def _publish(self, saga_id: str, messages: list[Outgoing]) -> None:
        try:
            await self._bus.publish(messages)
        except Exception as exc:  # the sweeper re-sends the compensation
            log.warning("publishing abort of %s failed (%r)", saga_id, exc)


def _retrieve(task: asyncio.Future[Started]) -> None:
    """Mark a shielded start's failure as seen: its handler, when still there, reports it."""
    if not task.cancelled():
        task.exception()
