"""``cancel`` ends a task even when a cancellation gets lost inside it (Python 3.11's
``asyncio.wait_for`` drops one that arrives as the awaited call completes)."""

from __future__ import annotations

import asyncio

import pytest

from common.tasks import cancel


async def test_a_task_that_loses_a_cancellation_is_cancelled_again() -> None:
    rounds = 0
    lost = 0

    async def loop() -> None:
        nonlocal rounds, lost
        while True:
            rounds += 1
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if lost == 0:  # as wait_for does when its call has just completed
                    lost += 1
                    continue
                raise

    task = asyncio.ensure_future(loop())
    await asyncio.sleep(0.05)
    await cancel(task)
    assert task.cancelled() and lost == 1


async def test_a_task_that_failed_reports_its_error_and_none_is_fine() -> None:
    async def fail() -> None:
        raise ValueError("boom")

    task = asyncio.ensure_future(fail())
    await asyncio.wait({task})
    with pytest.raises(ValueError):
        await cancel(task)
    await cancel(None)
