"""The seeded simulation of the whole checkout saga (``sim.py``), over thousands of seeds.

Every seed runs the production orchestrator, checkout, sweeper, consumer loop and participant
handlers over fakes that drop, duplicate, delay and reorder messages, crash processes anywhere,
fail Redis masters over (losing unreplicated writes), kill replicas and fail masters over while
they resync, empty the broker, run batch_init under live sagas and hold orders too big for a
Kafka record, freeze an order worker past the gateway's timeout (which then sends its
checkouts to another worker); every checkout answer the client gets is checked when it is
given; then it heals and checks the invariants of DESIGN.md. A failure prints ``SIM_SEED=<n>``
and the run's last events.

    SIM_SEED=123 pytest test/unit/test_saga_simulation.py     # one seed, its whole trace on failure
    SIM_SEEDS=20000 pytest test/unit/test_saga_simulation.py  # a longer search
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import pytest

from common import ledger
from common.http import GATEWAY_READ_TIMEOUT_S
from common.saga import verdict
from common.saga.orchestrator import Orchestrator, Outcome, Started
from common.saga.verdict import Answer
from common.store import WriteMayBeLost
from order import bootstrap as order_bootstrap
from order import saga as order_saga
from test.unit import fake_lua, fake_store
from test.unit.fake_redis import RESYNCING, FakeRedis
from test.unit.sim import Knobs, Report, run_seed

SEEDS = int(os.environ.get("SIM_SEEDS", "2000"))
BLOCK = 250
FAITHFUL = Knobs()
# The search runs the code as it is: every bug it found (first-master tracking in Store.wrote,
# durable reads before an answer or an index drop, no 500 from the one-round-trip start,
# re-indexing a saga a re-run start finds live, _decide turning a moved saga back, a grace
# period on the index entry of a one-by-one start) is fixed, and its scenario in
# test_saga_scenarios.py is a regression test.
KNOBS = FAITHFUL
ONE_SEED = os.environ.get("SIM_SEED")


def _fail(reports: list[Report], tail: int) -> None:
    seeds = [r.seed for r in reports]
    pytest.fail(
        f"{len(reports)} failing seed(s): {seeds[:20]}\n{reports[0].explain(tail)}",
        pytrace=False,
    )


@pytest.mark.skipif(ONE_SEED is not None, reason="SIM_SEED runs one seed only")
@pytest.mark.parametrize("block", range(max(1, SEEDS // BLOCK)))
def test_seeds(block: int) -> None:
    seeds = range(block * BLOCK, min(SEEDS, (block + 1) * BLOCK))
    failures = [r for r in map(lambda s: run_seed(s, KNOBS), seeds) if r.violations]
    if failures:
        _fail(failures, tail=150)


@pytest.mark.skipif(ONE_SEED is None, reason="set SIM_SEED to run one seed")
def test_one_seed() -> None:
    report = run_seed(int(ONE_SEED or 0), KNOBS)
    if report.violations:
        _fail([report], tail=len(report.trace))


def test_a_seed_replays_exactly() -> None:
    first, again = run_seed(7, KNOBS), run_seed(7, KNOBS)
    assert first.trace == again.trace
    assert first.stats == again.stats


def test_the_search_covers_the_fault_paths() -> None:
    """Over a few dozen seeds every kind of fault and outcome shows up (the knobs bite)."""
    totals: dict[str, int] = {}
    for seed in range(40):
        for key, value in run_seed(seed, KNOBS).stats.items():
            totals[key] = totals.get(key, 0) + value
    kinds: tuple[str, ...] = ("crashes", "failovers", "broker_restarts", "sweeper resends")
    kinds += ("sweeper aborts", "replicas lost", "failovers while resyncing", "resets")
    kinds += ("resets of orders alone", "oversized orders", "addItem past the bound refused")
    kinds += ("stalls", "bursts", "concurrent checkouts of one order")
    kinds += ("freezes", "gateway retries", "answers nobody read")
    answers: tuple[str, ...] = ("answer paid", "answer not paid", "answer no answer")
    answers += ("answer without a turn: busy", "answer not paid: came too late")
    answers += ("answer without a turn: paid", "answer without a turn: not paid")
    for what in (*kinds, *answers):
        assert totals.get(what, 0) > 0, (what, totals)
    assert totals.get("order succeeded", 0) > 0 and totals.get("order failed", 0) > 0


def _never_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    async def restore(self: ledger.Ledger, entity_id: str, saga_id: str, started: int) -> None:
        return None

    monkeypatch.setattr(ledger.Ledger, "restore", restore)


def _never_replicates(monkeypatch: pytest.MonkeyPatch) -> None:
    async def replicate(self: fake_store.FakeStore, written: object) -> None:
        return None  # acts on every write at once, as if WAIT were forgotten

    monkeypatch.setattr(fake_store.FakeStore, "replicate", replicate)


def _busy_without_looking(monkeypatch: pytest.MonkeyPatch) -> None:
    async def without_turn(self: verdict.Verdicts, entity_id: str, answer_by: float) -> Answer:
        return Answer(Outcome.BUSY)  # a 400 without reading the order: paid or not, saga or not

    monkeypatch.setattr(verdict.Verdicts, "_without_turn", without_turn)


@pytest.mark.parametrize("sabotage", [_never_restores, _never_replicates, _busy_without_looking])
def test_the_simulation_catches_sabotage(
    sabotage: Callable[[pytest.MonkeyPatch], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A harness that cannot fail proves nothing: break the system and it must notice."""
    sabotage(monkeypatch)
    for seed in range(60):
        if run_seed(seed, KNOBS).violations:
            return
    pytest.fail("60 seeds of a sabotaged system passed the invariants")


def _starts_past_the_gateway_s_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    start = Orchestrator.start

    async def unbounded(
        self: Orchestrator, entity_id: str, trace_id: str = "", *, start_by: int | None = None
    ) -> Started:
        return await start(self, entity_id, trace_id)  # X-Request-Start read, then ignored

    monkeypatch.setattr(Orchestrator, "start", unbounded)


def test_the_search_finds_checkouts_started_past_the_gateway_s_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The order worker frozen past the gateway's timeout (README, 2026-11-30): the gateway's
    try on another worker answers 400 (no turn, say), and the resumed worker, reading the same
    request, starts and pays its saga. Without the start-by bound the search must see it (a
    freeze in most seeds: first failing seed 68; at the default rate, seeds 587, 1010, ...)."""
    _starts_past_the_gateway_s_timeout(monkeypatch)
    knobs = dataclasses.replace(KNOBS, freeze=0.5)
    for seed in range(300):
        if any("begun by a try of the same request" in v for v in run_seed(seed, knobs).violations):
            return
    pytest.fail("300 seeds that start checkouts past the gateway's timeout passed the invariants")


# --- the holes of issue 16, put back: the search must find each (hole 1 it does not reach, nor
# hole 5, which no interleaving needs; their scripted scenarios in test_edge_scenarios do) ----
def _hole6_writes_vouched_for_without_a_replica(monkeypatch: pytest.MonkeyPatch) -> Knobs:
    def barrier(self: fake_store.FakeStore, masters: set[int]) -> None:
        self.redis.replicate(masters)  # as Store did: a master with no replica is taken at its word
        if any(self.redis.replica[m] == RESYNCING for m in masters):
            raise WriteMayBeLost("lagging")

    monkeypatch.setattr(fake_store.FakeStore, "_barrier", barrier)
    return KNOBS


def _hole3_no_time_for_the_compensation(monkeypatch: pytest.MonkeyPatch) -> Knobs:
    # ... and no caller that waits past the budget (the reads a checkout goes on with while the
    # gateway waits, since 2026-11-30 21:55, would see many such compensations through)
    monkeypatch.setattr(order_bootstrap, "GATEWAY_WAITS_PAST_START_BY_S", -GATEWAY_READ_TIMEOUT_S)
    return dataclasses.replace(KNOBS, checkout_answer_ms=KNOBS.checkout_timeout_ms)


def _hole4_resets_do_not_fence_old_sagas(monkeypatch: pytest.MonkeyPatch) -> Knobs:
    monkeypatch.setattr(fake_lua, "_fenced", lambda redis, key, started: False)
    return KNOBS


def _hole4_order_resets_wipe_live_sagas(monkeypatch: pytest.MonkeyPatch) -> Knobs:
    def wipe(redis: FakeRedis, keys: list[str], argv: list[bytes]) -> list[bytes]:
        redis.delete(keys[0])  # as the DELETE + HSET of Store.bulk_replace did
        redis.hset(keys[0], dict(zip(argv[3::2], argv[4::2], strict=True)))
        return []

    monkeypatch.setitem(fake_lua.SCRIPTS, "saga_reset", wipe)
    return KNOBS


def _hole7_sagas_start_whatever_their_size(monkeypatch: pytest.MonkeyPatch) -> Knobs:
    unbounded = dataclasses.replace(order_saga.CHECKOUT, max_snapshot_bytes=10**9)
    monkeypatch.setattr(order_bootstrap, "CHECKOUT", unbounded)
    return KNOBS


@pytest.mark.parametrize(
    "hole",
    [
        _hole6_writes_vouched_for_without_a_replica,
        _hole3_no_time_for_the_compensation,
        _hole4_resets_do_not_fence_old_sagas,
        _hole4_order_resets_wipe_live_sagas,
        _hole7_sagas_start_whatever_their_size,
    ],
)
def test_the_search_finds_the_holes_of_issue_16(
    hole: Callable[[pytest.MonkeyPatch], Knobs], monkeypatch: pytest.MonkeyPatch
) -> None:
    knobs = hole(monkeypatch)
    for seed in range(300):
        if run_seed(seed, knobs).violations:
            return
    pytest.fail(f"300 seeds with {hole.__name__} passed the invariants")


def test_a_checkout_without_a_turn_waits_out_a_replica_away() -> None:
    """A checkout whose turn does not come reads the order once a replica holds the read; with
    the order's replica away it tried once and answered 503 with half its budget left (found by
    the search with the gateway's retries, 2026-11-30: seeds 2196, 4356, 5182, 5848 of 8,000;
    with one turn per worker and replicas lost often, seed 166 of these 300). It now waits for
    the replica until its budget ends, as a checkout that starts a saga does."""
    knobs = dataclasses.replace(KNOBS, checkout_concurrency=1, replica_loss=0.3)
    failed = {seed: run_seed(seed, knobs).violations for seed in range(300)}
    assert {seed: v for seed, v in failed.items() if v} == {}


def test_a_checkout_frozen_past_its_budget_reads_on_while_the_gateway_waits() -> None:
    """A worker frozen for most of a checkout's answer budget resumes with the order's replica
    away: the checkout's read of its saga (or its start, which past ``start_by`` starts
    nothing) failed, and it answered 503 when its budget ended, though the gateway waits until
    its own timeout, seconds later (seed 2768 of the 8,000 searched on 2026-11-30; with freezes
    into the budget's last seconds and replicas lost often, 6 of these 400 seeds). It now reads
    on until the gateway gives up, and answers what it reads."""
    assert run_seed(2768, KNOBS).violations == []
    knobs = dataclasses.replace(
        KNOBS, freeze=0.5, freeze_ms=(45_000, 60_000), replica_loss=0.5, replica_back=0.3
    )
    failed = {seed: run_seed(seed, knobs).violations for seed in range(400)}
    assert {seed: v for seed, v in failed.items() if v} == {}
