"""Wiring shared by the three services: logging, and one ``Runtime`` that starts and stops a
service's clients in order (store, bus, consumers) inside the app's serving lifecycle."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from quart import Quart

from common.consumer import ConsumerLoop
from common.http import create_app
from common.observability import telemetry
from common.observability.monitoring import install
from common.settings import Settings
from common.types import MessageBus, Storage

log = logging.getLogger(__name__)

PART_STOP_S = 15.0
"""The most one part's stop may take before shutdown moves on to the next (a consumer loop's
graceful stop is bounded well inside this; see common/consumer.py)."""


GC_THRESHOLD = (20_000, 10, 10)
"""The cyclic collector's thresholds once a worker serves (Python's are 700, 10, 10). A
checkout's objects (futures, records, messages) die by reference counting, yet they keep the
young generation's count rising: at 700 the order worker ran about 150 young collections a
second under wrk and a full one every second, each full one walking every object the worker
holds, 0.8-1.06 s of every 10 s (gc.callbacks, 2026-11-29 19:31). With what start-up made
frozen (``gc.freeze``) alone 0.43-0.49 s; with these thresholds too, 0.05-0.13 s in 11-13 s."""


def settle_heap() -> None:
    """Once started: put what start-up made (modules, the app, the clients) out of the cyclic
    collector's sight for good, and collect the young generation less often (GC_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


class Lifecycle(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def configure_logging(settings: Settings) -> None:
    """JSON (or text) logs carrying saga and trace ids, and tracing
    (common/observability/telemetry.py)."""
    telemetry.configure(settings)


@dataclass
class Runtime:
    """A service's clients, started in list order and stopped in reverse."""

    settings: Settings
    store: Storage
    bus: MessageBus
    components: list[Lifecycle] = field(default_factory=list)

    def app(self, name: str, extra: Sequence[Lifecycle] = ()) -> Quart:
        """The Quart app whose serving lifecycle starts and stops this runtime."""
        parts: list[Lifecycle] = [self.store, self.bus, *self.components, *extra]

        async def startup(_: Quart) -> None:
            configure_logging(self.settings)
            for part in parts:
                await part.start()
            settle_heap()

        async def shutdown(_: Quart) -> None:
            # A worker told to stop (SIGTERM) gets here once hypercorn has stopped accepting
            # connections and answered the requests it held, within its graceful timeout: the
            # checkouts waiting for their sagas got their verdicts while the consumers ran. Now
            # the parts stop in reverse order of start: the sweeper, then the consumer loops (a
            # group member commits what it handled and leaves its group), the producer (it
            # flushes), the Redis clients.
            began = time.monotonic()
            log.info("stopping: requests answered; consumers, producer and store next")
            for part in reversed(parts):
                await _stop(part)
            log.info("stopped in %.1fs", time.monotonic() - began)

        def waiting() -> list[str]:
            return [p.name for p in parts if isinstance(p, ConsumerLoop) and not p.ready]

        app = create_app(name, startup=startup, shutdown=shutdown, waiting=waiting)
        install(app, self.settings, parts)  # /metrics, request metrics, consumer lag
        return app


async def _stop(part: Lifecycle) -> None:
    """Stop one part; one that hangs is left behind (logged) so the others still stop."""
    name = getattr(part, "name", type(part).__name__)
    began = time.monotonic()
    try:
        await asyncio.wait_for(part.stop(), PART_STOP_S)
    except TimeoutError:
        log.warning("%s did not stop in %.0fs; going on without it", name, PART_STOP_S)
        return
    took = time.monotonic() - began
    if took > 1.0:
        log.info("%s stopped in %.1fs", name, took)
