"""Offline checks of the broker and the Redis Clusters of the container deployments: one
pinned Kafka version and one file of broker settings for the local stack, docker-compose and
minikube, a single-node KRaft broker in compose and k8s/, and six-node Redis Clusters in compose
and the helm values. Run by test/deploy/validate.sh.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from test.deploy.environments import (
    REPO,
    k8s_objects,
    load_yaml_docs,
    pod_container,
    read_env_file,
)
from test.deploy.manifests import BROKER_ENV, SERVICES

# compose and k8s (test/deploy runs with --noconftest: see test/deploy/fixtures.py)
pytest_plugins = ("test.deploy.fixtures",)


# --- kafka ------------------------------------------------------------------------------------


KAFKA_POM = REPO / "local" / "kafka" / "pom.xml"


def broker_settings() -> dict[str, str]:
    return read_env_file(BROKER_ENV)


def kafka_version() -> str:
    (version,) = re.findall(r"<kafka.version>([^<]+)</kafka.version>", KAFKA_POM.read_text())
    return str(version)


def test_every_broker_runs_the_pinned_version(
    compose: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    """The local broker (Maven Central, local/kafka/pom.xml) and the apache/kafka images."""
    image = f"apache/kafka:{kafka_version()}"
    assert compose["services"]["kafka"]["image"] == image
    assert pod_container(k8s_objects(k8s, "StatefulSet")["kafka"])["image"] == image


def test_broker_settings_come_from_one_file(
    compose: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    """compose reads env/kafka/broker.env, minikube makes a ConfigMap of it, run_local.sh
    turns it into server.properties; none of them sets one of its settings again."""
    shared = set(broker_settings())
    kafka = compose["services"]["kafka"]
    assert kafka["env_file"] == ["env/kafka/broker.env"]
    assert not shared & set(kafka["environment"])
    container = pod_container(k8s_objects(k8s, "StatefulSet")["kafka"])
    assert container["envFrom"] == [{"configMapRef": {"name": "kafka-broker"}}]
    assert not shared & {item["name"] for item in container["env"]}
    minikube = (REPO / "run_minikube.sh").read_text(encoding="utf-8")
    assert "create configmap kafka-broker --from-env-file=env/kafka/broker.env" in minikube
    local = (REPO / "run_local.sh").read_text(encoding="utf-8")
    assert '"$REPO_DIR/env/kafka/broker.env"' in local


def test_broker_settings_fit_the_topics_the_services_make() -> None:
    broker = broker_settings()
    common = read_env_file(REPO / "env" / "common.env")
    assert broker["KAFKA_NUM_PARTITIONS"] == common["TOPIC_PARTITIONS"]
    assert broker["KAFKA_DEFAULT_REPLICATION_FACTOR"] == common["TOPIC_REPLICATION"]
    assert broker["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    # One broker everywhere: every internal topic has a single replica.
    for name, value in broker.items():
        if name.endswith(("_REPLICATION_FACTOR", "_MIN_ISR", "_MIN_INSYNC_REPLICAS")):
            assert value == "1", name
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", broker["CLUSTER_ID"])


def kraft_env_ok(env: dict[str, str]) -> None:
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(env["KAFKA_NODE_ID"] + "@")
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert "CONTROLLER://" in env["KAFKA_LISTENERS"] and "PLAINTEXT://" in env["KAFKA_LISTENERS"]
    assert "CONTROLLER://" not in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"


def test_compose_kafka_is_single_node_kraft(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = {k: str(v) for k, v in kafka["environment"].items()}
    kraft_env_ok(env)
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    common = read_env_file(REPO / "env" / "common.env")
    assert common["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert "kafka-data:/var/lib/kafka/data" in kafka["volumes"]


def test_k8s_kafka_is_single_node_kraft(k8s: list[dict[str, Any]]) -> None:
    kafka = k8s_objects(k8s, "StatefulSet")["kafka"]
    pod = kafka["spec"]["template"]["spec"]
    container = pod_container(kafka)
    env = {item["name"]: item.get("value", "") for item in container["env"]}
    kraft_env_ok(env)
    # Service links would add KAFKA_PORT=tcp://... which the image turns into a property.
    assert pod["enableServiceLinks"] is False
    assert kafka["spec"]["replicas"] == 1
    (compose,) = load_yaml_docs(REPO / "docker-compose.yml")
    assert container["image"] == compose["services"]["kafka"]["image"]
    services = k8s_objects(k8s, "Service")
    assert kafka["spec"]["serviceName"] == "kafka-headless"
    assert services["kafka-headless"]["spec"]["clusterIP"] == "None"
    assert services["kafka"]["spec"]["ports"][0]["port"] == 9092


# --- redis ------------------------------------------------------------------------------------


def redis_conf(path: Path) -> dict[str, str]:
    settings = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.strip().partition(" ")
            settings[name] = value
    return settings


def test_compose_has_a_six_node_cluster_per_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for service in SERVICES:
        nodes = [f"{service}-redis-{k}" for k in range(6)]
        for node in nodes:
            (config,) = services[node]["configs"]
            conf = redis_conf(REPO / compose["configs"][config["source"]]["file"])
            assert conf["cluster-enabled"] == "yes"
            assert conf["appendonly"] == "yes"
            assert conf["cluster-node-timeout"] == "3000"
            assert conf["dir"] == "/data" and conf["port"] == "6379"
            # Clients are given node names, which stay valid when a container is recreated with
            # a new IP; each node announces its own service name (what REDIS_NODES lists).
            assert conf["cluster-preferred-endpoint-type"] == "hostname"
            assert services[node]["command"] == [
                "redis-server",
                config["target"],
                "--cluster-announce-hostname",
                node,
            ]
            assert services[node]["volumes"] == [f"{node}:/data"]
            assert node in compose["volumes"]
            assert "healthcheck" in services[node]
        init = services[f"{service}-redis-init"]
        assert init["environment"]["REDIS_CLUSTER_NODES"].split() == [f"{n}:6379" for n in nodes]
        assert init["environment"]["REDIS_CLUSTER_REPLICAS"] == "1"
        assert init["restart"] == "no"
        assert {n: d["condition"] for n, d in init["depends_on"].items()} == dict.fromkeys(
            nodes, "service_healthy"
        )


def test_helm_values_describe_the_same_clusters() -> None:
    (values,) = load_yaml_docs(REPO / "helm-config" / "redis-cluster-values.yaml")
    assert values["cluster"] == {"nodes": 6, "replicas": 1}
    assert values["redis"]["useAOFPersistence"] == "yes"
    assert "cluster-node-timeout 3000" in values["redis"]["configmap"].splitlines()
    assert values["persistence"]["enabled"] is True
    assert values["image"]["repository"] == "bitnamilegacy/redis-cluster"
    assert values["global"]["security"]["allowInsecureImages"] is True
    assert values["usePassword"] is True
    script = (REPO / "run_minikube.sh").read_text(encoding="utf-8")
    assert re.search(r'^REDIS_CHART_VERSION="\d+\.\d+\.\d+"$', script, flags=re.M)
    assert 'helm upgrade --install "${service}-redis-cluster"' in script
