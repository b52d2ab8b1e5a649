"""Offline checks of the container deployments: docker-compose, k8s/, helm values, the image.

They keep the three ways of running the system (local stack, docker-compose, minikube) on one
set of setting names, topics, ports and gateway rules. No Docker engine or cluster is needed;
the gateway test runs the Debian nginx when it is installed. Run by test/deploy/validate.sh.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import grp
import http.server
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.http import GATEWAY_CLOCK_MARGIN_S, GATEWAY_READ_TIMEOUT_S, gateway_start_by
from common.settings import load_settings
from test.deploy.environments import (
    REPO,
    compose_service_env,
    k8s_objects,
    k8s_service_env,
    load_compose,
    load_k8s,
    load_yaml_docs,
    pod_container,
    read_env_file,
)

SERVICES = ("order", "payment", "stock")
TOPICS = {"STOCK", "STOCK_PROCESSING", "PAYMENT", "PAYMENT_PROCESSING", "ORDER_STATUS_UPDATE"}
PORT = 8000

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

# ingress-nginx accepts these proxy-next-upstream words only (its annotation validator).
NEXT_UPSTREAM_WORDS = re.compile(
    r"^((error|timeout|invalid_header|http_500|http_502|http_503|http_504|http_403|http_404"
    r"|http_429|non_idempotent|off)\s?)+$"
)
NAME_LITERAL = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")
ANNOTATION = "nginx.ingress.kubernetes.io/"


# --- loading ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    return load_k8s()


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


# --- kafka ------------------------------------------------------------------------------------


BROKER_ENV = REPO / "env" / "kafka" / "broker.env"
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


# --- services: replicas, health, resources, autoscaling, disruption budgets --------------------


@pytest.mark.parametrize("service", SERVICES)
def test_compose_service_is_replicated_and_health_checked(
    compose: dict[str, Any], service: str
) -> None:
    spec = compose["services"][service]
    assert spec["deploy"]["replicas"] >= 2
    assert spec["restart"] in ("unless-stopped", "always", "on-failure")
    assert f"http://127.0.0.1:{PORT}/ready" in " ".join(spec["healthcheck"]["test"])
    assert spec["deploy"]["resources"]["limits"]
    assert "container_name" not in spec and "ports" not in spec  # would block replicas
    assert spec["depends_on"] == {
        "kafka-init": {"condition": "service_completed_successfully"},
        f"{service}-redis-init": {"condition": "service_completed_successfully"},
    }


def test_compose_gateway_waits_for_healthy_services(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    assert {n: d["condition"] for n, d in gateway["depends_on"].items()} == dict.fromkeys(
        SERVICES, "service_healthy"
    )
    assert gateway["ports"] == [f"${{GATEWAY_PORT:-{PORT}}}:{PORT}"]
    assert "./env/gateway:/etc/nginx/gateway:ro" in gateway["volumes"]
    assert "healthcheck" in gateway


def test_compose_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("./", "/")):
                assert source in compose["volumes"], f"{name}: volume {source} not declared"
            else:
                assert (REPO / source).exists(), f"{name}: {source} does not exist"


@pytest.mark.parametrize("service", SERVICES)
def test_k8s_deployment_has_probes_resources_hpa_and_pdb(
    k8s: list[dict[str, Any]], service: str
) -> None:
    deployment = k8s_objects(k8s, "Deployment")[service]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # The HPA owns the count: a `replicas` here would be put back by every kubectl apply.
    assert "replicas" not in deployment["spec"]
    container = pod_container(deployment)
    assert container["ports"] == [{"name": "http", "containerPort": PORT}]
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    # Ready once the consumers have joined their groups; alive while the process serves.
    for probe in (readiness, container["startupProbe"]):
        assert probe["httpGet"] == {"path": "/ready", "port": "http"}
    assert liveness["httpGet"] == {"path": "/health", "port": "http"}
    # liveness gives up later than readiness: a Redis failover must not restart every pod
    assert (
        liveness["periodSeconds"] * liveness["failureThreshold"]
        > readiness["periodSeconds"] * readiness["failureThreshold"]
    )
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound])
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True

    hpa = k8s_objects(k8s, "HorizontalPodAutoscaler")[service]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": service,
    }
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    pdb = k8s_objects(k8s, "PodDisruptionBudget")[service]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]

    svc = k8s_objects(k8s, "Service")[service]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"] == [{"name": "http", "port": PORT, "targetPort": "http"}]


# --- gateway: nginx (compose) and ingress-nginx (minikube) -------------------------------------


def routes_conf() -> str:
    path = REPO / "env" / "gateway" / "routes.conf"
    if not path.exists():
        pytest.skip("env/gateway/routes.conf does not exist yet")
    return path.read_text(encoding="utf-8")


def nginx_directives(block: str) -> dict[str, str]:
    """Directives at the top level of an nginx block (nested `{ ... }` blocks skipped)."""
    directives, depth = {}, 0
    for statement in re.findall(r"[^;{}]*[;{}]", re.sub(r"#[^\n]*", "", block)):
        if statement.endswith("{"):
            depth += 1
        elif statement.endswith("}"):
            depth -= 1
        elif depth == 0:
            name, _, value = statement.strip().rstrip(";").partition(" ")
            directives[name] = value.strip()
    return directives


def test_compose_upstreams_are_the_ones_routes_conf_uses() -> None:
    used = set(re.findall(r"proxy_pass http://(\w+)", routes_conf()))
    upstreams = (REPO / "env" / "gateway" / "upstreams.compose.conf").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"upstream (\w+) \{(.*?)\}", upstreams, flags=re.S))
    assert set(blocks) == used == {f"{s}_upstream" for s in SERVICES}
    for name, body in blocks.items():
        service = name.removesuffix("_upstream")
        assert f"server {service}:{PORT} resolve max_fails=0;" in body
        assert f"zone {name} " in body and "keepalive " in body
    nginx_conf = (REPO / "env" / "gateway" / "nginx.conf").read_text(encoding="utf-8")
    assert "include /etc/nginx/gateway/upstreams.compose.conf;" in nginx_conf
    assert "include /etc/nginx/gateway/routes.conf;" in nginx_conf
    assert re.search(r"resolver 127\.0\.0\.11 valid=\d+s", nginx_conf)
    assert f"listen {PORT} " in nginx_conf


def test_ingress_repeats_the_gateway_rules(k8s: list[dict[str, Any]]) -> None:
    routes = routes_conf()
    expected = nginx_directives(routes)
    # One retry rule for every route (no location of routes.conf sets its own), so one Ingress.
    assert not re.search(r"location [^{]*\{[^}]*proxy_next_upstream", routes)

    ingresses = k8s_objects(k8s, "Ingress")
    assert set(ingresses) == {"gateway"}
    for ingress in ingresses.values():
        assert ingress["spec"]["ingressClassName"] == "nginx"
        annotations = ingress["metadata"]["annotations"]
        notes = {k.removeprefix(ANNOTATION): v for k, v in annotations.items()}
        assert notes["use-regex"] == "true"
        assert NEXT_UPSTREAM_WORDS.match(notes["proxy-next-upstream"])
        assert notes["proxy-next-upstream"].split() == expected["proxy_next_upstream"].split()
        assert notes["proxy-next-upstream-tries"] == expected["proxy_next_upstream_tries"]
        for timeout in ("connect", "send", "read"):
            seconds = expected[f"proxy_{timeout}_timeout"].removesuffix("s")
            assert notes[f"proxy-{timeout}-timeout"] == seconds


def test_the_gateway_tells_order_when_it_first_sent_a_request() -> None:
    """Order starts no checkout saga for a request the gateway has given up on: it reckons that
    time from the gateway's X-Request-Start ($msec, evaluated once per request, the same on its
    retries) and the gateway's read timeout, which it must know."""
    routes = routes_conf()
    assert nginx_directives(routes)["proxy_read_timeout"] == f"{GATEWAY_READ_TIMEOUT_S}s"
    assert re.search(r"^proxy_set_header X-Request-Start \$msec;$", routes, flags=re.M)
    assert not re.search(r"location [^{]*\{[^}]*proxy_set_header", routes)  # none drops it


def gateway_headers(k8s: list[dict[str, Any]]) -> dict[str, str]:
    """The headers ingress-nginx sets on every proxied request: the ConfigMap of k8s/ that
    run_minikube.sh names as the controller's ``proxy-set-headers``, after k8s/ is applied."""
    script = (REPO / "run_minikube.sh").read_text(encoding="utf-8")
    ((namespace, name),) = re.findall(r'^GATEWAY_HEADERS="([\w-]+)/([\w-]+)"$', script, flags=re.M)
    assert re.search(r"^    apply_manifests\n    set_gateway_headers\n", script, flags=re.M)
    assert '\\"proxy-set-headers\\":\\"$GATEWAY_HEADERS\\"' in script
    (config_map,) = (
        doc
        for doc in k8s
        if doc["kind"] == "ConfigMap"
        and doc["metadata"]["name"] == name
        and doc["metadata"]["namespace"] == namespace
    )
    data = config_map["data"]
    assert isinstance(data, dict)
    return data


def assert_sent_once(first: list[str | None], retried: list[str | None]) -> None:
    """Each request's X-Request-Start was the same on the worker that failed it and on the one
    that answered its retry, and is the moment nginx first sent it: order's bound
    (gateway_start_by) reads it as that, within seconds of now."""
    assert first == retried and first
    for start in first:
        assert start is not None and re.fullmatch(r"\d+\.\d{3}", start)
        bound = gateway_start_by(start)
        assert bound is not None
        now = time.time()
        assert now - 10 < bound / 1000 - (GATEWAY_READ_TIMEOUT_S - GATEWAY_CLOCK_MARGIN_S) <= now


def test_ingress_sets_x_request_start_as_the_gateway_does(
    k8s: list[dict[str, Any]], tmp_path: Path
) -> None:
    """ingress-nginx writes each of its proxy-set-headers as `proxy_set_header NAME "VALUE";`
    (Go's %q); those lines, in nginx with a worker that fails every request (502), give the
    worker and the one that answers the retry the same X-Request-Start, the moment nginx first
    sent the request, as routes.conf's own line does."""
    headers = gateway_headers(k8s)
    (routes_value,) = re.findall(r"^proxy_set_header X-Request-Start (\S+);$", routes_conf(), re.M)
    assert headers == {"X-Request-Start": routes_value}
    rendered = "".join(f"proxy_set_header {k} {json.dumps(v)};\n" for k, v in headers.items())
    failing, working = start_echo("order", _BadGateway), start_echo("order")
    try:
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(
            f"""
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp_path};
    proxy_temp_path {tmp_path};
    upstream order_upstream {{
        server 127.0.0.1:{failing.server_address[1]} max_fails=0;
        server 127.0.0.1:{working.server_address[1]} backup;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://order_upstream;
            proxy_next_upstream error timeout http_502 non_idempotent;
            {rendered}
        }}
    }}
}}
""",
            encoding="utf-8",
        )
        with running_nginx(tmp_path, conf, port) as base:
            for _ in range(2):
                assert post(base + "/checkout/o1")[0] == "order /checkout/o1"
        assert_sent_once(failing.starts, working.starts)  # type: ignore[attr-defined]
    finally:
        for server in (failing, working):
            server.shutdown()
            server.server_close()


def ingress_routes(k8s: list[dict[str, Any]]) -> list[tuple[re.Pattern[str], str, str]]:
    """(path regex, rewrite target, service) of every ingress path, as ingress-nginx orders
    regex locations: longest path first."""
    routes = []
    for ingress in k8s_objects(k8s, "Ingress").values():
        target = ingress["metadata"]["annotations"][ANNOTATION + "rewrite-target"]
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["pathType"] == "ImplementationSpecific"
                assert path["backend"]["service"]["port"]["number"] == PORT
                routes.append((path["path"], target, path["backend"]["service"]["name"]))
    routes.sort(key=lambda route: len(route[0]), reverse=True)
    return [(re.compile("^" + path, re.I), target, service) for path, target, service in routes]


@pytest.mark.parametrize(
    ("request_path", "service", "upstream_path"),
    [
        ("/orders/create/u1", "order", "/create/u1"),
        ("/orders/checkout/42", "order", "/checkout/42"),
        ("/orders/find/42", "order", "/find/42"),
        ("/payment/add_funds/u1/10", "payment", "/add_funds/u1/10"),
        ("/stock/item/create/5", "stock", "/item/create/5"),
    ],
)
def test_ingress_strips_the_prefix(
    k8s: list[dict[str, Any]], request_path: str, service: str, upstream_path: str
) -> None:
    for pattern, target, backend in ingress_routes(k8s):
        match = pattern.match(request_path)
        if match:
            rewritten = target
            for number, group in enumerate(match.groups(), start=1):
                rewritten = rewritten.replace(f"${number}", group)
            assert (backend, rewritten) == (service, upstream_path)
            return
    pytest.fail(f"no ingress path matches {request_path}")


class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers every request with the service's name and the path it received, and the
    X-Request-Id it received in ``X-Seen-Request-Id`` (recorded in ``server.seen`` too)."""

    status = 200

    def _answer(self) -> None:
        seen = self.headers.get("X-Request-Id", "")
        self.server.seen.append(seen)  # type: ignore[attr-defined]
        self.server.starts.append(self.headers.get("X-Request-Start"))  # type: ignore[attr-defined]
        body = f"{self.server.service_name} {self.path}".encode()  # type: ignore[attr-defined]
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Seen-Request-Id", seen)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _BadGateway(_Echo):
    """A worker that fails every request with a 502: nginx retries it on the next server."""

    status = 502


def start_echo(service: str, handler: type[_Echo] = _Echo) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.service_name = service  # type: ignore[attr-defined]
    server.seen = []  # type: ignore[attr-defined]
    server.starts = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def echo_servers() -> Iterator[dict[str, int]]:
    servers = [start_echo(service) for service in SERVICES]
    yield {s: srv.server_address[1] for s, srv in zip(SERVICES, servers, strict=True)}
    for server in servers:
        server.shutdown()
        server.server_close()


def nginx_binary() -> str:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
    )
    if nginx is None:
        pytest.skip("nginx is not installed")
    return nginx


def listening(port: int, proc: subprocess.Popen[bytes], *, within_s: float) -> bool:
    """Whether ``port`` on loopback takes a connection before ``proc`` exits or ``within_s``
    seconds pass."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.1)


@contextlib.contextmanager
def running_nginx(prefix: Path, conf: Path, port: int) -> Iterator[str]:
    """Runs nginx with ``conf`` in the foreground until the block ends; yields its base URL."""
    (prefix / "logs").mkdir(exist_ok=True)
    args = [nginx_binary(), "-p", str(prefix), "-c", str(conf)]
    if not re.search(r"^daemon off;", conf.read_text(encoding="utf-8"), flags=re.M):
        args += ["-g", "daemon off;"]
    check = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(args, stderr=subprocess.PIPE)
    try:
        if not listening(port, proc, within_s=10):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"nginx did not start: {err.decode(errors='replace')}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def post(url: str, headers: dict[str, str] | None = None, timeout: float = 5) -> tuple[str, str]:
    """POST through the gateway: (body, the X-Request-Id the service received)."""
    request = urllib.request.Request(url, method="POST", data=b"", headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return reply.read().decode(), reply.headers.get("X-Seen-Request-Id", "")


def compose_gateway_conf(tmp_path: Path, upstreams: str, port: int) -> Path:
    """env/gateway as the nginx image sees it, in ``tmp_path``, listening on loopback ``port``."""
    gateway = REPO / "env" / "gateway"
    conf = (gateway / "nginx.conf").read_text(encoding="utf-8")
    conf = conf.replace("/etc/nginx/gateway/", f"{tmp_path}/")
    conf = conf.replace("pid /tmp/nginx.pid", f"pid {tmp_path}/nginx.pid")
    conf = conf.replace(f"listen {PORT} ", f"listen 127.0.0.1:{port} ")
    (tmp_path / "nginx.conf").write_text(conf, encoding="utf-8")
    (tmp_path / "upstreams.compose.conf").write_text(upstreams, encoding="utf-8")
    for name in ("routes.conf", "request-id.conf"):
        shutil.copy(gateway / name, tmp_path / name)
    return tmp_path / "nginx.conf"


def local_gateway_conf(tmp_path: Path, upstreams: str, port: int) -> Path:
    """local/nginx.conf.in filled in as run_local.sh fills it, with the given upstreams."""
    conf = (REPO / "local" / "nginx.conf.in").read_text(encoding="utf-8")
    user = f"{pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name}"
    fill = {"NGINX_DIR": tmp_path, "GATEWAY_PORT": port, "REPO_DIR": REPO, "NGINX_USER": user}
    for name, value in fill.items():
        conf = conf.replace("${" + name + "}", str(value))
    assert "${" not in conf
    (tmp_path / "tmp").mkdir()
    (tmp_path / "nginx.conf").write_text(conf, encoding="utf-8")
    (tmp_path / "upstreams.conf").write_text(upstreams, encoding="utf-8")
    return tmp_path / "nginx.conf"


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def test_compose_gateway_config_routes_through_nginx(
    tmp_path: Path, echo_servers: dict[str, int]
) -> None:
    """Runs env/gateway/{nginx,upstreams.compose,routes,request-id}.conf in the local nginx, with
    the service names pointed at echo servers on loopback. `resolve` needs nginx >= 1.27.3 (the
    image's); Debian's nginx is older, so that one word is dropped here."""
    routes_conf()
    upstreams = (REPO / "env" / "gateway" / "upstreams.compose.conf").read_text(encoding="utf-8")
    for service, echo_port in echo_servers.items():
        upstreams = upstreams.replace(
            f"server {service}:{PORT} resolve", f"server 127.0.0.1:{echo_port}"
        )
    port = free_port()
    with running_nginx(tmp_path, compose_gateway_conf(tmp_path, upstreams, port), port) as base:
        with urllib.request.urlopen(base + "/gateway/health", timeout=2) as reply:
            assert reply.status == 200
        cases = {
            "/orders/create/u1": "order /create/u1",
            "/orders/checkout/7": "order /checkout/7",
            "/payment/find_user/u1": "payment /find_user/u1",
            "/stock/find/i1": "stock /find/i1",
        }
        for path, expected in cases.items():
            assert post(base + path)[0] == expected
        # As ingress-nginx: the client's request id goes through unchanged, else nginx makes one.
        client_id = str(uuid.uuid4())
        assert post(base + "/stock/subtract/i1/1", {"X-Request-Id": client_id})[1] == client_id
        made = {post(base + "/stock/subtract/i1/1")[1] for _ in range(2)}
        assert len(made) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", m) for m in made)


def test_local_gateway_keeps_the_request_id_across_its_retries(tmp_path: Path) -> None:
    """local/nginx.conf.in as run_local.sh renders it, with stock's first worker failing every
    request (502): nginx retries on the second, and both see one request id, the client's when
    it sent one (a dashed UUID here, as most clients send), else one nginx made."""
    failing, working = start_echo("stock", _BadGateway), start_echo("stock")
    others = {s: start_echo(s) for s in ("order", "payment")}
    try:
        upstreams = f"""
upstream stock_upstream {{
    server 127.0.0.1:{failing.server_address[1]} max_fails=0;
    server 127.0.0.1:{working.server_address[1]} backup;
    keepalive 8;
}}
""" + "".join(
            f"upstream {s}_upstream {{ server 127.0.0.1:{srv.server_address[1]}; }}\n"
            for s, srv in others.items()
        )
        port = free_port()
        with running_nginx(tmp_path, local_gateway_conf(tmp_path, upstreams, port), port) as base:
            client_id = str(uuid.uuid4())
            body, seen = post(base + "/stock/subtract/i1/1", {"X-Request-ID": client_id})
            assert (body, seen) == ("stock /subtract/i1/1", client_id)
            body, made = post(base + "/stock/subtract/i1/1")
            assert body == "stock /subtract/i1/1" and re.fullmatch(r"[0-9a-f]{32}", made)
            assert post(base + "/orders/create/u1")[0] == "order /create/u1"
        assert failing.seen == [client_id, made]  # type: ignore[attr-defined]
        assert working.seen == [client_id, made]  # type: ignore[attr-defined]
        assert UUID.fullmatch(client_id)
        assert_sent_once(failing.starts, working.starts)  # type: ignore[attr-defined]
    finally:
        for server in (failing, working, *others.values()):
            server.shutdown()
            server.server_close()


class _DropsFirst(_Echo):
    """A replica that closes the connection of its first request without answering (it died
    with the request in hand, or reset a keep-alive connection as nginx reused it), then
    answers every request."""

    def _answer(self) -> None:
        if not self.server.dropped:  # type: ignore[attr-defined]
            self.server.dropped = True  # type: ignore[attr-defined]
            self.close_connection = True
            return
        super()._answer()

    do_GET = do_POST = _answer


def post_status(url: str) -> tuple[int, str]:
    """POST through the gateway: (status, body), whatever the status."""
    try:
        return 200, post(url)[0]
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode(errors="replace")


def test_compose_gateway_sends_a_checkout_on_once_its_replicas_answer(tmp_path: Path) -> None:
    """docker-compose runs two order replicas behind one `server order:8000 resolve` line, so
    its parameters (max_fails, fail_timeout) apply to each. A checkout both replicas dropped gets
    the gateway's 502 (nginx tried each); the next one, sent once they answer again, must reach
    one. With `max_fails=1 fail_timeout=2s` nginx counted both replicas down for 2 s and answered
    every checkout of those 2 s 502 ("no live upstreams") without sending it to either: a 5xx, a
    success to the course's clients, for a checkout that started nothing (2026-11-30)."""
    routes_conf()
    compose = (REPO / "env" / "gateway" / "upstreams.compose.conf").read_text(encoding="utf-8")
    (line,) = re.findall(rf"^ *server order:{PORT} resolve[^;]*;\n", compose, flags=re.M)
    replicas = [start_echo("order", _DropsFirst) for _ in range(2)]
    others = {s: start_echo(s) for s in ("payment", "stock")}
    for replica in replicas:
        replica.dropped = False  # type: ignore[attr-defined]
    try:
        # The replicas as `resolve` finds them: one server each, with the line's parameters.
        upstreams = compose.replace(
            line,
            "".join(
                line.replace(f"order:{PORT} resolve", f"127.0.0.1:{r.server_address[1]}")
                for r in replicas
            ),
        )
        for service, server in others.items():
            upstreams = upstreams.replace(
                f"server {service}:{PORT} resolve", f"server 127.0.0.1:{server.server_address[1]}"
            )
        port = free_port()
        conf = compose_gateway_conf(tmp_path, upstreams, port)
        with running_nginx(tmp_path, conf, port) as base:
            assert post_status(base + "/orders/checkout/o1")[0] == 502  # both dropped it
            assert all(r.dropped for r in replicas)  # type: ignore[attr-defined]
            assert post_status(base + "/orders/checkout/o2") == (200, "order /checkout/o2")
    finally:
        for server in (*replicas, *others.values()):
            server.shutdown()
            server.server_close()


# --- the image --------------------------------------------------------------------------------


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text(encoding="utf-8")


def test_image_base_is_pinned_and_user_is_not_root() -> None:
    text = dockerfile()
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base)
    assert set(re.findall(r"^FROM (\S+)", text, flags=re.M)) == {"${PYTHON_IMAGE}"}
    (user,) = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert not user.startswith(("0", "root"))
    assert f"EXPOSE {PORT}" in text.splitlines()
    assert 'ENTRYPOINT ["/usr/local/bin/service-entrypoint"]' in text


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context drops `path` (last matching .dockerignore pattern wins)."""
    ignored = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        regex = fnmatch.translate(pattern.replace("**/", "")) if "**/" in pattern else None
        for candidate in candidates:
            name = candidate.rsplit("/", 1)[-1]
            if fnmatch.fnmatchcase(candidate, pattern) or (regex and re.match(regex, name)):
                ignored = not negate
    return ignored


def test_image_copies_what_it_needs_and_nothing_local() -> None:
    text = dockerfile()
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        src
        for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M)
        for src in line.split()[:-1]
    ]
    assert sources == [
        "requirements.txt",
        "common/",
        "order/",
        "stock/",
        "payment/",
        "env/service/entrypoint.sh",
    ]
    for source in sources:
        assert not dockerignored(source.rstrip("/"), patterns), f"{source} is dockerignored"
    for local_state in (".venv", ".git", ".run", "test", "local"):
        assert dockerignored(local_state, patterns)


def test_services_do_not_import_the_local_only_packages() -> None:
    """The image leaves supervisor out (it serves ./run_local.sh only)."""
    assert "grep -viE '^supervisor=='" in dockerfile()
    for package in ("common", "order", "stock", "payment"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            local_only = re.search(r"^\s*(import|from)\s+supervisor\b", text, re.M)
            assert local_only is None, path


def run_entrypoint(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    fake = fake_bin / "hypercorn"
    fake.write_text('#!/bin/sh\necho "WORKER_ID=$WORKER_ID"\necho "$@"\n', encoding="utf-8")
    fake.chmod(0o755)
    return subprocess.run(
        ["sh", str(REPO / "env" / "service" / "entrypoint.sh")],
        env={"PATH": f"{fake_bin}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("service", SERVICES)
def test_entrypoint_starts_hypercorn_with_uvloop(tmp_path: Path, service: str) -> None:
    done = run_entrypoint(tmp_path, SERVICE_NAME=service, WORKER_ID=f"{service}-7")
    assert done.returncode == 0, done.stderr
    worker, args = done.stdout.splitlines()
    assert worker == f"WORKER_ID={service}-7"
    assert args == (
        f"--worker-class uvloop --workers 0 --bind 0.0.0.0:{PORT} --keep-alive 75"
        f" --graceful-timeout 60 {service}.app:create_app()"
    )


# --- stopping a worker: running requests finish --------------------------------------------------

# After hypercorn has let its requests finish, a worker closes its consumers (commit, leave the
# group), producer and Redis clients before it exits: room left for that in every grace period
# (a margin, not a measurement).
SHUTDOWN_MARGIN_S = 10


def hypercorn_args(tmp_path: Path, **env: str) -> list[str]:
    done = run_entrypoint(tmp_path, SERVICE_NAME="order", **env)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[1].split()


def graceful_timeout(tmp_path: Path, settings: dict[str, str]) -> int:
    """hypercorn's --graceful-timeout for a worker with ``settings``' checkout budgets."""
    budgets = {
        k: v for k, v in settings.items() if k in ("CHECKOUT_TIMEOUT_MS", "CHECKOUT_ANSWER_MS")
    }
    args = hypercorn_args(tmp_path, **budgets)
    return int(args[args.index("--graceful-timeout") + 1])


@pytest.mark.parametrize(
    ("checkout_ms", "answer_ms", "graceful_s"),
    [
        ("20000", "55000", 60),
        ("20000", None, 60),
        ("4000", "1000", 9),
        ("70000", "55000", 75),
        ("1", "1", 6),
    ],
)
def test_graceful_timeout_outlasts_a_checkout(
    tmp_path: Path, checkout_ms: str, answer_ms: str | None, graceful_s: int
) -> None:
    """A checkout is held at most its answer budget (common/saga/verdict.py: CHECKOUT_ANSWER_MS,
    55 s by default, or CHECKOUT_TIMEOUT_MS if that is longer), which covers its turn, its saga
    and the compensation of a saga it turned back: hypercorn lets it finish."""
    settings = {"CHECKOUT_TIMEOUT_MS": checkout_ms}
    if answer_ms is not None:
        settings["CHECKOUT_ANSWER_MS"] = answer_ms
    assert graceful_timeout(tmp_path, settings) == graceful_s
    budget_ms = max(int(checkout_ms), int(answer_ms or load_settings({}).checkout_answer_ms))
    assert graceful_s >= budget_ms / 1000
    for name in ("CHECKOUT_TIMEOUT_MS", "CHECKOUT_ANSWER_MS"):
        done = run_entrypoint(tmp_path, SERVICE_NAME="order", **{name: "20s"})
        assert done.returncode == 64 and name in done.stderr


def seconds(duration: str) -> int:
    """A compose duration such as 50s, 1m or 1m30s, in seconds."""
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match and duration, duration
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def test_grace_periods_let_running_checkouts_finish(
    tmp_path: Path, compose: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    common = read_env_file(REPO / "env" / "common.env")
    graceful = graceful_timeout(tmp_path, common)
    for service in SERVICES:
        stop = seconds(compose["services"][service]["stop_grace_period"])
        assert stop >= graceful + SHUTDOWN_MARGIN_S, service

    config = k8s_objects(k8s, "ConfigMap")["checkout-config"]["data"]
    graceful = graceful_timeout(tmp_path, config)
    for service in SERVICES:
        pod = k8s_objects(k8s, "Deployment")[service]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        # preStop runs first (endpoints are removed meanwhile), then SIGTERM; the grace period
        # counts from the start of the hook.
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep" and 1 <= int(command[1]) <= 10
        needed = int(command[1]) + graceful + SHUTDOWN_MARGIN_S
        assert pod["terminationGracePeriodSeconds"] >= needed, service


SLOW_APP = """
import asyncio

from common.http import create_app as http_app


async def nothing(_):
    return None


def create_app():
    app = http_app("order", startup=nothing, shutdown=nothing)

    @app.post("/checkout/<seconds>")
    async def checkout(seconds):
        await asyncio.sleep(float(seconds))
        return "paid"

    return app
"""


def test_a_stopping_worker_finishes_a_checkout_that_outlasts_hypercorns_default(
    tmp_path: Path,
) -> None:
    """hypercorn started with the entrypoint's arguments (its port moved to loopback) and a
    Quart app whose checkout takes 6 s, twice hypercorn's default graceful timeout: SIGTERM
    while it runs, and the client still gets its answer; new connections are refused at once
    (the gateway takes them elsewhere) and the worker exits when the request is done."""
    hypercorn = REPO / ".venv" / "bin" / "hypercorn"
    if not hypercorn.exists():
        pytest.skip("hypercorn is not installed in .venv")
    app_dir = tmp_path / "app" / "order"
    app_dir.mkdir(parents=True)
    (app_dir / "__init__.py").write_text("", encoding="utf-8")
    (app_dir / "app.py").write_text(SLOW_APP, encoding="utf-8")
    port = free_port()
    args = hypercorn_args(tmp_path, CHECKOUT_TIMEOUT_MS="20000")
    args[args.index("--bind") + 1] = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(hypercorn), *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path / 'app'}:{REPO}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert listening(port, proc, within_s=20), "no hypercorn"
        answers: list[object] = []

        def checkout() -> None:
            try:
                answers.append(post(f"http://127.0.0.1:{port}/checkout/6", timeout=30)[0])
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion
                answers.append(exc)

        client = threading.Thread(target=checkout)
        client.start()
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        client.join(timeout=20)
        assert answers == ["paid"]
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_entrypoint_defaults_worker_id_to_the_hostname(tmp_path: Path) -> None:
    done = run_entrypoint(tmp_path, SERVICE_NAME="stock")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"WORKER_ID={socket.gethostname()}"


def test_entrypoint_refuses_an_unknown_service(tmp_path: Path) -> None:
    done = run_entrypoint(tmp_path, SERVICE_NAME="shipping")
    assert done.returncode == 64
    assert "SERVICE_NAME" in done.stderr


def test_entrypoint_port_moves_only_where_asked(
    tmp_path: Path, compose: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    """PORT (for the check that runs the entrypoint beside a local stack) moves the bind; the
    deployments leave it unset, so their workers listen on the port their probes use."""
    args = hypercorn_args(tmp_path, PORT="8123")
    assert args[args.index("--bind") + 1] == "0.0.0.0:8123"
    done = run_entrypoint(tmp_path, SERVICE_NAME="order", PORT="80 --reload")
    assert done.returncode == 64 and "PORT" in done.stderr
    for service in SERVICES:
        assert "PORT" not in compose_service_env(compose, service), service
        assert "PORT" not in k8s_service_env(k8s, service), service


# --- run_minikube.sh, against stand-ins for minikube, kubectl, helm and curl --------------------


# What the kubectl stand-in answers `get deployment <name> -o jsonpath=<last-applied>` with for
# a Deployment applied by the k8s/ of before (with `replicas: 2`).
APPLIED_WITH_REPLICAS = '{"apiVersion":"apps/v1","kind":"Deployment","spec":{"replicas":2}}'


def profiles(cpus: int, memory: int) -> str:
    """`minikube profile list -o json` with the profile minikube of that size running."""
    config = {"Name": "minikube", "CPUs": cpus, "Memory": memory, "Driver": "docker"}
    return json.dumps(
        {"invalid": [], "valid": [{"Name": "minikube", "Status": "OK", "Config": config}]}
    )


def run_minikube(
    tmp_path: Path, *, deployed: bool = False, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[str], Path]:
    """run_minikube.sh in a copy of the repo, with stand-ins for minikube, kubectl, helm and
    curl that log their calls: (the run, the calls, the copy). ``deployed``: a deployment made
    by an earlier run (by the k8s/ of before) is there."""
    work = tmp_path / "repo"
    for name in ("k8s", "helm-config", "test", "env/kafka"):
        (work / name).mkdir(parents=True)
    shutil.copy(REPO / "run_minikube.sh", work / "run_minikube.sh")
    shutil.copy(REPO / "env" / "smoke-checkout.sh", work / "env" / "smoke-checkout.sh")
    shutil.copy(BROKER_ENV, work / "env" / "kafka" / "broker.env")
    shutil.copy(REPO / "test" / "urls.json", work / "test" / "urls.json")
    log = tmp_path / "calls.log"
    stubs = tmp_path / "bin"
    stubs.mkdir()
    script = {
        "minikube": """case "$*" in
    *" status"*) [ -n "$STUB_DEPLOYED" ] || exit 1 ;;
    *" ip") echo 192.168.49.2 ;;
    *"profile list -o json") printf '%s' "$STUB_PROFILES" ;;
esac""",
        # Reads its stdin like kubectl (the Secret is piped in): a stub that did not could end
        # before the writer wrote, and the script died of SIGPIPE (exit 141) now and then.
        "kubectl": f"""case "$1 $2" in
    "get secret") [ -n "$STUB_DEPLOYED" ] || exit 1 ;;
    "get deployment") [ -z "$STUB_DEPLOYED" ] || printf '%s' '{APPLIED_WITH_REPLICAS}' ;;
esac
cat >/dev/null""",
        "helm": "",
        # The probe's read answers 400; the smoke checkout's calls (body, then the status)
        # answer as the services do after a paid checkout.
        "curl": """case "$*" in
    *run-minikube-probe*) echo 400 ;;
    *item/create*) printf '{"item_id": "i1"}\\n200' ;;
    *create_user*) printf '{"user_id": "u1"}\\n200' ;;
    *orders/create*) printf '{"order_id": "o1"}\\n200' ;;
    *orders/find*) printf '{"paid": true}\\n200' ;;
    *stock/find*) printf '{"stock": %s}\\n200' "${STUB_STOCK:-3}" ;;
    *find_user*) printf '{"credit": 4}\\n200' ;;
    *) printf '\\n200' ;;
esac""",
    }
    for tool, body in script.items():
        stub = stubs / tool
        stub.write_text(
            f'#!/bin/sh\nprintf "%s\\n" "{tool} $*" >>"{log}"\n{body}\nexit 0\n', encoding="utf-8"
        )
        stub.chmod(0o755)
    done = subprocess.run(
        ["bash", str(work / "run_minikube.sh")],
        env={
            "PATH": f"{stubs}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "STUB_DEPLOYED": "1" if deployed else "",
            "STUB_PROFILES": profiles(4, 8192),
            **(env or {}),
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    calls = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return done, calls, work


def index_of(calls: list[str], prefix: str) -> int:
    return next(i for i, call in enumerate(calls) if call.startswith(prefix))


def test_run_minikube_deploys_in_order_and_writes_urls(tmp_path: Path) -> None:
    done, calls, work = run_minikube(tmp_path)
    assert done.returncode == 0, done.stderr

    def first(prefix: str) -> int:
        return index_of(calls, prefix)

    assert first("minikube -p minikube start --kubernetes-version=v1.34.0") < first(
        "minikube -p minikube addons enable ingress"
    )
    helm = [c for c in calls if c.startswith("helm upgrade --install")]
    assert sorted(c.split()[3] for c in helm) == [f"{s}-redis-cluster" for s in SERVICES]
    assert all("-f helm-config/redis-cluster-values.yaml" in c for c in helm)
    assert first("kubectl create secret generic redis-auth") < first("helm upgrade")
    assert first("helm upgrade") < first(
        "minikube -p minikube image build -t checkout-service:local ."
    )
    assert first("minikube -p minikube image build") < first("kubectl apply -f k8s/")
    assert first("kubectl create configmap kafka-broker") < first("kubectl apply -f k8s/")
    assert first("kubectl apply -f k8s/") < first(
        "kubectl wait --for=condition=complete job/kafka-topics"
    )
    assert (work / "test" / "urls.minikube.json").read_text(encoding="utf-8") == (
        '{"ORDER_URL": "http://192.168.49.2", "PAYMENT_URL": "http://192.168.49.2", '
        '"STOCK_URL": "http://192.168.49.2"}\n'
    )
    # A first deployment: nothing was applied before, so no annotation is touched.
    assert not [c for c in calls if c.startswith("kubectl annotate")]
    # The final check pays one checkout through the ingress, after the gateway answered.
    assert first(
        "curl -s -o /dev/null -w %{http_code} --max-time 5 http://192.168.49.2/payment"
    ) < (
        first(
            "curl -sS --max-time 70 -X POST -w \\n%{http_code} http://192.168.49.2/orders/checkout/o1"
        )
    )


def test_run_minikube_fails_when_its_checkout_took_no_stock(tmp_path: Path) -> None:
    """A checkout answered 200 is not enough: the smoke check reads its effects."""
    done, _, _ = run_minikube(tmp_path, env={"STUB_STOCK": "5"})
    assert done.returncode != 0
    assert "stock is 5, not 3" in done.stderr
    assert "was not paid" in done.stderr


def test_run_minikube_leaves_the_tracked_urls_file_alone(tmp_path: Path) -> None:
    """The ingress URL goes to an untracked file; test/urls.json (the local stack's) stays."""
    done, _, work = run_minikube(tmp_path)
    assert done.returncode == 0, done.stderr
    assert (work / "test" / "urls.json").read_bytes() == (REPO / "test" / "urls.json").read_bytes()
    assert (work / "test" / "urls.minikube.json").exists()
    assert "test/urls.minikube.json" in (REPO / ".gitignore").read_text(encoding="utf-8").split()


def test_run_minikube_pulls_the_chart_once(tmp_path: Path) -> None:
    done, calls, _ = run_minikube(tmp_path)
    assert done.returncode == 0, done.stderr
    (pull,) = [c for c in calls if c.startswith("helm pull")]
    assert pull.startswith("helm pull oci://registry-1.docker.io/bitnamicharts/redis-cluster")
    assert "--version 13.0.5" in pull
    chart = pull.split("--destination ")[1] + "/redis-cluster-13.0.5.tgz"
    installs = [c for c in calls if c.startswith("helm upgrade --install")]
    assert len(installs) == 3 and all(c.split()[4] == chart for c in installs)
    assert index_of(calls, "helm pull") < index_of(calls, "helm upgrade")


def test_run_minikube_does_not_restart_a_first_deployment(tmp_path: Path) -> None:
    """Its pods start with the image just built; a restart would only roll them again."""
    done, calls, _ = run_minikube(tmp_path)
    assert done.returncode == 0, done.stderr
    assert not [c for c in calls if c.startswith("kubectl rollout restart")]
    for service in SERVICES:
        index_of(calls, f"kubectl rollout status deployment/{service}")


def test_run_minikube_leaves_the_replica_count_to_the_hpa(tmp_path: Path) -> None:
    """Over a deployment made by the k8s/ of before (`replicas: 2` in kubectl's last-applied
    annotation), the apply would remove the field and scale each Deployment to 1 once: the
    script drops that annotation first, so the apply leaves the HPA's count alone."""
    done, calls, _ = run_minikube(tmp_path, deployed=True)
    assert done.returncode == 0, done.stderr
    apply = index_of(calls, "kubectl apply -f k8s/")
    for service in SERVICES:
        forget = index_of(
            calls, f"kubectl annotate deployment {service} kubectl.kubernetes.io/last-applied-"
        )
        assert forget < apply
    assert not [c for c in calls if c.startswith("kubectl scale")]


def test_run_minikube_restarts_only_the_deployments_that_ran_an_older_build(
    tmp_path: Path,
) -> None:
    """The image tag stays checkout-service:local: a Deployment that was there before this run
    still runs the previous build and is restarted, after the apply."""
    done, calls, _ = run_minikube(tmp_path, deployed=True)
    assert done.returncode == 0, done.stderr
    restarts = [c for c in calls if c.startswith("kubectl rollout restart")]
    assert restarts == [f"kubectl rollout restart deployment/{s}" for s in SERVICES]
    assert index_of(calls, "kubectl apply -f k8s/") < index_of(calls, "kubectl rollout restart")


# --- the size of minikube ------------------------------------------------------------------------

# What minikube's own pods request on its one node (millicores, MiB): kubeadm's control plane
# (kube-apiserver 250m, kube-controller-manager 200m, kube-scheduler 100m, etcd 100m and 100Mi),
# CoreDNS (100m, 70Mi) and the addons run_minikube.sh enables, ingress-nginx's controller
# (100m, 90Mi) and metrics-server (100m, 200Mi); kube-proxy and the storage provisioner request
# nothing. Read from their manifests, not measured on a minikube here.
MINIKUBE_OWN = {"cpu": 950, "memory": 460}


def millicores(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def mebibytes(quantity: str) -> int:
    units = {"Mi": 1, "Gi": 1024}
    return int(quantity[:-2]) * units[quantity[-2:]]


def requests_of(container: dict[str, Any]) -> dict[str, int]:
    asked = container["resources"]["requests"]
    return {"cpu": millicores(str(asked["cpu"])), "memory": mebibytes(str(asked["memory"]))}


def script_setting(name: str) -> int:
    script = (REPO / "run_minikube.sh").read_text(encoding="utf-8")
    (value,) = re.findall(rf"^{name}=(\d+)$", script, flags=re.M)
    return int(value)


def test_pods_fit_the_smallest_minikube_run_minikube_accepts(k8s: list[dict[str, Any]]) -> None:
    """Every pod's requests with each HPA at its maximum, one extra pod per Deployment in a
    rolling update, the topic Job and minikube's own pods fit the smallest profile that
    run_minikube.sh accepts (so nothing stays Pending), and its default start is that big."""
    need = dict(MINIKUBE_OWN)

    def add(count: int, asked: dict[str, int]) -> None:
        for resource in need:
            need[resource] += count * asked[resource]

    hpas = k8s_objects(k8s, "HorizontalPodAutoscaler")
    for name, deployment in k8s_objects(k8s, "Deployment").items():
        surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        add(hpas[name]["spec"]["maxReplicas"] + surge, requests_of(pod_container(deployment)))
    for statefulset in k8s_objects(k8s, "StatefulSet").values():
        add(statefulset["spec"]["replicas"], requests_of(pod_container(statefulset)))
    for job in k8s_objects(k8s, "Job").values():
        add(1, requests_of(pod_container(job)))
    (values,) = load_yaml_docs(REPO / "helm-config" / "redis-cluster-values.yaml")
    add(len(SERVICES) * values["cluster"]["nodes"], requests_of(values["redis"]))

    cpus, memory = script_setting("MIN_CPUS"), script_setting("MIN_MEMORY")
    assert need["cpu"] <= cpus * 1000, need
    assert need["memory"] <= memory, need
    script = (REPO / "run_minikube.sh").read_text(encoding="utf-8")
    assert int(re.findall(r'CPUS="\$\{MINIKUBE_CPUS:-(\d+)\}"', script)[0]) >= cpus
    assert int(re.findall(r'MEMORY="\$\{MINIKUBE_MEMORY:-(\d+)\}"', script)[0]) >= memory


def test_run_minikube_refuses_a_running_profile_too_small(tmp_path: Path) -> None:
    done, calls, _ = run_minikube(tmp_path, deployed=True, env={"STUB_PROFILES": profiles(2, 4000)})
    assert done.returncode != 0
    assert "profile minikube has 2 CPUs and 4000 MiB" in done.stderr
    assert "minikube delete -p minikube && MINIKUBE_CPUS=4 MINIKUBE_MEMORY=8192" in done.stderr
    assert "MINIKUBE_PROFILE=checkout" in done.stderr
    assert not [
        c for c in calls if c.startswith(("helm", "kubectl apply", "minikube -p minikube addons"))
    ]
    assert not [c for c in calls if c.startswith("minikube -p minikube start")]


def test_run_minikube_refuses_to_start_a_profile_too_small(tmp_path: Path) -> None:
    done, calls, _ = run_minikube(tmp_path, env={"MINIKUBE_CPUS": "2"})
    assert done.returncode != 0
    assert "needs at least 4 CPUs" in done.stderr
    assert not [c for c in calls if c.startswith("minikube -p minikube start")]


def test_run_minikube_goes_on_over_a_running_profile_big_enough(tmp_path: Path) -> None:
    done, calls, _ = run_minikube(tmp_path, deployed=True, env={"STUB_PROFILES": profiles(6, 8000)})
    assert done.returncode == 0, done.stderr
    assert not [c for c in calls if c.startswith("minikube -p minikube start")]
    index_of(calls, "kubectl apply -f k8s/")
    # A size it cannot read is a warning, not a refusal.
    done, _, _ = run_minikube(tmp_path / "unread", deployed=True, env={"STUB_PROFILES": ""})
    assert done.returncode == 0, done.stderr
    assert "could not read the size of profile minikube" in done.stderr
