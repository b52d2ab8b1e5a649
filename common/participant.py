"""A participant service's composition root: stock and payment are one participant underneath
(a ``Ledger`` of one kind, a consumer of its command topic), wired here once. Each service's
``app.py`` adds only its routes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from common.bus import Bus
from common.consumer import ConsumerLoop
from common.ledger import LUA_DIR, Ledger
from common.service import Runtime
from common.settings import Settings
from common.store import Store
from common.terms import LedgerKind
from common.types import Handler, MessageBus, Storage

MAX_BATCH = 1_000_000
"""The most entities one ``batch_init`` may create."""


@dataclass(frozen=True)
class Participant:
    """What a participant's routes and tests need: its ledger and the runtime that serves it."""

    ledger: Ledger
    consumer: ConsumerLoop
    runtime: Runtime


def build_participant(
    settings: Settings,
    kind: LedgerKind,
    topic: str,
    handlers: Callable[[Ledger], Mapping[type, Handler]],
    *,
    store: Storage | None = None,
    bus: MessageBus | None = None,
) -> Participant:
    """The ledger of ``kind`` and a runtime that consumes ``topic`` (in the consumer group named
    after the service) with ``handlers(ledger)``. Nothing connects until the app serves."""
    store = Store(settings, LUA_DIR) if store is None else store
    bus = Bus(settings) if bus is None else bus
    ledger = Ledger(store, kind)
    consumer = ConsumerLoop(
        name=kind.service,
        bus=bus,
        store=store,
        topics=[topic],
        group_id=kind.service,
        handlers=handlers(ledger),
    )
    runtime = Runtime(settings, store, bus)
    runtime.components.append(consumer)
    return Participant(ledger, consumer, runtime)
