"""The simulation's scheduler: an event loop whose clock moves only when told, actors (the tasks of
one simulated process) and gates where every store and bus call waits to be let through.

Because each fake call first parks at a gate, and the loop is run until nothing is ready before
the next decision, which call goes next, when time passes and which process dies are all
choices of the seeded ``random.Random``: a seed replays the same run exactly.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import random
import selectors
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any


class _NeverWaits(selectors.SelectSelector):
    """The simulation does no I/O: polling for it would only cost a system call per step."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout > 0:
            raise RuntimeError("the simulated world would wait on real time")
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``time()`` is ``now_ms / 1000``; timers fire only after ``advance`` reaches them."""

    def __init__(self, start_ms: int) -> None:
        super().__init__(_NeverWaits())
        self.now_ms = start_ms

    def time(self) -> float:
        return self.now_ms / 1000

    def advance(self, ms: int) -> None:
        self.now_ms += ms

    def busy(self) -> bool:
        """Whether a callback is ready or a timer is due (something would run now)."""
        timers = self._scheduled  # type: ignore[attr-defined]
        return bool(self._ready) or bool(timers and timers[0].when() <= self.time())  # type: ignore[attr-defined]

    def next_timer_ms(self) -> int | None:
        """When the earliest pending timer fires."""
        whens = [h.when() for h in self._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        return math.ceil(min(whens) * 1000) if whens else None


@dataclass(eq=False)
class Actor:
    """One request, batch or loop running in one simulated process."""

    name: str
    process: str
    background: bool = False
    task: asyncio.Task[Any] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    crashed: bool = False

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()


@dataclass(eq=False)
class Gate:
    actor: Actor | None
    label: str
    future: asyncio.Future[None]


CURRENT: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("actor", default=None)


def current_actor() -> Actor | None:
    return CURRENT.get()


class Scheduler:
    """Spawns actors and holds every gate; the simulation decides which to open."""

    def __init__(self, loop: VirtualTimeLoop, rng: random.Random) -> None:
        self.loop = loop
        self.rng = rng
        self.gates: list[Gate] = []
        self.actors: list[Actor] = []
        self.spawned = 0

    async def gate(self, label: str) -> None:
        """Park the calling actor until ``release``; a crash cancels it here. Tasks an actor
        started (a shielded step, say) carry its identity and die with its process too."""
        actor = CURRENT.get()
        if actor is not None and actor.crashed:
            raise asyncio.CancelledError
        future: asyncio.Future[None] = self.loop.create_future()
        self.gates.append(Gate(actor, label, future))
        await future

    def spawn(
        self,
        name: str,
        process: str,
        coro: Coroutine[Any, Any, Any],
        on_exit: Callable[[Actor, asyncio.Task[Any]], None],
        *,
        background: bool = False,
    ) -> Actor:
        """Run ``coro`` as an actor of ``process``; ``on_exit`` sees how its task ended."""
        self.spawned += 1
        actor = Actor(f"{name} #{self.spawned}", process, background)
        context = contextvars.copy_context()
        context.run(CURRENT.set, actor)
        actor.task = self.loop.create_task(coro, context=context)
        actor.task.add_done_callback(lambda task: on_exit(actor, task))
        self.actors.append(actor)
        return actor

    async def settle(self) -> None:
        """Run the loop until every actor waits at a gate or on a timer."""
        while True:
            await asyncio.sleep(0)
            if not self.loop.busy():
                break
        self.gates = [g for g in self.gates if not g.future.done()]
        self.actors = [a for a in self.actors if a.alive]

    def release(self, gate: Gate) -> None:
        self.gates.remove(gate)
        gate.future.set_result(None)

    def crash(self, process: str) -> list[Actor]:
        """Cancel every task of ``process`` where it stands (its in-memory state is gone)."""
        victims = [a for a in self.actors if a.process == process and a.alive]
        for actor in victims:
            assert actor.task is not None
            actor.crashed = True
            actor.task.cancel()
        for gate in self.gates:
            if gate.actor is not None and gate.actor.crashed:
                gate.future.cancel()
        return victims

    def busy_actors(self) -> list[Actor]:
        return [a for a in self.actors if a.alive and not a.background]

    async def shutdown(self) -> None:
        """Cancel whatever still runs and let it unwind."""
        for actor in self.actors:
            if actor.task is not None and not actor.task.done():
                actor.task.cancel()
        await self.settle()
