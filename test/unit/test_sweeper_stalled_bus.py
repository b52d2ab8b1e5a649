"""While the broker does not acknowledge sends (it is down or restarting), the sweeper does not
re-send stalled steps: their messages wait in the producer and go out when it is back."""

from __future__ import annotations

from test.unit.fake_bus import FakeBus
from test.unit.fake_redis import FakeRedis
from test.unit.scenario_kit import (
    STEP_MS,
    Clock,
    Hold,
    checkout_saga,
    one_unpaid_order,
    sweeper_of,
)


class StalledBus(FakeBus):
    def __init__(self) -> None:
        super().__init__()
        self.waiting_s = 0.0

    def unacknowledged_for(self) -> float:
        return self.waiting_s


async def test_no_resends_while_the_broker_acknowledges_nothing(clock: Clock) -> None:
    redis, hold = FakeRedis(clock), Hold()
    store, _, orchestrator = checkout_saga(redis, hold)
    order_id = one_unpaid_order(redis)
    bus = StalledBus()
    sweeper = sweeper_of(orchestrator, store, bus)
    await orchestrator.start(order_id)
    clock.ms += STEP_MS + 1  # the commands were never acknowledged: the step is stalled
    bus.waiting_s = STEP_MS / 1000
    assert await sweeper.sweep() == 0
    assert bus.published == []
    bus.waiting_s = 0.0  # the broker answers again: both commands (sent at once) are re-sent
    assert await sweeper.sweep() == 2
    sent = [type(m).__name__ for _, m in bus.published]
    assert sent == ["StockUpdateRequested", "PaymentRequested"]
