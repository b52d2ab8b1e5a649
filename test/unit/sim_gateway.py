"""The gateway (nginx, ``env/gateway/routes.conf``) between the simulated clients and the order
workers. It gives up on a worker ``GATEWAY_READ_TIMEOUT_S`` after sending it a checkout
(``proxy_read_timeout``) and sends the same request, with the same ``X-Request-Start`` (when it
first sent it), to another worker, three tries in all (``proxy_next_upstream_tries``); past the
last, the client gets a 504. The client gets the answer of the last try only: the answers of the
tries the gateway gave up on go nowhere, but those tries still run (a frozen worker reads them
when it resumes, ``OrderWorker.freeze``) and whatever sagas they begin count against the answer
the client did get (``sim_check.refusals_of_what_their_request_paid``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from common.http import GATEWAY_READ_TIMEOUT_S, gateway_start_by
from test.unit.sim_sched import Actor

if TYPE_CHECKING:
    from test.unit.sim import World

TRIES = 3
TIMEOUT_MS = GATEWAY_READ_TIMEOUT_S * 1000

Answered = Callable[[Actor, "asyncio.Task[Any] | None"], None]
"""What the client does with the last try's end (None: the gateway's 504 after its last try)."""


@dataclass(eq=False)
class Request:
    """One client checkout as the gateway carries it: its tries, in order."""

    order_id: str
    sent_ms: int
    """``X-Request-Start``: when the gateway first sent it, the same on every try."""
    on_answer: Answered
    tries: list[Actor] = field(default_factory=list)
    answered: bool = False
    timer: asyncio.TimerHandle | None = None
    """The gateway's ``proxy_read_timeout`` on the last try."""

    @property
    def header(self) -> str:
        """``X-Request-Start`` as nginx's ``$msec`` writes it."""
        return f"{self.sent_ms // 1000}.{self.sent_ms % 1000:03d}"

    def began(self) -> list[str]:
        """The sagas its tries began so far (a try the gateway gave up on may begin one later)."""
        return [saga_id for actor in self.tries for saga_id in actor.notes.get("began", ())]


class Gateway:
    def __init__(self, world: World) -> None:
        self.world = world
        self.requests: list[Request] = []
        self.open: set[Request] = set()
        """Requests whose last try the gateway still waits for."""

    def send(self, order_id: str, worker: str, on_answer: Answered) -> Request:
        request = Request(order_id, self.world.loop.now_ms, on_answer)
        self.requests.append(request)
        self.open.add(request)
        self._try(request, worker)
        return request

    def next_deadline_ms(self) -> int | None:
        """When the gateway next gives up on a try (None: it waits on none)."""
        whens = [r.timer.when() for r in self.open if r.timer is not None]
        return round(min(whens) * 1000) if whens else None

    def _try(self, request: Request, worker_name: str) -> None:
        w = self.world
        worker = w.workers[worker_name]
        n = len(request.tries) + 1
        name = f"{worker_name} checkout {request.order_id}" + (f" (try {n})" if n > 1 else "")
        start_by = gateway_start_by(request.header)
        coro = worker.serve(request.order_id, start_by)
        actor = w.sched.spawn(name, worker_name, coro, self._ended(request))
        request.tries.append(actor)
        due = (w.loop.now_ms + TIMEOUT_MS) / 1000
        request.timer = w.loop.call_at(due, self._give_up, request, actor)

    def _ended(self, request: Request) -> Callable[[Actor, asyncio.Task[Any]], None]:
        def ended(actor: Actor, task: asyncio.Task[Any]) -> None:
            if request.answered or request.tries[-1] is not actor:
                how = "crashed" if task.cancelled() else repr(task.exception())
                self.world.count("answers nobody read")
                self.world.note(f"{actor.name} ended ({how}): nobody reads it (gateway gave up)")
                return
            self._close(request)
            request.on_answer(actor, task)

        return ended

    def _give_up(self, request: Request, actor: Actor) -> None:
        w = self.world
        if request.answered or request.tries[-1] is not actor:
            return
        w.count("gateway gave up")
        if len(request.tries) >= TRIES:
            w.note(f"gateway: gave up on {actor.name}, its last try: 504")
            w.count("gateway 504")
            self._close(request)
            request.on_answer(actor, None)
            return
        others = [name for name in w.workers if name != actor.process]
        worker = w.rng.choice(others or [actor.process])
        w.note(f"gateway: gave up on {actor.name} after {TIMEOUT_MS} ms: sent again to {worker}")
        w.count("gateway retries")
        self._try(request, worker)

    def _close(self, request: Request) -> None:
        request.answered = True
        self.open.discard(request)
        if request.timer is not None:
            request.timer.cancel()
