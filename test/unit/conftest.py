"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest

from test.unit.scenario_kit import Clock


@pytest.fixture
def clock() -> Clock:
    """A clock moved only by the test; the saga code reads it where a test passes it in (the
    fakes' ``FakeRedis(clock)``, ``orchestrator_over(store, clock)``)."""
    return Clock()
