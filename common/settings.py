"""Typed settings, read once from the environment. Nothing else reads ``os.environ``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"setting {name} must be an integer, got {raw!r}") from exc


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first when unset)."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return choices[0]
    if raw not in choices:
        raise ValueError(f"setting {name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


CHECKOUT_STEPS = ("auto", "at-once", "one-by-one")


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    return raw in ("1", "true", "yes", "on")


def _nodes(raw: str) -> tuple[tuple[str, int], ...]:
    nodes = []
    for part in raw.split(","):
        part = part.strip()
        if part:
            host, _, port = part.rpartition(":")
            nodes.append((host, int(port)))
    return tuple(nodes)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every knob of a service process. Names match the environment variables."""

    service_name: str
    worker_id: str
    redis_nodes: tuple[tuple[str, int], ...]
    redis_password: str | None
    redis_wait_replicas: int
    redis_wait_timeout_ms: int
    redis_op_timeout_ms: int
    kafka_bootstrap_servers: str
    topic_partitions: int
    topic_replication: int
    kafka_linger_ms: int
    checkout_timeout_ms: int
    checkout_answer_ms: int
    checkout_concurrency: int
    """How many checkouts one order worker drives at once (``CHECKOUT_CONCURRENCY``); the others
    wait their turn in arrival order. 0: no limit."""
    saga_step_timeout_ms: int
    saga_deadline_ms: int
    stock_url: str
    checkout_steps: str
    """How a checkout asks for the stock and the charge (``CHECKOUT_STEPS``): ``auto`` at once
    while few recent checkouts failed, one by one otherwise; ``at-once``; ``one-by-one`` (the
    design guide's order)."""
    log_level: str
    log_format: str = "json"
    log_messages: bool = False
    otel_exporter: str = "none"
    otel_endpoint: str = ""
    prometheus_multiproc_dir: str = ""
    standby: bool = False
    """An HTTP standby (``STANDBY``): the gateway's backup while the service's active worker
    restarts. It answers every route but joins no consumer group and runs no sweeper; what it
    starts is driven by the active workers (run_local.sh, "One worker per service")."""
    # The three clusters by name, for tools that read more than their own (python -m order.admin).
    order_redis_nodes: tuple[tuple[str, int], ...] = ()
    stock_redis_nodes: tuple[tuple[str, int], ...] = ()
    payment_redis_nodes: tuple[tuple[str, int], ...] = ()


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from ``env`` (the process environment by default)."""
    env = os.environ if env is None else env
    service = env.get("SERVICE_NAME", "service")
    return Settings(
        service_name=service,
        worker_id=env.get("WORKER_ID", f"{service}-{os.getpid()}"),
        redis_nodes=_nodes(env.get("REDIS_NODES", "127.0.0.1:7000")),
        redis_password=env.get("REDIS_PASSWORD") or None,
        redis_wait_replicas=_int(env, "REDIS_WAIT_REPLICAS", 1),
        redis_wait_timeout_ms=_int(env, "REDIS_WAIT_TIMEOUT_MS", 1000),
        redis_op_timeout_ms=_int(env, "REDIS_OP_TIMEOUT_MS", 8000),
        kafka_bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        topic_partitions=_int(env, "TOPIC_PARTITIONS", 16),
        topic_replication=_int(env, "TOPIC_REPLICATION", 1),
        kafka_linger_ms=_int(env, "KAFKA_LINGER_MS", 0),
        checkout_timeout_ms=_int(env, "CHECKOUT_TIMEOUT_MS", 20000),
        checkout_answer_ms=_int(env, "CHECKOUT_ANSWER_MS", 55000),
        checkout_concurrency=_int(env, "CHECKOUT_CONCURRENCY", 64),
        saga_step_timeout_ms=_int(env, "SAGA_STEP_TIMEOUT_MS", 2000),
        saga_deadline_ms=_int(env, "SAGA_DEADLINE_MS", 10000),
        stock_url=env.get("STOCK_URL", "http://127.0.0.1:8000/stock").rstrip("/"),
        checkout_steps=_choice(env, "CHECKOUT_STEPS", CHECKOUT_STEPS),
        log_level=env.get("LOG_LEVEL", "INFO"),
        log_format=env.get("LOG_FORMAT", "json").strip().lower() or "json",
        log_messages=_bool(env, "LOG_MESSAGES", False),
        otel_exporter=env.get("OTEL_EXPORTER", "none").strip().lower() or "none",
        otel_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip(),
        prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR", "").strip(),
        standby=_bool(env, "STANDBY", False),
        order_redis_nodes=_nodes(env.get("ORDER_REDIS_NODES", "")),
        stock_redis_nodes=_nodes(env.get("STOCK_REDIS_NODES", "")),
        payment_redis_nodes=_nodes(env.get("PAYMENT_REDIS_NODES", "")),
    )
