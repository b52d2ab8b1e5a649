"""The Prometheus metrics of the three services, and their text exposition for ``/metrics``.

Each worker process counts in its own registry and is scraped on its own port (that is how the
local stack, compose and Kubernetes run them: one process per port). When a deployment runs
several processes behind one port (hypercorn ``--workers N``), setting
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory makes prometheus_client keep the values in
files there and ``/metrics`` answer the sum over the live processes.

Every name here is listed, with what it counts, in the README ("Operating it").
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from common.settings import Settings

# The ``*_created`` series (when each label set appeared) would double the exposition for nothing.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 60)
SAGA_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)

# --- every service: the HTTP edge and the bus --------------------------------------------------
HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests answered, by route template and status",
    ["service", "route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time from a request's arrival to its answer, by route template",
    ["service", "route", "method"],
    buckets=LATENCY_BUCKETS,
)
MESSAGES_HANDLED = Counter(
    "bus_messages_handled",
    "Messages handed to a handler, by consumer and message type",
    ["service", "consumer", "type"],
)
HANDLER_ERRORS = Counter(
    "bus_handler_errors",
    "Handlers that raised (a retriable error retries the batch; another drops the message)",
    ["service", "consumer", "type", "error"],
)
POISON_MESSAGES = Counter(
    "bus_poison_messages",
    "Records that did not decode into a message of their topic (foreign bytes, an unknown type, "
    "no value): logged and skipped, their offsets committed",
    ["service", "consumer", "topic"],
)
MESSAGES_PUBLISHED = Counter(
    "bus_messages_published", "Messages sent to the broker, by type", ["service", "type"]
)
CONSUMER_LAG = Gauge(
    "bus_consumer_lag",
    "Messages not yet read, summed over the assigned partitions of a topic "
    "(highwater - position), sampled every few seconds",
    ["service", "consumer", "topic"],
    multiprocess_mode="livesum",
)
DEDUP_HITS = Counter(
    "dedup_hits",
    "Deliveries that changed nothing because their effect was already there: 'reply' = a "
    "participant's reply for a saga that had moved on (redelivered, re-sent or late); "
    "'compensation' = a compensation already applied",
    ["service", "kind"],
)

# --- order: the saga orchestrator --------------------------------------------------------------
SAGA_REQUESTS = Counter(
    "saga_requests",
    "Checkout requests, by what they found: started, joined (a live saga), done, unknown, too_big,"
    " busy (no turn within the answer budget: nothing started)",
    ["saga", "found"],
)
SAGA_REPLIES = Counter(
    "saga_replies",
    "Participant replies that moved a saga, by step and kind (succeeded, failed, compensated)",
    ["saga", "step", "kind"],
)
SAGA_FINISHED = Counter(
    "saga_finished", "Sagas that reached a terminal state, by outcome", ["saga", "outcome"]
)
SAGA_DURATION = Histogram(
    "saga_duration_seconds",
    "From a saga's start to the verdict its HTTP request received, by outcome",
    ["saga", "outcome"],
    buckets=SAGA_BUCKETS,
)
SAGA_COMPENSATIONS = Counter(
    "saga_compensations", "Compensation commands issued, by the step they undo", ["saga", "step"]
)
SAGA_ABORTS = Counter(
    "saga_aborts",
    "Running sagas turned back without a participant's failure, by reason",
    ["saga", "reason"],
)
SWEEPER_RESENDS = Counter(
    "saga_sweeper_resends", "Steps re-sent by the sweeper after no progress", ["saga"]
)
SWEEPER_ABORTS = Counter(
    "saga_sweeper_aborts", "Sagas the sweeper found past their deadline", ["saga"]
)

# --- stock and payment: the ledger ------------------------------------------------------------
LEDGER_TAKES = Counter(
    "ledger_takes",
    "Saga takes (stock reservations, charges) by result: taken, short, unknown, refused, fenced",
    ["ledger", "result"],
)
LEDGER_COMPENSATIONS = Counter(
    "ledger_compensations",
    "Saga compensations by result: refunded, tombstoned (nothing taken yet: the take is barred), "
    "repeated (already done), nothing (the take had failed)",
    ["ledger", "result"],
)


def render(settings: Settings) -> tuple[bytes, str]:
    """The exposition text and its content type: this process's metrics, or every live
    process's when ``PROMETHEUS_MULTIPROC_DIR`` is set."""
    if settings.prometheus_multiproc_dir:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=settings.prometheus_multiproc_dir)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def process_exited(settings: Settings) -> None:
    """Drop this process's live gauges from the multiprocess files (no-op otherwise)."""
    if settings.prometheus_multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), settings.prometheus_multiproc_dir)
