"""Points the production code's logs at one simulated world for a run (its clock and randomness
are passed in: see ``order/bootstrap.py``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from test.unit.sim import World


@contextlib.contextmanager
def patched(world: World) -> Iterator[None]:
    """Send the production code's warnings and errors to ``world``'s trace for one run."""
    handler = _TraceHandler(world)
    loggers = [logging.getLogger(name) for name in ("common", "order", "stock", "payment")]
    states = [(lg, lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
        lg.propagate = False
        lg.addHandler(handler)
    try:
        yield
    finally:
        for lg, level, propagate in states:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


class _TraceHandler(logging.Handler):
    """Warnings of the production code go to the trace; errors (a dropped message, an
    undecodable one) are violations."""

    def __init__(self, world: World) -> None:
        super().__init__(logging.WARNING)
        self._world = world

    def emit(self, record: logging.LogRecord) -> None:
        text = f"log {record.name}: {record.getMessage()}"
        if record.levelno >= logging.ERROR:
            self._world.error(text)
        else:
            self._world.note(text)
