"""Rule 6 in one place: no message leaves before the writes it rests on are on a replica.

``Effects`` on its own (the order of its calls, a block that fails, a replication that fails),
then every path that sends after writing (the consumer loop, the sweeper, the operator's retry
and abort, a checkout that times out) with a store that cannot replicate: none publishes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import pytest

from common.effects import Effects
from common.errors import Unavailable
from common.messages import StockUpdated, StockUpdateRequested
from common.saga.admin import SagaAdmin
from common.store import WriteMayBeLost
from common.types import Outgoing, Written
from test.unit.fake_redis import MASTERS, FakeRedis
from test.unit.fake_store import FakeStore
from test.unit.scenario_kit import STEP_MS, Clock, Services, sweeper_of

MESSAGE: Outgoing = ("STOCK", StockUpdateRequested(saga_id="o:1:a", order_id="o", items=()))


class Recorder:
    """A store's tracking and barrier and a bus's publish, noting the order of the calls."""

    def __init__(self, *, replicates: bool = True) -> None:
        self.calls: list[str] = []
        self._replicates = replicates
        self._fake = FakeStore(FakeRedis())

    def tracking(self) -> AbstractContextManager[Written]:
        return self._fake.tracking()

    async def replicate(self, written: Mapping[str, str]) -> None:
        self.calls.append("replicate")
        if not self._replicates:
            raise WriteMayBeLost("no replica")

    async def publish(self, messages: Sequence[Outgoing], *, acknowledged: bool = True) -> None:
        self.calls.append(f"publish {len(messages)}")


async def test_the_writes_are_replicated_before_anything_is_published() -> None:
    rec = Recorder()
    async with Effects(rec, rec) as fx:
        fx.send([MESSAGE])
        assert rec.calls == []  # nothing leaves inside the block
    assert rec.calls == ["replicate", "publish 1"]


async def test_on_durable_hears_of_the_messages_between_replication_and_publishing() -> None:
    rec = Recorder()

    def durable(messages: Sequence[Outgoing]) -> None:
        rec.calls.append(f"durable {len(messages)}")

    async with Effects(rec, rec, on_durable=durable) as fx:
        fx.send([MESSAGE])
    assert rec.calls == ["replicate", "durable 1", "publish 1"]
    rec = Recorder(replicates=False)
    with pytest.raises(WriteMayBeLost):
        async with Effects(rec, rec, on_durable=durable) as fx:
            fx.send([MESSAGE])
    assert rec.calls == ["replicate"]  # an unreplicated write tells nobody


async def test_a_failed_block_or_replication_publishes_nothing() -> None:
    rec = Recorder()
    with pytest.raises(RuntimeError):
        async with Effects(rec, rec) as fx:
            fx.send([MESSAGE])
            raise RuntimeError("the handler failed")
    assert rec.calls == []
    rec = Recorder(replicates=False)
    with pytest.raises(WriteMayBeLost):
        async with Effects(rec, rec) as fx:
            fx.send([MESSAGE])
    assert rec.calls == ["replicate"]


async def test_a_cancelled_block_replicates_and_publishes_nothing() -> None:
    rec = Recorder()
    async with Effects(rec, rec) as fx:
        fx.send([MESSAGE])
        fx.cancel()
    assert rec.calls == []


def _no_replica(redis: FakeRedis) -> None:
    """Every master's replica is away: no barrier is acknowledged, none of the writes is."""
    for master in range(MASTERS):
        redis.replica_down(master)


async def test_no_path_publishes_what_it_could_not_replicate(clock: Clock) -> None:
    svc = Services(clock)
    order_id = svc.order(svc.user(10), [(svc.item(5), 1)], total=1)
    orchestrator, store, bus = svc.orchestrator, svc.stores["order"], svc.bus
    started = await store.durable(lambda: orchestrator.start(order_id))
    await bus.publish(started.commands)
    await svc.deliver("stock")  # the stock reply waits for order's consumer
    _no_replica(svc.redis["order"])
    published = len(bus.published)

    # The consumer loop: the reply moves the saga, the next command waits for the barrier.
    with pytest.raises(Unavailable):
        await svc.deliver("order")
    # The sweeper: a re-send is claimed, then refused by the barrier.
    clock.ms += 2 * STEP_MS
    sweeper = sweeper_of(orchestrator, store, bus)
    with pytest.raises(Unavailable):
        await sweeper.sweep()
    # The operator's retry and abort.
    admin = SagaAdmin(orchestrator, store, bus)
    with pytest.raises(Unavailable):
        await admin.retry(order_id)
    with pytest.raises(Unavailable):
        await admin.abort(order_id)
    assert len(bus.published) == published, bus.published[published:]
    assert not any(isinstance(m, StockUpdated) for _, m in bus.published[published:])


async def test_a_timed_out_checkout_does_not_publish_an_unreplicated_abort(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = Services(clock)
    order_id = svc.order(svc.user(10), [(svc.item(5), 1)], total=1)
    store, bus = svc.stores["order"], svc.bus
    checkout = svc.checkout_edge(timeout_ms=10, answer_ms=300)
    replicate = store.replicate
    aborting = False

    async def refuse_the_abort(written: Mapping[str, str]) -> None:
        if aborting:
            raise WriteMayBeLost("no replica acknowledged")
        await replicate(written)

    monkeypatch.setattr(store, "replicate", refuse_the_abort)
    original = svc.orchestrator.abort

    async def abort(*args: Any, **kwargs: Any) -> list[Outgoing]:
        nonlocal aborting
        aborting = True
        return await original(*args, **kwargs)

    monkeypatch.setattr(svc.orchestrator, "abort", abort)
    with pytest.raises(Unavailable):
        await checkout(order_id)  # the commands go out; the abort never does
    sent = [type(m).__name__ for _, m in bus.published]
    assert sent == ["StockUpdateRequested", "PaymentRequested"]
