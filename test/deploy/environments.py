"""The services' environments as the container deployments give them, read from the files:
docker-compose.yml (a service's env_file entries, then its environment) and k8s/ (a
Deployment's envFrom ConfigMaps, then its env). Shared by the offline checks
(test/deploy/test_*.py) and the check that runs workers with them
(test/system/test_deployment_settings.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class FromCluster:
    """A k8s ``valueFrom``: a value the cluster supplies when the pod starts (a field of the
    pod, a Secret's key), which no file holds."""

    source: str  # "fieldRef:metadata.name", "secretKeyRef:redis-auth/redis-password", ...


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


def load_compose() -> dict[str, Any]:
    (doc,) = load_yaml_docs(REPO / "docker-compose.yml")
    return doc


def load_k8s() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((REPO / "k8s").glob("*.yaml")):
        docs.extend(load_yaml_docs(path))
    return docs


def k8s_objects(k8s: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in k8s if doc["kind"] == kind}


def pod_container(obj: dict[str, Any]) -> dict[str, Any]:
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def compose_service_env(compose: dict[str, Any], service: str) -> dict[str, str]:
    """What compose puts in the environment of ``service``'s containers (later files and
    ``environment`` override earlier ones)."""
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


def k8s_service_env(k8s: list[dict[str, Any]], service: str) -> dict[str, str | FromCluster]:
    """What the pods of the Deployment ``service`` get: the ConfigMaps of ``envFrom``, then
    ``env`` (which wins, as in Kubernetes); a ``valueFrom`` stays a FromCluster."""
    config_maps = k8s_objects(k8s, "ConfigMap")
    container = pod_container(k8s_objects(k8s, "Deployment")[service])
    env: dict[str, str | FromCluster] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "valueFrom" in item:
            ((kind, ref),) = item["valueFrom"].items()
            where = ref.get("fieldPath") or f"{ref.get('name')}/{ref.get('key')}"
            env[item["name"]] = FromCluster(f"{kind}:{where}")
        else:
            env[item["name"]] = str(item["value"])
    return env
