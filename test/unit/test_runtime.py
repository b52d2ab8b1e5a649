"""A service's runtime: once its parts have started, the worker's start-up heap is frozen and
young collections made rarer (common/service.py, GC_THRESHOLD)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from common.service import GC_THRESHOLD, Runtime
from common.settings import load_settings
from test.unit.fake_bus import FakeBus
from test.unit.fake_redis import FakeRedis
from test.unit.fake_store import FakeStore


@pytest.fixture
def collector() -> Iterator[None]:
    """Gives this test process its collector back as it was."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector")
async def test_a_started_worker_freezes_its_start_up_heap_and_collects_less_often() -> None:
    gc.unfreeze()
    runtime = Runtime(load_settings({}), FakeStore(FakeRedis()), FakeBus())
    app = runtime.app("unit")
    assert gc.get_freeze_count() == 0
    async with app.test_app():
        assert gc.get_threshold() == GC_THRESHOLD
        assert gc.get_freeze_count() > 0
