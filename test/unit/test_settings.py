"""``common.settings.load_settings`` from a plain dict: defaults, parsing, and bad values."""

from __future__ import annotations

import pytest

from common.settings import load_settings


def test_defaults_from_an_empty_environment() -> None:
    s = load_settings({})
    assert s.redis_nodes == (("127.0.0.1", 7000),)
    assert s.redis_password is None
    assert s.redis_wait_replicas == 1
    assert s.redis_op_timeout_ms == 8000
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert (s.topic_partitions, s.topic_replication) == (16, 1)
    assert (s.checkout_timeout_ms, s.saga_step_timeout_ms, s.saga_deadline_ms) == (
        20000,
        2000,
        10000,
    )
    assert s.checkout_answer_ms == 55000  # below the gateway's 60 s read timeout
    assert s.service_name == "service"
    assert s.worker_id.startswith("service-")


def test_values_are_parsed() -> None:
    s = load_settings(
        {
            "SERVICE_NAME": "order",
            "WORKER_ID": "order-3",
            "REDIS_NODES": " 10.0.0.1:7000, 10.0.0.2:7001 ,,[::1]:7002",
            "REDIS_PASSWORD": "secret",
            "REDIS_WAIT_REPLICAS": " 0 ",
            "LOG_MESSAGES": "Yes",
            "TOPIC_PARTITIONS": "4",
            "STOCK_URL": "http://gw/stock/",
        }
    )
    assert s.redis_nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("[::1]", 7002))
    assert (s.service_name, s.worker_id, s.redis_password) == ("order", "order-3", "secret")
    assert s.redis_wait_replicas == 0
    assert s.log_messages is True
    assert s.topic_partitions == 4
    assert s.stock_url == "http://gw/stock"


def test_blank_values_fall_back_to_defaults() -> None:
    s = load_settings({"TOPIC_PARTITIONS": "  ", "REDIS_PASSWORD": "", "LOG_MESSAGES": ""})
    assert (s.topic_partitions, s.redis_password, s.log_messages) == (16, None, False)


@pytest.mark.parametrize("raw", ["ten", "1.5", "0x10", "1e3"])
def test_a_bad_integer_names_the_setting(raw: str) -> None:
    with pytest.raises(ValueError, match="TOPIC_PARTITIONS"):
        load_settings({"TOPIC_PARTITIONS": raw})


def test_a_bad_port_is_refused() -> None:
    with pytest.raises(ValueError):
        load_settings({"REDIS_NODES": "localhost:http"})


def test_checkout_steps_is_one_of_three_and_auto_by_default() -> None:
    assert load_settings({}).checkout_steps == "auto"
    assert load_settings({"CHECKOUT_STEPS": " One-By-One "}).checkout_steps == "one-by-one"
    with pytest.raises(ValueError, match="CHECKOUT_STEPS"):
        load_settings({"CHECKOUT_STEPS": "sometimes"})
