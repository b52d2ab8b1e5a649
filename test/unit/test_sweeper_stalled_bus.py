"""While the broker does not acknowledge sends (it is down or restarting), the sweeper does not
re-send stalled steps: their messages wait in the producer and go out when it is back. Once it
answers again, a step's timeout counts only time it answered: the replies it held up get a whole
step timeout to arrive before their steps are sent again (a broker SIGKILL under load used to
cost 9-18 re-sends of steps whose replies came a moment later)."""

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


async def test_no_resends_while_the_broker_is_away_nor_a_step_timeout_after(clock: Clock) -> None:
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
    bus.waiting_s = 0.0  # the broker answers again, and the replies it held up may come
    assert await sweeper.sweep() == 0
    clock.ms += STEP_MS - 1
    assert await sweeper.sweep() == 0
    assert bus.published == []
    clock.ms += 1  # a whole step timeout of a broker that answers, and no reply: both commands
    assert await sweeper.sweep() == 2  # (sent at once) are re-sent
    sent = [type(m).__name__ for _, m in bus.published]
    assert sent == ["StockUpdateRequested", "PaymentRequested"]
