"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest

from common.saga import orchestrator as saga_orchestrator
from common.saga import sweeper as saga_sweeper
from test.unit.scenario_kit import Clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The saga code's clock (orchestrator and sweeper), moved only by the test."""
    now = Clock()
    monkeypatch.setattr(saga_orchestrator, "now_ms", now)
    monkeypatch.setattr(saga_sweeper, "now_ms", now)
    return now
