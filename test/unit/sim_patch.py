"""Points the production code's clock, randomness and logs at one simulated world for a run."""

from __future__ import annotations

import contextlib
import logging
import random
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from common.saga import log as saga_log
from common.saga import orchestrator as saga_orchestrator
from common.saga import sweeper as saga_sweeper

if TYPE_CHECKING:
    from test.unit.sim import World


@contextlib.contextmanager
def patched(world: World) -> Iterator[None]:
    """Point the production code's clock, randomness and logs at ``world`` for one run."""
    original_now = saga_orchestrator.now_ms
    saved: list[tuple[object, str, object]] = []

    def setattr_saved(target: object, name: str, value: object) -> None:
        saved.append((target, name, getattr(target, name)))
        setattr(target, name, value)

    ours = ("common", "order", "stock", "payment")
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in ours and getattr(module, "now_ms", None) is original_now:
            setattr_saved(module, "now_ms", lambda: world.loop.now_ms)
    setattr_saved(saga_log, "random", random.Random(f"ids-{world.seed}"))
    setattr_saved(saga_log, "INDEX_SHARDS", world.knobs.index_shards)
    setattr_saved(saga_sweeper, "INDEX_SHARDS", world.knobs.index_shards)
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
        for target, name, value in reversed(saved):
            setattr(target, name, value)


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
