"""A participant service's composition root: stock and payment are one participant underneath
(a ``Ledger`` of one kind, a consumer of its command topic), wired here once, with the routes
that are the same in both (a balance moved up or down, a batch's size). Each service's
``app.py`` adds only its own routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from quart import Quart, Response

from common.bus import Bus
from common.consumer import ConsumerLoop
from common.errors import BadRequest
from common.http import json_response, parse_number, request_id
from common.ledger import LUA_DIR, Ledger
from common.service import Runtime
from common.settings import Settings, load_settings
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
    if not settings.standby:  # a standby serves HTTP only (common/settings.py)
        runtime.components.append(consumer)
    return Participant(ledger, consumer, runtime)


def participant_app(
    settings: Settings | None,
    kind: LedgerKind,
    topic: str,
    handlers: Callable[[Ledger], Mapping[type, Handler]],
    *,
    store: Storage | None = None,
    bus: MessageBus | None = None,
) -> tuple[Quart, Ledger]:
    """``build_participant``'s app (settings from the environment unless given) and the ledger
    the service's routes act on."""
    participant = build_participant(
        settings or load_settings(), kind, topic, handlers, store=store, bus=bus
    )
    return participant.runtime.app(kind.service), participant.ledger


def batch_count(raw: str) -> int:
    """``batch_init``'s ``n``: a path number of at most ``MAX_BATCH``, else 400."""
    count = parse_number(raw, "n")
    if count > MAX_BATCH:
        raise BadRequest(f"n must be at most {MAX_BATCH}")
    return count


def balance_routes(app: Quart, ledger: Ledger, kind: LedgerKind, add: str, subtract: str) -> None:
    """``POST {add}/<{prefix}_id>/<amount>`` and ``POST {subtract}/…``: add ``amount`` to the
    entity's balance or take it off, at most once per request id (``Ledger.adjust``), and answer
    the id and the new balance. Their endpoints are ``add_{field}`` and ``remove_{field}``."""
    id_name = f"{kind.prefix}_id"

    def move(sign: int) -> Callable[..., Awaitable[Response]]:
        async def moved(amount: str, **path: str) -> Response:
            entity_id = path[id_name]
            delta = sign * parse_number(amount, "amount")
            balance = await ledger.adjust(entity_id, delta, request_id())
            return json_response({id_name: entity_id, kind.field: balance})

        return moved

    for prefix, endpoint, sign in ((add, "add", 1), (subtract, "remove", -1)):
        rule = f"{prefix}/<{id_name}>/<amount>"
        app.add_url_rule(rule, f"{endpoint}_{kind.field}", move(sign), methods=["POST"])
