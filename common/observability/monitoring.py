"""What an operator reads from a running service: ``/metrics`` (Prometheus text), per-route
request counts and latencies, an ``X-Trace-Id`` header on checkout answers, and the consumer
lag of every consumer loop, sampled in the background."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from typing import Any, Protocol

from aiokafka.errors import IllegalStateError, KafkaError
from quart import Quart, Response, request

from common.consumer import ConsumerLoop
from common.observability import logs, metrics, telemetry, tracing
from common.settings import Settings
from common.tasks import Background

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 5.0
# A request carrying one of these came through a proxy (the gateway or the ingress set them):
# /metrics is for scrapers on the pod network, never for the public side.
PROXY_HEADERS = ("X-Request-Id", "X-Forwarded-For")

_arrived: ContextVar[float] = ContextVar("request_arrived", default=0.0)


def install(app: Quart, settings: Settings, parts: Iterable[Any]) -> None:
    """Add ``/metrics``, the request metrics and the lag sampler of the consumer loops in
    ``parts`` to ``app``."""
    service = settings.service_name

    @app.before_request
    async def _arrive() -> None:
        _arrived.set(time.perf_counter())

    @app.after_request
    async def _answer(response: Response) -> Response:
        rule = request.url_rule
        arrived = _arrived.get()
        telemetry.http_answered(
            service,
            rule.rule if rule is not None else "unmatched",
            request.method,
            response.status_code,
            time.perf_counter() - arrived if arrived else 0.0,
        )
        ids = logs.current()
        if ids is not None:
            response.headers["X-Trace-Id"] = ids[1]
        telemetry.request_done()
        return response

    @app.get("/metrics")
    async def _metrics() -> Response:
        if any(name in request.headers for name in PROXY_HEADERS):
            return Response("not found\n", status=404, content_type="text/plain")
        body, content_type = metrics.render(settings)
        return Response(body, content_type=content_type)

    sampler = LagSampler(service, [p for p in parts if isinstance(p, ConsumerLoop)])
    app.before_serving(sampler.start)

    @app.after_serving
    async def _stop() -> None:
        await sampler.stop()
        metrics.process_exited(settings)
        tracing.shutdown()  # flushes the spans not yet exported


class Consuming(Protocol):
    """What the sampler reads of a consumer loop."""

    @property
    def name(self) -> str: ...
    @property
    def topics(self) -> tuple[str, ...]: ...
    @property
    def consumer(self) -> Any: ...


class LagSampler:
    """Every ``interval_s``: per consumer loop and topic, highwater - position summed over the
    partitions assigned to this process (both known to the consumer: no broker request)."""

    def __init__(
        self, service: str, loops: Sequence[Consuming], interval_s: float = LAG_INTERVAL_S
    ) -> None:
        self._service = service
        self._loops = loops
        self._interval_s = interval_s
        self._task = Background("lag-sampler", self._run)

    async def start(self) -> None:
        if self._loops:
            self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception:  # a sample is only a reading; the next one tries again
                log.debug("lag sample failed", exc_info=True)

    async def sample(self) -> None:
        for loop in self._loops:
            consumer = loop.consumer
            name = loop.name
            lag = dict.fromkeys(loop.topics, 0)
            if consumer is not None:
                for topic, behind in (await _lag(consumer)).items():
                    lag[topic] = lag.get(topic, 0) + behind
            for topic, behind in lag.items():
                metrics.CONSUMER_LAG.labels(self._service, name, topic).set(behind)


async def _lag(consumer: Any) -> dict[str, int]:
    lag: dict[str, int] = {}
    try:
        assigned = list(consumer.assignment())
    except (IllegalStateError, AssertionError):
        return lag
    for tp in assigned:
        try:
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            position = await asyncio.wait_for(consumer.position(tp), 0.2)
        except (TimeoutError, IllegalStateError, KafkaError, AssertionError):
            continue
        lag[tp.topic] = lag.get(tp.topic, 0) + max(highwater - position, 0)
    return lag
