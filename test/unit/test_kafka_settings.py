"""The services' Kafka clients against the broker every deployment runs (env/kafka/broker.env):
a consumer asking for a session outside the broker's bounds is refused (INVALID_SESSION_TIMEOUT)
and never joins its group, so these are checked here rather than found in production."""

from __future__ import annotations

from pathlib import Path

from common.kafka_options import consumer_options, producer_options
from common.settings import load_settings

BROKER_ENV = Path(__file__).resolve().parents[2] / "env" / "kafka" / "broker.env"
KAFKA_DEFAULT_MESSAGE_MAX_BYTES = 1_048_588  # the broker's message.max.bytes when not set


def broker() -> dict[str, str]:
    lines = BROKER_ENV.read_text(encoding="utf-8").splitlines()
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {name: value for name, value in pairs}


SETTINGS = load_settings({"WORKER_ID": "stock-0"})


def test_group_members_ask_for_a_session_the_broker_accepts() -> None:
    options = consumer_options(SETTINGS, "stock", "stock")
    bounds = broker()
    low = int(bounds["KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS"])
    high = int(bounds["KAFKA_GROUP_MAX_SESSION_TIMEOUT_MS"])
    assert low <= options["session_timeout_ms"] <= high
    assert options["heartbeat_interval_ms"] * 3 <= options["session_timeout_ms"]


def test_the_session_bounds_are_apache_kafkas_defaults() -> None:
    """So the services also join the groups of a broker nobody tuned."""
    bounds = broker()
    assert int(bounds["KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS"]) == 6000
    assert int(bounds["KAFKA_GROUP_MAX_SESSION_TIMEOUT_MS"]) == 1_800_000


def test_group_members_are_static_and_commit_by_hand() -> None:
    options = consumer_options(SETTINGS, "stock", "stock")
    assert options["group_instance_id"] == "stock-0-stock"
    assert options["enable_auto_commit"] is False
    assert options["auto_offset_reset"] == "earliest"


def test_a_listener_has_no_group_and_reads_from_the_end() -> None:
    options = consumer_options(SETTINGS, "outcomes", None)
    assert options["group_id"] is None and "group_instance_id" not in options
    assert options["auto_offset_reset"] == "latest"


def test_producers_are_idempotent_and_fit_the_brokers_largest_message() -> None:
    options = producer_options(SETTINGS)
    assert options["enable_idempotence"] is True and options["acks"] == "all"
    limit = int(broker().get("KAFKA_MESSAGE_MAX_BYTES", KAFKA_DEFAULT_MESSAGE_MAX_BYTES))
    assert options["max_request_size"] <= limit


def test_the_topics_the_services_make_are_what_the_broker_expects() -> None:
    settings = broker()
    assert SETTINGS.topic_partitions == int(settings["KAFKA_NUM_PARTITIONS"])
    assert SETTINGS.topic_replication == int(settings["KAFKA_DEFAULT_REPLICATION_FACTOR"])
    assert settings["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
