"""Wiring shared by the three services: logging, and one ``Runtime`` that starts and stops a
service's clients in order (store, bus, consumers) inside the app's serving lifecycle."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from quart import Quart

from common.bus import Bus
from common.http import create_app
from common.settings import Settings
from common.store import Store


class Lifecycle(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s {settings.worker_id} %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.ERROR)


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

        return create_app(name, startup=startup, shutdown=shutdown)
