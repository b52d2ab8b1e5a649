"""Offline checks that the container deployments (docker-compose, k8s/) and the code agree:
the settings the deployments give the services are the ones common/settings.py reads, with
its defaults as values, and their topics are the code's, made by the code the services run.
Run by test/deploy/validate.sh.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import pytest

from test.deploy.environments import (
    REPO,
    compose_service_env,
    k8s_objects,
    load_yaml_docs,
    pod_container,
    read_env_file,
)
from test.deploy.manifests import SERVICES, dockerfile

# compose and k8s (test/deploy runs with --noconftest: see test/deploy/fixtures.py)
pytest_plugins = ("test.deploy.fixtures",)

TOPICS = {"STOCK", "STOCK_PROCESSING", "PAYMENT", "PAYMENT_PROCESSING", "ORDER_STATUS_UPDATE"}

# The environment variables the services read (the contract of common/settings.py). Compose and
# k8s may set only these on a service; when common/settings.py exists it must know each of them.
SETTINGS = {
    "SERVICE_NAME",
    "WORKER_ID",
    "REDIS_NODES",
    "REDIS_PASSWORD",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_LINGER_MS",
    "TOPIC_PARTITIONS",
    "TOPIC_REPLICATION",
    "CHECKOUT_TIMEOUT_MS",
    "CHECKOUT_ANSWER_MS",
    "CHECKOUT_CONCURRENCY",
    "CHECKOUT_STEPS",
    "SAGA_STEP_TIMEOUT_MS",
    "SAGA_DEADLINE_MS",
    "REDIS_WAIT_REPLICAS",
    "REDIS_WAIT_TIMEOUT_MS",
    "LOG_LEVEL",
    "STOCK_URL",
    "REDIS_OP_TIMEOUT_MS",
    "LOG_FORMAT",
    "LOG_MESSAGES",
    "OTEL_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "PROMETHEUS_MULTIPROC_DIR",
    "ORDER_REDIS_NODES",
    "STOCK_REDIS_NODES",
    "PAYMENT_REDIS_NODES",
}
REQUIRED_SETTINGS = {"SERVICE_NAME", "REDIS_NODES", "KAFKA_BOOTSTRAP_SERVERS"}
# Settings whose deployed value differs on purpose from the code's default (the local stack's).
DIFFERS_FROM_CODE_DEFAULT = {
    "STOCK_URL": "the stock Service by name, not the local gateway",
}

NAME_LITERAL = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")


# --- loading ----------------------------------------------------------------------------------


def code_settings() -> set[str] | None:
    """Upper-case string literals of common/settings.py (the names it reads), if it exists."""
    path = REPO / "common" / "settings.py"
    if not path.exists():
        return None
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and NAME_LITERAL.match(node.value)
    }


def code_defaults() -> dict[str, str]:
    """`_helper(env, "NAME", <literal default>)` calls of common/settings.py, as strings."""
    path = REPO / "common" / "settings.py"
    if not path.exists():
        return {}
    defaults = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and len(node.args) == 3:
            name, default = node.args[1], node.args[2]
            if (
                isinstance(name, ast.Constant)
                and isinstance(name.value, str)
                and isinstance(default, ast.Constant)
                and isinstance(default.value, int)  # bool is an int: True -> "1"
            ):
                defaults[name.value] = str(int(default.value))
    return defaults


def k8s_container_env_names(k8s: list[dict[str, Any]], container: dict[str, Any]) -> set[str]:
    config_maps = k8s_objects(k8s, "ConfigMap")
    names = {item["name"] for item in container.get("env", [])}
    for source in container.get("envFrom", []):
        names |= set(config_maps[source["configMapRef"]["name"]]["data"])
    return names


# --- one set of setting names -----------------------------------------------------------------


def test_code_knows_every_setting_the_deployments_set() -> None:
    known = code_settings()
    if known is None:
        pytest.skip("common/settings.py does not exist yet")
    assert SETTINGS <= known, f"not read by common/settings.py: {sorted(SETTINGS - known)}"


@pytest.mark.parametrize("service", SERVICES)
def test_compose_service_sets_only_known_settings(compose: dict[str, Any], service: str) -> None:
    env = compose_service_env(compose, service)
    assert set(env) <= SETTINGS, f"unknown names: {sorted(set(env) - SETTINGS)}"
    assert REQUIRED_SETTINGS <= set(env)
    assert env["SERVICE_NAME"] == service
    nodes = env["REDIS_NODES"].split(",")
    assert nodes == [f"{service}-redis-{k}:6379" for k in range(6)]


@pytest.mark.parametrize("service", SERVICES)
def test_k8s_service_sets_only_known_settings(k8s: list[dict[str, Any]], service: str) -> None:
    container = pod_container(k8s_objects(k8s, "Deployment")[service])
    names = k8s_container_env_names(k8s, container)
    assert names <= SETTINGS, f"unknown names: {sorted(names - SETTINGS)}"
    assert REQUIRED_SETTINGS | {"WORKER_ID", "REDIS_PASSWORD"} <= names
    env = {item["name"]: item for item in container["env"]}
    assert env["SERVICE_NAME"]["value"] == service
    assert env["WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # the client Service of the helm release <service>-redis-cluster
    assert env["REDIS_NODES"]["value"] == f"{service}-redis-cluster:6379"
    secret = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    values = load_yaml_docs(REPO / "helm-config" / "redis-cluster-values.yaml")[0]
    assert (secret["name"], secret["key"]) == (
        values["existingSecret"],
        values["existingSecretPasswordKey"],
    )


def test_k8s_config_map_equals_compose_common_env(k8s: list[dict[str, Any]]) -> None:
    common = read_env_file(REPO / "env" / "common.env")
    data = k8s_objects(k8s, "ConfigMap")["checkout-config"]["data"]
    # REDIS_PASSWORD is a Secret in k8s; every other shared setting is the same, name and value.
    assert {k: v for k, v in common.items() if k != "REDIS_PASSWORD"} == data


def test_deployed_values_equal_the_code_defaults() -> None:
    """The local stack runs on the code's defaults; compose and k8s set the same values."""
    defaults = code_defaults()
    if not defaults:
        pytest.skip("common/settings.py does not exist yet")
    common = read_env_file(REPO / "env" / "common.env")
    for name, value in common.items():
        if name in defaults and name not in DIFFERS_FROM_CODE_DEFAULT:
            assert value == defaults[name], f"{name}: env/common.env {value}, code {defaults[name]}"


# --- topics -----------------------------------------------------------------------------------


def code_topics() -> set[str] | None:
    """The ALL_TOPICS tuple of common/messages.py, if it exists."""
    path = REPO / "common" / "messages.py"
    if not path.exists():
        return None
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants: dict[str, object] = {}
    for node in ast.walk(tree):
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            constants[target.id] = value.value
        if isinstance(target, ast.Name) and target.id == "ALL_TOPICS":
            assert isinstance(value, ast.Tuple)
            topics: set[str] = set()
            for element in value.elts:
                if isinstance(element, ast.Name):
                    topics.add(str(constants[element.id]))
                else:
                    assert isinstance(element, ast.Constant), ast.dump(element)
                    topics.add(str(element.value))
            return topics
    return None


def test_topics_match_the_code() -> None:
    topics = code_topics()
    if topics is None:
        pytest.skip("common/messages.py has no ALL_TOPICS")
    assert topics == TOPICS


TOPIC_COMMAND = ["python", "-m", "common.topics"]
"""Every deployment makes its topics with the code the services run (common/topics.py)."""


def test_compose_creates_the_topics_with_the_services_code(compose: dict[str, Any]) -> None:
    init = compose["services"]["kafka-init"]
    assert init["image"] == compose["services"]["order"]["image"]
    assert init["entrypoint"] == TOPIC_COMMAND
    assert "env/common.env" in init["env_file"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_k8s_creates_the_topics_with_the_services_code(k8s: list[dict[str, Any]]) -> None:
    job = k8s_objects(k8s, "Job")["kafka-topics"]
    container = pod_container(job)
    assert container["command"] == TOPIC_COMMAND
    assert container["image"] == pod_container(k8s_objects(k8s, "Deployment")["order"])["image"]
    assert {"KAFKA_BOOTSTRAP_SERVERS", "TOPIC_PARTITIONS", "TOPIC_REPLICATION"} <= (
        k8s_container_env_names(k8s, container)
    )
    run_as = job["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert f"USER {run_as}:" in dockerfile()


def test_the_topic_code_creates_every_topic_with_the_settings() -> None:
    source = (REPO / "common" / "topics.py").read_text(encoding="utf-8")
    assert "ALL_TOPICS" in source
    assert "settings.topic_partitions" in source and "settings.topic_replication" in source


def test_topic_partitions_cover_the_largest_replica_count(
    compose: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    partitions = int(read_env_file(REPO / "env" / "common.env")["TOPIC_PARTITIONS"])
    for service in SERVICES:
        assert compose["services"][service]["deploy"]["replicas"] <= partitions
        hpa = k8s_objects(k8s, "HorizontalPodAutoscaler")[service]
        assert hpa["spec"]["maxReplicas"] <= partitions
