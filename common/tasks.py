"""Small helpers for the background tasks every lifecycle owns."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished; safe to call twice.

    The cancellation is repeated while the task runs on: Python 3.11's ``asyncio.wait_for``
    (redis-py wraps its socket writes in it) loses a cancellation that arrives just as the call
    it waits for completes, and a task that loops would then never end. The saga sweeper did,
    under load, when a worker was told to stop: its shutdown hung until the SIGKILL.
    """
    if task is None:
        return
    wait_s = 1.0
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=wait_s)
        wait_s = min(wait_s * 2, 5.0)
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Background:
    """One named task running ``run()``: ``start`` makes it (once), ``stop`` cancels it and
    waits until it has finished (``cancel``); both are safe to call twice."""

    def __init__(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._name = name
        self._run = run
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)
