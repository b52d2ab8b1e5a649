"""The telemetry hooks move the right Prometheus series; /metrics serves them (and refuses a
request that came through a proxy); the lag sampler reads highwater - position; the
multiprocess mode sums the values of several processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from common.http import create_app
from common.messages import PaymentRequested, StockUpdated
from common.observability import logs, telemetry
from common.observability.monitoring import LagSampler, install
from common.settings import load_settings
from common.terms import Taken
from order.saga import CHECKOUT

REPO = Path(__file__).resolve().parents[2]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Moves:
    """``moves(name, **labels)`` after minus before, for series read at construction."""

    def __init__(self, *series: tuple[str, dict[str, str]]) -> None:
        self._before = {(n, tuple(sorted(lbl.items()))): sample(n, **lbl) for n, lbl in series}

    def __call__(self, name: str, **labels: str) -> float:
        return sample(name, **labels) - self._before[(name, tuple(sorted(labels.items())))]


def series(name: str, **labels: str) -> tuple[str, dict[str, str]]:
    return name, labels


@pytest.fixture(autouse=True)
def service_label() -> None:
    telemetry._service = "order"
    telemetry._children.clear()
    logs._ids.set(None)  # hooks bind the log ids for the rest of a task; tests share one


def test_saga_replies_outcomes_compensations_and_stale_replies() -> None:
    saga = {"saga": "checkout"}
    moves = Moves(
        series("dedup_hits_total", service="order", kind="reply"),
        series("saga_replies_total", **saga, step="charge_user", kind="failed"),
        series("saga_compensations_total", **saga, step="reserve_stock"),
        series("saga_finished_total", **saga, outcome="succeeded"),
        series("saga_finished_total", **saga, outcome="failed"),
    )
    telemetry.saga_reply(CHECKOUT, 1, "failed", None)  # stale
    telemetry.saga_reply(CHECKOUT, 1, "failed", ("compensating", 0), [0])
    telemetry.saga_reply(CHECKOUT, 0, "compensated", ("failed", -1))
    telemetry.saga_reply(CHECKOUT, 1, "succeeded", ("succeeded", 1))
    assert moves("dedup_hits_total", service="order", kind="reply") == 1
    assert moves("saga_replies_total", **saga, step="charge_user", kind="failed") == 1
    assert moves("saga_compensations_total", **saga, step="reserve_stock") == 1
    assert moves("saga_finished_total", **saga, outcome="succeeded") == 1
    assert moves("saga_finished_total", **saga, outcome="failed") == 1


def test_aborts_and_sweeps() -> None:
    saga = {"saga": "checkout"}
    moves = Moves(
        series("saga_aborts_total", **saga, reason="deadline passed"),
        series("saga_aborts_total", **saga, reason="other"),
        series("saga_compensations_total", **saga, step="charge_user"),
        series("saga_sweeper_resends_total", **saga),
        series("saga_sweeper_aborts_total", **saga),
    )
    telemetry.saga_aborted(CHECKOUT, [1, 0], "o:1:ab", "deadline passed")
    telemetry.saga_aborted(CHECKOUT, [1], "o:1:ab", "a reason nobody listed")
    telemetry.swept("checkout", "resend", "o:1:ab")
    telemetry.swept("checkout", "resend", "o:1:ab")
    telemetry.swept("checkout", "abort", "o:1:ab")
    assert moves("saga_aborts_total", **saga, reason="deadline passed") == 1
    assert moves("saga_aborts_total", **saga, reason="other") == 1
    assert moves("saga_compensations_total", **saga, step="charge_user") == 2
    assert moves("saga_sweeper_resends_total", **saga) == 2
    assert moves("saga_sweeper_aborts_total", **saga) == 1


def test_ledger_takes_and_compensations() -> None:
    moves = Moves(
        series("ledger_takes_total", ledger="item", result="taken"),
        series("ledger_takes_total", ledger="item", result="short"),
        series("ledger_takes_total", ledger="user", result="refused"),
        series("ledger_compensations_total", ledger="item", result="refunded"),
        series("ledger_compensations_total", ledger="item", result="tombstoned"),
        series("ledger_compensations_total", ledger="item", result="repeated"),
        series("ledger_compensations_total", ledger="item", result="nothing"),
        series("dedup_hits_total", service="order", kind="compensation"),
    )
    for letter in "TTS":
        telemetry.took("item", Taken(letter))
    telemetry.took("user", Taken.REFUSED)
    for before in (b"T:3", None, b"X", b"X", b"S"):
        telemetry.restored("item", before)
    assert moves("ledger_takes_total", ledger="item", result="taken") == 2
    assert moves("ledger_takes_total", ledger="item", result="short") == 1
    assert moves("ledger_takes_total", ledger="user", result="refused") == 1
    assert moves("ledger_compensations_total", ledger="item", result="refunded") == 1
    assert moves("ledger_compensations_total", ledger="item", result="tombstoned") == 1
    assert moves("ledger_compensations_total", ledger="item", result="repeated") == 2
    assert moves("ledger_compensations_total", ledger="item", result="nothing") == 1
    assert moves("dedup_hits_total", service="order", kind="compensation") == 2


def test_handling_counts_binds_the_log_ids_and_counts_errors() -> None:
    message = StockUpdated(saga_id="o:1:ab", order_id="o", trace_id="f" * 32)
    labels = {"service": "order", "consumer": "c", "type": "StockUpdated"}
    moves = Moves(
        series("bus_messages_handled_total", **labels),
        series("bus_handler_errors_total", **labels, error="ValueError"),
    )
    assert logs.current() is None
    with telemetry.handling("c", message):
        assert logs.current() == ("o:1:ab", "f" * 32)
    with pytest.raises(ValueError), telemetry.handling("c", message):
        raise ValueError("boom")
    assert logs.current() is None
    assert moves("bus_messages_handled_total", **labels) == 2
    assert moves("bus_handler_errors_total", **labels, error="ValueError") == 1


def test_headers_count_published_messages() -> None:
    message = PaymentRequested(saga_id="o:1:ab", order_id="o", user_id="u", amount=3)
    moves = Moves(series("bus_messages_published_total", service="order", type="PaymentRequested"))
    ((name, value),) = telemetry.headers(message)
    assert name == "traceparent" and value.startswith(b"00-")
    assert moves("bus_messages_published_total", service="order", type="PaymentRequested") == 1


def test_saga_duration_is_observed_once_for_the_request_that_started_it() -> None:
    labels = {"saga": "checkout", "outcome": "failed"}
    moves = Moves(
        series("saga_duration_seconds_count", **labels),
        series("saga_requests_total", saga="checkout", found="started"),
        series("saga_requests_total", saga="checkout", found="joined"),
    )

    async def request(found: str) -> None:
        telemetry.saga_begun("checkout", found, "o:1:ab")
        telemetry.saga_answered(False)
        telemetry.saga_answered(False)  # a second verdict changes nothing
        telemetry.request_done()

    asyncio.run(request("started"))
    asyncio.run(request("joined"))
    assert moves("saga_duration_seconds_count", **labels) == 1
    assert moves("saga_requests_total", saga="checkout", found="started") == 1
    assert moves("saga_requests_total", saga="checkout", found="joined") == 1


# --- the HTTP side ----------------------------------------------------------------------------
@dataclass
class FakeConsumer:
    positions: dict[TopicPartition, int]
    highwaters: dict[TopicPartition, int | None]

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters[tp]

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


class FakeLoop:
    def __init__(self, name: str, topics: tuple[str, ...], consumer: Any) -> None:
        self.name = name
        self.topics = topics
        self.consumer = consumer


async def test_lag_sampler_sums_highwater_minus_position_per_topic() -> None:
    a0, a1, b0 = TopicPartition("A", 0), TopicPartition("A", 1), TopicPartition("B", 0)
    consumer = FakeConsumer({a0: 7, a1: 5, b0: 3}, {a0: 10, a1: 6, b0: None})
    sampler = LagSampler("stock", [FakeLoop("l", ("A", "B", "C"), consumer)])
    await sampler.sample()
    lag = {t: sample("bus_consumer_lag", service="stock", consumer="l", topic=t) for t in "ABC"}
    assert lag == {"A": 4.0, "B": 0.0, "C": 0.0}
    sampler = LagSampler("stock", [FakeLoop("l", ("A",), None)])  # between consumers
    await sampler.sample()
    assert sample("bus_consumer_lag", service="stock", consumer="l", topic="A") == 0.0


async def test_http_requests_are_counted_per_route_and_metrics_hide_behind_proxies() -> None:
    settings = load_settings({"SERVICE_NAME": "unit"})

    async def nothing(_: Any) -> None:
        return None

    app = create_app("unit", startup=nothing, shutdown=nothing)

    @app.get("/thing/<thing_id>")
    async def thing(thing_id: str) -> str:
        return thing_id

    install(app, settings, [])
    route = {"service": "unit", "route": "/thing/<thing_id>", "method": "GET"}
    moves = Moves(
        series("http_requests_total", **route, status="200"),
        series("http_request_duration_seconds_count", **route),
        series(
            "http_requests_total", service="unit", route="unmatched", method="GET", status="404"
        ),
    )
    client = app.test_client()
    for thing_id in ("a", "b"):
        assert (await client.get(f"/thing/{thing_id}")).status_code == 200
    assert (await client.get("/no/such/route")).status_code == 404
    assert moves("http_requests_total", **route, status="200") == 2
    assert moves("http_request_duration_seconds_count", **route) == 2
    assert moves("http_requests_total", **{**route, "route": "unmatched", "status": "404"}) == 1

    reply = await client.get("/metrics")
    assert reply.status_code == 200
    assert reply.content_type.startswith("text/plain")
    text = await reply.get_data(as_text=True)
    assert 'http_requests_total{method="GET",route="/thing/<thing_id>"' in text
    assert "_created" not in text
    for proxy in ("X-Request-Id", "X-Forwarded-For"):
        assert (await client.get("/metrics", headers={proxy: "abcdefgh"})).status_code == 404


def test_multiprocess_mode_sums_the_processes(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, two processes' counts are served as one sum."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    count = (
        "from common.observability import metrics; "
        "metrics.SAGA_FINISHED.labels('s', 'succeeded').inc(2)"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", count], env=env, check=True, timeout=60)
    render = (
        "from common.observability import metrics; from common.settings import load_settings; "
        "print(metrics.render(load_settings())[0].decode())"
    )
    done = subprocess.run(
        [sys.executable, "-c", render], env=env, check=True, timeout=60, capture_output=True
    )
    assert 'saga_finished_total{outcome="succeeded",saga="s"} 4.0' in done.stdout.decode()
