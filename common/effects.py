"""The one way out for effects: a unit of work that tracks the Redis writes made inside it,
makes a replica hold them, and only then publishes the messages that depend on them.

    async with Effects(store, bus) as fx:
        replies = await handle(message)   # scripts write; each write is tracked
        fx.send(replies)
    # here: the writes were replicated, then the replies published

This is rule 6 of the design ("nothing acts on an effect that a failover could erase") in one
place: a message, an offset commit or an HTTP answer that rests on a write goes out only after
``Store.replicate`` returned for it. A block that raises sends nothing; ``cancel`` says that
the block changed nothing worth replicating (a compare-and-set that lost its race).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType

from common.types import Outgoing, Publisher, Replicating, Written

log = logging.getLogger(__name__)


class Effects:
    """Tracks the writes of one block, replicates them on exit, then publishes what was sent.

    ``store`` None: nothing is written (a listener), the messages are published as they are.
    ``best_effort``: a failed publish is logged, not raised, for senders whose saga state
    already says what to send (the sweeper re-sends it); a failed replication always raises.
    ``on_durable``: told the messages once the writes are on a replica, before they are
    published; what it does rests on the writes only, not on the messages reaching anyone.
    """

    def __init__(
        self,
        store: Replicating | None,
        bus: Publisher,
        *,
        acknowledged: bool = True,
        best_effort: bool = False,
        on_durable: Callable[[Sequence[Outgoing]], None] | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._acknowledged = acknowledged
        self._best_effort = best_effort
        self._on_durable = on_durable
        self._tracking: contextlib.ExitStack | None = None
        self._written: Written = {}
        self._outgoing: list[Outgoing] = []
        self._cancelled = False

    @property
    def sent(self) -> list[Outgoing]:
        """The messages given to ``send`` (published once the block is over)."""
        return self._outgoing

    def send(self, messages: Iterable[Outgoing]) -> None:
        """Publish ``messages`` once the block's writes are on a replica."""
        self._outgoing.extend(messages)

    def cancel(self) -> None:
        """The block changed nothing: replicate nothing, send nothing."""
        self._cancelled = True

    async def __aenter__(self) -> Effects:
        if self._store is not None:
            self._tracking = contextlib.ExitStack()
            self._written = self._tracking.enter_context(self._store.tracking())
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tracking is not None:
            self._tracking.close()
        if kind is not None or self._cancelled:
            return
        if self._store is not None:
            await self._store.replicate(self._written)
        if self._on_durable is not None:
            self._on_durable(self._outgoing)
        try:
            await self._bus.publish(self._outgoing, acknowledged=self._acknowledged)
        except Exception as exc:
            if not self._best_effort:
                raise
            log.warning("publishing %d messages failed (%r); re-sent later", len(self.sent), exc)
