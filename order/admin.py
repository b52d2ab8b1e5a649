"""The checkout saga's operator tool.

    python -m order.admin show ORDER_ID [--json]       one saga: state, history, what it holds
    python -m order.admin stuck [--older-than 30s]     live sagas older than that, oldest first
    python -m order.admin retry ORDER_ID [--saga ID]   re-send the saga's current step
    python -m order.admin abort ORDER_ID [--saga ID]   turn the saga back (compensations)

``--saga`` makes retry and abort act only if the order's saga is still that one (copy it from
``show``); ``--wait S`` waits up to S seconds for the saga to end and prints where it ended.

Addresses come from the settings (common/settings.py): the order cluster from
``ORDER_REDIS_NODES`` (else ``REDIS_NODES``), the participants' from ``STOCK_REDIS_NODES`` and
``PAYMENT_REDIS_NODES`` (without them ``show`` reads the order side only), the broker from
``KAFKA_BOOTSTRAP_SERVERS``. For the local stack: ``set -a; . .run/stack.env; set +a``.

The history is derived, not logged: the saga's own fields (``saga_started``, ``saga_updated``,
``saga_status``, ``saga_step``, ``saga_reason``, ``saga_resends``, ``saga_attempt``) and the
participants' operation records ``{item:<id>}:op:<saga>`` / ``{user:<id>}:op:<saga>``, whose
remaining TTL tells when each was last written. Nothing is added to the checkout path for it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import re
import sys
import time
from typing import Any

from common.saga.admin import Action, SagaAdmin
from common.settings import Settings, load_settings
from order.bootstrap import build
from order.history import Participants, describe
from order.saga import CHECKOUT

EXIT_OK, EXIT_NOT_FOUND, EXIT_REFUSED = 0, 1, 2
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration_ms(text: str) -> int:
    """``"1500ms"``, ``"30s"``, ``"5m"``, ``"2h"`` or plain seconds, in milliseconds."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 5m, 1500ms)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return int(value * {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}[unit])


class Tool:
    """The clients the commands need, started lazily and stopped together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        order_nodes = settings.order_redis_nodes or settings.redis_nodes
        order = build(dataclasses.replace(settings, redis_nodes=order_nodes))
        self.store = order.store
        self.orchestrator = order.orchestrator
        self.bus = order.bus
        self.admin = SagaAdmin(self.orchestrator, self.store, self.bus)
        self.participants = Participants(settings, order.orchestrator.clock)
        self._bus_started = False

    async def __aenter__(self) -> Tool:
        await self.store.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.participants.stop()
        await self.bus.stop()
        await self.store.stop()

    async def publishing(self) -> None:
        if not self._bus_started:
            await self.bus.start()
            self._bus_started = True


# --- commands ---------------------------------------------------------------------------------
async def show(tool: Tool, args: argparse.Namespace) -> int:
    report = await describe(tool.store, tool.orchestrator, tool.participants, args.order_id)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return EXIT_OK if report["found"] else EXIT_NOT_FOUND


async def stuck(tool: Tool, args: argparse.Namespace) -> int:
    now = tool.orchestrator.clock()
    rows = await tool.admin.stuck(args.older_than, now=now)
    rows = rows[: args.limit]
    steps = [step.name for step in CHECKOUT.steps]
    listed = [
        {
            "order_id": row.entity_id,
            "saga_id": row.state.saga_id,
            "status": row.state.status,
            "step": steps[row.state.step] if 0 <= row.state.step < len(steps) else row.state.step,
            "age_s": round((now - row.state.started) / 1000, 1),
            "since_last_move_s": round((now - row.state.updated) / 1000, 1),
            "resends": row.state.resends,
            "past_deadline": now >= row.state.deadline,
            "next_sweep_in_s": round((row.due - now) / 1000, 1),
            "reason": row.state.reason,
        }
        for row in rows
    ]
    if args.json:
        print(json.dumps(listed, indent=2))
        return EXIT_OK
    if not listed:
        print(f"no saga live for longer than {args.older_than / 1000:g} s")
        return EXIT_OK
    print(f"{'order':34} {'status':13} {'step':14} {'age s':>7} {'idle s':>7} {'resends':>7}")
    for row in listed:
        print(
            f"{row['order_id']:34} {row['status']:13} {row['step']!s:14} {row['age_s']:>7} "
            f"{row['since_last_move_s']:>7} {row['resends']:>7}"
            + ("  past deadline" if row["past_deadline"] else "")
        )
    return EXIT_OK


async def act(tool: Tool, args: argparse.Namespace) -> int:
    await tool.publishing()
    if args.command == "retry":
        action = await tool.admin.retry(args.order_id, args.saga)
    else:
        action = await tool.admin.abort(args.order_id, args.saga, args.reason)
    final = None
    if action.done and args.wait > 0 and action.state is not None:
        final = await tool.admin.wait(args.order_id, action.state.saga_id, args.wait)
    result = _action_json(action, final)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.command} {args.order_id}: {action.detail}")
        for sent in action.sent:
            print(f"  sent {sent}")
        if result["state"] is not None:
            state = result["state"]
            print(f"  saga {state['saga_id']} now {state['status']} at step {state['step']}")
        if final is not None:
            print(f"  after waiting: {result['final']['status']}")
    if action.done:
        return EXIT_OK
    return EXIT_NOT_FOUND if action.state is None or not action.state.saga_id else EXIT_REFUSED


def _action_json(action: Action, final: Any) -> dict[str, Any]:
    def state(value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        return {
            "saga_id": value.saga_id,
            "status": value.status,
            "step": value.step,
            "reason": value.reason,
            "resends": value.resends,
        }

    return {
        "done": action.done,
        "detail": action.detail,
        "sent": action.sent,
        "state": state(action.state),
        "final": state(final),
    }


# --- text rendering of ``show`` ----------------------------------------------------------------
def render(report: dict[str, Any]) -> str:
    if not report["found"]:
        return f"order {report['order_id']}: not found"
    lines = [f"order {report['order_id']}"]
    order = report["order"]
    lines.append(
        f"  user {order['user_id']}, total {order['total_cost']}, paid {order['paid']}, "
        f"items {order['items']}, checkouts attempted {order['attempts']}"
    )
    saga = report["saga"]
    if saga is None:
        lines.append("  never checked out")
        return "\n".join(lines)
    lines.append(f"  saga {saga['saga_id']}  trace {saga['trace_id']}")
    lines.append(
        f"  {saga['status']} at step {saga['step']} ({saga['step_name']}"
        + (", every step asked at once" if saga["at_once"] else "")
        + f"), age {saga['age_s']} s, last move {saga['since_last_move_s']} s ago, "
        f"re-sends {saga['resends']}" + (f", reason: {saga['reason']}" if saga["reason"] else "")
    )
    lines.append("history (derived from the saga state and the participants' records):")
    for event in report["history"]:
        offset = "" if event["at_s"] is None else f"+{event['at_s']:.3f} s"
        lines.append(f"  {offset:>12}  {event['what']}")
    lines.append(f"holds: {json.dumps(report['holds'])}")
    if report["problems"]:
        lines.append("PROBLEMS: " + "; ".join(report["problems"]))
    elif report["consistent"] is not None:
        lines.append("consistent: " + ("yes" if report["consistent"] else "no"))
    return "\n".join(lines)


# --- entry point -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m order.admin", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_show = sub.add_parser("show", help="one order's saga: state, history, what it holds")
    p_show.add_argument("order_id")
    p_stuck = sub.add_parser("stuck", help="live sagas older than --older-than")
    p_stuck.add_argument("--older-than", type=parse_duration_ms, default=30_000, metavar="T")
    p_stuck.add_argument("--limit", type=int, default=100)
    for name, help_text in (
        ("retry", "re-send the current step of a live saga"),
        ("abort", "turn a running saga back through its compensations"),
    ):
        p_act = sub.add_parser(name, help=help_text)
        p_act.add_argument("order_id")
        p_act.add_argument("--saga", help="act only if the order's live saga is this one")
        p_act.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the end")
        if name == "abort":
            p_act.add_argument("--reason", default="", help="kept in the saga's reason")
    for p in (p_show, p_stuck, *sub.choices.values()):
        if not any(a.dest == "json" for a in p._actions):
            p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser.parse_args(argv)


async def main_async(args: argparse.Namespace, settings: Settings) -> int:
    commands = {"show": show, "stuck": stuck, "retry": act, "abort": act}
    async with Tool(settings) as tool:
        return await commands[args.command](tool, args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    settings = load_settings()
    settings = dataclasses.replace(settings, worker_id=f"admin-{int(time.time())}")
    return asyncio.run(main_async(args, settings))


if __name__ == "__main__":
    sys.exit(main())
