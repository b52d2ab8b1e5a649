"""Offline checks of the services in the container deployments (docker-compose, k8s/):
replicas, health checks, resources, autoscaling and disruption budgets; in compose also the
gateway's wait for healthy services and the declared volumes. Run by test/deploy/validate.sh.
"""

from __future__ import annotations

from typing import Any

import pytest

from test.deploy.environments import REPO, k8s_objects, pod_container
from test.deploy.manifests import PORT, SERVICES

# compose and k8s (test/deploy runs with --noconftest: see test/deploy/fixtures.py)
pytest_plugins = ("test.deploy.fixtures",)


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
        (*SERVICES, "holder"), "service_healthy"
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
