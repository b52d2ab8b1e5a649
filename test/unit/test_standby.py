"""A standby worker (``STANDBY=1``) serves HTTP only: it starts no consumer loop and no sweeper,
so it takes no partition from the active workers; an active worker starts them all."""

from __future__ import annotations

import pytest

from common.consumer import ConsumerLoop
from common.participant import build_participant
from common.saga.sweeper import Sweeper
from common.settings import Settings, load_settings
from common.terms import ITEMS
from order.bootstrap import STANDBY_POLL_S, build
from order.stock_client import StockClient
from test.unit.fake_bus import FakeBus
from test.unit.fake_redis import FakeRedis
from test.unit.fake_store import FakeStore


def settings(standby: str) -> Settings:
    return load_settings({"SERVICE_NAME": "order", "STANDBY": standby})


def test_the_setting_defaults_to_active() -> None:
    assert load_settings({}).standby is False
    assert settings("1").standby is True
    assert settings("0").standby is False


@pytest.mark.parametrize("standby", ["0", "1"])
def test_an_order_standby_runs_no_consumer_and_no_sweeper(standby: str) -> None:
    order = build(settings(standby), store=FakeStore(FakeRedis()), bus=FakeBus())
    parts = order.runtime.components
    if standby == "1":
        assert [type(part) for part in parts] == [StockClient]
        assert order.waiters.poll_interval_s == STANDBY_POLL_S
    else:
        assert order.replies in parts and order.outcomes in parts
        assert any(isinstance(part, Sweeper) for part in parts)
        assert order.waiters.poll_interval_s > STANDBY_POLL_S


@pytest.mark.parametrize("standby", ["0", "1"])
def test_a_participant_standby_joins_no_group(standby: str) -> None:
    participant = build_participant(
        settings(standby),
        ITEMS,
        "STOCK",
        lambda ledger: {},
        store=FakeStore(FakeRedis()),
        bus=FakeBus(),
    )
    loops = [part for part in participant.runtime.components if isinstance(part, ConsumerLoop)]
    assert loops == ([] if standby == "1" else [participant.consumer])
