"""One checkout saga's history, derived from what is already stored: the saga's fields in the
order's hash and the participants' operation records. No log of transitions is kept (that
would cost every transition a write); the records' TTLs date the participants' last writes.

Operation records (common/lua/take.lua, restore.lua): ``T:<n>`` took n, ``S`` short,
``U`` unknown entity, ``X`` given back or barred for good, ``F`` fenced off by a reset of the
entity (batch_init) after the saga began. A ``T:`` record older than its entity's last reset
holds nothing: what it took went with the old balance.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from common.ledger import OP_RECORD_TTL_S, Ledger
from common.observability.tracing import trace_id_for
from common.saga.orchestrator import Clock, Orchestrator, now_ms
from common.saga.state import SagaState
from common.settings import Settings
from common.store import Store
from common.terms import ITEMS, TAKEN_PREFIX, USERS, SagaStatus, Taken
from common.types import Storage
from order.saga import CHECKOUT, order_key

_RECORD_MEANING = {
    Taken.TAKEN.value: "took {n}",
    Taken.SHORT.value: "refused: short",
    Taken.UNKNOWN.value: "refused: unknown",
    Taken.REFUSED.value: "gave back / barred (compensated)",
    Taken.FENCED.value: "fenced: reset (batch_init) after the saga began; holds nothing",
}


class Participants:
    """Read access to the stock and payment clusters, when their addresses are configured."""

    def __init__(self, settings: Settings, clock: Clock = now_ms) -> None:
        self._clock = clock
        self._stores: dict[str, Store] = {}
        for kind, nodes in (
            (ITEMS, settings.stock_redis_nodes),
            (USERS, settings.payment_redis_nodes),
        ):
            if nodes:
                self._stores[kind.prefix] = Store(dataclasses.replace(settings, redis_nodes=nodes))
        self._started: set[str] = set()

    def configured(self, kind: str) -> bool:
        return kind in self._stores

    async def record(self, kind: str, entity_id: str, saga_id: str) -> dict[str, Any] | None:
        """The saga's operation record on one entity, with its age, and the entity's balance;
        None if that cluster is not configured."""
        store = self._stores.get(kind)
        if store is None:
            return None
        if kind not in self._started:
            await store.start()
            self._started.add(kind)
        ledger = Ledger(store, ITEMS if kind == ITEMS.prefix else USERS)
        field = ledger.field
        key = ledger.key(entity_id)
        op = f"{key}:op:{saga_id}"
        raw, ttl_ms, balance, epoch = await store.retrying(
            lambda: _read(store, op, key, field)  # one call per cluster node, retried
        )
        record = raw.decode() if raw is not None else None
        written = None
        if record is not None and ttl_ms > 0:  # written when its TTL was full
            written = self._clock() - (OP_RECORD_TTL_S * 1000 - ttl_ms)
        return {
            "entity": entity_id,
            "record": record,
            "meaning": _meaning(record),
            "written_at_ms": written,
            "reset_at_ms": int(epoch) if epoch is not None else None,
            field: int(balance) if balance is not None else None,
        }

    async def stop(self) -> None:
        for store in self._stores.values():
            await store.stop()


async def _read(store: Store, op: str, key: str, field: str) -> tuple[Any, int, Any, Any]:
    async with store.cluster.pipeline() as pipe:  # both keys share one slot
        pipe.get(op)
        pipe.pttl(op)
        pipe.hget(key, field)
        pipe.hget(key, "epoch")
        raw, ttl, balance, epoch = await pipe.execute()
    return raw, int(ttl), balance, epoch


def _meaning(record: str | None) -> str:
    if record is None:
        return "no record: not asked yet, or its command not processed yet"
    text = _RECORD_MEANING.get(record[0], record)
    return text.format(n=record[2:]) if record.startswith(TAKEN_PREFIX) else text


async def describe(
    store: Storage, orchestrator: Orchestrator, participants: Participants, order_id: str
) -> dict[str, Any]:
    """Everything ``show`` prints, as a JSON-able dict."""
    now = orchestrator.clock()
    key = order_key(order_id)
    fields = ["user_id", "items", "total_cost", "paid", "saga_attempt", "reset_at"]
    values = await store.hmget(key, fields)
    report: dict[str, Any] = {
        "order_id": order_id,
        "found": values[0] is not None,
        "order": None,
        "saga": None,
        "records": {"stock": [], "payment": []},
        "history": [],
        "holds": {},
        "consistent": None,
        "problems": [],
    }
    if values[0] is None:
        return report
    user_id, items_raw, total, paid, attempts, reset_at = (v.decode() if v else "" for v in values)
    report["order"] = {
        "user_id": user_id,
        "items": json.loads(items_raw or "[]"),
        "total_cost": int(total or 0),
        "paid": paid == "1",
        "attempts": int(attempts or 0),
        "reset_at_ms": int(reset_at) if reset_at else None,
    }
    state = await orchestrator.read(order_id)
    if state is None or not state.saga_id:
        return report
    steps = [step.name for step in CHECKOUT.steps]
    report["saga"] = {
        "saga_id": state.saga_id,
        "trace_id": trace_id_for(state.saga_id),
        "status": state.status,
        "step": state.step,
        "step_name": steps[state.step] if 0 <= state.step < len(steps) else "-",
        "at_once": state.concurrent,  # both steps were asked for at its start
        "reason": state.reason,
        "resends": state.resends,
        "started_ms": state.started,
        "age_s": round((now - state.started) / 1000, 3),
        "since_last_move_s": round((now - state.updated) / 1000, 3),
        "deadline_in_s": round((state.deadline - now) / 1000, 3),
    }
    await _records(report, participants, state, now)
    _judge(report, state, steps)
    return report


async def _records(
    report: dict[str, Any], participants: Participants, state: SagaState, now: int
) -> None:
    history: list[tuple[float | None, str]] = [
        (0.0, f"saga started (attempt {state.saga_id.split(':')[-2]})")
    ]
    snapshot_items = json.loads(state.snapshot.get("items") or "[]")
    quantities: dict[str, int] = {}
    for item, quantity in snapshot_items:
        quantities[str(item)] = quantities.get(str(item), 0) + int(quantity)
    for side, kind, entities in (
        (ITEMS.service, ITEMS.prefix, list(quantities)),
        (USERS.service, USERS.prefix, [state.snapshot.get("user_id", "")]),
    ):
        if not participants.configured(kind):
            history.append((None, f"{side}: records not read ({side.upper()}_REDIS_NODES unset)"))
            continue
        for entity in entities:
            found = await participants.record(kind, entity, state.saga_id)
            if found is None:
                continue
            report["records"][side].append(found)
            written = found["written_at_ms"]
            at = None if written is None else (written - state.started) / 1000
            history.append((at, f"{side}: {kind} {entity}: {found['meaning']}"))
    if state.updated != state.started:
        history.append(
            ((state.updated - state.started) / 1000, f"last move to {state.status}/{state.step}")
        )
    if state.resends:
        history.append((None, f"{state.resends} re-send(s) of the current step since that move"))
    if state.live and now >= state.deadline and state.status == SagaStatus.RUNNING:
        history.append((None, "past its deadline: the sweeper turns it back"))
    timed = sorted((e for e in history if e[0] is not None), key=lambda e: e[0] or 0.0)
    untimed = [e for e in history if e[0] is None]
    report["history"] = [{"at_s": at, "what": what} for at, what in [*timed, *untimed]]


def _judge(report: dict[str, Any], state: SagaState, steps: list[str]) -> None:
    """What the saga holds now, and whether that agrees with its state."""
    stock = report["records"]["stock"]
    payment = report["records"]["payment"]

    def took(record: dict[str, Any]) -> bool:
        return (record["record"] or "").startswith(TAKEN_PREFIX)

    def held(record: dict[str, Any]) -> bool:  # a reset since took it away (see take.lua)
        reset_at = record["reset_at_ms"]
        return took(record) and (reset_at is None or reset_at < state.started)

    held_stock = {r["entity"]: int(r["record"][2:]) for r in stock if held(r)}
    held_credit = sum(int(r["record"][2:]) for r in payment if held(r))
    charged = sum(int(r["record"][2:]) for r in payment if took(r))
    report["holds"] = {"stock": held_stock, "credit": held_credit}
    if not stock and not payment:
        return  # the participants were not read: nothing to judge
    problems: list[str] = report["problems"]
    order = report["order"]
    reset_since = (order["reset_at_ms"] or 0) >= state.started  # batch_init came after it
    if state.status == SagaStatus.SUCCEEDED:
        if not order["paid"] and not reset_since:
            problems.append("saga succeeded but the order is not paid")
        if stock and not all(took(r) for r in stock):
            problems.append("saga succeeded but not every line is reserved")
        total = int(state.snapshot.get("total_cost") or 0)
        if payment and charged != total:
            problems.append(f"saga succeeded but {charged} charged, not {total}")
    elif state.status == SagaStatus.FAILED:
        if order["paid"]:
            problems.append("saga failed but the order is paid")
        if held_stock or held_credit:
            problems.append("saga failed but still holds stock or credit")
    elif state.status == SagaStatus.COMPENSATING and state.step < len(steps) - 1 and held_credit:
        problems.append("compensating before the payment step but credit is held")
    report["consistent"] = not problems
