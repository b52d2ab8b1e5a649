"""The invariants of DESIGN.md, checked on a simulated world once it is quiescent.

- every saga is terminal, and an order is paid exactly when its last saga succeeded (unless a
  batch_init reset it after);
- a paid order was charged once: one ``T:`` payment record (its total) and its lines' ``T:`` stock
  records, all from its last saga; an unpaid order holds no ``T:`` record of any saga;
- per user, credit + paid totals = initial credit + funds added; per item, stock + units in paid
  orders = initial stock + units added (added = the adjustments the ledger applied, and every
  acknowledged one is among them); "initial" is what the last batch_init set, if one ran;
- every "paid" answer is a paid order; every "not paid" answer's saga holds nothing; no
  checkout answers 5xx. (Each answer is also checked the moment it is given: sim_workload.)
- no "not paid" answer of any kind (its saga failed, its turn did not come, the order is too
  big) for an order that the saga which paid it had begun to pay before the request came;
- no "not paid" answer for an order a saga begun by a try of the same request paid (a try the
  gateway gave up on, which a frozen worker ran once it resumed, say: ``sim_gateway``).
Only the answers the client got are judged: those of the gateway's last tries.

A ``T:`` record holds something only while its entity was not reset since its saga began
(take.lua's fence): what it took went with the old balance.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from order.saga import order_key
from test.unit.fake_redis import FakeRedis
from test.unit.sim_workload import NOT_PAID, PAID

if TYPE_CHECKING:
    from test.unit.sim import World

Taken = dict[str, list[tuple[str, str, int]]]
"""saga id -> [(service, entity id, amount)] of its live ``T:`` records"""


def taken_records(world: World, service: str, into: Taken, saga: str = "") -> None:
    """The live ``T:`` records of ``service`` (of ``saga`` only, if given)."""
    redis = world.redis[service]
    for key in list(redis.data):
        if ":op:" not in key or (saga and not key.endswith(f":op:{saga}")):
            continue
        record = redis.get(key)
        if record is None or not record.startswith(b"T:"):
            continue
        tag, saga_id = key.split(":op:", 1)
        epoch = int(redis.hget(tag, b"epoch") or b"0")
        if epoch and world.started_of(saga_id) <= epoch:
            continue  # fenced off by a reset: it went with the old balance
        entity_id = tag.strip("{}").split(":", 1)[1]
        into[saga_id].append((service, entity_id, int(record[2:])))


def live_holds(world: World, saga_id: str) -> list[tuple[str, str, int]]:
    """What ``saga_id`` holds now: its live ``T:`` records in stock and payment."""
    held: Taken = defaultdict(list)
    taken_records(world, "stock", held, saga_id)
    taken_records(world, "payment", held, saga_id)
    return held.get(saga_id, [])


def applied(redis: FakeRedis, kind: str, entity_id: str, request_id: str) -> bool:
    record = redis.get(f"{{{kind}:{entity_id}}}:rq:{request_id}")
    return record is not None and record.startswith(b"OK:")


def check(world: World) -> list[str]:
    """The violated invariants (empty when all hold)."""
    wl, out = world.workload, []
    orders, stock, payment = world.redis["order"], world.redis["stock"], world.redis["payment"]
    taken: Taken = defaultdict(list)
    taken_records(world, "stock", taken)
    taken_records(world, "payment", taken)
    by_order: dict[str, set[str]] = defaultdict(set)
    for saga_id in taken:
        by_order[saga_id.split(":", 1)[0]].add(saga_id)

    paid: dict[str, bool] = {}
    for order_id, spec in wl.orders.items():
        h = orders.data.get(order_key(order_id), {})
        status = h.get(b"saga_status", b"").decode()
        last = h.get(b"saga_id", b"").decode()
        paid[order_id] = h.get(b"paid") == b"1"
        reset_since = int(h.get(b"reset_at", b"0")) >= int(h.get(b"saga_started", b"0"))
        if status not in ("", "succeeded", "failed"):
            out.append(f"order {order_id}: saga {last} never ended ({status})")
        if paid[order_id] != (status == "succeeded") and not (status and reset_since):
            out.append(f"order {order_id}: paid={paid[order_id]} but its saga {last} is {status}")
        holders = by_order.pop(order_id, set()) - set(wl.sold)  # those sold before a reset
        if not paid[order_id]:
            if holders:
                out.append(f"unpaid order {order_id} holds {[taken[s] for s in sorted(holders)]}")
            continue
        if holders - {last}:
            out.append(f"paid order {order_id}: sagas {sorted(holders - {last})} also hold")
        want = Counter({("stock", i): 0 for i, _ in spec.lines})
        for item_id, quantity in spec.lines:
            want[("stock", item_id)] += quantity
        want[("payment", spec.user_id)] = spec.total
        records = taken.get(last, [])
        got = Counter({(s, e): a for s, e, a in records})
        if len(records) != len(want) or got != want:
            out.append(f"paid order {order_id} (saga {last}) has records {records}, want {want}")
    for order_id, sagas in by_order.items():
        out.append(f"records of unknown order {order_id}: {sorted(sagas)}")

    added: Counter[tuple[str, str]] = Counter()
    for adj in wl.adjustments:
        kind = "user" if adj.service == "payment" else "item"
        redis = payment if adj.service == "payment" else stock
        if applied(redis, kind, adj.entity_id, adj.request_id):
            added[(adj.service, adj.entity_id)] += adj.delta
        elif adj in wl.acknowledged:
            out.append(f"acknowledged {adj} vanished")
    spent: Counter[tuple[str, str]] = Counter()
    sold = [spec for order_id, spec in wl.orders.items() if paid[order_id]]
    for spec in [*sold, *wl.sold.values()]:
        spent[("payment", spec.user_id)] += spec.total
        for item_id, quantity in spec.lines:
            spent[("stock", item_id)] += quantity
    for user_id, credit in wl.users.items():
        now = int(payment.hget(f"{{user:{user_id}}}", b"credit") or b"0")
        key = ("payment", user_id)
        if now + spent[key] != credit + added[key]:
            out.append(
                f"user {user_id}: credit {now} + paid {spent[key]} != {credit} + {added[key]}"
            )
    for item_id, (units, _) in wl.items.items():
        now = int(stock.hget(f"{{item:{item_id}}}", b"stock") or b"0")
        key = ("stock", item_id)
        if now + spent[key] != units + added[key]:
            out.append(f"item {item_id}: stock {now} + sold {spent[key]} != {units} + {added[key]}")

    if world.stats.get("checkout_503"):
        out.append(f"{world.stats['checkout_503']} checkout(s) answered 503 (rule 5: never 5xx)")
    out += refusals_of_paid_orders(world)
    out += refusals_of_what_their_request_paid(world)
    for answer in wl.answers:
        if answer.asked_ms <= wl.reset_ms:
            continue  # about the world before the reset: checked when it was given
        if answer.outcome == PAID and not paid[answer.order_id]:
            out.append(f"checkout answered paid but order {answer.order_id} is not: {answer}")
        if answer.outcome == NOT_PAID and taken.get(answer.saga_id):
            out.append(
                f"checkout answered not paid but {answer.saga_id} holds {taken[answer.saga_id]}"
            )
    return out


def payer(world: World, order_id: str, at: int) -> str:
    """The saga that paid ``order_id`` between the batch_inits around trace position ``at``
    ('' if none did): what a reset found paid, or the order as it ends."""
    wl = world.workload
    after = [r for r in wl.resets if r > at]
    if after:
        return dict(wl.payers.get(order_id, [])).get(after[0], "")
    h = world.redis["order"].data.get(order_key(order_id), {})
    return h.get(b"saga_done_by", b"").decode() if h.get(b"paid") == b"1" else ""


def refusals_of_paid_orders(world: World) -> list[str]:
    """A 400 of any kind (a failed saga, no turn, too big) is true only if at some moment
    between the request and its answer the order was not paid and no saga then live went on to
    pay it: so never when the saga that paid it had begun before the request came."""
    wl, out = world.workload, []
    for answer in wl.answers:
        if answer.outcome != NOT_PAID or any(answer.asked <= r <= answer.at for r in wl.resets):
            continue
        by = payer(world, answer.order_id, answer.asked)
        began = wl.began.get(by)
        if began is not None and began < answer.at:
            world.count("answer not paid while its payer was live or done")
        if began is not None and began < answer.asked:
            out.append(f"checkout answered not paid, but {by}, begun before it was asked, paid")
            out[-1] += f" order {answer.order_id}: {answer}"
    return out


def refusals_of_what_their_request_paid(world: World) -> list[str]:
    """A 400 tells the client its request did not pay the order: no try of it may have begun a
    saga that paid it, a try the gateway gave up on included (it may run long after the
    answer: a worker frozen past the gateway's timeout reads it when it resumes)."""
    wl, out = world.workload, []
    requests = world.gateway.requests
    for answer in wl.answers:
        if answer.outcome != NOT_PAID or answer.request < 0:
            continue
        if any(answer.asked <= r <= answer.at for r in wl.resets):
            continue  # about the world before the reset, as above
        for saga_id in requests[answer.request].began():
            at = wl.began.get(saga_id)
            if at is not None and payer(world, answer.order_id, at) == saga_id:
                tries = [a.name for a in requests[answer.request].tries]
                out.append(
                    f"checkout answered not paid, but {saga_id}, begun by a try of the same "
                    f"request ({tries}), paid order {answer.order_id}: {answer}"
                )
    return out
