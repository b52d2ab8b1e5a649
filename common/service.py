"""Wiring shared by the three services: logging, and one ``Runtime`` that starts and stops a
service's clients in order (store, bus, consumers) inside the app's serving lifecycle."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from quart import Quart

from common import telemetry
from common.bus import Bus, ConsumerLoop
from common.http import create_app
from common.monitoring import install
from common.settings import Settings
from common.store import Store


class Lifecycle(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def configure_logging(settings: Settings) -> None:
    """JSON (or text) logs carrying saga and trace ids, and tracing (common/telemetry.py)."""
    telemetry.configure(settings)


@dataclass
class Runtime:
    """A service's clients, started in list order and stopped in reverse."""

    settings: Settings
    store: Store
    bus: Bus
    components: list[Lifecycle] = field(default_factory=list)

    def app(self, name: str, extra: Sequence[Lifecycle] = ()) -> Quart:
        """The Quart app whose serving lifecycle starts and stops this runtime."""
        parts: list[Lifecycle] = [self.store, self.bus, *self.components, *extra]

        async def startup(_: Quart) -> None:
            configure_logging(self.settings)
            for part in parts:
                await part.start()

        async def shutdown(_: Quart) -> None:
            for part in reversed(parts):
                await part.stop()

        def waiting() -> list[str]:
            return [p.name for p in parts if isinstance(p, ConsumerLoop) and not p.ready]

        app = create_app(name, startup=startup, shutdown=shutdown, waiting=waiting)
        install(app, self.settings, parts)  # /metrics, request metrics, consumer lag
        return app
