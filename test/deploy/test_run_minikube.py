"""run_minikube.sh, against stand-ins for minikube, kubectl, helm and curl: the order of its
steps, what it writes, installs and restarts, and the size of minikube it needs and accepts.
Run by test/deploy/validate.sh.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from test.deploy.environments import REPO, k8s_objects, load_yaml_docs, pod_container
from test.deploy.manifests import BROKER_ENV, SERVICES

# compose and k8s (test/deploy runs with --noconftest: see test/deploy/fixtures.py)
pytest_plugins = ("test.deploy.fixtures",)


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
